//! Socket.IO served over our Engine.IO: the adapter between the two layers.
//!
//! The engine's session is the Socket.IO layer's [`Transport`], with the layer's per-session
//! state in the session's data slot, and the engine's callbacks go straight to [`Io`].

use std::sync::Arc;

use bytes::Bytes;

use super::{Io, SessionState, Transport};
use crate::engine::{
    CloseReason, EngineConfig, EngineHandler, EngineService, ProtocolVersion, SendError, Session,
    Sid, Str, TransportType,
};

impl Transport for Session<SessionState> {
    fn id(&self) -> Sid {
        self.id
    }

    fn protocol(&self) -> ProtocolVersion {
        self.protocol
    }

    fn transport_type(&self) -> TransportType {
        self.transport()
    }

    fn send(&self, text: Str, attachments: &[Bytes]) -> Result<(), SendError> {
        Session::send(self, text, attachments)
    }

    fn send_burst(&self, groups: &[(Str, &[Bytes])]) -> Result<(), SendError> {
        Session::send_burst(self, groups)
    }

    fn close(&self, reason: CloseReason) {
        Session::close(self, reason);
    }

    fn request(&self) -> &http::request::Parts {
        Session::request(self)
    }

    fn state(&self) -> &SessionState {
        &self.data
    }
}

/// The engine's handler: every session event goes to the Socket.IO server.
#[derive(Clone)]
pub struct SocketIoHandler(pub Io);

impl EngineHandler for SocketIoHandler {
    type Data = SessionState;

    fn on_open(&self, session: &Arc<Session<SessionState>>) {
        self.0.on_open(session);
    }

    fn on_message(&self, session: &Arc<Session<SessionState>>, text: Str) {
        self.0.on_message(session, text);
    }

    fn on_binary(&self, session: &Arc<Session<SessionState>>, data: Bytes) {
        self.0.on_binary(session, data);
    }

    fn on_close(&self, session: &Arc<Session<SessionState>>, reason: CloseReason) {
        self.0.on_close(session, reason);
    }
}

impl Io {
    /// An HTTP service that serves this Socket.IO server under `config.path` and passes every
    /// other request to `inner`.
    pub fn service<S>(&self, config: EngineConfig, inner: S) -> EngineService<SocketIoHandler, S> {
        EngineService::new(Arc::new(SocketIoHandler(self.clone())), config, inner)
    }
}
