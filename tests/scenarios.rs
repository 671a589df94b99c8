//! Cluster scenarios as data: nodes run in this test process over an in-memory network
//! (`transport::mem`), each scenario is a list of steps (start, cut, write, heal, expect),
//! and tokio's time is paused, so the heartbeats, ack timeouts and failure detection of
//! many virtual seconds take a few milliseconds and every run is the same. Requests go
//! through each node's real HTTP service (cookies, routes, sync replication), without a
//! socket.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use deltacast::config::Config;
use deltacast::node::{self, RunningNode, Sockets};
use deltacast::shutdown::Shutdown;
use deltacast::transport::mem::Network;
use deltacast::wire::seal::ClusterKey;
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// One step of a scenario.
#[derive(Debug)]
enum Step {
    /// Starts these nodes (`nK` at 10.0.0.K), each joining the cluster, with the
    /// scenario's cluster key if it has one.
    Start(&'static [&'static str]),
    /// Starts these nodes without a cluster key, whatever the scenario's.
    StartWithoutKey(&'static [&'static str]),
    /// Waits until every running node serves and lists every other one alive.
    Converged,
    /// Cuts these nodes off from all the others, both ways.
    Cut(&'static [&'static str]),
    /// Heals every cut.
    Heal,
    /// Sets attribute `name` of the session of browser `session` to `value` on `node`
    /// (the first write makes the session); the answer must be 204.
    Write {
        node: &'static str,
        session: &'static str,
        name: &'static str,
        value: &'static str,
    },
    /// Waits until each of `nodes` reads `value` (None: no such attribute or session) for
    /// attribute `name` of the session of browser `session`.
    Expect {
        nodes: &'static [&'static str],
        session: &'static str,
        name: &'static str,
        value: Option<&'static str>,
    },
    /// Waits until `node` lists exactly `members`, in any state.
    Members {
        node: &'static str,
        members: &'static [&'static str],
    },
    /// Stops `node` gracefully (it announces its leave).
    Stop(&'static str),
}

use Step::*;

/// The nodes every `Expect` of "all" means.
const ALL: &[&str] = &["n1", "n2", "n3", "n4", "n5"];

/// How long (virtual time) a waiting step may take.
const WITHIN: Duration = Duration::from_secs(30);
/// How often a waiting step looks again.
const POLL: Duration = Duration::from_millis(10);

struct Simulator {
    net: Network,
    /// The file of the cluster key the nodes are started with, if any.
    key_file: Option<PathBuf>,
    nodes: HashMap<&'static str, RunningNode>,
    /// The session cookie (`name=value`) of each browser.
    cookies: HashMap<&'static str, String>,
}

impl Simulator {
    fn new() -> Simulator {
        Simulator {
            net: Network::new(11),
            key_file: None,
            nodes: HashMap::new(),
            cookies: HashMap::new(),
        }
    }

    /// A simulator whose nodes share a fresh cluster key, in a file of its own.
    fn sealed(test: &str) -> Simulator {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("scenario-{test}-{}.key", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .expect("a key file");
        writeln!(file, "{}", ClusterKey::generate_text()).expect("the key written");
        Simulator {
            key_file: Some(path),
            ..Simulator::new()
        }
    }

    async fn run(&mut self, steps: &[Step]) {
        for (i, step) in steps.iter().enumerate() {
            let started = tokio::time::Instant::now();
            self.step(step).await;
            let took = started.elapsed();
            assert!(took <= WITHIN, "step {i} {step:?} took {took:?}");
        }
        for (_, node) in self.nodes.drain() {
            node.shutdown().await;
        }
        if let Some(path) = &self.key_file {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn step(&mut self, step: &Step) {
        match step {
            Start(names) => {
                for name in *names {
                    let node = self.start(name, self.key_file.clone()).await;
                    self.nodes.insert(name, node);
                }
            }
            StartWithoutKey(names) => {
                for name in *names {
                    let node = self.start(name, None).await;
                    self.nodes.insert(name, node);
                }
            }
            Converged => self.wait(step, |sim| sim.converged()).await,
            Cut(names) => {
                let side: Vec<IpAddr> = names.iter().map(|n| ip(n)).collect();
                let rest: Vec<IpAddr> = ALL
                    .iter()
                    .filter(|n| !names.contains(n))
                    .map(|n| ip(n))
                    .collect();
                self.net.partition(&side, &rest);
            }
            Heal => self.net.heal(),
            Write {
                node,
                session,
                name,
                value,
            } => {
                let cookie = self.cookies.get(session).cloned();
                let (status, set_cookie, _) = self
                    .request(node, "PUT", name, cookie.as_deref(), value)
                    .await;
                assert_eq!(status, StatusCode::NO_CONTENT, "{step:?}");
                if let Some(set) = set_cookie {
                    self.cookies.insert(session, set);
                }
            }
            Expect {
                nodes,
                session,
                name,
                value,
            } => {
                let cookie = self.cookies.get(session).cloned();
                for node in *nodes {
                    let want = value.map(|v| v.as_bytes().to_vec());
                    let cookie = cookie.clone();
                    self.wait(step, |sim| {
                        let cookie = cookie.clone();
                        let want = want.clone();
                        async move {
                            let (status, _, body) =
                                sim.request(node, "GET", name, cookie.as_deref(), "").await;
                            let got = (status == StatusCode::OK).then_some(body);
                            got == want
                        }
                    })
                    .await;
                }
            }
            Members { node, members } => {
                let mut want: Vec<String> = members.iter().map(|m| m.to_string()).collect();
                want.sort();
                self.wait(step, |sim| {
                    let want = want.clone();
                    async move { sim.members(node, "") == want }
                })
                .await;
            }
            Stop(name) => {
                let node = self.nodes.remove(name).expect("a running node");
                node.shutdown().await;
            }
        }
    }

    async fn start(&self, name: &str, key_file: Option<PathBuf>) -> RunningNode {
        let host = self.net.host(ip(name));
        let mut config = Config::for_test();
        config.cluster.name = "scenario".into();
        config.cluster.key_file = key_file;
        config.node.name = name.into();
        let group = SocketAddr::from((Ipv4Addr::new(239, 255, 0, 1), 45_564));
        let sockets = Sockets {
            http: TcpListener::bind("127.0.0.1:0")
                .await
                .expect("an http port"),
            replication: host.listen(4001).expect("the replication port").into(),
            heartbeats: host.multicast(group).expect("the group"),
            streams: host.streams(),
        };
        node::start_with(config, sockets, Shutdown::new())
            .await
            .expect("the node starts")
    }

    /// Polls `holds` until it is true, at most `WITHIN`.
    async fn wait<'a, F, Fut>(&'a self, step: &Step, holds: F)
    where
        F: Fn(&'a Simulator) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + WITHIN;
        while !holds(self).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{step:?} did not come true within {WITHIN:?}; members: {:?}",
                self.all_members()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn converged(&self) -> bool {
        for (name, node) in &self.nodes {
            let mut want: Vec<String> = self
                .nodes
                .keys()
                .filter(|n| *n != name)
                .map(|n| n.to_string())
                .collect();
            want.sort();
            if !node.ready(Duration::ZERO).await || self.members(name, "alive") != want {
                return false;
            }
        }
        true
    }

    /// The names of the members `node` lists in `state` ("" for any), sorted.
    fn members(&self, node: &str, state: &str) -> Vec<String> {
        let view = self.nodes[node].shared().view.borrow().clone();
        let mut names: Vec<String> = view
            .members
            .iter()
            .filter(|m| state.is_empty() || m.state.as_str() == state)
            .map(|m| m.info.name.clone())
            .collect();
        names.sort();
        names
    }

    fn all_members(&self) -> Vec<(String, Vec<String>)> {
        let mut all: Vec<(String, Vec<String>)> = self
            .nodes
            .keys()
            .map(|n| (n.to_string(), self.members(n, "alive")))
            .collect();
        all.sort();
        all
    }

    /// One request to `node`'s HTTP service for attribute `name`: the status, the
    /// `name=value` of a `Set-Cookie`, and the body.
    async fn request(
        &self,
        node: &str,
        method: &str,
        name: &str,
        cookie: Option<&str>,
        body: &str,
    ) -> (StatusCode, Option<String>, Vec<u8>) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/session/attributes/{name}"))
            .header(header::HOST, node);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        let request = request
            .body(Body::from(body.to_string()))
            .expect("a request");
        let response = self.nodes[node]
            .http_service()
            .oneshot(request)
            .await
            .expect("an answer");
        let status = response.status();
        let set_cookie = response
            .headers()
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_string);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes()
            .to_vec();
        (status, set_cookie, body)
    }
}

/// The address of node `nK`: 10.0.0.K.
fn ip(name: &str) -> IpAddr {
    let k: u8 = name
        .strip_prefix('n')
        .and_then(|k| k.parse().ok())
        .expect("a node named nK");
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, k))
}

#[tokio::test(start_paused = true)]
async fn both_sides_of_a_partition_keep_their_writes_and_every_node_holds_the_union_after_the_heal()
{
    Simulator::new()
        .run(&[
            Start(ALL),
            Converged,
            Write {
                node: "n1",
                session: "shared",
                name: "x",
                value: "before",
            },
            Expect {
                nodes: ALL,
                session: "shared",
                name: "x",
                value: Some("before"),
            },
            Cut(&["n4", "n5"]),
            // Before the cut is noticed: the write waits out its acks from n4 and n5.
            Write {
                node: "n3",
                session: "early",
                name: "when",
                value: "right after the cut",
            },
            Members {
                node: "n1",
                members: &["n2", "n3"],
            },
            Members {
                node: "n4",
                members: &["n5"],
            },
            // Each side writes a session of its own, and an attribute of the shared one.
            Write {
                node: "n1",
                session: "majority",
                name: "side",
                value: "n1 n2 n3",
            },
            Write {
                node: "n4",
                session: "minority",
                name: "side",
                value: "n4 n5",
            },
            Write {
                node: "n2",
                session: "shared",
                name: "y",
                value: "from the majority",
            },
            Write {
                node: "n5",
                session: "shared",
                name: "z",
                value: "from the minority",
            },
            Expect {
                nodes: &["n1", "n2", "n3"],
                session: "majority",
                name: "side",
                value: Some("n1 n2 n3"),
            },
            Expect {
                nodes: &["n4", "n5"],
                session: "minority",
                name: "side",
                value: Some("n4 n5"),
            },
            // Nothing crossed the cut.
            Expect {
                nodes: &["n4", "n5"],
                session: "majority",
                name: "side",
                value: None,
            },
            Expect {
                nodes: &["n1", "n2", "n3"],
                session: "shared",
                name: "z",
                value: None,
            },
            Heal,
            Converged,
            Expect {
                nodes: ALL,
                session: "majority",
                name: "side",
                value: Some("n1 n2 n3"),
            },
            Expect {
                nodes: ALL,
                session: "minority",
                name: "side",
                value: Some("n4 n5"),
            },
            Expect {
                nodes: ALL,
                session: "shared",
                name: "y",
                value: Some("from the majority"),
            },
            Expect {
                nodes: ALL,
                session: "shared",
                name: "z",
                value: Some("from the minority"),
            },
            Expect {
                nodes: ALL,
                session: "shared",
                name: "x",
                value: Some("before"),
            },
            Expect {
                nodes: ALL,
                session: "early",
                name: "when",
                value: Some("right after the cut"),
            },
        ])
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_node_that_leaves_is_dropped_at_once_and_a_newcomer_takes_every_session() {
    Simulator::new()
        .run(&[
            Start(&["n1", "n2", "n3"]),
            Converged,
            Write {
                node: "n3",
                session: "cart",
                name: "items",
                value: "3 apples",
            },
            Stop("n3"),
            Members {
                node: "n1",
                members: &["n2"],
            },
            Expect {
                nodes: &["n1", "n2"],
                session: "cart",
                name: "items",
                value: Some("3 apples"),
            },
            Start(&["n4"]),
            Converged,
            Expect {
                nodes: &["n4"],
                session: "cart",
                name: "items",
                value: Some("3 apples"),
            },
        ])
        .await;
}

#[tokio::test(start_paused = true)]
async fn sealed_nodes_admit_each_other_replicate_and_never_list_a_node_without_the_key() {
    Simulator::sealed("sealed")
        .run(&[
            Start(&["n1", "n2", "n3"]),
            StartWithoutKey(&["n4"]),
            Members {
                node: "n1",
                members: &["n2", "n3"],
            },
            Members {
                node: "n3",
                members: &["n1", "n2"],
            },
            Write {
                node: "n2",
                session: "s",
                name: "secret",
                value: "sealed on the way",
            },
            Expect {
                nodes: &["n1", "n3"],
                session: "s",
                name: "secret",
                value: Some("sealed on the way"),
            },
            Members {
                node: "n4",
                members: &[],
            },
            Expect {
                nodes: &["n4"],
                session: "s",
                name: "secret",
                value: None,
            },
        ])
        .await;
}
