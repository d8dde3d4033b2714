//! The server side of the socketio/socket.io-protocol test suite (its README's "Test suite"
//! section), as namespace handlers. On `/` and `/custom` a socket is sent `auth` with its
//! handshake's auth payload (`{}` when none); on `/`, `message` is echoed back as
//! `message-back` and `message-with-ack` acked, both with the arguments exactly as received,
//! binary attachments included.
//!
//! Shared by `examples/protocol_suite.rs` (the server the suite runs against) and
//! `tests/socketio.rs` (the suite's assertions, without a network), so both check the same
//! handler.

use std::future;
use std::sync::Arc;
use std::time::Duration;

use frappe_realtime::socketio::{
    ConnectFuture, Event, Handshake, Io, IoConfig, NamespaceHandler, Refusal, Socket,
};
use serde_json::Value;

/// The suite's server with its `connectTimeout`.
pub fn io(connect_timeout: Duration) -> Io {
    let io = Io::new(IoConfig {
        connect_timeout,
        ..IoConfig::default()
    });
    for (path, echoes) in [("/", true), ("/custom", false)] {
        let added = io.add_namespace(path, Arc::new(SuiteHandler { echoes }));
        assert!(added.is_ok(), "a fresh Io has no namespace {path}");
    }
    io
}

struct SuiteHandler {
    /// `/` echoes; `/custom` only sends `auth`.
    echoes: bool,
}

/// The handshake's auth payload, sent back once connected.
struct Auth(Value);

impl NamespaceHandler for SuiteHandler {
    fn connect(&self, handshake: Handshake) -> ConnectFuture {
        let verdict = match handshake.auth_as::<Value>() {
            Ok(auth) => {
                handshake.socket.set_state(Auth(auth));
                Ok(())
            }
            Err(e) => Err(Refusal::new(e.to_string())),
        };
        Box::pin(future::ready(verdict))
    }

    fn on_connect(&self, socket: &Socket) {
        if let Some(Auth(auth)) = socket.state::<Auth>() {
            // A full queue gets the session cut by the engine; nothing to add here.
            let _ = socket.emit("auth", auth);
        }
    }

    fn on_event(&self, socket: &Socket, event: Event) {
        if !self.echoes {
            return;
        }
        match &*event.name {
            "message" => {
                let _ = socket.emit_args("message-back", &event.args);
            }
            "message-with-ack" => {
                if let Some(ack) = event.ack {
                    let _ = ack.send_args(&event.args);
                }
            }
            _ => {}
        }
    }
}
