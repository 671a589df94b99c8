//! The balancer-manager page in a real browser: Debian's headless Chromium renders the page
//! of a balancer in front of two real nodes (the DOM after load, and a screenshot), and
//! drives it through the DevTools protocol: a click on a member's drain button drains it,
//! a change made elsewhere shows up by the page's own refresh, and a form posted from
//! another origin is refused.
//!
//! Chromium is found at `$DELTACAST_CHROMIUM`, else `/usr/bin/chromium`, else `chromium` on
//! PATH; without it these tests say why and pass (`.ci/run` installs Debian's package).
//! Every Chromium process is killed by PID and its temporary directory removed when a test
//! ends, also when it fails; one browser run is bounded by [`BROWSER_TIMEOUT`].

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::{BalancerProc, Cluster, DEFAULTS, NodeProc, exchange, get_json, wait_until};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

const STARTUP: Duration = Duration::from_secs(20);
/// The hard limit of one Chromium run, so that a hung browser cannot hang the suite.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);
/// Virtual time `--dump-dom` lets the page run. It must stay below the page's 2 s meta
/// refresh: with a longer budget Chromium 148 never ends `--dump-dom` (seen with 2.5 and 4 s).
const VIRTUAL_TIME_BUDGET_MS: u32 = 1000;
const WINDOW: (u32, u32) = (1200, 500);
const SKIP: &str = "skipping: chromium not found (install Debian's chromium package; .ci/run does)";

/// One browser test at a time: two Chromiums and six servers at once crowd a 2-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static DIRS: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------
// The cluster: two real nodes behind a balancer with a static member list.

/// A balancer of `cluster` with `members` as its static members (no discovery).
fn static_balancer(cluster: &Cluster, members: &[&NodeProc]) -> BalancerProc {
    let mut args = vec!["--set".to_string(), "balancer.discover=false".to_string()];
    for n in members {
        args.push("--member".into());
        args.push(format!("{}=http://{}", n.name, n.http));
    }
    BalancerProc::spawn(cluster, &args)
}

impl BalancerProc {
    /// Route -> state from `/balancer-manager/status`.
    fn states(&self) -> Option<BTreeMap<String, String>> {
        let status = get_json(self.addr, "/balancer-manager/status")?;
        status["members"]
            .as_array()?
            .iter()
            .map(|m| Some((m["route"].as_str()?.into(), m["state"].as_str()?.into())))
            .collect()
    }

    fn manager_url(&self) -> String {
        format!("http://{}/balancer-manager", self.addr)
    }

    /// Sets a member's admin state the way the page's form does, from the page's origin,
    /// with the nonce its forms carry.
    fn post_admin(&self, route: &str, action: &str) -> u16 {
        let (_, page) =
            common::http(self.addr, "GET", "/balancer-manager", b"").expect("the manager page");
        let page = String::from_utf8_lossy(&page);
        let marker = "name=\"nonce\" value=\"";
        let start = page.find(marker).expect("the page's forms carry a nonce") + marker.len();
        let nonce = &page[start..start + page[start..].find('"').expect("closing quote")];
        let form = format!("route={route}&action={action}&nonce={nonce}");
        let request = format!(
            "POST /balancer-manager/member HTTP/1.1\r\nHost: {a}\r\nOrigin: http://{a}\r\n\
             Connection: close\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n{form}",
            form.len(),
            a = self.addr
        );
        let mut stream = TcpStream::connect(self.addr).expect("connect to the balancer");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(request.as_bytes()).expect("send");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
}

/// Two converged nodes n1, n2 and a balancer that lists both as `ok`.
fn two_nodes_behind_a_balancer(test: &str) -> (Cluster, Vec<NodeProc>, BalancerProc) {
    let cluster = Cluster::new(test);
    let nodes = vec![cluster.node("n1", DEFAULTS), cluster.node("n2", DEFAULTS)];
    for n in &nodes {
        wait_until(STARTUP, "the node answers", || n.status());
    }
    common::wait_converged(&nodes.iter().collect::<Vec<_>>(), STARTUP);
    let b = static_balancer(&cluster, &nodes.iter().collect::<Vec<_>>());
    wait_until(STARTUP, "the balancer lists n1 and n2 as ok", || {
        let states = b.states()?;
        (states.len() == 2 && states.get("n1")? == "ok" && states.get("n2")? == "ok").then_some(())
    });
    (cluster, nodes, b)
}

// ---------------------------------------------------------------------------------------
// Chromium: found or skipped, run with a hard timeout, killed by PID, its directory removed.

fn executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The Chromium binary to use, or why there is none.
fn find_chromium() -> Result<PathBuf, String> {
    if let Some(chosen) = std::env::var_os("DELTACAST_CHROMIUM").filter(|v| !v.is_empty()) {
        let chosen = PathBuf::from(chosen);
        return if executable(&chosen) {
            Ok(chosen)
        } else {
            Err(format!(
                "DELTACAST_CHROMIUM={} is not an executable file",
                chosen.display()
            ))
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    std::iter::once(PathBuf::from("/usr/bin"))
        .chain(on_path)
        .map(|dir| dir.join("chromium"))
        .find(|p| executable(p))
        .ok_or_else(|| "neither /usr/bin/chromium nor chromium on PATH".to_string())
}

/// Chromium runs of one test, and the fresh directory they use as HOME and profiles.
/// Dropping it kills every process of those runs by PID and removes the directory.
struct Chromium {
    binary: PathBuf,
    dir: PathBuf,
    runs: Vec<Child>,
}

/// Moves the pipes of `sh`'s stdin and stdout to the descriptors 3 and 4 that
/// `--remote-debugging-pipe` reads and writes, then becomes Chromium (`$0`).
const ON_FDS_3_AND_4: &str = r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#;

impl Chromium {
    /// The browser with a fresh directory, or None after saying why there is none.
    fn find() -> Option<Chromium> {
        let binary = match find_chromium() {
            Ok(binary) => binary,
            Err(why) => {
                // Straight to the stderr handle: the harness's capture of `eprintln!` would
                // hide the reason from a plain `cargo test` run, such as CI's.
                let _ = writeln!(std::io::stderr(), "{SKIP}\n  ({why})");
                return None;
            }
        };
        let dir = std::env::temp_dir().join(format!(
            "deltacast-chromium-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory for chromium");
        Some(Chromium {
            binary,
            dir,
            runs: Vec::new(),
        })
    }

    /// Chromium with the flags this machine needs, HOME and a fresh profile in our
    /// directory, stderr to `log`, in a process group of its own (its helpers are killed
    /// with it). `via_pipe`: started through `sh` with the DevTools protocol on a pipe.
    fn command(&self, profile: &str, log: &Path, via_pipe: bool) -> Command {
        let mut cmd = if via_pipe {
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(ON_FDS_3_AND_4).arg(&self.binary);
            sh
        } else {
            Command::new(&self.binary)
        };
        cmd.arg("--headless")
            .arg("--no-sandbox")
            .arg("--disable-gpu")
            .arg("--disable-quic")
            .arg("--no-first-run")
            .arg("--disable-background-networking")
            .arg("--disable-component-update")
            .arg("--disable-sync")
            .arg(flag("--user-data-dir=", &self.dir.join(profile)))
            .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
            .env("HOME", &self.dir)
            .env("XDG_CONFIG_HOME", self.dir.join(".config"))
            .env("XDG_CACHE_HOME", self.dir.join(".cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log).expect("chromium log"))
            .process_group(0);
        if via_pipe {
            cmd.arg("--remote-debugging-pipe")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
        }
        cmd
    }

    /// Runs Chromium to its end with `args` within [`BROWSER_TIMEOUT`], its stdout written
    /// to `stdout`; on time-out the test fails (and the drop kills it).
    fn run(&mut self, args: &[OsString], stdout: &Path, log: &Path) -> ExitStatus {
        let mut cmd = self.command("run", log, false);
        cmd.args(args)
            .stdout(File::create(stdout).expect("chromium stdout file"));
        let run = cmd.spawn().expect("start chromium");
        let pid = run.id() as i32;
        self.runs.push(run);
        let deadline = Instant::now() + BROWSER_TIMEOUT;
        // Until it has exited, not reaped: its PID, the id of its helpers' group, stays ours.
        while common::pid_alive(pid) {
            assert!(
                Instant::now() < deadline,
                "chromium ran longer than {BROWSER_TIMEOUT:?} (log: {})",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        let mut run = self.runs.pop().expect("the run");
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let status = run.wait().expect("wait for chromium");
        self.kill_all();
        status
    }

    /// Starts Chromium on about:blank, driven by the DevTools protocol over a pipe.
    fn devtools(&mut self, log: &Path) -> Devtools {
        let mut cmd = self.command("devtools", log, true);
        let mut child = cmd.arg("about:blank").spawn().expect("start chromium");
        let to_browser = child.stdin.take().expect("chromium's pipe in");
        let from_browser = child.stdout.take().expect("chromium's pipe out");
        self.runs.push(child);
        let (tx, rx) = mpsc::channel();
        // Ends when Chromium closes the pipe, at the latest when the drop kills it.
        std::thread::spawn(move || {
            let mut from = BufReader::new(from_browser);
            let mut message = Vec::new();
            while from.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                if message.last() == Some(&0) {
                    message.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&message)
                    && tx.send(v).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        Devtools {
            to_browser,
            from_browser: rx,
            next_id: 0,
            deadline: Instant::now() + BROWSER_TIMEOUT,
        }
    }

    /// SIGKILL to every process of our runs: each run's process group (by the PID of its
    /// leader, killed before it is reaped so that the id cannot have been reused), then any
    /// process left whose command line names our directory (Chromium's crash handler leaves
    /// the group; given our HOME, it names the directory).
    fn kill_all(&mut self) {
        for mut run in self.runs.drain(..) {
            let _ = killpg(Pid::from_raw(run.id() as i32), Signal::SIGKILL);
            let _ = run.wait();
        }
        let dir = self.dir.as_os_str().as_encoded_bytes().to_vec();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_naming(&dir);
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        self.kill_all();
        // A helper that is just dying may still write there: a few bounded tries.
        for _ in 0..50 {
            match std::fs::remove_dir_all(&self.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
    }
}

fn flag(name: &str, path: &Path) -> OsString {
    let mut f = OsString::from(name);
    f.push(path);
    f
}

/// PIDs of live processes (not ours) whose command line contains `needle`.
fn processes_naming(needle: &[u8]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id() as i32;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// A Chromium driven over `--remote-debugging-pipe`: JSON messages ended by a NUL byte.
struct Devtools {
    to_browser: ChildStdin,
    from_browser: Receiver<Value>,
    next_id: u64,
    /// The end of [`BROWSER_TIMEOUT`] for this browser: no wait goes past it.
    deadline: Instant,
}

impl Devtools {
    /// Sends one command (to a page when `session` is given) and returns its result, or the
    /// protocol's error message.
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).expect("json");
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .expect("write to chromium's pipe");
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.from_browser.recv_timeout(left) {
                Ok(answer) if answer["id"] == id => {
                    return match answer.get("error") {
                        Some(e) => Err(e["message"].as_str().unwrap_or("error").to_string()),
                        None => Ok(answer["result"].clone()),
                    };
                }
                Ok(_event) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("chromium did not answer {method} within {BROWSER_TIMEOUT:?}")
                }
                Err(RecvTimeoutError::Disconnected) => panic!("chromium closed its pipe"),
            }
        }
    }

    /// Opens `url` in a new page and returns the page's session id.
    fn open(&mut self, url: &str) -> String {
        let target = self
            .call(None, "Target.createTarget", json!({"url": url}))
            .expect("create a page");
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .expect("attach to the page");
        attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string()
    }

    /// The value of a JavaScript expression in the page; Err while the page is between
    /// documents, or when the script threw.
    fn evaluate(&mut self, page: &str, expression: &str) -> Result<Value, String> {
        let r = self.call(
            Some(page),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(e.to_string());
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `probe` until it returns Some, within `timeout` and this browser's deadline.
    fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut(&mut Devtools) -> Option<T>,
    ) -> T {
        let deadline = (Instant::now() + timeout).min(self.deadline);
        loop {
            if let Some(v) = probe(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the page shows.

/// Route, URL, load factor and state of each member row of the `members` table, once the
/// manager page is loaded; null before.
const ROWS_JS: &str = r#"(() => {
  if (document.readyState !== 'complete' || location.pathname !== '/balancer-manager') return null;
  const table = document.getElementById('members');
  if (!table) return null;
  return [...table.querySelectorAll('tr')]
    .filter(r => r.cells.length > 1 && r.cells[0].tagName === 'TD')
    .map(r => [...r.cells].slice(0, 4).map(c => c.textContent.trim()));
})()"#;

/// The rows of the loaded manager page as route -> [url, loadfactor, state].
fn page_rows(dev: &mut Devtools, page: &str) -> Option<BTreeMap<String, Vec<String>>> {
    let rows = dev.evaluate(page, ROWS_JS).ok()?;
    rows.as_array()?
        .iter()
        .map(|r| {
            let cells: Vec<String> = r
                .as_array()?
                .iter()
                .map(|c| c.as_str().map(str::to_string))
                .collect::<Option<_>>()?;
            Some((cells.first()?.clone(), cells[1..].to_vec()))
        })
        .collect()
}

/// The cells (class attribute, text without tags) of each `<tr>` of a serialized DOM.
fn dom_rows(dom: &str) -> Vec<Vec<(String, String)>> {
    dom.split("<tr")
        .skip(1)
        .map(|row| {
            let row = row.split("</tr>").next().unwrap_or_default();
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let (attrs, inner) = cell.split_once('>').unwrap_or_default();
                    let inner = inner.split("</td>").next().unwrap_or_default();
                    let class = attrs
                        .split("class=\"")
                        .nth(1)
                        .and_then(|c| c.split('"').next())
                        .unwrap_or_default()
                        .to_string();
                    (class, strip_tags(inner))
                })
                .collect()
        })
        .filter(|cells: &Vec<(String, String)>| !cells.is_empty())
        .collect()
}

fn strip_tags(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.trim().to_string()
}

/// Width and height of a PNG file's image, None when it is not a PNG.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.get(..8)? != b"\x89PNG\r\n\x1a\n" || bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let word = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    Some((word(16)?, word(20)?))
}

// ---------------------------------------------------------------------------------------

#[test]
fn the_manager_page_shows_every_member_in_a_real_browser() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut chromium) = Chromium::find() else {
        return;
    };
    let started = Instant::now();
    let (cluster, nodes, b) = two_nodes_behind_a_balancer("browser-page");
    let log = common::log_path(&cluster.name, "chromium");
    // Two different states, so that the check sees each member's own.
    assert_eq!(b.post_admin("n2", "drain"), 303);
    wait_until(STARTUP, "n2 is draining", || {
        (b.states()?.get("n2")? == "draining").then_some(())
    });
    let dom_file = chromium.dir.join("dom.html");
    let shot = chromium.dir.join("manager.png");
    let browser_started = Instant::now();
    let status = chromium.run(
        &[
            format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}").into(),
            "--run-all-compositor-stages-before-draw".into(),
            "--dump-dom".into(),
            flag("--screenshot=", &shot),
            b.manager_url().into(),
        ],
        &dom_file,
        &log,
    );
    let browser_took = browser_started.elapsed();
    assert!(
        status.success(),
        "chromium failed: {status} (log: {})",
        log.display()
    );

    let dom = std::fs::read_to_string(&dom_file).expect("the dumped DOM");
    let rows = dom_rows(&dom);
    for (n, state) in [(&nodes[0], "ok"), (&nodes[1], "draining")] {
        let url = format!("http://{}", n.http);
        let row = rows
            .iter()
            .find(|cells| cells.first().is_some_and(|(_, route)| *route == n.name))
            .unwrap_or_else(|| panic!("no row for {} in the rendered DOM:\n{dom}", n.name));
        let texts: Vec<&str> = row.iter().map(|(_, text)| text.as_str()).collect();
        assert_eq!(
            texts.get(..4),
            Some(&[n.name.as_str(), url.as_str(), "1", state][..]),
            "row of {} in the rendered DOM",
            n.name
        );
        assert_eq!(row[3].0, format!("state-{state}"), "the state cell's class");
    }
    let raw = exchange(b.addr, "GET", "/balancer-manager", None, b"").expect("the raw page");
    let server_rendered = raw.text().contains(&format!("<td>{}</td>", nodes[0].name));
    eprintln!(
        "the page is {}; its DOM after load lists n1 ok and n2 draining",
        if server_rendered {
            "rendered by the server (rows in the raw HTML)"
        } else {
            "filled in by its script (rows not in the raw HTML)"
        }
    );

    let png = std::fs::read(&shot).expect("the screenshot");
    assert_eq!(
        png_size(&png),
        Some(WINDOW),
        "a PNG of the window's size ({} bytes)",
        png.len()
    );
    let kept = log.with_file_name(format!("{}-manager.png", cluster.name));
    std::fs::write(&kept, &png).expect("keep the screenshot");
    eprintln!(
        "chromium took {browser_took:?}, the test {:?}; screenshot ({} bytes) kept at {}",
        started.elapsed(),
        png.len(),
        kept.display()
    );
}

#[test]
fn a_click_on_drain_in_a_real_browser_drains_the_member_and_the_page_follows() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut chromium) = Chromium::find() else {
        return;
    };
    let started = Instant::now();
    let (cluster, nodes, b) = two_nodes_behind_a_balancer("browser-click");
    let mut dev = chromium.devtools(&common::log_path(&cluster.name, "chromium"));
    let page = dev.open(&b.manager_url());
    let want = |state1: &str, state2: &str| {
        let mut rows = BTreeMap::new();
        for (n, state) in [(&nodes[0], state1), (&nodes[1], state2)] {
            let url = format!("http://{}", n.http);
            rows.insert(n.name.clone(), vec![url, "1".to_string(), state.into()]);
        }
        rows
    };

    // The click, as a person would: the button in n1's row. The page reloads itself every
    // 2 s, and a click that meets a reload may be lost; a few tries, each awaited.
    let mut tries = 0;
    while b.states().and_then(|s| s.get("n1").cloned()).as_deref() != Some("draining") {
        tries += 1;
        assert!(tries <= 3, "three clicks on drain did not drain n1");
        dev.wait_for(STARTUP, "the page lists n1 and n2 as ok", |dev| {
            (page_rows(dev, &page)? == want("ok", "ok")).then_some(())
        });
        let clicked = dev.evaluate(
            &page,
            r#"(() => {
              const route = document.querySelector('#members input[name="route"][value="n1"]');
              const button = route && route.form.querySelector('button[value="drain"]');
              if (!button) return false;
              button.click();
              return true;
            })()"#,
        );
        assert_eq!(clicked, Ok(json!(true)), "n1's drain button was clicked");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && b.states().and_then(|s| s.get("n1").cloned()).as_deref() != Some("draining")
        {
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    // The form's answer leads back to the page, which shows the new state.
    dev.wait_for(STARTUP, "the page shows n1 draining", |dev| {
        (page_rows(dev, &page)? == want("draining", "ok")).then_some(())
    });

    // A change made elsewhere reaches the open page by its own refresh.
    assert_eq!(b.post_admin("n2", "disable"), 303);
    dev.wait_for(STARTUP, "the open page shows n2 disabled", |dev| {
        (page_rows(dev, &page)? == want("draining", "disabled")).then_some(())
    });

    // A form posted to the balancer from a page of another origin (a node's) is refused.
    let node_url = format!("http://{}/", nodes[0].http);
    dev.call(Some(&page), "Page.navigate", json!({"url": node_url}))
        .expect("navigate to the node's page");
    dev.wait_for(STARTUP, "the node's page is loaded", |dev| {
        let loaded = dev.evaluate(
            &page,
            "document.readyState === 'complete' && location.pathname === '/'",
        );
        (loaded == Ok(json!(true))).then_some(())
    });
    let posted = dev.evaluate(
        &page,
        &format!(
            r#"(() => {{
              const form = document.createElement('form');
              form.method = 'post';
              form.action = 'http://{}/balancer-manager/member';
              for (const [name, value] of [['route', 'n2'], ['action', 'enable']]) {{
                const input = document.createElement('input');
                input.type = 'hidden'; input.name = name; input.value = value;
                form.appendChild(input);
              }}
              document.body.appendChild(form);
              form.submit();
              return true;
            }})()"#,
            b.addr
        ),
    );
    assert_eq!(posted, Ok(json!(true)), "the cross-origin form was posted");
    let answer = dev.wait_for(STARTUP, "the balancer answered the foreign form", |dev| {
        let text = dev
            .evaluate(
                &page,
                "document.readyState === 'complete' && location.pathname === \
                 '/balancer-manager/member' ? document.body.innerText : null",
            )
            .ok()?;
        text.as_str().map(str::to_string)
    });
    assert!(answer.contains("forbidden"), "answer: {answer}");
    assert_eq!(
        b.states().and_then(|s| s.get("n2").cloned()).as_deref(),
        Some("disabled"),
        "a foreign form changed nothing"
    );
    eprintln!(
        "drained by click after {tries} click(s); refresh and foreign-origin checks passed; \
         the test took {:?}",
        started.elapsed()
    );
}
