//! What every handler shares: the bench's configuration and the clients of Frappe and Redis.

use crate::auth::FrappeClient;
use crate::config::Config;
use crate::queue_redis::QueueRedis;
use crate::reconnects::ReconnectTracker;

pub struct App {
    pub config: Config,
    pub frappe: FrappeClient,
    pub redis: QueueRedis,
    pub reconnects: ReconnectTracker,
}

impl App {
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let redis = QueueRedis::new(&config.redis_queue)
            .map_err(|e| anyhow::anyhow!("redis_queue is not usable: {}", e.category()))?;
        let frappe = FrappeClient::new(&config, redis.clone())?;
        Ok(Self {
            reconnects: ReconnectTracker::new(config.reconnect_window),
            config,
            frappe,
            redis,
        })
    }
}
