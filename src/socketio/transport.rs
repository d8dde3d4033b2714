//! What the Socket.IO layer needs from one Engine.IO session, and what it tells it.
//!
//! The Engine.IO layer under this one (`src/engine`) implements [`Transport`] for its session
//! and calls [`Io`](super::Io)'s `on_open`, `on_message`, `on_binary` and `on_close`. Keeping the
//! contract this small lets the two layers be written, tested and replaced apart.

use bytes::Bytes;
use engineioxide_core::{ProtocolVersion, Sid, Str, TransportType};

use super::client::SessionState;

/// One Engine.IO session as the Socket.IO layer uses it.
///
/// Every method is called from the runtime's worker threads and must not block.
pub trait Transport: Send + Sync + 'static {
    /// The Engine.IO session id.
    fn id(&self) -> Sid;

    /// Engine.IO 4 carries Socket.IO protocol 5; Engine.IO 3 carries protocol 4
    /// (socket.io-client 2.x), whose clients join `/` implicitly.
    fn protocol(&self) -> ProtocolVersion;

    /// Polling or websocket, for the handlers' logs and metrics.
    fn transport_type(&self) -> TransportType;

    /// Queue one text packet (without Engine.IO's leading `4`) and its binary attachments as
    /// one atomic group. Never blocks. A full queue is the session's problem, not the
    /// sender's: the engine cuts such a session as a slow consumer.
    fn send(&self, text: Str, attachments: &[Bytes]) -> Result<(), SendError>;

    /// Close the session. Out of band: needs no room in the send queue. The engine then calls
    /// [`Io::on_close`](super::Io::on_close) exactly once.
    fn close(&self, reason: CloseReason);

    /// The handshake request head kept for the session's life (URI, a few headers, the peer).
    fn request(&self) -> &http::request::Parts;

    /// The Socket.IO state of this session. It lives inline in the engine's session (its
    /// per-session data slot) so that finding it costs no map lookup and no allocation.
    fn state(&self) -> &SessionState;
}

/// A packet that was not queued, naming the session so that the caller can report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("session {sid}: {kind}")]
pub struct SendError {
    /// The Engine.IO session (not the socket: one session carries one socket per namespace).
    pub sid: Sid,
    pub kind: SendErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendErrorKind {
    /// The session's queue is over its packet or byte bound; the engine is cutting it.
    #[error("send queue full")]
    Full,
    /// The session is closed or closing.
    #[error("closed")]
    Closed,
}

/// Why an Engine.IO session ended, or why this layer asks the engine to end one.
///
/// This mirrors the engine's own reasons so that the two layers' adapter is a plain mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the transport or sent Engine.IO CLOSE.
    TransportClose,
    TransportError,
    /// No PONG in time.
    PingTimeout,
    /// A packet could not be decoded, at either layer.
    ParseError,
    /// A second concurrent long-poll GET.
    MultiplePolling,
    /// The session's queue overflowed, or its transport stopped taking bytes.
    SlowConsumer,
    /// The server closed it: e.g. no namespace joined within the connect timeout.
    ServerClose,
    ServerShutdown,
}

impl CloseReason {
    /// A bounded label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::TransportClose => "transport_close",
            Self::TransportError => "transport_error",
            Self::PingTimeout => "ping_timeout",
            Self::ParseError => "parse_error",
            Self::MultiplePolling => "multiple_polling",
            Self::SlowConsumer => "slow_consumer",
            Self::ServerClose => "server_close",
            Self::ServerShutdown => "server_shutdown",
        }
    }
}
