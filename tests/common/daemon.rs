//! What the launchers of real front ends (Apache httpd, nginx, HAProxy) share: a temporary
//! directory of their own, a free loopback port written into the config they are given,
//! the program started in the foreground as a child of the test, a wait (with a deadline)
//! until it listens on that port (the listening socket found among the child's own, so
//! another program on the port is never taken for it), a start on another port when another program
//! took the one chosen, and the child stopped by its PID when the guard is dropped. When
//! the program is not installed, the launcher prints why the test skips and returns None.
//!
//! Config and file texts name the port as `@PORT@` and the directory as `@DIR@` (markers
//! no front end's own syntax uses: Apache's `%{VAR}e`, nginx's `$var` and HAProxy's `%[..]`
//! stay as written).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::free_port;

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// How long a front end gets to accept connections after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a start is tried again on another port after losing one.
const PORT_ATTEMPTS: usize = 5;

/// Whether `program` exists; prints why the test skips when it does not.
pub fn installed(program: &str, what: &str) -> bool {
    if Path::new(program).exists() {
        return true;
    }
    eprintln!("skipping: {program} is missing ({what} is not installed; .ci/run installs it)");
    false
}

/// A new empty directory under the system's temporary directory, open to every user (a
/// front end started as root serves from an unprivileged user that must reach its files).
pub fn temp_dir(label: &str) -> PathBuf {
    let n = DIRS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("deltacast-{label}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
        .expect("the temporary directory opened to all");
    dir
}

/// `text` with `@PORT@` and `@DIR@` replaced.
pub fn fill(text: &str, port: u16, dir: &Path) -> String {
    text.replace("@PORT@", &port.to_string())
        .replace("@DIR@", &dir.display().to_string())
}

/// Whether the process runs as root (then the front ends are told which user to serve as).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// How to start one front end: everything but the port, which the launcher picks.
pub struct Launch<'a> {
    /// Short name for the directory and messages: "apache", "nginx", "haproxy".
    pub label: &'a str,
    /// The program's path.
    pub program: &'a str,
    /// Files to write into the directory before the start, (name, text with markers).
    pub files: Vec<(String, String)>,
    /// The arguments (with the markers).
    pub args: Vec<&'a str>,
    /// The log to show when the start fails, relative to the directory.
    pub log: &'a str,
    /// What the log says when the port was taken by another program.
    pub port_taken: &'a [&'a str],
}

/// A running front end, stopped (SIGTERM, then SIGKILL) by its PID when dropped; its
/// directory is removed then, unless the test is failing (kept for a look).
pub struct Daemon {
    pub child: Child,
    pub label: String,
    pub port: u16,
    pub dir: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `launch` on a free loopback port; panics with its log when it does not come
    /// up for another reason than a port taken.
    pub fn start(launch: Launch<'_>) -> Daemon {
        let dir = temp_dir(launch.label);
        let log = dir.join(launch.log);
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            for (name, text) in &launch.files {
                std::fs::write(dir.join(name), fill(text, port, &dir)).expect("a config file");
            }
            let _ = std::fs::remove_file(&log);
            let output = File::create(dir.join("output.log")).expect("an output file");
            let child = Command::new(launch.program)
                .args(launch.args.iter().map(|a| fill(a, port, &dir)))
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(output.try_clone().expect("the output file"))
                .stderr(output)
                .spawn()
                .unwrap_or_else(|e| panic!("{} could not be started: {e}", launch.program));
            let mut daemon = Daemon {
                child,
                label: launch.label.to_string(),
                port,
                dir: dir.clone(),
                log: log.clone(),
            };
            match daemon.wait_listening() {
                Ok(()) => return daemon,
                Err(()) => {
                    let text = daemon.logs();
                    daemon.stop();
                    if launch.port_taken.iter().any(|m| text.contains(m)) {
                        continue;
                    }
                    panic!("{} did not come up on port {port}:\n{text}", launch.label);
                }
            }
        }
        panic!(
            "every start of {} lost its port to another program",
            launch.label
        );
    }

    /// Waits until the child accepts connections on its port while it runs.
    fn wait_listening(&mut self) -> Result<(), ()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return Err(());
            }
            // Listening, and by this child: not by a program that took the port first.
            if listening_socket(self.port).is_some_and(|inode| holds(self.child.id(), inode)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The front end's log and what it wrote on stdout/stderr.
    pub fn logs(&self) -> String {
        let output_path = self.dir.join("output.log");
        let output = std::fs::read_to_string(&output_path).unwrap_or_default();
        if self.log == output_path {
            return format!("--- {} ---\n{output}", output_path.display());
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!(
            "--- {} ---\n{log}\n--- output ---\n{output}",
            self.log.display()
        )
    }

    /// Stops the child: SIGTERM (each front end stops its workers on it), SIGKILL when it
    /// has not exited within the deadline.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(self.pid(), Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = kill(self.pid(), Signal::SIGKILL);
                let _ = self.child.wait();
            }
        }
    }
}

/// The inode of the socket listening on 127.0.0.1:`port`, from /proc/net/tcp.
fn listening_socket(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // local address, remote address, state (0A: LISTEN), ..., inode (the tenth).
        (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
    })
}

/// Whether process `pid` holds the socket of `inode` open.
fn holds(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.filter_map(Result::ok)
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| target.as_os_str() == want.as_str())
    })
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("{} kept for a look: {}", self.label, self.dir.display());
            eprintln!("{}", self.logs());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
