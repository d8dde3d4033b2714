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
//! the bench's log is their log.

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
    },
    Take {
        key: String,
    },
    /// Take a session out and answer with it. It goes through the queue, after every write
    /// before it: a session this process kept a moment ago is in Redis when it is asked for.
    Fetch {
        key: String,
        reply: oneshot::Sender<Result<Option<String>, String>>,
    },
}

/// Where this process's recovery state lives in Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreKeys {
    /// `None` for the bench's only instance; for one of several, a name that stays the same
    /// across its restarts (its port), so that the next process finds what it left.
    instance: Option<String>,
}

impl StoreKeys {
    /// The keys of the bench's only instance.
    pub fn single() -> Self {
        Self::default()
    }

    /// The keys of instances that share the bench's log: one session key space for all.
    pub fn bench() -> Self {
        Self::of_instance("bench".to_owned())
    }

    /// The keys of the instance named `instance` among several.
    pub fn of_instance(instance: String) -> Self {
        Self {
            instance: Some(instance),
        }
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
        let writer = tokio::spawn(writer(receiver, connection, config));
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
        });
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
            reply,
        };
        let queued = {
            let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
            sender.as_ref().map(|sender| sender.try_send(fetch))
        };
        Box::pin(async move {
            match queued {
                Some(Ok(())) => {}
                Some(Err(_)) => return Err("the store's queue is full".to_owned()),
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

/// Send queued writes in pipelines until the store is closed and the queue is empty.
async fn writer(
    mut receiver: mpsc::Receiver<Write>,
    mut connection: ConnectionManager,
    config: RecoveryConfig,
) {
    let window_ms = u64::try_from(config.window.as_millis()).unwrap_or(u64::MAX);
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        // A fetch ends its batch: its answer is the pipeline's one reply.
        while batch.len() < BATCH && !matches!(batch.last(), Some(Write::Fetch { .. })) {
            match receiver.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
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
                        .arg(config.max_events)
                        .arg("*")
                        .arg("e")
                        .arg(entry)
                        .ignore();
                    pipe.cmd("PEXPIRE").arg(key).arg(window_ms).ignore();
                }
                Write::Keep { key, session } => {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(session)
                        .arg("PX")
                        .arg(window_ms)
                        .ignore();
                }
                Write::Take { key } => {
                    pipe.cmd("DEL").arg(key).ignore();
                }
                Write::Fetch { key, reply: sender } => {
                    pipe.cmd("EVAL").arg(GET_AND_DELETE).arg(1).arg(key);
                    reply = Some(sender);
                }
            }
        }
        match pipe
            .query_async::<Vec<Option<String>>>(&mut connection)
            .await
        {
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
