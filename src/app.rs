//! What every handler shares: the bench's configuration and the clients of Frappe and Redis.

use std::sync::{Arc, PoisonError, RwLock};

use crate::app_handlers::AppHandlers;
use crate::auth::FrappeClient;
use crate::caps::Seats;
use crate::config::{Config, Listen};
use crate::last_state::LastState;
use crate::queue_redis::QueueRedis;
use crate::reconnects::ReconnectTracker;
use crate::sites::SiteTable;

pub struct App {
    /// Replaced as a whole on SIGHUP; a handshake or event uses one snapshot throughout.
    current: RwLock<Arc<Settings>>,
    pub redis: QueueRedis,
    pub reconnects: ReconnectTracker,
    /// Connection counts for `realtime_max_connections_per_*`.
    pub seats: Arc<Seats>,
    /// The bench's sites, kept current by the site registry.
    pub sites: Arc<SiteTable>,
    /// The latest publications late subscribers get at once.
    pub last_state: LastState,
}

/// The configuration and what is built from it that can change without a restart.
pub struct Settings {
    pub config: Config,
    pub frappe: FrappeClient,
    /// The installed apps' handlers, loaded again on SIGHUP.
    pub app_handlers: Arc<AppHandlers>,
}

impl App {
    pub fn new(config: Config, app_handlers: AppHandlers) -> anyhow::Result<Self> {
        let redis = QueueRedis::new(&config.redis_queue)
            .map_err(|e| anyhow::anyhow!("redis_queue is not usable: {}", e.category()))?;
        let frappe = FrappeClient::new(&config, redis.clone())?;
        let last_state = LastState::new(config.last_state.clone());
        Ok(Self {
            last_state,
            reconnects: ReconnectTracker::new(config.reconnect_window),
            current: RwLock::new(Arc::new(Settings {
                config,
                frappe,
                app_handlers: Arc::new(app_handlers),
            })),
            redis,
            seats: Arc::default(),
            sites: Arc::default(),
        })
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Apply a re-read configuration. Keys whose change needs a restart keep their running
    /// value; their names are returned so the caller can say so.
    pub fn reload(
        &self,
        mut config: Config,
        app_handlers: AppHandlers,
    ) -> anyhow::Result<Vec<&'static str>> {
        let running = self.settings();
        let old = &running.config;
        let mut needs_restart = Vec::new();
        if config.listen != old.listen {
            needs_restart.push(match (&old.listen, &config.listen) {
                (Listen::Port(_), Listen::Port(_)) => "socketio_port",
                _ => "socketio_uds",
            });
            config.listen = old.listen.clone();
        }
        if config.redis_queue != old.redis_queue {
            needs_restart.push(if old.frappe_version.has_site_namespaces() {
                "redis_queue"
            } else {
                "redis_socketio"
            });
            config.redis_queue = old.redis_queue.clone();
        }
        // Frappe 13/14 and 15+ lay out namespaces differently; the registry set them up at start.
        if config.frappe_version.has_site_namespaces() != old.frappe_version.has_site_namespaces() {
            needs_restart.push("realtime_frappe_version");
            config.frappe_version = old.frappe_version;
        }
        if config.reconnect_window != old.reconnect_window {
            needs_restart.push("realtime_reconnect_window");
            config.reconnect_window = old.reconnect_window;
        }
        // The engine bounds every session's queue and stall with these from the start.
        if config.slow_client_timeout != old.slow_client_timeout {
            needs_restart.push("realtime_slow_client_timeout");
            config.slow_client_timeout = old.slow_client_timeout;
        }
        if config.slow_client_max_bytes != old.slow_client_max_bytes {
            needs_restart.push("realtime_slow_client_max_bytes");
            config.slow_client_max_bytes = old.slow_client_max_bytes;
        }
        // Every namespace's store is made with these at start.
        if config.recovery != old.recovery {
            needs_restart.push("realtime_recovery_*");
            config.recovery = old.recovery.clone();
        }
        if config.recovery_store != old.recovery_store {
            needs_restart.push("realtime_recovery_store");
            config.recovery_store = old.recovery_store;
        }
        if config.last_state != old.last_state {
            needs_restart.push("realtime_last_state_*");
            config.last_state = old.last_state.clone();
        }
        let frappe = FrappeClient::new(&config, self.redis.clone())?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Settings {
            config,
            frappe,
            app_handlers: Arc::new(app_handlers),
        });
        Ok(needs_restart)
    }
}
