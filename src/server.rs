//! The process around a [`Node`]: listen on the bench's port or Unix socket, serve until
//! SIGTERM / SIGINT, then shut the node down.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use anyhow::Context;
use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};

use crate::config::{Config, Listen, Overrides};
use crate::connection::Peer;
use crate::engine::UpstreamSlot;
use crate::node::{Node, NodeOptions};

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
    /// This instance's `server` line behind an nginx `hash $arg_sid` upstream.
    pub upstream_slot: Option<UpstreamSlot>,
}

/// Serve until `shutdown` resolves: start a [`Node`], put it behind the bench's listener,
/// wait, then shut it down.
pub async fn run(
    config: Config,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listen = config.listen.clone();
    let node = Node::start(
        config,
        NodeOptions {
            no_metrics: options.no_metrics,
            overrides: options.overrides,
            metrics_addr: options.metrics_addr,
            upstream_slot: options.upstream_slot,
        },
    )
    .await?;
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down");
    };
    let service = node.http_service();
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
    // The port is closed: no client can reach this process any more.
    node.shutdown().await;
    if let Listen::Unix(path) = &listen {
        let _ = std::fs::remove_file(path);
    }
    result
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
