//! The Redis store of connection state recovery (`realtime_recovery_store: "redis"`), on the
//! bench's `redis_queue`: each namespace's replay log is a Stream, each kept session a key
//! that expires with the recovery window. Sessions and the log then outlive the process: on
//! SIGTERM every connected socket's session is kept and written before the process exits,
//! and the next process loads them before it listens, so its clients come back recovered.
//!
//! The in-memory store stays the working copy: publications, admissions and cuts never wait
//! on Redis. Writes are handed to one task ([`RedisStore::writer`]) that pipelines them; if
//! it falls behind by more than [`QUEUE`] writes, or Redis fails, those writes are lost
//! (counted), which costs recovery after a restart, never delivery.
//!
//! Keys: `frappe_realtime:recovery:<namespace>:log` (entries `e` = the logged event as JSON;
//! the entry id's milliseconds give its age) and `…:<namespace>:session:<pid>`. One of several
//! instances on a bench keeps its own, under `frappe_realtime:recovery:<instance>:…` (see
//! [`StoreKeys`]): each numbers the publications it logs itself, so one instance's offsets
//! and sessions mean nothing against another's log. Instances that share the bench's log
//! (`crate::shared::bench_log`) share offsets too: their sessions go under
//! `frappe_realtime:recovery:bench:…`, where any of them takes one ([`SessionSource`]), and
//! the bench's log is their log. They also keep a live copy of each connected socket's
//! session (one hash per instance, `…:bench:live:<instance>`), so that the clients of an
//! instance killed outright resume elsewhere too; a session taken is marked with its taker
//! (`…:bench:taken:…`), so that the instance it left does not keep a stale copy later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::metrics::counter;
use anyhow::Context;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::metrics;
use crate::socketio::{
    Io, KeptSession, LoggedEntry, Mirror, RecoveryConfig, RecoveryMirror, SessionAnswer,
    SessionSource, SharedSessions, Sid,
};

const PREFIX: &str = "frappe_realtime:recovery:";
/// Writes waiting for the writer at most: a burst of publications or a shutdown's every
/// socket fits; a Redis that is down for long does not grow the process.
const QUEUE: usize = 65_536;
/// Writes sent to Redis in one pipeline at most.
const BATCH: usize = 512;
/// How long a shutdown waits for the last writes.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Take a key's value and delete it, in one step (GETDEL is Redis 6.2 on; benches run older).
const GET_AND_DELETE: &str = "local value = redis.call('GET', KEYS[1]) \
    if value then redis.call('DEL', KEYS[1]) end return value";

/// Instances sharing the bench's log: keep a cut socket's session, and drop its live copy,
/// unless another instance took the session meanwhile (the client is there now, and this
/// copy is stale). KEYS: the kept key, this instance's live hash, the taken marker. ARGV:
/// the session, the window (ms), the live field, this instance.
const KEEP_SHARED: &str = r#"
redis.call('HDEL', KEYS[2], ARGV[3])
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[4] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// Instances sharing the bench's log: the live copy of a connected socket's session, in this
/// instance's hash, which lives a window past the instance's last write or refresh. KEYS:
/// the live hash, the set of instances with one, the taken marker. ARGV: the field, the
/// session, the window (ms), this instance.
const LIVE_SHARED: &str = r#"
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"#;

/// Instances sharing the bench's log: take a session, kept or live on any instance (a killed
/// one's live sessions last a window), and mark it taken by this instance. KEYS: the kept
/// key, the set of instances with live sessions, the taken marker. ARGV: the live hashes'
/// prefix, the field, this instance, the window (ms).
const TAKE_SHARED: &str = r#"
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('DEL', KEYS[1])
else
  for _, instance in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local hash = ARGV[1] .. instance
    if redis.call('EXISTS', hash) == 0 then
      redis.call('SREM', KEYS[2], instance)
    else
      value = redis.call('HGET', hash, ARGV[2])
      if value then
        redis.call('HDEL', hash, ARGV[2])
        break
      end
    end
  end
end
if value then redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4]) end
return value
"#;

/// How often an instance sharing the bench's log renews its live hash's expiry when it has
/// nothing to write: well within the window.
const LIVE_REFRESH_EVERY: Duration = Duration::from_secs(10);

/// One write to Redis.
#[derive(Debug)]
enum Write {
    Log {
        key: String,
        entry: String,
    },
    Keep {
        key: String,
        session: String,
        live: Option<LiveEntry>,
    },
    Take {
        key: String,
    },
    /// Take a session out and answer with it. It goes through the queue, after every write
    /// before it: a session this process kept a moment ago is in Redis when it is asked for.
    Fetch {
        key: String,
        live: Option<LiveEntry>,
        reply: oneshot::Sender<Result<Option<String>, String>>,
    },
    /// The live copy of a connected socket's session (instances sharing the bench's log).
    Live {
        entry: LiveEntry,
        session: String,
    },
    /// A connected socket left for good: its live copy goes.
    Ended {
        entry: LiveEntry,
    },
}

/// Where a socket's live copy and taken marker are, for instances sharing the bench's log.
#[derive(Debug)]
struct LiveEntry {
    /// This instance's live hash, and the field of the socket in it.
    hash: String,
    field: String,
    taken: String,
    instance: String,
}

/// The live copies of connected sockets' sessions, for instances sharing the bench's log: a
/// hash per instance, so that the clients of an instance killed outright resume elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveKeys {
    /// This process's name among the instances.
    instance: String,
}

impl LiveKeys {
    fn prefix() -> String {
        format!("{PREFIX}bench:live:")
    }

    fn instances() -> String {
        format!("{PREFIX}bench:live-instances")
    }

    fn hash(&self) -> String {
        format!("{}{}", Self::prefix(), self.instance)
    }

    fn entry(&self, namespace: &str, pid: Sid) -> LiveEntry {
        LiveEntry {
            hash: self.hash(),
            field: format!("{namespace} {pid}"),
            taken: format!("{PREFIX}bench:taken:{namespace}:{pid}"),
            instance: self.instance.clone(),
        }
    }
}

/// Where this process's recovery state lives in Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreKeys {
    /// `None` for the bench's only instance; for one of several, a name that stays the same
    /// across its restarts (its port), so that the next process finds what it left.
    instance: Option<String>,
    /// For instances sharing the bench's log: where this one keeps its sockets' live copies.
    live: Option<LiveKeys>,
}

impl StoreKeys {
    /// The keys of the bench's only instance.
    pub fn single() -> Self {
        Self::default()
    }

    /// The keys of instances that share the bench's log: one session key space for all, and
    /// the live copies of this instance's (`instance`, its name among them) sockets.
    pub fn bench(instance: String) -> Self {
        Self {
            instance: Some("bench".to_owned()),
            live: Some(LiveKeys { instance }),
        }
    }

    /// The keys of the instance named `instance` among several.
    pub fn of_instance(instance: String) -> Self {
        Self {
            instance: Some(instance),
            live: None,
        }
    }

    fn live_entry(&self, namespace: &str, pid: Sid) -> Option<LiveEntry> {
        Some(self.live.as_ref()?.entry(namespace, pid))
    }

    fn base(&self, namespace: &str) -> String {
        match &self.instance {
            Some(instance) => format!("{PREFIX}{instance}:{namespace}"),
            None => format!("{PREFIX}{namespace}"),
        }
    }

    fn log(&self, namespace: &str) -> String {
        format!("{}:log", self.base(namespace))
    }

    fn session(&self, namespace: &str, pid: Sid) -> String {
        format!("{}:session:{pid}", self.base(namespace))
    }

    fn sessions(&self, namespace: &str) -> String {
        format!("{}:session:*", self.base(namespace))
    }
}

/// The Redis store's side of the Socket.IO layer: a [`RecoveryMirror`] that queues writes.
pub struct RedisStore {
    sender: Mutex<Option<mpsc::Sender<Write>>>,
    keys: StoreKeys,
}

impl RedisStore {
    /// The store and its writer task, which ends once [`RedisStore::close`] was called and
    /// every queued write went out.
    pub fn start(
        connection: ConnectionManager,
        config: RecoveryConfig,
        keys: StoreKeys,
    ) -> (Arc<Self>, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let live_hash = keys.live.as_ref().map(LiveKeys::hash);
        let writer = tokio::spawn(writer(receiver, connection, config, live_hash));
        let store = Arc::new(Self {
            sender: Mutex::new(Some(sender)),
            keys,
        });
        (store, writer)
    }

    /// The mirror to put in the Socket.IO layer's configuration.
    pub fn mirror(self: &Arc<Self>) -> Mirror {
        Mirror(self.clone())
    }

    /// The store as the source of sessions kept by any instance sharing the bench's log.
    pub fn shared_sessions(self: &Arc<Self>) -> SharedSessions {
        SharedSessions(self.clone())
    }

    /// Take no more writes; the writer finishes what is queued and ends.
    pub fn close(&self) {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Keep every connected socket's session, then wait (bounded) for the writer to put them
    /// and everything before them in Redis: for a process that is exiting.
    pub async fn flush_at_shutdown(&self, io: &Io, writer: JoinHandle<()>) {
        let kept = io.keep_all_sessions();
        self.close();
        match tokio::time::timeout(FLUSH_TIMEOUT, writer).await {
            Ok(_) => tracing::info!(
                sessions = kept,
                "sessions kept in Redis for their clients' return"
            ),
            Err(_) => {
                tracing::warn!("the recovery store's last writes did not reach Redis in time");
            }
        }
    }

    fn send(&self, write: Write) {
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(sender) = sender.as_ref() else {
            return;
        };
        if sender.try_send(write).is_err() {
            counter!(metrics::RECOVERY_STORE_LOST, "reason" => "queue_full").increment(1);
        }
    }
}

impl RecoveryMirror for RedisStore {
    fn logged(&self, namespace: &str, entry: &LoggedEntry) {
        // A struct of numbers and strings always serialises.
        let entry = serde_json::to_string(entry).unwrap_or_default();
        self.send(Write::Log {
            key: self.keys.log(namespace),
            entry,
        });
    }

    fn kept(&self, namespace: &str, pid: Sid, session: &KeptSession) {
        let session = serde_json::to_string(session).unwrap_or_default();
        self.send(Write::Keep {
            key: self.keys.session(namespace, pid),
            session,
            live: self.keys.live_entry(namespace, pid),
        });
    }

    fn live(&self, namespace: &str, pid: Sid, session: &KeptSession) {
        let Some(entry) = self.keys.live_entry(namespace, pid) else {
            return;
        };
        let session = serde_json::to_string(session).unwrap_or_default();
        self.send(Write::Live { entry, session });
    }

    fn ended(&self, namespace: &str, pid: Sid) {
        if let Some(entry) = self.keys.live_entry(namespace, pid) {
            self.send(Write::Ended { entry });
        }
    }

    fn taken(&self, namespace: &str, pid: Sid) {
        self.send(Write::Take {
            key: self.keys.session(namespace, pid),
        });
    }
}

impl SessionSource for RedisStore {
    fn take(&self, namespace: &str, pid: Sid) -> SessionAnswer {
        let (reply, answer) = oneshot::channel();
        let fetch = Write::Fetch {
            key: self.keys.session(namespace, pid),
            live: self.keys.live_entry(namespace, pid),
            reply,
        };
        let queued = {
            let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
            sender.as_ref().map(|sender| sender.try_send(fetch).is_ok())
        };
        Box::pin(async move {
            match queued {
                Some(true) => {}
                Some(false) => return Err("the store's queue is full".to_owned()),
                None => return Err("the store is closed".to_owned()),
            }
            let text = answer
                .await
                .map_err(|_| "the store's writer ended".to_owned())??;
            // A session that does not read back is no session.
            Ok(text.and_then(|text| serde_json::from_str(&text).ok()))
        })
    }
}

/// Send queued writes in pipelines until the store is closed and the queue is empty; with
/// live copies (`live_hash`), renew their hash's expiry while there is nothing to write.
async fn writer(
    mut receiver: mpsc::Receiver<Write>,
    mut connection: ConnectionManager,
    config: RecoveryConfig,
    live_hash: Option<String>,
) {
    let window_ms = metrics::millis(config.window);
    let mut refresh = tokio::time::interval(LIVE_REFRESH_EVERY);
    loop {
        let first = tokio::select! {
            write = receiver.recv() => match write {
                Some(write) => write,
                None => return,
            },
            _ = refresh.tick(), if live_hash.is_some() => {
                if let Some(hash) = &live_hash {
                    renew_live(&mut connection, hash, window_ms).await;
                }
                continue;
            }
        };
        let mut batch = vec![first];
        // A fetch ends its batch: its answer is the pipeline's one reply.
        while batch.len() < BATCH && !matches!(batch.last(), Some(Write::Fetch { .. })) {
            match receiver.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        write_batch(&mut connection, batch, window_ms, config.max_events).await;
    }
}

/// Renew the expiry of this instance's live hash, which its writes renew too.
async fn renew_live(connection: &mut ConnectionManager, hash: &str, window_ms: u64) {
    let renewed: redis::RedisResult<i64> = redis::cmd("PEXPIRE")
        .arg(hash)
        .arg(window_ms)
        .query_async(connection)
        .await;
    if let Err(error) = renewed {
        tracing::debug!(%error, "cannot renew the live sessions' expiry");
    }
}

/// Send one batch of writes as a pipeline; a fetch's answer goes to whoever asked.
async fn write_batch(
    connection: &mut ConnectionManager,
    batch: Vec<Write>,
    window_ms: u64,
    max_events: usize,
) {
    let writes = batch
        .iter()
        .filter(|write| !matches!(write, Write::Fetch { .. }))
        .count();
    let mut reply = None;
    let mut pipe = redis::pipe();
    for write in batch {
        match write {
            Write::Log { key, entry } => {
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(max_events)
                    .arg("*")
                    .arg("e")
                    .arg(entry)
                    .ignore();
                pipe.cmd("PEXPIRE").arg(key).arg(window_ms).ignore();
            }
            Write::Keep {
                key,
                session,
                live: None,
            } => {
                pipe.cmd("SET")
                    .arg(key)
                    .arg(session)
                    .arg("PX")
                    .arg(window_ms)
                    .ignore();
            }
            Write::Keep {
                key,
                session,
                live: Some(live),
            } => {
                pipe.cmd("EVAL")
                    .arg(KEEP_SHARED)
                    .arg(3)
                    .arg(key)
                    .arg(&live.hash)
                    .arg(&live.taken)
                    .arg(session)
                    .arg(window_ms)
                    .arg(&live.field)
                    .arg(&live.instance)
                    .ignore();
            }
            Write::Take { key } => {
                pipe.cmd("DEL").arg(key).ignore();
            }
            Write::Live { entry, session } => {
                pipe.cmd("EVAL")
                    .arg(LIVE_SHARED)
                    .arg(3)
                    .arg(&entry.hash)
                    .arg(LiveKeys::instances())
                    .arg(&entry.taken)
                    .arg(&entry.field)
                    .arg(session)
                    .arg(window_ms)
                    .arg(&entry.instance)
                    .ignore();
            }
            Write::Ended { entry } => {
                pipe.cmd("HDEL").arg(&entry.hash).arg(&entry.field).ignore();
            }
            Write::Fetch {
                key,
                live,
                reply: sender,
            } => {
                match live {
                    None => pipe.cmd("EVAL").arg(GET_AND_DELETE).arg(1).arg(key),
                    Some(live) => pipe
                        .cmd("EVAL")
                        .arg(TAKE_SHARED)
                        .arg(3)
                        .arg(key)
                        .arg(LiveKeys::instances())
                        .arg(&live.taken)
                        .arg(LiveKeys::prefix())
                        .arg(&live.field)
                        .arg(&live.instance)
                        .arg(window_ms),
                };
                reply = Some(sender);
            }
        }
    }
    match pipe.query_async::<Vec<Option<String>>>(connection).await {
        Ok(mut answers) => {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(answers.pop().flatten()));
            }
        }
        Err(error) => {
            tracing::warn!(%error, writes, "cannot write to the recovery store");
            counter!(metrics::RECOVERY_STORE_LOST, "reason" => "redis_error")
                .increment(writes as u64);
            if let Some(reply) = reply {
                let _ = reply.send(Err(error.to_string()));
            }
        }
    }
}

/// Load what a previous process left for `namespace` into it: the log (its newest
/// `max_events` entries within the window) and the kept sessions.
pub async fn load(
    connection: &mut ConnectionManager,
    io: &Io,
    namespace: &str,
    config: &RecoveryConfig,
    keys: &StoreKeys,
) -> anyhow::Result<(usize, usize)> {
    let Some(target) = io.namespace(namespace) else {
        return Ok((0, 0));
    };
    let log = load_log(connection, namespace, config, keys).await?;
    let sessions = load_sessions(connection, namespace, config, keys).await?;
    let counts = (log.len(), sessions.len());
    target.restore(log, sessions);
    Ok(counts)
}

async fn load_log(
    connection: &mut ConnectionManager,
    namespace: &str,
    config: &RecoveryConfig,
    keys: &StoreKeys,
) -> anyhow::Result<Vec<(LoggedEntry, Duration)>> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
        .arg(keys.log(namespace))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(config.max_events)
        .query_async(connection)
        .await
        .with_context(|| format!("reading the recovery log of {namespace}"))?;
    let now = metrics::unix_now_ms();
    let mut log: Vec<(LoggedEntry, Duration)> = entries
        .into_iter()
        .filter_map(|(id, fields)| {
            let written = id.split('-').next()?.parse::<u64>().ok()?;
            let entry = serde_json::from_str(fields.get("e")?).ok()?;
            Some((entry, Duration::from_millis(now.saturating_sub(written))))
        })
        .filter(|(_, age)| *age <= config.window)
        .collect();
    log.reverse();
    Ok(log)
}

async fn load_sessions(
    connection: &mut ConnectionManager,
    namespace: &str,
    config: &RecoveryConfig,
    keys: &StoreKeys,
) -> anyhow::Result<Vec<(Sid, KeptSession, Duration)>> {
    let pattern = keys.sessions(namespace);
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await
            .with_context(|| format!("listing the kept sessions of {namespace}"))?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 || keys.len() >= config.max_sessions {
            break;
        }
    }
    keys.truncate(config.max_sessions);
    let mut sessions = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        }
        let answers: Vec<(Option<String>, i64)> = pipe
            .query_async(connection)
            .await
            .with_context(|| format!("reading the kept sessions of {namespace}"))?;
        for (key, (session, ttl_ms)) in chunk.iter().zip(answers) {
            let pid = key.rsplit(':').next().and_then(|pid| pid.parse().ok());
            let session = session.and_then(|json| serde_json::from_str(&json).ok());
            let (Some(pid), Some(session)) = (pid, session) else {
                continue;
            };
            let left = Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0));
            sessions.push((pid, session, config.window.saturating_sub(left)));
        }
    }
    Ok(sessions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_sharing_the_bench_log_share_sessions_and_keep_live_copies_apart() {
        let pid = Sid::ZERO;
        let (a, b) = (StoreKeys::bench("a".into()), StoreKeys::bench("b".into()));
        assert_eq!(
            a.session("/s", pid),
            b.session("/s", pid),
            "one key space for kept sessions"
        );
        assert_eq!(
            a.session("/s", pid),
            format!("frappe_realtime:recovery:bench:/s:session:{pid}")
        );
        let (live_a, live_b) = (a.live_entry("/s", pid), b.live_entry("/s", pid));
        let (Some(live_a), Some(live_b)) = (live_a, live_b) else {
            panic!("bench keys have live copies");
        };
        assert_eq!(live_a.hash, "frappe_realtime:recovery:bench:live:a");
        assert!(live_a.hash.starts_with(&LiveKeys::prefix()));
        assert_ne!(live_a.hash, live_b.hash, "a hash per instance");
        assert_eq!(
            (live_a.field.as_str(), &live_a.taken),
            (live_b.field.as_str(), &live_b.taken)
        );
        assert!(
            StoreKeys::of_instance("port-1".into())
                .live_entry("/s", pid)
                .is_none()
        );
        assert!(StoreKeys::single().live_entry("/s", pid).is_none());
    }

    #[test]
    fn one_of_several_instances_keeps_its_own_keys() {
        let pid = Sid::ZERO;
        let only = StoreKeys::single();
        assert_eq!(
            only.log("/a.local"),
            "frappe_realtime:recovery:/a.local:log"
        );
        let one = StoreKeys::of_instance("port-9001".into());
        assert_eq!(
            one.log("/a.local"),
            "frappe_realtime:recovery:port-9001:/a.local:log"
        );
        assert_eq!(
            one.session("/a.local", pid),
            format!("frappe_realtime:recovery:port-9001:/a.local:session:{pid}")
        );
        assert_eq!(
            one.sessions("/a.local"),
            "frappe_realtime:recovery:port-9001:/a.local:session:*"
        );
    }
}
