//! Commands on the bench's `redis_queue` besides the `events` subscription: reading the socket
//! secret Frappe 16 shares with us, and publishing `open_in_editor` for `bench watch`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Bounds every command, so a dead Redis costs a handshake at most this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A lazily connected, self-reconnecting command connection. Cheap to clone.
#[derive(Clone)]
pub struct QueueRedis {
    client: redis::Client,
    connection: ConnectionManager,
}

impl QueueRedis {
    /// Does not connect: the service must start while Redis is down (protocol §10 #1).
    pub fn new(url: &str) -> redis::RedisResult<Self> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_max_delay(Duration::from_secs(2));
        let client = redis::Client::open(url)?;
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self { client, connection })
    }

    /// The client, for the dedicated pub/sub connection of the bridge.
    pub fn client(&self) -> redis::Client {
        self.client.clone()
    }

    /// The shared command connection, for the recovery store's pipelines.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    pub async fn get(&self, key: &str) -> redis::RedisResult<Option<String>> {
        self.connection.clone().get(key).await
    }

    pub async fn publish(&self, channel: &str, payload: &str) -> redis::RedisResult<()> {
        self.connection.clone().publish(channel, payload).await
    }
}

/// The delays between attempts to reconnect a dedicated connection (the `events`
/// subscription, the bench log's reader): quickly, then every 0.5–1 s (backon's jitter adds
/// up to the delay itself), so the link is back within a second of Redis answering; an
/// attempt a second costs nothing.
pub fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_millis(500))
        .with_jitter()
        .without_max_times()
        .build()
}
