//! Where unicast heartbeats go: the names of `membership.static_members` (the first
//! address each resolves to: one name, one member) and of `membership.dns` (every address:
//! a Kubernetes headless service names one address per pod), resolved at start and again
//! every few seconds, so peers that start later or move are found without a restart.
//!
//! The decisions are [`Discovery`]'s, pure and fed with answers; the driver
//! ([`keep_discovering`]) only asks a [`Resolve`] and publishes the list. A name that
//! fails to resolve keeps its last answer (a DNS hiccup must not silence the heartbeats);
//! an address that leaves a name's answer is no longer sent to, and the member behind it
//! is dropped by the usual failure detection, not here.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How a configured name becomes peers.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// `membership.static_members`: the first IPv4 address of the answer (else the first).
    Static,
    /// `membership.dns`: every address of the answer (every IPv4 one, when there are).
    Dns,
}

impl Lookup {
    /// The config key's word, for logs: `static` or `dns`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Static => "static",
            Lookup::Dns => "dns",
        }
    }
}

/// What changed for one name in one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `addr` is in the name's answer and was not before.
    Found {
        /// The configured `name:port`.
        name: String,
        /// How it is resolved.
        lookup: Lookup,
        /// The new peer.
        addr: SocketAddr,
    },
    /// `addr` left the name's answer.
    Lost {
        /// The configured `name:port`.
        name: String,
        /// How it is resolved.
        lookup: Lookup,
        /// The peer no longer sent to.
        addr: SocketAddr,
    },
    /// The name did not resolve this round (and did the round before, or never did); its
    /// last answer is kept.
    Failed {
        /// The configured `name:port`.
        name: String,
        /// How it is resolved.
        lookup: Lookup,
        /// Why.
        reason: String,
    },
}

struct Name {
    text: String,
    lookup: Lookup,
    /// The last answer that resolved, as peers (sorted, no duplicates).
    peers: BTreeSet<SocketAddr>,
    /// Whether the last round failed (so a failure is reported once, not every round).
    failing: bool,
}

/// The configured names and what each last resolved to.
pub struct Discovery {
    names: Vec<Name>,
}

impl Discovery {
    /// The names of `static_members` and of `dns`, in that order.
    pub fn new(static_members: &[String], dns: &[String]) -> Discovery {
        let name = |lookup| {
            move |text: &String| Name {
                text: text.clone(),
                lookup,
                peers: BTreeSet::new(),
                failing: false,
            }
        };
        Discovery {
            names: static_members
                .iter()
                .map(name(Lookup::Static))
                .chain(dns.iter().map(name(Lookup::Dns)))
                .collect(),
        }
    }

    /// Whether there is no name to resolve (heartbeats then go to the multicast group).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The configured names, in order: the answers of a round come in this order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| n.text.as_str())
    }

    /// Takes one round of answers (one per name, in the order of [`Discovery::names`]):
    /// the addresses it resolved to, or why it did not.
    pub fn on_answers(&mut self, answers: Vec<Result<Vec<SocketAddr>, String>>) -> Vec<Change> {
        let mut changes = Vec::new();
        for (name, answer) in self.names.iter_mut().zip(answers) {
            let found = match answer {
                Ok(addrs) if !addrs.is_empty() => addrs,
                Ok(_) => {
                    name.fail("no address".to_string(), &mut changes);
                    continue;
                }
                Err(reason) => {
                    name.fail(reason, &mut changes);
                    continue;
                }
            };
            name.failing = false;
            let peers: BTreeSet<SocketAddr> = match name.lookup {
                Lookup::Static => found
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or(found.first())
                    .copied()
                    .into_iter()
                    .collect(),
                // The heartbeat socket is IPv4: of a dual-stack answer, the IPv4 addresses.
                Lookup::Dns if found.iter().any(SocketAddr::is_ipv4) => {
                    found.into_iter().filter(SocketAddr::is_ipv4).collect()
                }
                Lookup::Dns => found.into_iter().collect(),
            };
            for addr in peers.difference(&name.peers) {
                changes.push(Change::Found {
                    name: name.text.clone(),
                    lookup: name.lookup,
                    addr: *addr,
                });
            }
            for addr in name.peers.difference(&peers) {
                changes.push(Change::Lost {
                    name: name.text.clone(),
                    lookup: name.lookup,
                    addr: *addr,
                });
            }
            name.peers = peers;
        }
        changes
    }

    /// Every peer of every name, each once, in the order of the names.
    pub fn peers(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for addr in self.names.iter().flat_map(|n| n.peers.iter()) {
            if !out.contains(addr) {
                out.push(*addr);
            }
        }
        out
    }
}

impl Name {
    fn fail(&mut self, reason: String, changes: &mut Vec<Change>) {
        if !self.failing {
            changes.push(Change::Failed {
                name: self.text.clone(),
                lookup: self.lookup,
                reason,
            });
        }
        self.failing = true;
    }
}

/// Resolves `host:port` names; the operating system's resolver ([`SystemResolver`]), or
/// a test's.
pub trait Resolve: Send + Sync + 'static {
    /// Every address `name` resolves to.
    fn lookup(&self, name: &str) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;
}

/// The operating system's resolver (`getaddrinfo`: `/etc/hosts`, DNS), through
/// `tokio::net::lookup_host`.
#[derive(Copy, Clone, Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    async fn lookup(&self, name: &str) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host(name).await?.collect())
    }
}

/// One round: asks `resolver` for every name (each within `timeout`), feeds the answers
/// to `discovery` and logs each change on one line.
pub async fn resolve_round<R: Resolve>(
    discovery: &mut Discovery,
    resolver: &R,
    timeout: Duration,
) -> Vec<Change> {
    let names: Vec<String> = discovery.names().map(str::to_string).collect();
    let mut answers = Vec::with_capacity(names.len());
    for name in &names {
        answers.push(
            match tokio::time::timeout(timeout, resolver.lookup(name)).await {
                Ok(Ok(addrs)) => Ok(addrs),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            },
        );
    }
    let changes = discovery.on_answers(answers);
    for change in &changes {
        match change {
            Change::Found { name, lookup, addr } => {
                info!(source = lookup.as_str(), %name, peer = %addr, "peer found by name")
            }
            Change::Lost { name, lookup, addr } => {
                info!(source = lookup.as_str(), %name, peer = %addr, "peer left the name's answer; no longer sent heartbeats")
            }
            Change::Failed {
                name,
                lookup,
                reason,
            } => {
                warn!(source = lookup.as_str(), %name, %reason, "name does not resolve; keeping its last answer and retrying")
            }
        }
    }
    changes
}

/// Resolves again every `every` until `stop`, publishing the peers when they change.
pub async fn keep_discovering<R: Resolve>(
    mut discovery: Discovery,
    resolver: R,
    every: Duration,
    peers: watch::Sender<Vec<SocketAddr>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = resolve_round(&mut discovery, &resolver, every.min(Duration::from_secs(5))) => {}
        }
        let now = discovery.peers();
        peers.send_if_modified(|current| {
            let changed = *current != now;
            if changed {
                *current = now;
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Answers from a table a test changes as it goes; a name absent fails.
    #[derive(Clone, Default)]
    struct FakeResolver(Arc<Mutex<HashMap<String, Vec<SocketAddr>>>>);

    impl FakeResolver {
        fn set(&self, name: &str, addrs: &[&str]) {
            self.0
                .lock()
                .insert(name.into(), addrs.iter().map(|a| addr(a)).collect());
        }
        fn unset(&self, name: &str) {
            self.0.lock().remove(name);
        }
    }

    impl Resolve for FakeResolver {
        async fn lookup(&self, name: &str) -> io::Result<Vec<SocketAddr>> {
            self.0
                .lock()
                .get(name)
                .cloned()
                .ok_or_else(|| io::Error::other("no such name"))
        }
    }

    #[test]
    fn a_dns_name_yields_every_address_and_a_static_name_its_first_ipv4() {
        let mut d = Discovery::new(&names(&["one:4001"]), &names(&["pods:4001"]));
        let changes = d.on_answers(vec![
            Ok(vec![
                addr("[::1]:4001"),
                addr("10.0.0.9:4001"),
                addr("10.0.0.8:4001"),
            ]),
            Ok(vec![
                addr("10.0.1.3:4001"),
                addr("10.0.1.1:4001"),
                addr("10.0.1.2:4001"),
            ]),
        ]);
        assert_eq!(
            d.peers(),
            [
                addr("10.0.0.9:4001"),
                addr("10.0.1.1:4001"),
                addr("10.0.1.2:4001"),
                addr("10.0.1.3:4001")
            ]
        );
        let found: Vec<(&str, SocketAddr)> = changes
            .iter()
            .map(|c| match c {
                Change::Found { name, addr, .. } => (name.as_str(), *addr),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(found.len(), 4);
        assert_eq!(found[0], ("one:4001", addr("10.0.0.9:4001")));
    }

    #[test]
    fn a_pod_that_leaves_the_answer_is_lost_and_one_that_joins_is_found() {
        let mut d = Discovery::new(&[], &names(&["pods:4001"]));
        d.on_answers(vec![Ok(vec![addr("10.0.1.1:4001"), addr("10.0.1.2:4001")])]);
        let changes = d.on_answers(vec![Ok(vec![addr("10.0.1.2:4001"), addr("10.0.1.3:4001")])]);
        assert_eq!(
            changes,
            [
                Change::Found {
                    name: "pods:4001".into(),
                    lookup: Lookup::Dns,
                    addr: addr("10.0.1.3:4001")
                },
                Change::Lost {
                    name: "pods:4001".into(),
                    lookup: Lookup::Dns,
                    addr: addr("10.0.1.1:4001")
                },
            ]
        );
        assert_eq!(d.peers(), [addr("10.0.1.2:4001"), addr("10.0.1.3:4001")]);
        assert!(
            d.on_answers(vec![Ok(vec![addr("10.0.1.3:4001"), addr("10.0.1.2:4001")])])
                .is_empty(),
            "the same answer in another order changes nothing"
        );
    }

    #[test]
    fn a_failing_name_keeps_its_last_answer_and_is_reported_once() {
        let mut d = Discovery::new(&[], &names(&["pods:4001"]));
        d.on_answers(vec![Ok(vec![addr("10.0.1.1:4001")])]);
        let first = d.on_answers(vec![Err("timeout".into())]);
        assert!(matches!(&first[..], [Change::Failed { reason, .. }] if reason == "timeout"));
        assert!(
            d.on_answers(vec![Ok(vec![])]).is_empty(),
            "still failing: not reported again"
        );
        assert_eq!(d.peers(), [addr("10.0.1.1:4001")]);
        // Back: reported as it changes, and a later failure is reported again.
        assert!(
            d.on_answers(vec![Ok(vec![addr("10.0.1.1:4001")])])
                .is_empty()
        );
        assert_eq!(d.on_answers(vec![Err("x".into())]).len(), 1);
    }

    #[test]
    fn of_a_dual_stack_answer_the_ipv4_addresses_are_peers() {
        let mut d = Discovery::new(&[], &names(&["pods:4001", "v6:4001"]));
        d.on_answers(vec![
            Ok(vec![
                addr("[fd00::1]:4001"),
                addr("10.0.1.1:4001"),
                addr("[fd00::2]:4001"),
                addr("10.0.1.2:4001"),
            ]),
            Ok(vec![addr("[fd00::9]:4001")]),
        ]);
        assert_eq!(
            d.peers(),
            [
                addr("10.0.1.1:4001"),
                addr("10.0.1.2:4001"),
                addr("[fd00::9]:4001")
            ]
        );
    }

    #[test]
    fn an_address_named_twice_is_one_peer() {
        let mut d = Discovery::new(&names(&["10.0.1.1:4001"]), &names(&["pods:4001"]));
        d.on_answers(vec![
            Ok(vec![addr("10.0.1.1:4001")]),
            Ok(vec![addr("10.0.1.1:4001"), addr("10.0.1.2:4001")]),
        ]);
        assert_eq!(d.peers(), [addr("10.0.1.1:4001"), addr("10.0.1.2:4001")]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_driver_resolves_again_every_interval_and_publishes_changes_only() {
        let resolver = FakeResolver::default();
        resolver.set("pods:4001", &["10.0.1.1:4001"]);
        let mut d = Discovery::new(&[], &names(&["pods:4001"]));
        resolve_round(&mut d, &resolver, Duration::from_secs(1)).await;
        let (tx, mut rx) = watch::channel(d.peers());
        rx.mark_unchanged();
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep_discovering(
            d,
            resolver.clone(),
            Duration::from_secs(5),
            tx,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            !rx.has_changed().unwrap(),
            "the same answer is not published again"
        );
        resolver.set("pods:4001", &["10.0.1.1:4001", "10.0.1.2:4001"]);
        let started = tokio::time::Instant::now();
        rx.changed().await.unwrap();
        assert!(started.elapsed() <= Duration::from_secs(5));
        assert_eq!(*rx.borrow(), [addr("10.0.1.1:4001"), addr("10.0.1.2:4001")]);
        resolver.unset("pods:4001");
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(
            !rx.has_changed().unwrap(),
            "a failure keeps the last answer"
        );
        resolver.set("pods:4001", &["10.0.1.2:4001"]);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), [addr("10.0.1.2:4001")]);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_system_resolver_finds_localhost_and_reports_a_bad_name() {
        let mut d = Discovery::new(
            &names(&["127.0.0.1:4001", "no-such-host.invalid:4003"]),
            &names(&["localhost:4002"]),
        );
        let changes = resolve_round(&mut d, &SystemResolver, Duration::from_secs(5)).await;
        assert!(changes.iter().any(
            |c| matches!(c, Change::Failed { name, .. } if name == "no-such-host.invalid:4003")
        ));
        let peers = d.peers();
        assert_eq!(peers[0], addr("127.0.0.1:4001"));
        assert!(
            peers[1..]
                .iter()
                .all(|p| p.port() == 4002 && p.ip().is_loopback())
        );
        assert!(peers.len() >= 2);
    }
}
