//! The server the official protocol test suites run against (tests/protocol-suites/, run by
//! tests/e2e/protocol-suites.test.mjs). The suites' URL is fixed: http://localhost:3000.
//!
//! `protocol_suite engine-io`: our Engine.IO server as the engine.io-protocol suite's README
//! describes its reference server: path `/engine.io`, pingInterval 300 ms, pingTimeout 200 ms,
//! maxPayload 1e6, CORS origin `*`, and every text and binary message echoed back.
//!
//! `protocol_suite socket-io`: the socket.io-protocol suite's server (not built yet).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use frappe_realtime::engine::{
    CloseReason, EngineConfig, EngineHandler, EngineService, Session, Str,
};
use tower_http::cors::{Any, CorsLayer};

const ADDRESS: &str = "127.0.0.1:3000";

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("engine-io") => serve(engine_io()).await,
        // ---- socket-io mode -------------------------------------------------------------
        // The socket.io-protocol suite's server goes here, on src/socketio/: path /socket.io,
        // pingInterval 300, pingTimeout 200, maxPayload 1e6, connectTimeout 1000, CORS `*`;
        // namespaces "/" (emit "auth" with the handshake auth, echo "message" as
        // "message-back" and acknowledge "message-with-ack" with its arguments, binary
        // included) and "/custom" (emit "auth"). Until it exists:
        Some("socket-io") => {
            eprintln!("protocol_suite socket-io: not yet (src/socketio/ is not built)");
            ExitCode::from(2)
        }
        // ---------------------------------------------------------------------------------
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
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        allow_eio3: false,
        ..EngineConfig::default()
    };
    let engine = EngineService::new(Arc::new(Echo), config, Router::new());
    Router::new().fallback_service(engine)
}

async fn serve(app: Router) -> ExitCode {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods(Any)
        .allow_headers(Any);
    let listener = match tokio::net::TcpListener::bind(ADDRESS).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "protocol_suite: cannot listen on {ADDRESS} ({error}); the suites' URL is \
                 fixed, so stop what listens there first"
            );
            return ExitCode::FAILURE;
        }
    };
    println!("protocol_suite: listening on http://{ADDRESS}");
    match axum::serve(listener, app.layer(cors)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
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
