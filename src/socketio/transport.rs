//! What the Socket.IO layer needs from one Engine.IO session, and what it tells it.
//!
//! The Engine.IO layer under this one (`src/engine`) implements [`Transport`] for its session
//! (see `engine_handler`) and calls [`Io`](super::Io)'s `on_open`, `on_message`, `on_binary`
//! and `on_close`. Keeping the contract this small lets the two layers be tested apart (the
//! tests use a fake transport); the two share the engine's error and close-reason types.

use bytes::Bytes;
use engineioxide_core::{ProtocolVersion, Sid, Str, TransportType};

use super::client::SessionState;
pub use crate::engine::{CloseReason, SendError, SendErrorKind, SlowReason};

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

    /// Queue groups the server chose to send at once (a recovery's replay), whole and outside
    /// the queue's packet bound, so a client that missed more than the bound holds is not cut
    /// again by its own replay; the log that holds them bounds them instead.
    fn send_burst(&self, groups: &[(Str, &[Bytes])]) -> Result<(), SendError>;

    /// Close the session. Out of band: needs no room in the send queue. The engine then calls
    /// [`Io::on_close`](super::Io::on_close) exactly once.
    fn close(&self, reason: CloseReason);

    /// The handshake request head kept for the session's life (URI, a few headers, the peer).
    fn request(&self) -> &http::request::Parts;

    /// The Socket.IO state of this session. It lives inline in the engine's session (its
    /// per-session data slot) so that finding it costs no map lookup and no allocation.
    fn state(&self) -> &SessionState;
}
