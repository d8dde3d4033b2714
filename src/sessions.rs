//! Engine.IO sessions as the service sees them. Every session event goes on to the Socket.IO
//! layer; on the way, sessions are counted as they open and slow consumers are logged and
//! counted as the engine cuts them (a session, not a socket: one connection may carry the
//! root namespace and a site's).

use std::sync::Arc;

use bytes::Bytes;
use metrics::counter;

use crate::engine::{CloseReason, EngineHandler, Session, SlowReason, Str, TransportType};
use crate::metrics as names;
use crate::socketio::{Io, SessionState, SocketIoHandler};

/// The engine's handler for the product.
pub struct Sessions(SocketIoHandler);

impl Sessions {
    pub fn new(io: Io) -> Self {
        Self(SocketIoHandler(io))
    }
}

impl EngineHandler for Sessions {
    type Data = SessionState;

    fn on_open(&self, session: &Arc<Session<SessionState>>) {
        let transport = transport_label(session.transport());
        counter!(names::ENGINE_SESSIONS_OPENED, "transport" => transport).increment(1);
        self.0.on_open(session);
    }

    fn on_message(&self, session: &Arc<Session<SessionState>>, text: Str) {
        self.0.on_message(session, text);
    }

    fn on_binary(&self, session: &Arc<Session<SessionState>>, data: Bytes) {
        self.0.on_binary(session, data);
    }

    fn on_close(&self, session: &Arc<Session<SessionState>>, reason: CloseReason) {
        if let CloseReason::SlowConsumer(slow) = reason {
            counter!(names::SLOW_CONSUMERS).increment(1);
            tracing::warn!(session = %session.id, transport = transport_label(session.transport()),
                why = slow_reason(slow), "cutting a slow consumer");
        }
        self.0.on_close(session, reason);
    }
}

pub fn transport_label(transport: TransportType) -> &'static str {
    match transport {
        TransportType::Polling => "polling",
        TransportType::Websocket => "websocket",
    }
}

/// Why a slow consumer was cut, in the words of the settings that bound it.
fn slow_reason(reason: SlowReason) -> &'static str {
    match reason {
        SlowReason::QueueFull => "its send queue overflowed",
        SlowReason::TooManyBytes => "more bytes queued than realtime_slow_client_max_bytes",
        SlowReason::Stalled => "took no bytes for realtime_slow_client_timeout",
    }
}
