//! Redis and Redis Cluster as the session store (`sessions.store = "redis://..."` or
//! `"redis+cluster://..."`).
//!
//! One session is one hash under `deltacast:<cluster>:<ID>` (the id without its route, 32
//! upper-case hex digits), with the fields
//! - `attr:<name>`: one per attribute, the value's bytes as they are;
//! - `created`, `accessed`: Unix milliseconds, decimal;
//! - `max_inactive`: seconds, decimal; the key's TTL (`PEXPIRE`) is this, refreshed on
//!   every access, and expiry is that TTL alone (no keyspace notifications, no `CONFIG`);
//! - `dead`: present only on the old key of a change of id, between its two steps.
//!
//! Every call is one Lua script on one key, so each is atomic and each works on Redis
//! Cluster (one key, one slot):
//! - a request reads its session with [`LOAD`], which also touches it (one round trip for a
//!   read-only request);
//! - a request whose changes need nothing it read (the node's `PUT` and `DELETE` of an
//!   attribute, the session layer's commit) sends them as one [`WRITE`], with no read
//!   before it: `HSET`/`HDEL` of the attributes it changed and no others (two concurrent
//!   requests setting different attributes both keep theirs), `sessions.max_attributes`
//!   checked there, the touch, all or nothing, and only while the session is live (a
//!   session invalidated meanwhile is not brought back);
//! - changes made by a closure that read the session first are one [`COMMIT`] after its
//!   [`LOAD`];
//! - a new session is one [`CREATE`] (refused if the key exists);
//! - invalidate is `DEL`;
//! - change-id is three steps, none across slots: [`TAKE`] marks the old key dead and
//!   returns its fields atomically (from then on a request with the old id finds no
//!   session), [`CREATE`] writes the new key, `DEL` removes the old one.
//!
//! The touch (`accessed` and the TTL) is batched: many requests of one session at once renew
//! it once per window (1% of `max_inactive`, at most 1 s), so a burst of reads writes
//! nothing and the key expires at most that window before `max_inactive` after its last
//! access.
//!
//! A key that holds something else (another type, a hash without the fields above,
//! numbers that do not parse) is no session: the request gets a fresh one. A server that
//! is down, slower than `sessions.store_timeout_ms` or answers what the scripts never
//! return is [`Unavailable`]: counted, logged once per interval, `503` for the request;
//! the connection manager (and the cluster client, which follows `MOVED` and `ASK`)
//! reconnects by itself.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{
    ConnectionAddr, FromRedisValue, IntoConnectionInfo, RedisConnectionInfo, Script, Value,
};

use super::{
    BackendError, Change, Outcome, ServerHealth, SessionBackend, Unavailable, apply_changes,
    stores_a_value, within,
};
use crate::config::{Auth, ServerAddr, SessionStoreUrl};
use crate::session::{Delta, Detached, Limits, SessionId, SessionMut, StoreError};

/// The opening every script on an existing session shares: `live` reads the time fields in
/// one call (`redis.pcall`, so that a key of another type is an answer, not an error) and
/// gives `accessed`, `max_inactive` and `accessed` as stored when the key is a live session
/// hash: not dead, its times decimal digits, `max_inactive` at least 1. `num` is such a
/// decimal, or nil. (Each `redis.call` costs more than the command itself, so the scripts
/// make as few as they can.)
const LIVE: &str = r"
local function num(s)
  if s and string.find(s, '^%d+$') then return tonumber(s) end
  return nil
end
local function live(k)
  local t = redis.pcall('HMGET', k, 'created', 'accessed', 'max_inactive', 'dead')
  if t.err or t[4] or not num(t[1]) then return nil end
  local acc, mi = num(t[2]), num(t[3])
  if not acc or not mi or mi < 1 then return nil end
  return acc, mi, t[2]
end
-- Whether an access at `now` renews `accessed` and the TTL: not within a window (1% of
-- max_inactive, at most 1 s) after the last renewal, so that many requests of one session
-- at once renew it once; always when the last one came from a clock ahead of this one.
local function due(now, acc, mi)
  local since = now - acc
  return since < 0 or since >= math.min(1000, mi * 10)
end
";

/// Reads a live session and touches it (when `due`): `accessed` moves forward to
/// `ARGV[1]`, the TTL is renewed. Nil when the key is missing, not a hash, dead, or lacks
/// its time fields.
pub const LOAD: &str = r"
local k = KEYS[1]
local acc, mi = live(k)
if not acc then return false end
local now = tonumber(ARGV[1])
if due(now, acc, mi) then
  if now > acc then redis.call('HSET', k, 'accessed', ARGV[1]) end
  redis.call('PEXPIRE', k, mi * 1000)
end
return redis.call('HGETALL', k)
";

/// Whether a live session is there (no touch): 1 or 0.
pub const CONTAINS: &str = r"
if live(KEYS[1]) then return 1 end
return 0
";

/// One request's changes, all or nothing, on a live session only. `ARGV[1]` the access
/// time, `ARGV[2]` a new max inactive interval or empty, then `S field value` (set) or
/// `D field` (remove) for each attribute changed. 1 when applied, 0 when the session is
/// not live (nothing written).
pub const COMMIT: &str = r"
local k = KEYS[1]
local acc, mi = live(k)
if not acc then return 0 end
if ARGV[2] ~= '' then
  mi = tonumber(ARGV[2])
  redis.call('HSET', k, 'max_inactive', ARGV[2])
end
if tonumber(ARGV[1]) > acc then redis.call('HSET', k, 'accessed', ARGV[1]) end
local i = 3
while i <= #ARGV do
  if ARGV[i] == 'S' then
    redis.call('HSET', k, ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  else
    redis.call('HDEL', k, ARGV[i + 1])
    i = i + 2
  end
end
redis.call('PEXPIRE', k, mi * 1000)
return 1
";

/// A request's changes made without reading the session first (one round trip), on a live
/// session only, all in one step. `ARGV[1]` the access time, `ARGV[2]` the most attributes
/// a session holds, then `S field value` or `D field` per change, in order. A set that
/// would pass the most attributes is left out (the rest apply), as a node refuses it.
/// 0 when the session is not live (nothing written); else 1, plus the position (from 1)
/// of the first change left out, if one was.
pub const WRITE: &str = r"
local k = KEYS[1]
local acc, mi, stamp = live(k)
if not acc then return 0 end
local now = tonumber(ARGV[1])
if now > acc then stamp = ARGV[1] end
local touch = due(now, acc, mi)
-- `accessed` written, or not to be.
local stamped = not touch
local max = tonumber(ARGV[2])
local held
local refused = 0
local n = 0
local i = 3
while i <= #ARGV do
  n = n + 1
  local f = ARGV[i + 1]
  if ARGV[i] == 'S' then
    local new
    if stamped then
      new = redis.call('HSET', k, f, ARGV[i + 2])
    else
      -- `accessed` exists (the session is live), so this counts only `f` as new.
      new = redis.call('HSET', k, f, ARGV[i + 2], 'accessed', stamp)
      stamped = true
    end
    if new == 1 then
      if held then
        held = held + 1
      else
        held = 0
        for _, name in ipairs(redis.call('HKEYS', k)) do
          if string.sub(name, 1, 5) == 'attr:' then held = held + 1 end
        end
      end
      if held > max then
        redis.call('HDEL', k, f)
        held = held - 1
        if refused == 0 then refused = n end
      end
    end
    i = i + 3
  else
    if redis.call('HDEL', k, f) == 1 and held then held = held - 1 end
    i = i + 2
  end
end
if not stamped then redis.call('HSET', k, 'accessed', stamp) end
if touch then redis.call('PEXPIRE', k, mi * 1000) end
return 1 + refused
";

/// A new session: `ARGV[1]` created, `ARGV[2]` accessed, `ARGV[3]` max inactive seconds,
/// then `field value` pairs. 0 (and nothing written) when the key exists.
pub const CREATE: &str = r"
local k = KEYS[1]
if redis.call('EXISTS', k) == 1 then return 0 end
redis.call('HSET', k, 'created', ARGV[1], 'accessed', ARGV[2], 'max_inactive', ARGV[3])
local i = 4
while i < #ARGV do
  redis.call('HSET', k, ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('PEXPIRE', k, tonumber(ARGV[3]) * 1000)
return 1
";

/// Step 1 of a change of id: marks the old key dead and returns its fields, atomically
/// (nil when it is not a live session). The dead key lives at most `ARGV[1]` ms more,
/// should step 3 (`DEL`) never come.
pub const TAKE: &str = r"
local k = KEYS[1]
if not live(k) then return false end
local all = redis.call('HGETALL', k)
redis.call('HSET', k, 'dead', '1')
redis.call('PEXPIRE', k, ARGV[1])
return all
";

/// How long a key marked dead by [`TAKE`] lives at most.
const DEAD_TTL_MS: u64 = 60_000;
/// Fresh ids tried when the key of one exists already (never, in practice: 128 random bits).
const CREATE_TRIES: usize = 4;

/// The field prefix of attributes.
const ATTR: &[u8] = b"attr:";

/// The connection: one server, or a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The Redis session store: see the module doc.
pub struct RedisBackend {
    conn: Conn,
    kind: &'static str,
    /// The URL without credentials, for the logs.
    label: String,
    /// `deltacast:<cluster>:`.
    prefix: String,
    limits: Limits,
    default_max_inactive_s: u32,
    timeout: Duration,
    health: ServerHealth,
    scripts: Scripts,
}

struct Scripts {
    load: Script,
    contains: Script,
    commit: Script,
    write: Script,
    create: Script,
    take: Script,
}

/// A Redis URL the client cannot use.
#[derive(Debug, thiserror::Error)]
#[error("sessions.store: {reason}")]
pub struct RedisSetupError {
    reason: String,
}

impl RedisBackend {
    /// A backend over the server or cluster of `url` (a `redis://` or `redis+cluster://`
    /// [`SessionStoreUrl`]); it connects on first use and reconnects by itself. Keys are
    /// `deltacast:<cluster>:<ID>`; each call waits at most `timeout`.
    pub fn new(
        url: &SessionStoreUrl,
        cluster: &str,
        timeout: Duration,
        limits: Limits,
        default_max_inactive_s: u32,
    ) -> Result<RedisBackend, RedisSetupError> {
        let setup = |e: redis::RedisError| RedisSetupError {
            reason: one_line(&e.to_string()),
        };
        let (conn, kind) = match url {
            SessionStoreUrl::Redis {
                server, db, auth, ..
            } => {
                let info = connection_info(server, i64::from(*db), auth.as_ref()).map_err(setup)?;
                let client = redis::Client::open(info).map_err(setup)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    // Reconnection is retried briefly in the background; a request meanwhile
                    // fails fast (503) and a later one triggers the next attempt.
                    .set_number_of_retries(2)
                    .set_max_delay(timeout);
                let manager =
                    ConnectionManager::new_lazy_with_config(client, config).map_err(setup)?;
                (Conn::Single(manager), "redis")
            }
            SessionStoreUrl::RedisCluster { seeds, auth, .. } => {
                let nodes = seeds
                    .iter()
                    .map(|s| connection_info(s, 0, None))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(setup)?;
                let mut builder = ClusterClientBuilder::new(nodes)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .tcp_settings(tcp_settings())
                    .retries(3);
                if let Some(auth) = auth {
                    builder = builder.password(&auth.password);
                    if let Some(user) = &auth.username {
                        builder = builder.username(user);
                    }
                }
                let client = builder.build().map_err(setup)?;
                let conn = client.get_pending_async_connection_with_config(
                    redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(timeout)
                        .set_response_timeout(timeout),
                );
                (Conn::Cluster(conn), "redis-cluster")
            }
            other => {
                return Err(RedisSetupError {
                    reason: format!("{other} is not a Redis URL"),
                });
            }
        };
        Ok(RedisBackend {
            conn,
            kind,
            label: url.to_string(),
            prefix: format!("deltacast:{cluster}:"),
            limits,
            default_max_inactive_s,
            timeout,
            health: ServerHealth::default(),
            scripts: Scripts {
                load: with_live(LOAD),
                contains: with_live(CONTAINS),
                commit: with_live(COMMIT),
                write: with_live(WRITE),
                create: Script::new(CREATE),
                take: with_live(TAKE),
            },
        })
    }

    /// `redis` or `redis+cluster`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The failures counted so far.
    pub fn health(&self) -> &ServerHealth {
        &self.health
    }

    /// The key of session `id`: `deltacast:<cluster>:<ID>`.
    pub fn key(&self, id: SessionId) -> String {
        format!("{}{id}", self.prefix)
    }

    /// Waits for one answer within the timeout and decodes it as `T`; a failure is
    /// counted and logged (throttled) here, once per call.
    async fn answer<T: FromRedisValue>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<Value>>,
    ) -> Result<T, BackendError> {
        let result = within(self.timeout, async {
            let value = call.await.map_err(|e| Unavailable::Failed {
                reason: one_line(&e.to_string()),
            })?;
            T::from_redis_value(value).map_err(|e| Unavailable::Garbled {
                reason: one_line(&e.to_string()),
            })
        })
        .await;
        result.map_err(|e| {
            self.health.failed(&self.label, &e);
            BackendError::Unavailable(e)
        })
    }

    /// Runs `script` on `key` (`EVALSHA`, loading it where the server does not know it).
    async fn invoke<T: FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[Vec<u8>],
    ) -> Result<T, BackendError> {
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(arg.as_slice());
        }
        let mut conn = self.conn.clone();
        let call = async {
            match &mut conn {
                Conn::Single(c) => invocation.invoke_async::<Value>(c).await,
                Conn::Cluster(c) => invocation.invoke_async::<Value>(c).await,
            }
        };
        self.answer(call).await
    }

    /// Runs one command (routed by its key on a cluster).
    async fn command<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, BackendError> {
        let mut conn = self.conn.clone();
        let call = async {
            match &mut conn {
                Conn::Single(c) => c.req_packed_command(&cmd).await,
                Conn::Cluster(c) => c.req_packed_command(&cmd).await,
            }
        };
        self.answer(call).await
    }

    /// The live session `id`, touched; `None` when there is none or it does not decode.
    async fn read(&self, id: SessionId, now_ms: u64) -> Result<Option<Detached>, BackendError> {
        let value: Value = self
            .invoke(&self.scripts.load, &self.key(id), &[decimal(now_ms)])
            .await?;
        self.decoded(id, value)
    }

    fn decoded(&self, id: SessionId, value: Value) -> Result<Option<Detached>, BackendError> {
        match decode_hash(id, value) {
            Ok(session) => Ok(session),
            Err(e) => {
                self.health.failed(&self.label, &e);
                Err(BackendError::Unavailable(e))
            }
        }
    }

    /// Applies `delta` (one request's changes) to the live session `id`; false when it is
    /// no longer live (nothing written).
    async fn commit(
        &self,
        id: SessionId,
        now_ms: u64,
        delta: &Delta,
    ) -> Result<bool, BackendError> {
        let applied: i64 = self
            .invoke(
                &self.scripts.commit,
                &self.key(id),
                &commit_args(now_ms, delta),
            )
            .await?;
        Ok(applied == 1)
    }

    /// Writes `session` under a key of its own; when its id is taken (never, in practice),
    /// under another fresh id. The id it was written under.
    async fn create(&self, session: Detached) -> Result<SessionId, BackendError> {
        let mut session = session;
        for _ in 0..CREATE_TRIES {
            let id = session.id();
            let made: i64 = self
                .invoke(&self.scripts.create, &self.key(id), &create_args(&session))
                .await?;
            if made == 1 {
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

    /// `f` on a new session with a fresh id, written.
    async fn create_with<R, F>(&self, now_ms: u64, mut f: F) -> Result<Outcome<R>, BackendError>
    where
        F: FnMut(&mut SessionMut<'_>) -> R,
    {
        let mut session = Detached::new(
            SessionId::random(),
            now_ms,
            now_ms,
            self.default_max_inactive_s,
            Vec::new(),
        );
        let (value, _) = session.edit(self.limits, now_ms, &mut f);
        let id = self.create(session).await?;
        Ok(Outcome {
            id,
            created: true,
            value,
        })
    }
}

impl SessionBackend for RedisBackend {
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
        let Some(mut session) = self.read(id, now_ms).await? else {
            return Ok(None);
        };
        let (value, delta) = session.edit(self.limits, now_ms, &mut f);
        if let Some(delta) = delta {
            if !self.commit(id, now_ms, &delta).await? {
                // Invalidated or expired since the read: there is no session to change.
                return Ok(None);
            }
        }
        Ok(Some(Outcome {
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
            if let Some(mut session) = self.read(id, now_ms).await? {
                let (value, delta) = session.edit(self.limits, now_ms, &mut f);
                let applied = match delta {
                    None => true,
                    Some(delta) => self.commit(id, now_ms, &delta).await?,
                };
                if applied {
                    return Ok(Outcome {
                        id,
                        created: false,
                        value,
                    });
                }
                // Gone since the read: the changes go to a new session, as for an unknown id.
            }
        }
        self.create_with(now_ms, f).await
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
        // Step 1: the old key is dead from here on, and we hold what it held.
        let taken: Value = self
            .invoke(&self.scripts.take, &self.key(old), &[decimal(DEAD_TTL_MS)])
            .await?;
        let Some(session) = self.decoded(old, taken)? else {
            return Ok(None);
        };
        let mut session = session.with_id(SessionId::random());
        let (value, _) = session.edit(self.limits, now_ms, &mut f);
        // Step 2: the new key. Should this fail, the session is gone (the old key is dead);
        // the client is told (503) and starts afresh.
        let new = self.create(session).await?;
        // Step 3: the old key goes; should this fail, it expires within DEAD_TTL_MS, and
        // nothing reads a dead key meanwhile.
        let _: Result<i64, _> = self.command(del(&self.key(old))).await;
        Ok(Some(Outcome {
            id: new,
            created: false,
            value,
        }))
    }

    async fn write(
        &self,
        id: Option<SessionId>,
        now_ms: u64,
        changes: &[Change],
    ) -> Result<Option<Outcome<Option<StoreError>>>, BackendError> {
        if let Some(id) = id {
            let plan = WritePlan::new(now_ms, self.limits, changes);
            let answer: i64 = self
                .invoke(&self.scripts.write, &self.key(id), &plan.args)
                .await?;
            if answer != 0 {
                let refused = plan.refused(answer).ok_or_else(|| {
                    let e = garbled("WRITE answered what it never returns");
                    self.health.failed(&self.label, &e);
                    BackendError::Unavailable(e)
                })?;
                return Ok(Some(Outcome {
                    id,
                    created: false,
                    value: refused,
                }));
            }
            // Not live (unknown, expired, invalidated): as for no id.
        }
        if !stores_a_value(changes) {
            return Ok(None);
        }
        self.create_with(now_ms, |s| apply_changes(s, changes))
            .await
            .map(Some)
    }

    async fn invalidate(&self, id: SessionId, _now_ms: u64) -> Result<bool, BackendError> {
        let removed: i64 = self.command(del(&self.key(id))).await?;
        Ok(removed > 0)
    }

    async fn contains(&self, id: SessionId, _now_ms: u64) -> Result<bool, BackendError> {
        let live: i64 = self
            .invoke(&self.scripts.contains, &self.key(id), &[])
            .await?;
        Ok(live == 1)
    }

    fn active(&self) -> Option<u64> {
        None
    }
}

/// A script that opens with [`LIVE`].
fn with_live(body: &str) -> Script {
    Script::new(&format!("{LIVE}{body}"))
}

/// The client's connection settings for one server.
fn connection_info(
    server: &ServerAddr,
    db: i64,
    auth: Option<&Auth>,
) -> redis::RedisResult<redis::ConnectionInfo> {
    let mut redis = RedisConnectionInfo::default().set_db(db);
    if let Some(auth) = auth {
        redis = redis.set_password(&auth.password);
        if let Some(user) = &auth.username {
            redis = redis.set_username(user);
        }
    }
    Ok(ConnectionAddr::Tcp(server.host.clone(), server.port)
        .into_connection_info()?
        .set_redis_settings(redis)
        .set_tcp_settings(tcp_settings()))
}

/// `TCP_NODELAY`: the client sends the calls of concurrent requests one after another on
/// one connection, and Nagle's algorithm (on by default in the client) would hold each small
/// write back until the previous one is acknowledged.
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

fn del(key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("DEL");
    cmd.arg(key);
    cmd
}

fn decimal(n: u64) -> Vec<u8> {
    n.to_string().into_bytes()
}

fn attr_field(name: &str) -> Vec<u8> {
    let mut field = Vec::with_capacity(ATTR.len() + name.len());
    field.extend_from_slice(ATTR);
    field.extend_from_slice(name.as_bytes());
    field
}

/// The arguments of [`COMMIT`] for one request's changes.
fn commit_args(now_ms: u64, delta: &Delta) -> Vec<Vec<u8>> {
    let mut args = Vec::with_capacity(2 + delta.attributes.len() * 3);
    args.push(decimal(now_ms));
    args.push(
        delta
            .max_inactive
            .map_or_else(Vec::new, |(secs, _)| decimal(u64::from(secs))),
    );
    for change in &delta.attributes {
        match &change.value {
            Some(value) => {
                args.push(b"S".to_vec());
                args.push(attr_field(&change.name));
                args.push(value.to_vec());
            }
            None => {
                args.push(b"D".to_vec());
                args.push(attr_field(&change.name));
            }
        }
    }
    args
}

/// One request's changes as the arguments of [`WRITE`]: the changes the limits that need
/// no session refuse are left out here (and remembered), the rest are sent in order.
struct WritePlan {
    args: Vec<Vec<u8>>,
    /// The position in the request's changes of each change sent.
    sent: Vec<usize>,
    /// The first change left out here: its position and why.
    refused_here: Option<(usize, StoreError)>,
    /// The most attributes a session holds, which [`WRITE`] checks.
    max_attributes: usize,
}

impl WritePlan {
    fn new(now_ms: u64, limits: Limits, changes: &[Change]) -> WritePlan {
        let mut args = Vec::with_capacity(2 + changes.len() * 3);
        args.push(decimal(now_ms));
        args.push(decimal(limits.max_attributes as u64));
        let mut sent = Vec::with_capacity(changes.len());
        let mut refused_here = None;
        for (position, (name, value)) in changes.iter().enumerate() {
            match value {
                Some(value) => {
                    if let Err(e) = limits.check(name, value) {
                        refused_here.get_or_insert((position, e));
                        continue;
                    }
                    args.push(b"S".to_vec());
                    args.push(attr_field(name));
                    args.push(value.to_vec());
                }
                None => {
                    args.push(b"D".to_vec());
                    args.push(attr_field(name));
                }
            }
            sent.push(position);
        }
        WritePlan {
            args,
            sent,
            refused_here,
            max_attributes: limits.max_attributes,
        }
    }

    /// The first refusal of the request, from what [`WRITE`] answered (not 0); `None` when
    /// the answer is not one [`WRITE`] gives.
    fn refused(self, answer: i64) -> Option<Option<StoreError>> {
        let left_out = usize::try_from(answer.checked_sub(1)?).ok()?;
        let by_server = match left_out {
            0 => None,
            n => Some((
                *self.sent.get(n - 1)?,
                StoreError::TooManyAttributes {
                    max: self.max_attributes,
                },
            )),
        };
        let first = match (self.refused_here, by_server) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        Some(first.map(|(_, e)| e))
    }
}

/// The arguments of [`CREATE`] for a whole session.
fn create_args(session: &Detached) -> Vec<Vec<u8>> {
    let mut args = vec![
        decimal(session.created_ms()),
        decimal(session.last_accessed_ms()),
        decimal(u64::from(session.max_inactive_s().max(1))),
    ];
    for (name, value) in session.attributes() {
        args.push(attr_field(name));
        args.push(value.to_vec());
    }
    args
}

/// A session from what [`LOAD`] or [`TAKE`] returned: nil is no session, and so is a hash
/// that does not decode (missing or unparsable times, a name that is not UTF-8); anything
/// but nil or a flat array of strings (or a RESP3 map) is not what the scripts return.
pub fn decode_hash(id: SessionId, value: Value) -> Result<Option<Detached>, Unavailable> {
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = match value {
        Value::Nil => return Ok(None),
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(garbled("a hash of an odd number of fields and values"));
            }
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((bulk(k)?, bulk(v)?));
            }
            pairs
        }
        Value::Map(entries) => entries
            .into_iter()
            .map(|(k, v)| Ok((bulk(k)?, bulk(v)?)))
            .collect::<Result<_, Unavailable>>()?,
        _ => return Err(garbled("neither a hash nor nil")),
    };
    let mut created = None;
    let mut accessed = None;
    let mut max_inactive = None;
    let mut attributes = Vec::new();
    for (field, value) in pairs {
        match field.as_slice() {
            b"created" => created = number(&value),
            b"accessed" => accessed = number(&value),
            b"max_inactive" => max_inactive = number(&value).and_then(|n| u32::try_from(n).ok()),
            f if f.starts_with(ATTR) => {
                let Ok(name) = std::str::from_utf8(&f[ATTR.len()..]) else {
                    return Ok(None);
                };
                if name.is_empty() {
                    return Ok(None);
                }
                attributes.push((name.to_string(), Bytes::from(value)));
            }
            _ => {}
        }
    }
    let (Some(created), Some(accessed), Some(max_inactive)) = (created, accessed, max_inactive)
    else {
        return Ok(None);
    };
    Ok(Some(Detached::new(
        id,
        created,
        accessed,
        max_inactive,
        attributes,
    )))
}

fn bulk(value: Value) -> Result<Vec<u8>, Unavailable> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        _ => Err(garbled("a hash field that is not a string")),
    }
}

/// A decimal of digits only.
fn number(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn garbled(reason: &str) -> Unavailable {
    Unavailable::Garbled {
        reason: reason.to_string(),
    }
}

/// A message on one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> SessionId {
        SessionId::from_bytes([7; 16])
    }

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn hash(fields: &[(&[u8], &[u8])]) -> Value {
        Value::Array(
            fields
                .iter()
                .flat_map(|(k, v)| [bulk(k), bulk(v)])
                .collect(),
        )
    }

    #[test]
    fn a_stored_session_decodes_with_its_attributes() {
        let value = hash(&[
            (b"created", b"1000"),
            (b"accessed", b"2000"),
            (b"max_inactive", b"1800"),
            (b"attr:user", b"ada"),
            (b"attr:cart", &[0xff, 0x00]),
            (b"something-else", b"ignored"),
        ]);
        let s = decode_hash(id(), value)
            .expect("decodes")
            .expect("a session");
        assert_eq!(s.created_ms(), 1000);
        assert_eq!(s.last_accessed_ms(), 2000);
        assert_eq!(s.max_inactive_s(), 1800);
        let attrs: Vec<(&str, &[u8])> = s.attributes().map(|(n, v)| (n, &v[..])).collect();
        assert_eq!(attrs, [("user", &b"ada"[..]), ("cart", &[0xff, 0x00][..])]);
    }

    #[test]
    fn nil_and_hashes_that_do_not_decode_are_no_session() {
        assert_eq!(decode_hash(id(), Value::Nil).expect("fine"), None);
        let cases: [&[(&[u8], &[u8])]; 4] = [
            &[(b"attr:x", b"1")],
            &[
                (b"created", b"x"),
                (b"accessed", b"1"),
                (b"max_inactive", b"1"),
            ],
            &[
                (b"created", b"1"),
                (b"accessed", b"-1"),
                (b"max_inactive", b"1"),
            ],
            &[
                (b"created", b"1"),
                (b"accessed", b"1"),
                (b"max_inactive", b"1"),
                (b"attr:\xff", b"1"),
            ],
        ];
        for fields in cases {
            assert_eq!(decode_hash(id(), hash(fields)).expect("fine"), None);
        }
    }

    #[test]
    fn answers_no_script_gives_are_garbled() {
        for value in [
            Value::Int(3),
            Value::Okay,
            Value::Array(vec![bulk(b"created")]),
            Value::Array(vec![Value::Int(1), Value::Int(2)]),
        ] {
            assert!(matches!(
                decode_hash(id(), value),
                Err(Unavailable::Garbled { .. })
            ));
        }
    }

    #[test]
    fn a_requests_changes_become_set_and_remove_arguments() {
        let mut session =
            Detached::new(id(), 1, 1, 60, vec![("old".to_string(), Bytes::from("1"))]);
        let (_, delta) = session.edit(Limits::default(), 5, |s| {
            s.set("new", Bytes::from_static(b"v"))
                .expect("within limits");
            s.remove("old");
            s.set_max_inactive_s(90);
        });
        let args = commit_args(5, &delta.expect("changed"));
        let text: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        assert_eq!(
            text,
            [&b"5"[..], b"90", b"S", b"attr:new", b"v", b"D", b"attr:old"]
        );
        let mut read_only = Detached::new(id(), 1, 1, 60, Vec::new());
        let (_, delta) = read_only.edit(Limits::default(), 5, |s| s.get("x").cloned());
        assert!(delta.is_none(), "a read changes nothing");
    }

    #[test]
    fn a_write_sends_what_the_limits_let_through_and_finds_the_first_refusal() {
        let limits = Limits {
            max_attributes: 8,
            max_value_bytes: 4,
            ..Limits::default()
        };
        let change = |name: &str, value: Option<&'static [u8]>| {
            (name.to_string(), value.map(Bytes::from_static))
        };
        let changes = [
            change("a", Some(b"1")),
            change("big", Some(b"too long")),
            change("gone", None),
            change("", Some(b"1")),
            change("c", Some(b"3")),
        ];
        let plan = || WritePlan::new(9, limits, &changes);
        let sent = plan();
        let text: Vec<&[u8]> = sent.args.iter().map(Vec::as_slice).collect();
        assert_eq!(
            text,
            [
                &b"9"[..],
                b"8",
                b"S",
                b"attr:a",
                b"1",
                b"D",
                b"attr:gone",
                b"S",
                b"attr:c",
                b"3"
            ]
        );
        let too_large = || StoreError::ValueTooLarge { len: 8, max: 4 };
        let too_many = StoreError::TooManyAttributes { max: 8 };
        // All sent applied: the first refusal is the one made here.
        assert_eq!(plan().refused(1), Some(Some(too_large())));
        // The server left out the first sent (position 0), before the one refused here.
        assert_eq!(plan().refused(2), Some(Some(too_many)));
        // It left out the third sent (position 4), after it.
        assert_eq!(plan().refused(4), Some(Some(too_large())));
        let clean = [change("a", Some(b"1"))];
        assert_eq!(WritePlan::new(9, limits, &clean).refused(1), Some(None));
        // Answers WRITE never gives.
        for answer in [-1, 5, 99] {
            assert_eq!(plan().refused(answer), None, "{answer}");
        }
    }

    #[test]
    fn a_created_session_writes_its_times_and_attributes() {
        let session = Detached::new(id(), 10, 20, 30, vec![("a".to_string(), Bytes::from("b"))]);
        let args = create_args(&session);
        let text: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        assert_eq!(text, [&b"10"[..], b"20", b"30", b"attr:a", b"b"]);
    }

    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<i64>().prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::BulkString),
            prop_oneof![
                Just(b"created".to_vec()),
                Just(b"accessed".to_vec()),
                Just(b"max_inactive".to_vec()),
                Just(b"attr:x".to_vec()),
                Just(b"12345".to_vec()),
            ]
            .prop_map(Value::BulkString),
            Just(Value::Okay),
        ];
        leaf.prop_recursive(2, 24, 8, |inner| {
            proptest::collection::vec(inner, 0..10).prop_map(Value::Array)
        })
    }

    proptest! {
        #[test]
        fn any_answer_decodes_or_is_refused_without_panicking(value in any_value()) {
            let _ = decode_hash(id(), value);
        }

        #[test]
        fn what_create_writes_decodes_back(
            created in 0u64..u64::MAX / 2,
            accessed in 0u64..u64::MAX / 2,
            secs in 1u32..1_000_000,
            attrs in proptest::collection::btree_map("[a-z]{1,8}", proptest::collection::vec(any::<u8>(), 0..16), 0..6),
        ) {
            let attributes: Vec<(String, Bytes)> =
                attrs.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect();
            let session = Detached::new(id(), created, accessed, secs, attributes.clone());
            let args = create_args(&session);
            let mut fields = vec![
                bulk(b"created"), bulk(&args[0]),
                bulk(b"accessed"), bulk(&args[1]),
                bulk(b"max_inactive"), bulk(&args[2]),
            ];
            fields.extend(args[3..].iter().map(|a| bulk(a)));
            let back = decode_hash(id(), Value::Array(fields)).expect("decodes").expect("a session");
            prop_assert_eq!(back, session);
        }
    }
}
