//! The server the official protocol test suites run against (tests/protocol-suites/, run by
//! tests/e2e/protocol/2-protocol-suites.test.mjs). The suites' URL is fixed: http://localhost:3000.
//!
//! `protocol_suite engine-io`: our Engine.IO server as the engine.io-protocol suite's README
//! describes its reference server: path `/engine.io`, pingInterval 300 ms, pingTimeout 200 ms,
//! maxPayload 1e6, CORS origin `*`, and every text and binary message echoed back.
//!
//! `protocol_suite socket-io`: our Socket.IO layer over it, as the socket.io-protocol suite's
//! README describes its server: path `/socket.io`, the same ping and payload settings,
//! connectTimeout 1 s, and the namespaces of `support/socketio_suite.rs` (shared with
//! tests/socketio.rs, so the suite and our own tests check the same handler).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use frappe_realtime::engine::{
    CloseReason, EngineConfig, EngineHandler, EngineService, Session, Str,
};
use tower_http::cors::{Any, CorsLayer};

#[path = "support/socketio_suite.rs"]
mod socketio_suite;

/// Loopback only; the suites' URL is http://localhost:3000.
const ADDRESSES: [&str; 2] = ["127.0.0.1:3000", "[::1]:3000"];
/// The socket.io-protocol suite's `connectTimeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("engine-io") => serve(engine_io()).await,
        Some("socket-io") => serve(socket_io()).await,
        _ => {
            eprintln!("usage: protocol_suite engine-io|socket-io");
            ExitCode::from(2)
        }
    }
}

/// The engine.io-protocol suite's server: an echo on `/engine.io`.
fn engine_io() -> Router {
    let config = EngineConfig {
        path: "/engine.io".into(),
        ..suite_engine_config()
    };
    let engine = EngineService::new(Arc::new(Echo), config, Router::new());
    Router::new().fallback_service(engine)
}

/// The socket.io-protocol suite's server: `/` and `/custom` on `/socket.io`.
fn socket_io() -> Router {
    let config = EngineConfig {
        path: "/socket.io".into(),
        ..suite_engine_config()
    };
    let service = socketio_suite::io(CONNECT_TIMEOUT).service(config, Router::new());
    Router::new().fallback_service(service)
}

/// The settings both suites' READMEs give their reference servers.
fn suite_engine_config() -> EngineConfig {
    EngineConfig {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        allow_eio3: false,
        ..EngineConfig::default()
    }
}

/// Serve `app` on both loopback addresses. The suites' URL names `localhost`, which Node tries
/// as `::1` first: with only 127.0.0.1 listening, every request of the suite would first be
/// refused on `::1`, and the extra round trips push its timed heartbeat tests past the 1 s
/// connect timeout.
async fn serve(app: Router) -> ExitCode {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods(Any)
        .allow_headers(Any);
    let app = app.layer(cors);
    let mut servers = tokio::task::JoinSet::new();
    for address in ADDRESSES {
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!(
                    "protocol_suite: cannot listen on {address} ({error}); the suites' URL is \
                     fixed, so stop what listens there first"
                );
                return ExitCode::FAILURE;
            }
        };
        println!("protocol_suite: listening on http://{address}");
        servers.spawn(axum::serve(listener, app.clone()).into_future());
    }
    match servers.join_next().await {
        Some(Ok(Ok(()))) | None => ExitCode::SUCCESS,
        Some(Ok(Err(error))) => {
            eprintln!("protocol_suite: {error}");
            ExitCode::FAILURE
        }
        Some(Err(error)) => {
            eprintln!("protocol_suite: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Sends every message back as it came.
struct Echo;

impl EngineHandler for Echo {
    type Data = ();

    fn on_open(&self, _session: &Arc<Session<()>>) {}

    fn on_message(&self, session: &Arc<Session<()>>, text: Str) {
        // A refused send has already cut the session as a slow consumer.
        let _ = session.send(text, &[]);
    }

    fn on_binary(&self, session: &Arc<Session<()>>, data: Bytes) {
        let _ = session.send_binary(data);
    }

    fn on_close(&self, _session: &Arc<Session<()>>, _reason: CloseReason) {}
}
