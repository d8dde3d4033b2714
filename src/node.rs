//! The running service as one value. A [`Node`] owns the Socket.IO layer, the shared state,
//! the Redis bridge, the operators' endpoints and every background task (the site watcher,
//! the subscriber, the SIGHUP reloader, the metrics listener) in one `JoinSet`: dropping the
//! node, or [`Node::shutdown`], stops them all, so no task outlives the service it serves.
//! Its parts share a [`Service`], the handle with the operations an operator can ask for
//! (disconnecting a user, reloading the configuration).
//!
//! `server::run` only wires a node to a listener and waits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceBuilder;
use tower_http::cors::CorsLayer;

use crate::admission::Admission;
use crate::app::App;
use crate::app_handlers::AppHandlers;
use crate::audience;
use crate::bridge::{self, EventsRedis, Subscription};
use crate::client_bundle::{self, ClientBundle};
use crate::config::{Config, Listen, Overrides, RecoveryStore, SharedState};
use crate::connection::Peer;
use crate::engine::{EngineConfig, EngineService, UpstreamSlot};
use crate::handlers::{Frappe, frappe_events};
use crate::handshake;
use crate::metrics::Metrics;
use crate::ops;
use crate::recovery_store::{self, RedisStore, StoreKeys};
use crate::service::{Service, connect_timeout};
use crate::sessions::Sessions;
use crate::shared::bench_log::{self, BenchLog, Entry};
use crate::shared::{Instances, Summary};
use crate::site_registry::SiteRegistry;
use crate::socketio::{Io, IoConfig};
use crate::status;

/// Node's `maxHttpBufferSize` default, which Frappe's clients expect.
const MAX_PAYLOAD: u64 = 1_000_000;
/// Packets queued per session; one more cuts it as a slow consumer. A burst of
/// `list_update`s between two polls stays well below it.
const MAX_QUEUED_PACKETS: usize = 1024;
/// Bytes tungstenite allocates (and zeroes) per websocket to read frames into. Frappe's
/// clients send events of well under 1 KiB (`doc_subscribe` with a doctype and a name,
/// pongs), which still take one read each; a larger frame is read 1 KiB per syscall into a
/// buffer reserved for its full length (tungstenite 0.30 `FrameCodec::read_frame`). Every KiB
/// here is a KiB of RSS per idle connection.
const WS_READ_BUFFER: usize = 1024;
/// How long a start may spend loading the Redis recovery store before it listens.
const RECOVERY_LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How the node is run, beyond the bench's configuration.
pub struct NodeOptions {
    /// Install no metrics recorder (every recording becomes a no-op).
    pub no_metrics: bool,
    /// Command-line overrides of the configuration, re-applied when it is reloaded.
    pub overrides: Overrides,
    /// Also serve the operators' endpoints here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// This instance's `server` line behind an nginx `hash $arg_sid` upstream.
    pub upstream_slot: Option<UpstreamSlot>,
}

/// The running service; see the module's documentation.
pub struct Node {
    service: Service,
    /// Every background task; dropped (aborted) with the node.
    tasks: JoinSet<()>,
    /// Recovery's Redis store and its writer task, flushed at shutdown.
    redis_store: Option<(Arc<RedisStore>, JoinHandle<()>)>,
    http: Router,
}

impl Node {
    /// Build the service for `config`: the layer, the root and site namespaces, what the
    /// previous process left in the recovery store, then the background tasks.
    pub async fn start(config: Config, options: NodeOptions) -> anyhow::Result<Self> {
        let metrics = if options.no_metrics {
            None
        } else {
            Some(Metrics::install()?)
        };
        let client_bundle = ClientBundle::new(&config.bench_dir);
        let app_handlers = AppHandlers::load(&config.bench_dir, &frappe_events());
        let app = Arc::new(App::new(config, app_handlers)?);
        let config = app.settings().config.clone();
        tracing::info!(frappe_version = %config.frappe_version, "speaking Frappe's realtime protocol");

        let shares_log = shares_bench_log(&config);
        let instance = Instances::new_name();
        let store_keys = recovery_store_keys(&config, options.upstream_slot, shares_log, &instance);
        let redis_store = match (&config.recovery, config.recovery_store) {
            (Some(recovery), RecoveryStore::Redis) => Some(RedisStore::start(
                app.redis.connection(),
                recovery.clone(),
                store_keys.clone(),
            )),
            _ => None,
        };
        let io = Io::new(IoConfig {
            connect_timeout: connect_timeout(config.callback_timeout),
            recovery: config.recovery.clone(),
            recovery_mirror: redis_store.as_ref().map(|(store, _)| store.mirror()),
            shared_sessions: redis_store
                .as_ref()
                .filter(|_| shares_log)
                .map(|(store, _)| store.shared_sessions()),
            ..IoConfig::default()
        });
        let mut service = Service {
            app,
            io,
            admission: Arc::new(Admission::default()),
            subscription: Subscription::default(),
            instances: None,
            bench_log: None,
        };
        let mut tasks = JoinSet::new();
        if config.shared_state == SharedState::Redis {
            share_state(&mut service, &mut tasks, instance);
        }
        if shares_log {
            share_log(&mut service, &mut tasks)?;
        }
        let registry = serve_namespaces(&service, &config).await?;
        match &service.bench_log {
            Some(bench_log) => read_bench_log(&service, bench_log.clone(), &mut tasks).await,
            None if redis_store.is_some() => load_recovery(&service, &store_keys).await,
            None => {}
        }

        let ops = ops::router(Arc::new(ops::Ops {
            service: service.clone(),
            metrics,
        }));
        tasks.spawn(registry.watch());
        tasks.spawn(bridge::run(
            service.io.clone(),
            service.app.clone(),
            events_redis(&service, &config),
            service.subscription.clone(),
            service.bench_log.clone(),
        ));
        tasks.spawn(reload_on_hangup(service.clone(), options.overrides));
        if let Some(address) = options.metrics_addr {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on --metrics-addr {address}"))?;
            tracing::info!("metrics and health on http://{address}/metrics");
            tasks.spawn(serve_ops(listener, ops.clone()));
        }
        let engine = engine_config(&config, options.upstream_slot);
        let http = http_service(&service.io, engine, ops, client_bundle);
        Ok(Self {
            service,
            tasks,
            redis_store,
            http,
        })
    }

    /// The whole HTTP service, for the listener.
    pub fn http_service(&self) -> Router {
        self.http.clone()
    }

    /// Stop the background tasks and keep what recovery needs for the next process. Call it
    /// once the listener is closed: no client can reach the service any more, and returning
    /// drops every connection with the process.
    pub async fn shutdown(mut self) {
        self.service.note_shutdown_disconnects();
        // Waits for each task to end: nothing is delivered after this, so nothing reaches
        // clients without reaching the store, where a recovering client would skip past it.
        self.tasks.shutdown().await;
        // Nothing is copied any more: the next copier may start at once.
        if let Some(bench_log) = &self.service.bench_log {
            bench_log.leave().await;
        }
        if let Some((store, writer)) = self.redis_store.take() {
            store.flush_at_shutdown(&self.service.io, writer).await;
        }
        if let Some(instances) = &self.service.instances {
            instances.leave().await;
        }
    }
}

/// Join the other instances on `redis_queue` (`realtime_shared_state: "redis"`): their
/// heartbeat and presence writer become tasks of this node.
fn share_state(service: &mut Service, tasks: &mut JoinSet<()>, name: String) {
    let summarised = service.clone();
    let summary: Summary = Box::new(move || status::summary(&summarised));
    let connection = service.app.redis.connection();
    let (instances, writer, heartbeat) = Instances::start(connection, name, summary);
    tracing::info!(instance = %instances.name, "sharing state with the other instances on the events Redis (redis_queue; redis_socketio before Frappe 15)");
    tasks.spawn(writer);
    tasks.spawn(heartbeat);
    service.instances = Some(instances);
}

/// Whether the instances share the bench's log of events (`crate::shared::bench_log`), so
/// that a client recovers on any of them: they share state, and recovery keeps its state in
/// Redis.
fn shares_bench_log(config: &Config) -> bool {
    config.shared_state == SharedState::Redis
        && config.recovery.is_some()
        && config.recovery_store == RecoveryStore::Redis
}

/// Take part in the bench's log: its lease and copier become a task of this node.
fn share_log(service: &mut Service, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
    let settings = service.app.settings();
    let (Some(instances), Some(recovery)) = (&service.instances, &settings.config.recovery) else {
        return Ok(());
    };
    let (bench_log, task) =
        BenchLog::start(service.app.redis.client(), instances.name.clone(), recovery)
            .context("connecting the bench log to redis_queue")?;
    tracing::info!("recovery across instances: events are delivered from the bench's shared log");
    tasks.spawn(task);
    service.bench_log = Some(bench_log);
    Ok(())
}

/// Log what the bench's log holds of the last window (no client is connected yet, so it only
/// fills the replay logs), then read on from there, delivering, for as long as the node runs.
async fn read_bench_log(service: &Service, bench_log: Arc<BenchLog>, tasks: &mut JoinSet<()>) {
    let (entries, last) = bench_log.recent_entries().await;
    if !entries.is_empty() {
        tracing::info!(events = entries.len(), "the bench log's last window logged");
    }
    for (id, payload) in entries {
        bridge::log_history(&service.io, &service.app, &payload, numbered(&id));
    }
    let deliver = {
        let (io, app) = (service.io.clone(), service.app.clone());
        move |(id, payload): Entry| bridge::handle(&io, &app, &payload, numbered(&id))
    };
    let client = service.app.redis.client();
    tasks.spawn(bench_log.read(client, last, deliver));
}

/// The offset of the bench log's entry `id`; `None` (delivered unnumbered) for one past
/// what an offset holds.
fn numbered(id: &str) -> Option<crate::socketio::Offset> {
    let offset = bench_log::offset_of(id);
    if offset.is_none() {
        tracing::warn!(%id, "a bench log entry id too large for an offset; delivered unnumbered");
    }
    offset
}

/// Serve the root namespace and, through the registry, every site's; returns the registry,
/// whose watch keeps them equal to `sites/`.
async fn serve_namespaces(service: &Service, config: &Config) -> anyhow::Result<SiteRegistry> {
    let presence = service
        .instances
        .as_ref()
        .map(|instances| instances.presence.clone());
    let frappe = Frappe::new(
        service.app.clone(),
        service.io.clone(),
        service.admission.clone(),
        presence,
    );
    // The root namespace: Frappe 13 and 14's only one, and where non-browser clients
    // connect on any version; its handshakes name the site.
    service
        .io
        .add_namespace(audience::ROOT, frappe.clone())
        .context("serving the root namespace")?;
    let sites_dir = config.sites_dir();
    let mut registry = SiteRegistry::new(
        service.io.clone(),
        frappe,
        sites_dir.clone(),
        service.app.sites.clone(),
        config.frappe_version.has_site_namespaces(),
    );
    registry.sync().await;
    if registry.served().is_empty() {
        tracing::warn!(dir = %sites_dir.display(), "no sites found yet (a site is sites/<name>/site_config.json)");
    }
    Ok(registry)
}

/// Where recovery's Redis store keeps this process's state: the bench's only instance keeps
/// the keys it always had; instances sharing the bench's log share one key space; one of
/// several otherwise (it shares state, or it has a line in nginx's upstream) keeps its own,
/// named by its port or socket, which its restarts keep.
fn recovery_store_keys(
    config: &Config,
    upstream_slot: Option<UpstreamSlot>,
    shares_log: bool,
    instance: &str,
) -> StoreKeys {
    if shares_log {
        return StoreKeys::bench(instance.to_owned());
    }
    if config.shared_state != SharedState::Redis && upstream_slot.is_none() {
        return StoreKeys::single();
    }
    StoreKeys::of_instance(match &config.listen {
        Listen::Port(port) => format!("port-{port}"),
        Listen::Unix(path) => format!("uds-{}", path.display()),
    })
}

/// Where the subscription connects: the master Sentinel names, or `redis_queue`.
fn events_redis(service: &Service, config: &Config) -> EventsRedis {
    match &config.redis_sentinel {
        Some(sentinel) => EventsRedis::Sentinel {
            sentinel: sentinel.clone(),
            queue_url: config.redis_queue.clone(),
        },
        None => EventsRedis::Url(service.app.redis.client()),
    }
}

impl Drop for Node {
    /// The `JoinSet` aborts its tasks; the store's writer is the one task outside it (it must
    /// outlive the others at shutdown, to write what they did last).
    fn drop(&mut self) {
        if let Some((_, writer)) = &self.redis_store {
            writer.abort();
        }
    }
}

/// Load what the previous process left in the Redis recovery store, before this one takes
/// publications (its offsets continue after the loaded ones). Redis down or slow costs the
/// recovery of the previous process's clients, never the start.
async fn load_recovery(service: &Service, keys: &StoreKeys) {
    let Some(recovery) = service.app.settings().config.recovery.clone() else {
        return;
    };
    let mut connection = service.app.redis.connection();
    let io = &service.io;
    let load_all = async {
        for namespace in io.namespaces() {
            let path = namespace.path();
            match recovery_store::load(&mut connection, io, path, &recovery, keys).await {
                Ok((0, 0)) => {}
                Ok((events, sessions)) => {
                    tracing::info!(
                        namespace = path,
                        events,
                        sessions,
                        "recovery state loaded from Redis"
                    );
                }
                Err(error) => {
                    tracing::warn!(
                        namespace = path,
                        error = format!("{error:#}"),
                        "cannot load recovery state"
                    );
                }
            }
        }
    };
    if tokio::time::timeout(RECOVERY_LOAD_TIMEOUT, load_all)
        .await
        .is_err()
    {
        tracing::warn!(
            "loading recovery state from Redis took too long; starting without the rest"
        );
    }
}

/// Reload on every SIGHUP (`supervisorctl signal HUP …`, `systemctl reload`).
async fn reload_on_hangup(service: Service, overrides: Overrides) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; configuration reload is off");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        service.reload(&overrides);
    }
}

/// The operators' endpoints on `--metrics-addr`.
async fn serve_ops(listener: tokio::net::TcpListener, ops: Router) {
    let ops = ops.into_make_service_with_connect_info::<Peer>();
    if let Err(e) = axum::serve(listener, ops).await {
        tracing::error!(error = %e, "the metrics listener stopped");
    }
}

/// The engine's settings: Node's defaults where Frappe's clients rely on them, and the
/// bench's slow-consumer bounds (read once: they apply from the start, see
/// `reload::RESTART_KEYS`).
fn engine_config(config: &Config, upstream_slot: Option<UpstreamSlot>) -> EngineConfig {
    EngineConfig {
        max_payload: MAX_PAYLOAD,
        ws_read_buffer: WS_READ_BUFFER,
        max_queued_packets: MAX_QUEUED_PACKETS,
        max_queued_bytes: usize::try_from(config.slow_client_max_bytes).unwrap_or(usize::MAX),
        stall_timeout: config.slow_client_timeout,
        // Frappe 13's socket.io-client 2.x is refused for now (README, "Frappe 13").
        allow_eio3: false,
        session_headers: handshake::SESSION_HEADERS.to_vec(),
        upstream_slot,
        ..EngineConfig::default()
    }
}

/// The whole HTTP service: the socket.io client files (see [`client_bundle`]), Socket.IO under
/// `/socket.io/`, a prompt 404 elsewhere (Node leaves such requests hanging), CORS echoing the
/// Origin with credentials like Frappe's service.
///
/// The client files are routes of the outer router, so their requests never reach the
/// engine, which claims `/socket.io/` (as Node's socket.io looks at its client files before
/// handing a request to engine.io). Every other request falls through to the engine, which
/// passes what is not its own to the operators' endpoints.
fn http_service(io: &Io, engine: EngineConfig, ops: Router, client_bundle: ClientBundle) -> Router {
    let rest = ops.fallback(|| async { (StatusCode::NOT_FOUND, "Not Found\n") });
    let sessions = Arc::new(Sessions::new(io.clone()));
    let socket_io = ServiceBuilder::new()
        .layer(CorsLayer::very_permissive())
        .service(EngineService::new(sessions, engine, rest));
    // Node's socket.io runs its CORS middleware for the client files too. Layered before the
    // fallback is set, so only the client routes get this one.
    client_bundle::router(client_bundle)
        .layer(CorsLayer::very_permissive())
        .fallback_service(socket_io)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr, TcpListener};
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    /// A bench whose Redis is a closed loopback port: the subscriber keeps retrying, which is
    /// all these tests need of it.
    fn bench() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port");
        let redis = format!("redis://{}", closed.local_addr().expect("address"));
        drop(closed);
        let common = json!({"redis_queue": redis, "realtime_frappe_version": 16});
        std::fs::create_dir_all(dir.path().join("sites/a.local")).expect("sites");
        std::fs::write(dir.path().join("sites/a.local/site_config.json"), "{}").expect("site");
        std::fs::write(
            dir.path().join("sites/common_site_config.json"),
            common.to_string(),
        )
        .expect("common_site_config.json");
        dir
    }

    fn free_address() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port");
        listener.local_addr().expect("address")
    }

    async fn start(bench: &tempfile::TempDir, metrics_addr: SocketAddr) -> Node {
        // As `main` does: the HTTP client's TLS needs a provider (another test may have
        // installed it already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = Config::load(bench.path(), &Overrides::default()).expect("config");
        let options = NodeOptions {
            no_metrics: true,
            overrides: Overrides::default(),
            metrics_addr: Some(metrics_addr),
            upstream_slot: None,
        };
        Node::start(config, options).await.expect("a node")
    }

    /// Whether the operators' listener answers, within a bounded wait for it to settle.
    async fn answers(address: SocketAddr, expected: bool) -> bool {
        for _ in 0..100 {
            let connected = tokio::net::TcpStream::connect(address).await.is_ok();
            if connected == expected {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn dropping_the_node_stops_its_tasks() {
        let bench = bench();
        let address = free_address();
        let node = start(&bench, address).await;
        assert!(answers(address, true).await, "the listener task serves");
        assert!(node.service.io.namespace("/a.local").is_some());
        drop(node);
        assert!(
            answers(address, false).await,
            "the listener task went with the node"
        );
    }

    #[tokio::test]
    async fn shutting_the_node_down_waits_for_its_tasks() {
        let bench = bench();
        let address = free_address();
        let node = start(&bench, address).await;
        assert!(answers(address, true).await);
        node.shutdown().await;
        assert!(
            tokio::net::TcpStream::connect(address).await.is_err(),
            "every task has ended when shutdown returns"
        );
    }
}
