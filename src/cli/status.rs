//! `deltacast status URL`: the membership table of a node, or the members table of a
//! balancer, for people (or raw JSON).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use super::http::{self, HttpError};
use super::{CliError, StatusArgs};
use crate::node::status::StatusDoc;

/// How long the whole command may take, both questions together.
const DEADLINE: Duration = Duration::from_secs(5);

pub async fn run(args: StatusArgs) -> Result<ExitCode, CliError> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    // A balancer proxies /status to a node: ask for its own document first.
    let manager = http::with_path(&args.url, "/balancer-manager/status")?;
    let uri = http::with_path(&args.url, "/status")?;
    let first = http::get(&manager, left()).await;
    if let Err(e @ (HttpError::TooLarge { .. } | HttpError::Timeout { .. })) = first {
        // The same server would do it again for /status: say so now.
        return Err(e.into());
    }
    if let Ok(body) = first {
        if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&body) {
            if let Some(members) = doc["members"].as_array() {
                if args.json {
                    println!("{}", String::from_utf8_lossy(&body));
                } else {
                    print!("{}", render_balancer(members, &doc["connections"]));
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    let body = http::get(&uri, left()).await?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(ExitCode::SUCCESS);
    }
    let doc: StatusDoc = serde_json::from_slice(&body).map_err(|e| HttpError::Body {
        url: uri.to_string(),
        reason: format!("not a deltacast /status document: {e}"),
    })?;
    print!("{}", render(&doc));
    Ok(ExitCode::SUCCESS)
}

/// The balancer's members (`/balancer-manager/status`) as a table, under a line with its
/// client connections when the document has them.
pub fn render_balancer(members: &[serde_json::Value], connections: &serde_json::Value) -> String {
    let columns = [
        "route",
        "url",
        "loadfactor",
        "state",
        "elected",
        "busy",
        "bytes_in",
        "bytes_out",
        "errors",
    ];
    let mut rows = vec![columns.map(|c| c.to_uppercase())];
    for m in members {
        rows.push(columns.map(|c| match &m[c] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }));
    }
    let mut out = format!("balancer with {} member(s)", members.len());
    if let (Some(open), Some(max)) = (connections["open"].as_u64(), connections["max"].as_u64()) {
        let _ = write!(out, "; {open} of at most {max} client connection(s) open");
        if let Some(reached) = connections["limit_reached"].as_u64().filter(|n| *n > 0) {
            let _ = write!(out, " (limit reached {reached} time(s))");
        }
    }
    out.push('\n');
    out.push_str(&table(&rows));
    out
}

/// The human table: the node first (marked `*`), then its members.
/// The store's name in the table (`replicated`, `redis`, `redis-cluster`, `memcached`); an older node's
/// document (without the field) was replicated.
fn store_name(store: &str) -> String {
    if store.is_empty() {
        "replicated".to_string()
    } else {
        store.to_string()
    }
}

pub fn render(doc: &StatusDoc) -> String {
    let n = &doc.node;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {}  node {} ({})  {}  up {}  v{}",
        doc.cluster,
        n.name,
        n.id,
        n.state,
        human_ms(n.uptime_ms),
        n.version
    );
    let _ = writeln!(
        out,
        "sessions {}  store {}  replication {} (sent {}, received {}, errors {})  datagrams dropped {}",
        doc.sessions
            .active
            .map_or_else(|| "-".to_string(), |n| n.to_string()),
        if doc.sessions.store_errors == 0 {
            store_name(&doc.sessions.store)
        } else {
            format!(
                "{} ({} errors)",
                store_name(&doc.sessions.store),
                doc.sessions.store_errors
            )
        },
        doc.replication.mode,
        doc.replication.deltas_sent,
        doc.replication.deltas_received,
        doc.replication.errors,
        doc.membership.dropped
    );
    if let Some(ajp) = &doc.ajp {
        let _ = writeln!(
            out,
            "ajp {}  (requests {}, errors {})",
            ajp.listen, ajp.requests, ajp.errors
        );
    }
    let mut rows = vec![[
        "NAME".to_string(),
        "ROUTE".into(),
        "HTTP".into(),
        "REPLICATION".into(),
        "STATE".into(),
        "LAST HEARD".into(),
    ]];
    rows.push([
        format!("{} *", n.name),
        n.route.clone(),
        n.http.clone(),
        n.replication.clone(),
        n.state.clone(),
        "-".into(),
    ]);
    for m in &doc.members {
        rows.push([
            m.name.clone(),
            m.route.clone(),
            m.http.clone(),
            m.replication.clone(),
            m.state.clone(),
            format!("{} ago", human_ms(m.last_heard_ms)),
        ]);
    }
    out.push_str(&table(&rows));
    let _ = writeln!(out, "{} member(s) besides this node (*)", doc.members.len());
    out
}

/// Left-aligned columns separated by two spaces.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn human_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MembershipCounters;
    use crate::node::status::{MemberStatus, NodeStatus, ReplicationStatus, SessionsStatus};

    #[test]
    fn a_balancer_table_lists_its_members() {
        let doc: serde_json::Value = serde_json::from_str(
            r#"{"members":[{"route":"n1","url":"http://127.0.0.1:8081","loadfactor":1,"state":"ok","elected":7,"busy":0,"bytes_in":1,"bytes_out":2,"errors":0}],
                "connections":{"open":3,"max":10000,"limit_reached":0}}"#,
        )
        .unwrap();
        let text = render_balancer(doc["members"].as_array().unwrap(), &doc["connections"]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "balancer with 1 member(s); 3 of at most 10000 client connection(s) open"
        );
        let without = render_balancer(&[], &serde_json::Value::Null);
        assert_eq!(without.lines().next(), Some("balancer with 0 member(s)"));
        assert!(lines[1].starts_with("ROUTE") && lines[1].contains("ELECTED"));
        assert!(
            lines[2].starts_with("n1")
                && lines[2].contains("http://127.0.0.1:8081")
                && lines[2].contains(" 7 ")
        );
    }

    #[test]
    fn the_table_lists_the_node_then_its_members() {
        let doc = StatusDoc {
            node: NodeStatus {
                id: "00000000000000aa".into(),
                name: "n1".into(),
                route: "n1".into(),
                http: "127.0.0.1:8081".into(),
                replication: "127.0.0.1:4001".into(),
                state: "ready".into(),
                uptime_ms: 61_500,
                version: "0.1.0".into(),
            },
            cluster: "c".into(),
            members: vec![MemberStatus {
                id: "00000000000000bb".into(),
                name: "n2".into(),
                route: "n2".into(),
                http: "127.0.0.1:8082".into(),
                replication: "127.0.0.1:4002".into(),
                state: "suspect".into(),
                last_heard_ms: 1_300,
            }],
            sessions: SessionsStatus {
                active: Some(0),
                ..SessionsStatus::default()
            },
            replication: ReplicationStatus {
                mode: "sync".into(),
                deltas_sent: 0,
                deltas_received: 0,
                bytes_sent: 0,
                bytes_received: 0,
                queue: 0,
                errors: 0,
            },
            membership: MembershipCounters::default(),
            ajp: None,
        };
        let text = render(&doc);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("up 1m1s"));
        assert!(lines[2].starts_with("NAME"));
        assert!(lines[3].starts_with("n1 *"));
        assert!(lines[4].starts_with("n2 "));
        assert!(
            lines[4].contains("suspect") && lines[4].contains("1.3s ago"),
            "{}",
            lines[4]
        );
        // Columns line up.
        assert_eq!(lines[2].find("HTTP"), lines[4].find("127.0.0.1:8082"));
        assert!(!text.contains("ajp"));

        let mut with_ajp = doc.clone();
        with_ajp.ajp = Some(crate::node::status::AjpStatus {
            listen: "127.0.0.1:8009".into(),
            requests: 5,
            errors: 1,
        });
        let text = render(&with_ajp);
        assert_eq!(
            text.lines().nth(2),
            Some("ajp 127.0.0.1:8009  (requests 5, errors 1)")
        );
    }
}
