//! Several instances on one bench (`realtime_shared_state: "redis"`): what they share on the
//! bench's `redis_queue`, under `frappe_realtime:shared:`.
//!
//! Each instance has a random name and renews `alive:<instance>` every [`HEARTBEAT`]; the key
//! expires after [`ALIVE_FOR`] and holds what the instance serves (its sockets and users per
//! site), which every instance's status page lists. `instances` names every instance that
//! ever wrote. An instance whose key is gone is dead: the first to notice clears what it
//! left (its documents' viewers, [`presence`]) and forgets it. A killed instance is noticed
//! within [`ALIVE_FOR`] + [`HEARTBEAT`] (8 s); one that stops cleanly deletes its key, so the
//! others notice at their next heartbeat. One that misses its renewals for [`ALIVE_FOR`]
//! while alive (its host stalled) is taken for dead too: its viewers are cleared, and come
//! back with their next open; it rejoins at its next heartbeat.

pub mod bench_log;
mod keys;
pub mod presence;

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde_json::Value;

use crate::socketio::Sid;
use keys::{PREFIX, alive_key};
use presence::RedisPresence;

/// How often an instance renews its `alive` key and looks for dead ones.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long an `alive` key lives without renewal.
const ALIVE_FOR: Duration = Duration::from_secs(6);

/// What this instance serves now, as the others' status pages show it.
pub type Summary = Box<dyn Fn() -> Value + Send + Sync>;

/// This instance among the others on the same Redis.
pub struct Instances {
    /// This process's name, in every key and member it writes.
    pub name: String,
    pub presence: Arc<RedisPresence>,
    connection: ConnectionManager,
}

impl Instances {
    /// A new process's name among the instances: random, so a restart is a new instance.
    pub fn new_name() -> String {
        Sid::new().to_string()
    }

    /// Join the instances on `connection`'s Redis as `name` ([`Instances::new_name`]).
    /// Returns the tasks to run: the presence writer and the heartbeat, which publishes
    /// `summary` and clears dead instances.
    pub fn start(
        connection: ConnectionManager,
        name: String,
        summary: Summary,
    ) -> (
        Arc<Self>,
        impl Future<Output = ()>,
        impl Future<Output = ()>,
    ) {
        let (presence, writer) = RedisPresence::start(connection.clone(), name.clone());
        let instances = Arc::new(Self {
            name,
            presence,
            connection,
        });
        let heartbeat = heartbeat(instances.clone(), summary);
        (instances, writer, heartbeat)
    }

    /// Every live instance's summary, this one's included, as each last published it.
    pub async fn summaries(&self) -> redis::RedisResult<Vec<Value>> {
        let mut connection = self.connection.clone();
        let names: Vec<String> = connection.smembers(format!("{PREFIX}instances")).await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = names.iter().map(|name| alive_key(name)).collect();
        let texts: Vec<Option<String>> = connection.mget(keys).await?;
        Ok(texts
            .into_iter()
            .flatten()
            .filter_map(|text| serde_json::from_str(&text).ok())
            .collect())
    }

    /// At a clean shutdown: this instance is gone at once, for the others' next heartbeat.
    pub async fn leave(&self) {
        let gone: redis::RedisResult<()> = self.connection.clone().del(alive_key(&self.name)).await;
        if let Err(e) = gone {
            tracing::warn!(error = %e, "cannot tell the other instances this one stops");
        }
    }

    /// Renew this instance's `alive` key with what it serves.
    async fn renew(
        &self,
        connection: &mut ConnectionManager,
        summary: &Value,
    ) -> redis::RedisResult<()> {
        let alive_ms = crate::metrics::millis(ALIVE_FOR);
        let () = redis::cmd("SET")
            .arg(alive_key(&self.name))
            .arg(summary.to_string())
            .arg("PX")
            .arg(alive_ms)
            .query_async(connection)
            .await?;
        connection
            .sadd(format!("{PREFIX}instances"), &self.name)
            .await
    }

    /// Clear what every instance whose `alive` key is gone left behind, and forget it.
    async fn clear_dead(&self, connection: &mut ConnectionManager) -> redis::RedisResult<()> {
        let names: Vec<String> = connection.smembers(format!("{PREFIX}instances")).await?;
        for other in names.iter().filter(|other| **other != self.name) {
            let alive: bool = connection.exists(alive_key(other)).await?;
            if !alive {
                self.presence.reap(connection, other).await?;
                let () = connection.srem(format!("{PREFIX}instances"), other).await?;
            }
        }
        Ok(())
    }
}

/// Every [`HEARTBEAT`]: renew this instance with its summary, then clear dead ones.
async fn heartbeat(instances: Arc<Instances>, summary: Summary) {
    let mut connection = instances.connection.clone();
    let mut ticks = tokio::time::interval(HEARTBEAT);
    loop {
        ticks.tick().await;
        let mut published = summary();
        if let Value::Object(fields) = &mut published {
            fields.insert("instance".to_owned(), Value::String(instances.name.clone()));
        }
        if let Err(e) = instances.renew(&mut connection, &published).await {
            tracing::warn!(error = %e, "cannot renew this instance on Redis");
            continue;
        }
        if let Err(e) = instances.clear_dead(&mut connection).await {
            tracing::warn!(error = %e, "cannot look for stopped instances");
        }
    }
}
