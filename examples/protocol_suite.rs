//! The server the official protocol test suites run against.
//!
//! `cargo run --example protocol_suite -- socket-io` is to serve socketio/socket.io-protocol's
//! `test-suite` (`npm ci && npm test` there): port 3000, path `/socket.io/`, pingInterval
//! 300 ms, pingTimeout 200 ms, maxPayload 1 000 000, connectTimeout 1 000 ms, CORS `*`.
//!
//! TODO(engine): the Engine.IO server (`src/engine`) is written on another branch. Once it is
//! merged, serve the `Io` below through it on `0.0.0.0:3000` with the options above, with an
//! adapter that implements `socketio::Transport` for its session and forwards its handler's
//! callbacks to `Io::on_open`, `on_message`, `on_binary` and `on_close`.

use std::process::ExitCode;
use std::time::Duration;

#[path = "support/socketio_suite.rs"]
mod socketio_suite;

/// The suite's `connectTimeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("socket-io") => socket_io(),
        _ => {
            eprintln!("usage: protocol_suite socket-io");
            ExitCode::from(2)
        }
    }
}

fn socket_io() -> ExitCode {
    let _io = socketio_suite::io(CONNECT_TIMEOUT);
    eprintln!("protocol_suite: no Engine.IO server to serve Socket.IO through yet (src/engine)");
    ExitCode::FAILURE
}
