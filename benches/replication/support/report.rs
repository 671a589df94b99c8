//! What the bench prints: tables with notes, and the summary of headline figures against
//! their targets.

/// A printed table: a title, a header row, rows, and notes under it.
pub struct Table {
    title: String,
    head: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, head: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn print(&self) {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.head.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(width(cell));
                }
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::from(" ");
            for (i, cell) in cells.iter().enumerate() {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(width(cell));
                out.push_str("  ");
                if i == 0 {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                } else {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                }
            }
            out
        };
        println!();
        println!("{}", self.title);
        println!("{}", line(&self.head));
        let total: usize = widths.iter().sum::<usize>() + 2 * widths.len();
        println!("   {}", "-".repeat(total.saturating_sub(2)));
        for row in &self.rows {
            println!("{}", line(row));
        }
        for note in &self.notes {
            println!("   {note}");
        }
    }
}

/// One line of the final summary: what, the measured figure, the target and whether it was met.
pub struct Headline {
    what: String,
    value: String,
    target: String,
    met: Option<bool>,
}

pub fn headline(
    summary: &mut Vec<Headline>,
    what: &str,
    value: String,
    target: &str,
    met: Option<bool>,
) {
    summary.push(Headline {
        what: what.to_string(),
        value,
        target: target.to_string(),
        met,
    });
}

pub fn print_summary(summary: &[Headline]) {
    let mut t = Table::new(
        "SUMMARY (medians)",
        &["figure", "measured", "target", "met"],
    );
    for h in summary {
        let met = match h.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        t.row(vec![
            h.what.clone(),
            h.value.clone(),
            h.target.clone(),
            met.to_string(),
        ]);
    }
    t.print();
}
