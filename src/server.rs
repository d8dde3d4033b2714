//! Process lifecycle: build the Socket.IO service, serve it on the bench's port or Unix
//! socket, run the site watcher and the Redis bridge, and shut down on SIGTERM / SIGINT.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::connect_info::Connected;
use axum::http::StatusCode;
use axum::serve::{IncomingStream, Listener};
use tower::ServiceBuilder;
use tower_http::cors::CorsLayer;

use ::metrics::counter;

use crate::admission::Admission;
use crate::app::App;
use crate::app_handlers::AppHandlers;
use crate::audience;
use crate::bridge::{self, Subscription};
use crate::client_bundle::{self, ClientBundle};
use crate::config::{Config, Listen, Overrides, RecoveryStore};
use crate::connection::Peer;
use crate::disconnect::DisconnectCause;
use crate::engine::{EngineConfig, EngineService};
use crate::handlers::{Frappe, frappe_events};
use crate::handshake;
use crate::metrics::{self, Metrics};
use crate::ops::{self, Ops};
use crate::recovery_store::{self, RedisStore};
use crate::sessions::Sessions;
use crate::site_registry::SiteRegistry;
use crate::sites::SiteTable;
use crate::socketio::{Io, IoConfig};

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
/// Time a client has to send its namespace CONNECT, beyond the callback to Frappe that the
/// handshake waits for. See [`connect_timeout`].
const CONNECT_MARGIN: Duration = Duration::from_secs(5);
/// How long a start may spend loading the Redis recovery store before it listens.
const RECOVERY_LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How the process is run, beyond the bench's configuration (command-line flags).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// TCP address to bind (all interfaces if `None`, like Node); ignored with a Unix socket.
    pub host: Option<IpAddr>,
    /// Also serve `/metrics`, `/health` and `/ready` here.
    pub metrics_addr: Option<SocketAddr>,
    /// Install no metrics recorder (every recording becomes a no-op).
    pub no_metrics: bool,
    /// Command-line overrides of the configuration, re-applied when it is reloaded.
    pub overrides: Overrides,
}

/// Serve until `shutdown` resolves.
pub async fn run(
    config: Config,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = if options.no_metrics {
        None
    } else {
        Some(Metrics::install()?)
    };
    let listen = config.listen.clone();
    let sites_dir = config.sites_dir();
    let client_bundle = ClientBundle::new(&config.bench_dir);
    let app_handlers = AppHandlers::load(&config.bench_dir, &frappe_events());
    let app = Arc::new(App::new(config, app_handlers)?);
    tracing::info!(frappe_version = %app.settings().config.frappe_version, "speaking Frappe's realtime protocol");
    let redis = app.redis.client();

    let recovery = app.settings().config.recovery.clone();
    let redis_store = match (&recovery, app.settings().config.recovery_store) {
        (Some(recovery), RecoveryStore::Redis) => {
            Some(RedisStore::start(app.redis.connection(), recovery.clone()))
        }
        _ => None,
    };
    let io = Io::new(IoConfig {
        connect_timeout: connect_timeout(app.settings().config.callback_timeout),
        recovery,
        recovery_mirror: redis_store.as_ref().map(|(store, _)| store.mirror()),
        ..IoConfig::default()
    });
    let admission = Arc::new(Admission::default());
    let reloader = tokio::spawn(reload_on_hangup(
        app.clone(),
        io.clone(),
        options.overrides.clone(),
    ));
    let frappe = Frappe::new(app.clone(), io.clone(), admission.clone());
    // The root namespace: Frappe 13 and 14's only one, and where non-browser clients connect
    // on any version; its handshakes name the site.
    io.add_namespace(audience::ROOT, frappe.clone())
        .context("serving the root namespace")?;
    let mut registry = SiteRegistry::new(
        io.clone(),
        frappe,
        sites_dir.clone(),
        app.sites.clone(),
        app.settings().config.frappe_version.has_site_namespaces(),
    );
    registry.sync().await;
    if registry.served().is_empty() {
        tracing::warn!(dir = %sites_dir.display(), "no sites found yet (a site is sites/<name>/site_config.json)");
    }
    if redis_store.is_some() {
        load_recovery(&app, &io).await;
    }
    let watcher = tokio::spawn(registry.watch());
    let subscription = Subscription::default();
    let subscriber = tokio::spawn(bridge::run(
        io.clone(),
        app.clone(),
        redis,
        subscription.clone(),
    ));
    let ops = ops::router(Arc::new(Ops {
        app: app.clone(),
        io: io.clone(),
        metrics,
        subscription,
        admission,
    }));
    let metrics_listener = match options.metrics_addr {
        Some(address) => Some(spawn_metrics_listener(address, ops.clone()).await?),
        None => None,
    };

    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down");
    };
    let engine = engine_config(&app.settings().config);
    let service = http_service(&io, engine, ops, client_bundle);
    let result = match &listen {
        Listen::Port(port) => {
            let listener = bind_tcp(options.host, *port).await?;
            let local = listener.local_addr().context("reading the bound address")?;
            tracing::info!("Realtime service listening on: ws://{local}");
            serve(listener, service, shutdown).await
        }
        Listen::Unix(path) => {
            let listener = bind_unix(path)?;
            tracing::info!("Realtime service listening on UDS: {}", path.display());
            serve(listener, service, shutdown).await
        }
    };
    // The port is closed: no client can reach this process any more. Returning drops every
    // connection with it (see `serve`).
    note_shutdown_disconnects(&io, &app.sites);
    watcher.abort();
    subscriber.abort();
    if let Some((store, writer)) = redis_store {
        // Nothing may be delivered after the sessions are kept: it would reach clients
        // without reaching the store, and a recovering client would skip past it.
        let _ = subscriber.await;
        store.flush_at_shutdown(&io, writer).await;
    }
    reloader.abort();
    if let Some(listener) = metrics_listener {
        listener.abort();
    }
    if let Listen::Unix(path) = &listen {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Load what the previous process left in the Redis recovery store, before this one takes
/// publications (its offsets continue after the loaded ones). Redis down or slow costs the
/// recovery of the previous process's clients, never the start.
async fn load_recovery(app: &App, io: &Io) {
    let Some(recovery) = app.settings().config.recovery.clone() else {
        return;
    };
    let mut connection = app.redis.connection();
    let namespaces = io.namespaces();
    let load_all = async {
        for namespace in namespaces {
            let path = namespace.path();
            match recovery_store::load(&mut connection, io, path, &recovery).await {
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

/// Count and log the sockets a shutdown disconnects, per site: they go with the process, so
/// their own disconnect handlers never run.
fn note_shutdown_disconnects(io: &Io, sites: &SiteTable) {
    let shutdown = DisconnectCause::ServerShutdown;
    for site in sites.names() {
        let sockets = audience::site_sockets(io, &site).len();
        if sockets > 0 {
            counter!(metrics::DISCONNECTS, "site" => site.clone(), "reason" => shutdown.label())
                .increment(sockets as u64);
            tracing::info!(%site, sockets, reason = shutdown.label(), "closing the site's connections");
        }
    }
}

/// Re-read the bench's configuration and the apps' handler files on SIGHUP
/// (`supervisorctl signal HUP …`, `systemctl reload`); what needs a restart instead is
/// [`crate::reload::RESTART_KEYS`]. A configuration that does not load leaves the running one
/// in place.
async fn reload_on_hangup(app: Arc<App>, io: Io, overrides: Overrides) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; configuration reload is off");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let bench = app.settings().config.bench_dir.clone();
        let reloaded = Config::load(&bench, &overrides)
            .map_err(anyhow::Error::from)
            .and_then(|config| {
                let app_handlers = AppHandlers::load(&config.bench_dir, &frappe_events());
                app.reload(config, app_handlers)
            });
        match reloaded {
            Ok(needs_restart) => {
                io.set_connect_timeout(connect_timeout(app.settings().config.callback_timeout));
                tracing::info!("configuration reloaded");
                for key in needs_restart {
                    tracing::warn!(key, "changed; takes effect at the next restart");
                }
            }
            Err(e) => tracing::error!("configuration not reloaded, the running one stays: {e:#}"),
        }
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

/// The engine's settings: Node's defaults where Frappe's clients rely on them, and the
/// bench's slow-consumer bounds (read once: they apply from the start, see `App::reload`).
fn engine_config(config: &Config) -> EngineConfig {
    EngineConfig {
        max_payload: MAX_PAYLOAD,
        ws_read_buffer: WS_READ_BUFFER,
        max_queued_packets: MAX_QUEUED_PACKETS,
        max_queued_bytes: usize::try_from(config.slow_client_max_bytes).unwrap_or(usize::MAX),
        stall_timeout: config.slow_client_timeout,
        // Frappe 13's socket.io-client 2.x is refused for now (README, "Frappe 13").
        allow_eio3: false,
        session_headers: handshake::SESSION_HEADERS.to_vec(),
        ..EngineConfig::default()
    }
}

/// `/metrics`, `/health` and `/ready` on their own address (e.g. 127.0.0.1:9101), so
/// Prometheus can scrape a loopback port while the service port faces the proxy.
async fn spawn_metrics_listener(
    address: SocketAddr,
    ops: Router,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {address}"))?;
    tracing::info!("metrics and health on http://{address}/metrics");
    Ok(tokio::spawn(async move {
        let ops = ops.into_make_service_with_connect_info::<Peer>();
        if let Err(e) = axum::serve(listener, ops).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    }))
}

/// How long a session may go without a connected namespace before it is closed. Node's 45 s
/// default would let a stream of refused handshakes hold 45 s worth of sessions; Frappe's
/// clients send CONNECT as soon as the transport opens, so the time the handshake needs is
/// our call to Frappe plus a margin.
fn connect_timeout(callback_timeout: Duration) -> Duration {
    callback_timeout + CONNECT_MARGIN
}

/// Serve until `shutdown` resolves, then return at once. Dropping the server future drops
/// its listener, so the port is closed before this returns; the open connections go with the
/// process (see `main`).
///
/// Why not close each client's transport first, or wait for requests in flight: a client
/// cannot tell a websocket close frame from the TCP close of an exiting process (socket.io-client
/// reconnects the same way), a polling client's long-poll would hold a graceful wait for up to
/// its ping interval, and closing 19,500 transports one by one took the single core 220 ms and
/// sent the clients back to a closed port (all back 4.6 s after the restart, against 3.2 s
/// this way; 135 refused retries against none). This is also what Frappe's Node service does.
/// The listener goes first so that no client reaches a process that is going away.
async fn serve<L>(
    listener: L,
    service: Router,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    L: Listener,
    L::Addr: std::fmt::Debug,
    Peer: for<'a> Connected<IncomingStream<'a, L>>,
{
    let service = service.into_make_service_with_connect_info::<Peer>();
    tokio::select! {
        result = axum::serve(listener, service) => result.context("serving HTTP"),
        () = shutdown => Ok(()),
    }
}

/// All interfaces, IPv6 and IPv4, like Node; IPv4 only where the host has no IPv6.
async fn bind_tcp(host: Option<IpAddr>, port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let any_v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let address = host.map(|ip| SocketAddr::new(ip, port)).unwrap_or(any_v6);
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => Ok(listener),
        Err(_) if host.is_none() => tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("cannot listen on port {port}")),
        Err(e) => Err(e).with_context(|| format!("cannot listen on {address}")),
    }
}

/// Bind the bench's `socketio_uds`, removing a socket file left by an earlier run (Node
/// fails on it). Anything other than a socket at that path is left alone and reported.
fn bind_unix(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "socketio_uds {} exists and is not a socket; not removing it",
            path.display()
        );
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))
}
