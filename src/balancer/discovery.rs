//! Members discovered from the heartbeats: the balancer joins the multicast group as an
//! observer (it never sends a heartbeat) and keeps the registry's discovered members equal
//! to the members the heartbeats show.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::balancer::choice::registry::Registry;
use crate::config::Config;
use crate::heartbeat::{self, HeartbeatConfig, Peers};
use crate::membership::{MemberInfo, MembershipView, NodeId};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::transport::UdpDatagrams;
use crate::wire::key_file::KeyFileError;
use crate::wire::seal::ClusterKey;

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The cluster key could not be read.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("cannot bind the multicast address {group} on interface {interface}: {source}")]
    Multicast {
        group: std::net::SocketAddrV4,
        interface: std::net::Ipv4Addr,
        source: std::io::Error,
    },
}

/// Joins the multicast group as an observer and keeps the registry's discovered members
/// equal to the members the heartbeats show (route = name, url = `http://<http addr>`).
pub fn start(
    config: &Config,
    registry: Arc<Registry>,
    shutdown: &Shutdown,
    stop: CancellationToken,
) -> Result<(), DiscoveryError> {
    let m = &config.membership;
    let key = ClusterKey::read_file_if_set(config.cluster.key_file.as_deref())?;
    if key.is_none() && !m.interface.is_loopback() {
        warn!(
            interface = %m.interface,
            "discovering members from unauthenticated heartbeats: anyone on the network can announce a member and receive traffic; set cluster.key_file (see `deltacast keygen`)"
        );
    }
    let datagrams = UdpDatagrams::multicast(m.multicast, m.interface, m.ttl).map_err(|source| {
        DiscoveryError::Multicast {
            group: m.multicast,
            interface: m.interface,
            source,
        }
    })?;
    let nowhere = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let me = MemberInfo {
        id: NodeId::random(),
        name: String::new(),
        http: nowhere,
        replication: nowhere,
        incarnation: 0,
    };
    let mut hb = HeartbeatConfig::new(
        config.cluster.name.clone(),
        me,
        config.heartbeat(),
        config.drop_after(),
    );
    hb.observer = true;
    hb.key = key;
    let (view_tx, mut view_rx) = watch::channel(MembershipView::empty());
    let (suspicions_tx, suspicions_rx) = mpsc::channel(1);
    shutdown.spawn(heartbeat::run(
        hb,
        datagrams,
        Peers::Group,
        Arc::new(Metrics::default()),
        view_tx,
        suspicions_rx,
        stop.clone(),
    ));
    shutdown.spawn(async move {
        // Nobody suspects members here; the sender lives as long as the task.
        let _suspicions = suspicions_tx;
        let mut last: Vec<(String, String)> = Vec::new();
        loop {
            let found = discovered(&view_rx.borrow_and_update());
            if found != last {
                info!(members = ?found, "discovered members");
                registry.set_discovered(&found);
                last = found;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = view_rx.changed() => if changed.is_err() { break },
            }
        }
    });
    Ok(())
}

/// The (route, url) of each member of a view that serves, sorted by route: a member still
/// taking its state transfer (`joining`) gets no request before it says it is done.
pub fn discovered(view: &MembershipView) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = view
        .members
        .iter()
        .filter(|m| !m.joining)
        .map(|m| (m.info.name.clone(), format!("http://{}", m.info.http)))
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::membership::{MemberState, MemberView};

    fn member(id: u64, name: &str, joining: bool) -> MemberView {
        MemberView {
            info: MemberInfo {
                id: NodeId::from_u64(id),
                name: name.into(),
                http: SocketAddr::from(([10, 0, 0, id as u8], 8081)),
                replication: SocketAddr::from(([10, 0, 0, id as u8], 4001)),
                incarnation: 1,
            },
            state: MemberState::Alive,
            last_heard: Duration::ZERO,
            joining,
        }
    }

    #[test]
    fn a_member_still_taking_its_state_transfer_gets_no_traffic_until_it_serves() {
        let t0 = Instant::now();
        let joining = MembershipView::new(t0, vec![member(2, "n2", false), member(1, "n1", true)]);
        assert_eq!(
            discovered(&joining),
            vec![("n2".to_string(), "http://10.0.0.2:8081".to_string())]
        );
        let serving = MembershipView::new(t0, vec![member(2, "n2", false), member(1, "n1", false)]);
        assert_eq!(
            discovered(&serving),
            vec![
                ("n1".to_string(), "http://10.0.0.1:8081".to_string()),
                ("n2".to_string(), "http://10.0.0.2:8081".to_string()),
            ]
        );
    }
}
