//! Real memcached for tests: each test starts its own `memcached -p PORT -U 0 -l 127.0.0.1`
//! (Debian's `memcached` package) on a free loopback port, and stops it by its PID when
//! dropped. A raw text-protocol client (`get`, `set`) reads and writes items behind the
//! nodes' backs.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::free_port;

/// How long a server gets to answer `version` after it was started.
const UP_WITHIN: Duration = Duration::from_secs(20);

/// Whether `memcached` can be run; when not, prints why the test skips.
pub fn available(test: &str) -> bool {
    let ok = Command::new("memcached")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "skipping {test}: memcached is not installed (Debian package memcached; .ci/run installs it)"
        );
    }
    ok
}

/// A `memcached` child, killed (SIGKILL, by its PID) when dropped.
pub struct MemcachedServer {
    child: Option<Child>,
    pub port: u16,
}

impl MemcachedServer {
    /// A server on a free port.
    pub fn start() -> MemcachedServer {
        for _ in 0..10 {
            let mut server = MemcachedServer {
                child: None,
                port: free_port(),
            };
            if server.launch() {
                return server;
            }
        }
        panic!("memcached did not start on any of 10 free ports");
    }

    /// Starts the process on `self.port`; true once it answers `version`.
    fn launch(&mut self) -> bool {
        let child = Command::new("memcached")
            .args(["-p", &self.port.to_string()])
            .args(["-U", "0", "-l", "127.0.0.1", "-m", "64", "-u", "root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn memcached");
        self.child = Some(child);
        let deadline = Instant::now() + UP_WITHIN;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            if self
                .command(b"version\r\n")
                .is_some_and(|a| a.starts_with(b"VERSION"))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.kill();
        false
    }

    /// `HOST:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `sessions.store` URL of this server alone.
    pub fn url(&self) -> String {
        format!("memcached://{}", self.addr())
    }

    /// The server's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `command` on a fresh connection and reads until the answer ends with a line
    /// that closes it (`END`, `STORED`, ...); None when the server cannot be reached.
    pub fn command(&self, command: &[u8]) -> Option<Vec<u8>> {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port);
        let mut stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(command).ok()?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let ends = [
            &b"END\r\n"[..],
            b"STORED\r\n",
            b"NOT_STORED\r\n",
            b"DELETED\r\n",
            b"NOT_FOUND\r\n",
            b"ERROR\r\n",
        ];
        loop {
            let n = stream.read(&mut buf).ok()?;
            if n == 0 {
                return Some(answer);
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.starts_with(b"VERSION") && answer.ends_with(b"\r\n") {
                return Some(answer);
            }
            if ends.iter().any(|e| answer.ends_with(e)) {
                return Some(answer);
            }
        }
    }

    /// The value under `key` (a raw `get`), None when absent.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let answer = self.command(format!("get {key}\r\n").as_bytes())?;
        let head_end = answer.windows(2).position(|w| w == b"\r\n")?;
        let head = String::from_utf8_lossy(&answer[..head_end]).to_string();
        let len: usize = head
            .strip_prefix("VALUE ")?
            .split(' ')
            .nth(2)?
            .parse()
            .ok()?;
        answer
            .get(head_end + 2..head_end + 2 + len)
            .map(<[u8]>::to_vec)
    }

    /// Stores `value` under `key` (a raw `set`, expiring in an hour).
    pub fn set(&self, key: &str, value: &[u8]) {
        let mut cmd = format!("set {key} 0 3600 {}\r\n", value.len()).into_bytes();
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        let answer = self.command(&cmd).expect("memcached answers");
        assert_eq!(answer, b"STORED\r\n");
    }

    /// Kills the server (SIGKILL by its PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: memcached keeps nothing).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + UP_WITHIN;
        while !self.launch() {
            assert!(
                Instant::now() < deadline,
                "memcached did not start again on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for MemcachedServer {
    fn drop(&mut self) {
        self.kill();
    }
}
