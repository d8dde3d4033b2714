//! What every part of the running service reaches, as one cheap handle, with the operations
//! an operator can ask for: disconnecting a user, reloading the configuration. The
//! [`crate::node::Node`] that owns the service's tasks hands it to its parts.

use std::sync::Arc;
use std::time::Duration;

use ::metrics::counter;

use crate::admission::Admission;
use crate::app::App;
use crate::app_handlers::AppHandlers;
use crate::audience;
use crate::bridge::Subscription;
use crate::config::{Config, Overrides};
use crate::disconnect::DisconnectCause;
use crate::handlers::frappe_events;
use crate::metrics;
use crate::revoke;
use crate::shared::Instances;
use crate::shared::bench_log::BenchLog;
use crate::socketio::Io;

/// Time a client has to send its namespace CONNECT, beyond the callback to Frappe that the
/// handshake waits for. See [`connect_timeout`].
const CONNECT_MARGIN: Duration = Duration::from_secs(5);

/// What every part of the running service reaches. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    pub app: Arc<App>,
    pub io: Io,
    pub admission: Arc<Admission>,
    /// Whether the bridge is subscribed to Frappe's events right now.
    pub subscription: Subscription,
    /// The other instances on the same Redis, when they share state.
    pub instances: Option<Arc<Instances>>,
    /// This instance's part in the bench's shared log of events, when recovery is shared.
    pub bench_log: Option<Arc<BenchLog>>,
}

impl Service {
    /// Disconnect every socket of `user` on `site`, here and on every other instance on the
    /// same Redis (see [`crate::revoke`]). How many were here, and whether the others were
    /// told (the revocation is published on [`revoke::CHANNEL`], which every instance, this
    /// one too, acts on).
    pub async fn disconnect_user(&self, site: &str, user: &str) -> (usize, bool) {
        let here = revoke::disconnect_user(&self.io, &self.app, site, user);
        let revocation = revoke::Revocation {
            site: site.to_owned(),
            user: user.to_owned(),
        };
        let told = match serde_json::to_string(&revocation) {
            Ok(message) => self.app.redis.publish(revoke::CHANNEL, &message).await,
            Err(e) => Err(redis::RedisError::from(std::io::Error::other(e))),
        };
        if let Err(e) = &told {
            tracing::warn!(%site, error = %e, "cannot tell the other instances of a revocation");
        }
        (here, told.is_ok())
    }

    /// Re-read the bench's configuration and the apps' handler files (SIGHUP). Keys that
    /// need a restart keep their running value and are logged; a configuration that does
    /// not load leaves the running one in place.
    pub fn reload(&self, overrides: &Overrides) {
        let bench = self.app.settings().config.bench_dir.clone();
        let reloaded = Config::load(&bench, overrides)
            .map_err(anyhow::Error::from)
            .and_then(|config| {
                let app_handlers = AppHandlers::load(&config.bench_dir, &frappe_events());
                self.app.reload(config, app_handlers)
            });
        match reloaded {
            Ok(needs_restart) => {
                let callback_timeout = self.app.settings().config.callback_timeout;
                self.io
                    .set_connect_timeout(connect_timeout(callback_timeout));
                tracing::info!("configuration reloaded");
                for key in needs_restart {
                    tracing::warn!(key, "changed; takes effect at the next restart");
                }
            }
            Err(e) => tracing::error!("configuration not reloaded, the running one stays: {e:#}"),
        }
    }

    /// Count and log the sockets a shutdown disconnects, per site: they go with the process,
    /// so their own disconnect handlers never run.
    pub fn note_shutdown_disconnects(&self) {
        let shutdown = DisconnectCause::ServerShutdown;
        for site in self.app.sites.names() {
            let sockets = audience::site_sockets(&self.io, &site).len();
            if sockets > 0 {
                counter!(metrics::DISCONNECTS, "site" => site.clone(), "reason" => shutdown.label())
                    .increment(sockets as u64);
                tracing::info!(%site, sockets, reason = shutdown.label(), "closing the site's connections");
            }
        }
    }
}

/// How long a session may go without a connected namespace before it is closed. Node's 45 s
/// default would let a stream of refused handshakes hold 45 s worth of sessions; Frappe's
/// clients send CONNECT as soon as the transport opens, so the time the handshake needs is
/// our call to Frappe plus a margin.
pub fn connect_timeout(callback_timeout: Duration) -> Duration {
    callback_timeout + CONNECT_MARGIN
}
