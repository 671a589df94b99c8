//! memcached as the session store (`sessions.store = "memcached://HOST:PORT[,HOST:PORT...]"`).
//!
//! One item per session under `deltacast:<cluster>:<ID>` (the id without its route), the
//! whole session as its value ([`value`]: a versioned binary form; a value that does not
//! decode is no session). The item's expiry is the session's `max_inactive_s`, renewed by
//! every write (memcached reads an expiry beyond 30 days as a date: [`proto::exptime`]).
//!
//! - **A request** reads the item with `gets` (value and CAS unique), runs its closure on
//!   it and writes it back with `cas`, which stores only when nobody wrote the item since
//!   the read. When somebody did (`EXISTS`), the closure runs again on the fresh value, up
//!   to [`CAS_TRIES`] times: what this request changes is applied to what the others
//!   wrote, so concurrent requests that change different attributes both keep theirs (and
//!   two that change the same one are serialized, as a counter needs). A request that only
//!   reads writes back the access time (and so the expiry) at most once a second
//!   ([`TOUCH_EVERY_MS`]); losing that write to a concurrent one changes nothing.
//! - **A new session** is `add` (stored only when the key is absent).
//! - **Invalidate** is `delete`.
//! - **Change-id** copies the session to a new key with `add`, then replaces the old item
//!   with a "dead" marker by `cas` against the unique it was read with. The old id dies in
//!   that one step: a request with the old id that wrote meanwhile makes the `cas` fail, and
//!   the copy is made again from the fresh value (so no write accepted under the old id is
//!   lost); a request with the old id after it finds the marker, which is no session. Until
//!   the `cas`, the old id is live and the new key unknown to any client, so a failure in
//!   between loses nothing (the orphan copy is deleted or expires). The marker expires in
//!   [`DEAD_TTL_S`].
//! - **Servers**: a key lives on one server chosen by rendezvous hashing ([`pool::pick`]).
//!
//! A server down, slower than `sessions.store_timeout_ms` for one exchange, or answering
//! what the protocol never sends is [`Unavailable`]: counted, logged once per interval,
//! `503` for the request; the next request connects again.

pub mod pool;
pub mod proto;
pub mod value;

use std::time::Duration;

use super::{BackendError, Outcome, ServerHealth, SessionBackend, Unavailable, within};
use crate::config::SessionStoreUrl;
use crate::session::{Detached, Limits, SessionId, SessionMut};

use self::pool::Server;
use self::proto::{Item, Status};
use self::value::Stored;

/// How many times a request's change is tried against concurrent writers of its session.
pub const CAS_TRIES: usize = 32;
/// A request that only reads writes the access time back at most this often.
pub const TOUCH_EVERY_MS: u64 = 1000;
/// How long the dead marker of a changed id lives.
pub const DEAD_TTL_S: u64 = 60;
/// Fresh ids tried when the key of one exists already (never, in practice: 128 random bits).
const CREATE_TRIES: usize = 4;

/// The memcached session store: see the module doc.
#[derive(Debug)]
pub struct MemcachedBackend {
    servers: Vec<Server>,
    /// The URL, for the logs.
    label: String,
    /// `deltacast:<cluster>:`.
    prefix: String,
    limits: Limits,
    default_max_inactive_s: u32,
    timeout: Duration,
    health: ServerHealth,
}

/// A memcached URL or cluster name the store cannot use.
#[derive(Debug, thiserror::Error)]
#[error("sessions.store: {reason}")]
pub struct MemcachedSetupError {
    reason: String,
}

impl MemcachedBackend {
    /// A store over the servers of `url` (a `memcached://` [`SessionStoreUrl`]); it
    /// connects on first use. Keys are `deltacast:<cluster>:<ID>`; each exchange with a
    /// server waits at most `timeout`.
    pub fn new(
        url: &SessionStoreUrl,
        cluster: &str,
        timeout: Duration,
        limits: Limits,
        default_max_inactive_s: u32,
    ) -> Result<MemcachedBackend, MemcachedSetupError> {
        let SessionStoreUrl::Memcached { servers, .. } = url else {
            return Err(MemcachedSetupError {
                reason: format!("{url} is not a memcached URL"),
            });
        };
        if servers.is_empty() {
            return Err(MemcachedSetupError {
                reason: "memcached:// names no server".to_string(),
            });
        }
        let prefix = format!("deltacast:{cluster}:");
        if !proto::valid_key(&format!("{prefix}{}", SessionId::from_bytes([0; 16]))) {
            return Err(MemcachedSetupError {
                reason: format!(
                    "cluster.name {cluster:?} cannot be part of a memcached key (no spaces or control characters, at most 200 bytes)"
                ),
            });
        }
        let mut addrs: Vec<String> = servers.iter().map(ToString::to_string).collect();
        addrs.dedup();
        Ok(MemcachedBackend {
            servers: addrs.into_iter().map(Server::new).collect(),
            label: url.to_string(),
            prefix,
            limits,
            default_max_inactive_s: default_max_inactive_s.max(1),
            timeout,
            health: ServerHealth::default(),
        })
    }

    /// The failures counted so far.
    pub fn health(&self) -> &ServerHealth {
        &self.health
    }

    /// The key of session `id`: `deltacast:<cluster>:<ID>`.
    pub fn key(&self, id: SessionId) -> String {
        format!("{}{id}", self.prefix)
    }

    /// The `host:port` of the server that holds `key`.
    pub fn server_of(&self, key: &str) -> &str {
        self.server(key).addr()
    }

    fn server(&self, key: &str) -> &Server {
        let i = pool::pick(self.servers.iter().map(Server::addr), key);
        &self.servers[i]
    }

    /// One exchange with the server of `key`, within the timeout; a failure is counted
    /// and logged (throttled) here.
    async fn call<T>(
        &self,
        key: &str,
        command: Vec<u8>,
        parse: impl Fn(&[u8]) -> proto::Parse<T>,
    ) -> Result<T, BackendError> {
        let server = self.server(key);
        within(self.timeout, server.call(&command, parse))
            .await
            .map_err(|e| {
                self.health.failed(&self.label, &e);
                BackendError::Unavailable(e)
            })
    }

    /// The item of `key` (with its CAS unique when `cas`).
    async fn read(&self, key: &str, cas: bool) -> Result<Option<Item>, BackendError> {
        self.call(key, proto::retrieval(key, cas), |b| {
            proto::parse_retrieval(b, key, cas)
        })
        .await
    }

    /// The live session of `id` and its CAS unique; `None` when there is none, it is the
    /// dead marker of a changed id, it does not decode, or it is past its time.
    async fn live(
        &self,
        id: SessionId,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<(Detached, u64)>, BackendError> {
        let Some(item) = self.read(key, true).await? else {
            return Ok(None);
        };
        Ok(match value::decode(id, &item.data) {
            Stored::Session(s) if !expired(&s, now_ms) => Some((s, item.cas)),
            _ => None,
        })
    }

    async fn store(&self, key: &str, command: Vec<u8>) -> Result<Status, BackendError> {
        let status = self.call(key, command, proto::parse_status).await?;
        match status {
            Status::Deleted => {
                let e = Unavailable::Garbled {
                    reason: "DELETED in answer to a storage command".to_string(),
                };
                self.health.failed(&self.label, &e);
                Err(BackendError::Unavailable(e))
            }
            s => Ok(s),
        }
    }

    fn exptime(&self, session: &Detached, now_ms: u64) -> u64 {
        proto::exptime(u64::from(session.max_inactive_s()), now_ms / 1000)
    }

    /// `f` on the live session `id` under `key`, written with CAS; `Ok(None)` when there
    /// is no live session (or it went while this request ran).
    async fn update_live<R, F>(
        &self,
        id: SessionId,
        now_ms: u64,
        f: &mut F,
    ) -> Result<Option<R>, BackendError>
    where
        F: FnMut(&mut SessionMut<'_>) -> R,
    {
        let key = self.key(id);
        for _ in 0..CAS_TRIES {
            let Some((mut session, unique)) = self.live(id, &key, now_ms).await? else {
                return Ok(None);
            };
            let accessed_before = session.last_accessed_ms();
            let (value, delta) = session.edit(self.limits, now_ms, &mut *f);
            if delta.is_none() && now_ms < accessed_before.saturating_add(TOUCH_EVERY_MS) {
                return Ok(Some(value));
            }
            let command = proto::cas(
                &key,
                self.exptime(&session, now_ms),
                &value::encode(&session),
                unique,
            );
            match self.store(&key, command).await? {
                Status::Stored => return Ok(Some(value)),
                // Somebody else wrote it (and so touched it): a read is done.
                Status::Exists if delta.is_none() => return Ok(Some(value)),
                Status::Exists => tokio::task::yield_now().await,
                Status::NotFound | Status::NotStored | Status::Deleted => return Ok(None),
            }
        }
        Err(self.contended())
    }

    fn contended(&self) -> BackendError {
        let e = Unavailable::Failed {
            reason: format!("the session changed under this request {CAS_TRIES} times running"),
        };
        self.health.failed(&self.label, &e);
        BackendError::Unavailable(e)
    }

    /// Writes `session` with `add` under its id, or (when that key exists, never in
    /// practice) under another fresh id. The id it was written under.
    async fn add(&self, session: Detached, now_ms: u64) -> Result<SessionId, BackendError> {
        let mut session = session;
        for _ in 0..CREATE_TRIES {
            let id = session.id();
            let key = self.key(id);
            let command = proto::add(
                &key,
                self.exptime(&session, now_ms),
                &value::encode(&session),
            );
            if self.store(&key, command).await? == Status::Stored {
                return Ok(id);
            }
            session = session.with_id(SessionId::random());
        }
        let e = Unavailable::Garbled {
            reason: "every fresh session key tried exists already".to_string(),
        };
        self.health.failed(&self.label, &e);
        Err(BackendError::Unavailable(e))
    }

    /// Deletes `key`, whatever it holds; whether it was there.
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        match self
            .call(key, proto::delete(key), proto::parse_status)
            .await?
        {
            Status::Deleted => Ok(true),
            Status::NotFound => Ok(false),
            other => {
                let e = Unavailable::Garbled {
                    reason: format!("{other:?} in answer to delete"),
                };
                self.health.failed(&self.label, &e);
                Err(BackendError::Unavailable(e))
            }
        }
    }
}

/// Past its time (memcached expires it too, to the second; this catches the rest).
fn expired(session: &Detached, now_ms: u64) -> bool {
    let lifetime = u64::from(session.max_inactive_s()).saturating_mul(1000);
    now_ms > session.last_accessed_ms().saturating_add(lifetime)
}

impl SessionBackend for MemcachedBackend {
    async fn update<R, F>(
        &self,
        id: SessionId,
        now_ms: u64,
        mut f: F,
    ) -> Result<Option<Outcome<R>>, BackendError>
    where
        R: Send,
        F: FnMut(&mut SessionMut<'_>) -> R + Send,
    {
        Ok(self
            .update_live(id, now_ms, &mut f)
            .await?
            .map(|value| Outcome {
                id,
                created: false,
                value,
            }))
    }

    async fn update_or_create<R, F>(
        &self,
        id: Option<SessionId>,
        now_ms: u64,
        mut f: F,
    ) -> Result<Outcome<R>, BackendError>
    where
        R: Send,
        F: FnMut(&mut SessionMut<'_>) -> R + Send,
    {
        if let Some(id) = id {
            if let Some(value) = self.update_live(id, now_ms, &mut f).await? {
                return Ok(Outcome {
                    id,
                    created: false,
                    value,
                });
            }
        }
        let mut session = Detached::new(
            SessionId::random(),
            now_ms,
            now_ms,
            self.default_max_inactive_s,
            Vec::new(),
        );
        let (value, _) = session.edit(self.limits, now_ms, &mut f);
        let id = self.add(session, now_ms).await?;
        Ok(Outcome {
            id,
            created: true,
            value,
        })
    }

    async fn change_id<R, F>(
        &self,
        old: SessionId,
        now_ms: u64,
        mut f: F,
    ) -> Result<Option<Outcome<R>>, BackendError>
    where
        R: Send,
        F: FnMut(&mut SessionMut<'_>) -> R + Send,
    {
        let old_key = self.key(old);
        for _ in 0..CAS_TRIES {
            let Some((session, unique)) = self.live(old, &old_key, now_ms).await? else {
                return Ok(None);
            };
            let mut session = session.with_id(SessionId::random());
            let (value, _) = session.edit(self.limits, now_ms, &mut f);
            // Step 1: the copy, under a key no client knows yet.
            let new = self.add(session, now_ms).await?;
            let new_key = self.key(new);
            // Step 2: the old id dies, only if nothing wrote it since the read.
            let kill = proto::cas(&old_key, DEAD_TTL_S, &value::encode_dead(), unique);
            let status = match self.store(&old_key, kill).await {
                Ok(status) => status,
                Err(e) => {
                    let _ = self.delete(&new_key).await;
                    return Err(e);
                }
            };
            match status {
                Status::Stored => {
                    return Ok(Some(Outcome {
                        id: new,
                        created: false,
                        value,
                    }));
                }
                Status::Exists => {
                    // Written meanwhile under the old id: copy again from the fresh value.
                    self.delete(&new_key).await?;
                }
                _ => {
                    // Gone meanwhile (invalidated, expired): no session to change.
                    self.delete(&new_key).await?;
                    return Ok(None);
                }
            }
        }
        Err(self.contended())
    }

    async fn invalidate(&self, id: SessionId, now_ms: u64) -> Result<bool, BackendError> {
        let key = self.key(id);
        let live = self.live(id, &key, now_ms).await?.is_some();
        let deleted = self.delete(&key).await?;
        Ok(live && deleted)
    }

    async fn contains(&self, id: SessionId, now_ms: u64) -> Result<bool, BackendError> {
        let key = self.key(id);
        let Some(item) = self.read(&key, false).await? else {
            return Ok(false);
        };
        Ok(matches!(value::decode(id, &item.data), Stored::Session(s) if !expired(&s, now_ms)))
    }

    fn active(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerAddr;

    fn url(servers: &[(&str, u16)]) -> SessionStoreUrl {
        SessionStoreUrl::Memcached {
            text: "memcached://test".to_string(),
            servers: servers
                .iter()
                .map(|(h, p)| ServerAddr {
                    host: h.to_string(),
                    port: *p,
                })
                .collect(),
        }
    }

    fn backend(cluster: &str) -> Result<MemcachedBackend, MemcachedSetupError> {
        MemcachedBackend::new(
            &url(&[("127.0.0.1", 11211), ("127.0.0.1", 11212)]),
            cluster,
            Duration::from_secs(1),
            Limits::default(),
            1800,
        )
    }

    #[test]
    fn keys_are_the_cluster_and_the_id_without_route() {
        let b = backend("prod").expect("valid");
        let id = SessionId::from_bytes([0xAB; 16]);
        assert_eq!(b.key(id), format!("deltacast:prod:{}", "AB".repeat(16)));
        assert!(b.server_of(&b.key(id)).starts_with("127.0.0.1:1121"));
    }

    #[test]
    fn a_cluster_name_memcached_cannot_key_is_refused() {
        let e = backend("my cluster").expect_err("a space");
        assert!(e.to_string().contains("cluster.name"), "{e}");
    }

    #[test]
    fn a_session_is_past_its_time_after_max_inactive() {
        let s = Detached::new(SessionId::from_bytes([1; 16]), 0, 10_000, 2, []);
        assert!(!expired(&s, 12_000));
        assert!(expired(&s, 12_001));
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_unavailable_and_counted() {
        // A port bound then closed: nothing listens there.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let b = MemcachedBackend::new(
            &url(&[("127.0.0.1", port)]),
            "t",
            Duration::from_secs(2),
            Limits::default(),
            60,
        )
        .expect("valid");
        let got = b.contains(SessionId::from_bytes([2; 16]), 0).await;
        assert!(matches!(got, Err(BackendError::Unavailable(_))), "{got:?}");
        assert_eq!(b.health().errors(), 1);
    }
}
