//! What every handler shares: the bench's configuration and the clients of Frappe and Redis.

use std::sync::{Arc, PoisonError, RwLock};

use crate::app_handlers::AppHandlers;
use crate::auth::FrappeClient;
use crate::caps::Seats;
use crate::config::Config;
use crate::last_state::LastState;
use crate::queue_redis::QueueRedis;
use crate::reconnects::ReconnectTracker;
use crate::reload;
use crate::sites::SiteTable;

pub struct App {
    /// Replaced as a whole on SIGHUP; a handshake or event uses one snapshot throughout.
    current: RwLock<Arc<Settings>>,
    /// Lives as long as the process; a reload hands it the new values.
    pub frappe: FrappeClient,
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
                app_handlers: Arc::new(app_handlers),
            })),
            frappe,
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
        let needs_restart = reload::keep_restart_values(&mut config, &running.config);
        self.frappe.apply(&config)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Settings {
            config,
            app_handlers: Arc::new(app_handlers),
        });
        Ok(needs_restart)
    }
}
