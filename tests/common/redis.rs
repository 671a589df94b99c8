//! Real Redis for tests: each test starts its own `redis-server` (Debian's `redis-server`
//! package; `redis-tools` for `redis-cli`) on a free loopback port, in a directory of its
//! own, with nothing saved (`--save '' --appendonly no`), and stops it by its PID when
//! dropped. A cluster is three such servers with `--cluster-enabled yes`, joined by
//! `redis-cli --cluster create` and awaited until every one reports `cluster_state:ok`.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::free_port;

/// How long a server gets to answer PING after it was started.
const UP_WITHIN: Duration = Duration::from_secs(20);

/// Whether `redis-server` and `redis-cli` can be run; when not, prints why the test skips.
pub fn available(test: &str) -> bool {
    let runs = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let ok = runs("redis-server") && runs("redis-cli");
    if !ok {
        eprintln!(
            "skipping {test}: redis-server and redis-cli are not installed (Debian packages redis-server and redis-tools; .ci/run installs them)"
        );
    }
    ok
}

/// A directory of its own under the target's temporary directory.
/// One field of `command`'s line in the text of `INFO commandstats`
/// (`cmdstat_hset:calls=3,usec=9,usec_per_call=3.00,...`): `calls`, `usec_per_call`...
pub fn command_stat<'a>(stats: &'a str, command: &str, field: &str) -> Option<&'a str> {
    let line = format!("cmdstat_{command}:");
    let field = format!("{field}=");
    stats
        .lines()
        .find_map(|l| l.trim().strip_prefix(line.as_str()))
        .and_then(|fields| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(field.as_str()))
        })
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("redis")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

/// A `redis-server` child, killed (SIGKILL, by its PID) when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    cluster: bool,
}

impl RedisServer {
    /// A standalone server on a free port.
    pub fn start(name: &str) -> RedisServer {
        RedisServer::start_in(temp_dir(name), false)
    }

    fn start_in(dir: PathBuf, cluster: bool) -> RedisServer {
        for _ in 0..10 {
            let port = free_port();
            // The cluster bus listens on port + 10000.
            if cluster
                && (port > 55_535
                    || TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_err())
            {
                continue;
            }
            let mut server = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
                cluster,
            };
            if server.launch() {
                return server;
            }
        }
        panic!(
            "redis-server did not start on any of 10 free ports (see {})",
            dir.display()
        );
    }

    /// Starts the process on `self.port`; true once it answers PING.
    fn launch(&mut self) -> bool {
        let log = self.dir.join(format!("redis-{}.log", self.port));
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log);
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes"])
                .args([
                    "--cluster-config-file",
                    &format!("nodes-{}.conf", self.port),
                ])
                .args(["--cluster-node-timeout", "5000"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + UP_WITHIN;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            if self.cli(&["PING"]).as_deref() == Some("PONG") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.kill();
        false
    }

    /// The `sessions.store` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli -p PORT ARGS...` (with `-c` on a cluster node: redirects followed), its
    /// output trimmed; None when it fails.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.port, self.cluster, args)
    }

    /// The server's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL by its PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (a cluster node finds its
    /// cluster again in its nodes file); panics when it does not come up.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + UP_WITHIN;
        // The port may linger a moment after the kill.
        while !self.launch() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start again on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cli(port: u16, cluster: bool, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if cluster {
        cmd.arg("-c");
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Three cluster-enabled servers joined into one cluster (three masters, every slot).
pub struct RedisCluster {
    pub servers: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(name: &str) -> RedisCluster {
        let dir = temp_dir(name);
        let servers: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_in(dir.clone(), true))
            .collect();
        let addrs: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { servers };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every server reports `cluster_state:ok` and knows three masters.
    pub fn wait_ok(&self) {
        super::wait_until(Duration::from_secs(60), "the Redis Cluster is ok", || {
            self.servers
                .iter()
                .all(|s| {
                    let info = cli(s.port, false, &["CLUSTER", "INFO"]).unwrap_or_default();
                    info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
                })
                .then_some(())
        });
    }

    /// The `sessions.store` URL: every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// `redis-cli` on the server at `port`, without following redirects (for the admin
    /// commands of one node).
    pub fn cli_at(&self, port: u16, args: &[&str]) -> Option<String> {
        cli(port, false, args)
    }

    /// `redis-cli -c` on the first node (redirects followed).
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.servers[0].port, true, args)
    }

    /// Kills every server.
    pub fn kill(&mut self) {
        for s in &mut self.servers {
            s.kill();
        }
    }

    /// Starts every server again (each finds the cluster in its nodes file) and waits until
    /// the cluster is ok.
    pub fn restart(&mut self) {
        for s in &mut self.servers {
            s.restart();
        }
        self.wait_ok();
    }
}
