//! What an Engine.IO server is told once, at start: where it answers, its heartbeat, and the
//! limits that bound what one session may hold in memory.

use std::borrow::Cow;
use std::time::Duration;

use http::HeaderName;

use super::sticky::UpstreamSlot;

/// The settings of an [`EngineService`](super::EngineService). `Default` is what the product
/// serves (Node's defaults where Frappe's clients rely on them).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The path requests are answered on, without a trailing slash: `/socket.io` for the
    /// product, `/engine.io` for the engine.io-protocol suite. Everything under `<path>/` is
    /// answered too, as Node's engine.io does (an unknown name there gets 400, not the 404 of
    /// whatever serves the rest).
    pub path: Cow<'static, str>,
    /// How long after the last PONG (v4) the server sends the next PING.
    pub ping_interval: Duration,
    /// How long the server waits for the PONG to a PING (v4); for v3, whose clients ping,
    /// `ping_interval + ping_timeout` is how long it waits for the next client PING.
    pub ping_timeout: Duration,
    /// How long a websocket that names a polling session has to complete the upgrade (`2probe`
    /// … `5`); past it the websocket is closed and the session stays on polling.
    pub upgrade_timeout: Duration,
    /// The largest POST body and websocket message accepted, and the `maxPayload` the open
    /// packet tells the client (which batches its POSTs below it). Also caps one GET response.
    pub max_payload: u64,
    /// Bytes tungstenite allocates up front per websocket to read frames into; larger frames
    /// grow it for their length. Every KiB here is a KiB per idle connection.
    pub ws_read_buffer: usize,
    /// Engine.IO packets (a text packet and each binary attachment count one) a session may
    /// have queued; one more cuts it as a slow consumer.
    pub max_queued_packets: usize,
    /// Payload bytes that may be queued for a websocket session while its connection takes no
    /// bytes; more cuts it as a slow consumer. A client that reads, however slowly, and a
    /// polling one are held by `max_queued_packets` and `stall_timeout`.
    pub max_queued_bytes: usize,
    /// A session with data waiting whose transport takes none for this long is cut as a slow
    /// consumer: a websocket whose connection accepts no bytes, a polling client that sends
    /// no GET.
    pub stall_timeout: Duration,
    /// Accept Engine.IO 3 (socket.io-client 2.x, Frappe 13) besides 4.
    pub allow_eio3: bool,
    /// The request headers a session keeps from the request that opened it (see
    /// [`Session::request`](super::Session::request)); every other header is dropped, because
    /// a parsed request head pins the HTTP connection's whole read buffer.
    pub session_headers: Vec<HeaderName>,
    /// Behind an nginx `upstream` with `hash $arg_sid` and several instances: this one's
    /// `server` line, so its session ids hash back to it (see [`UpstreamSlot`]).
    pub upstream_slot: Option<UpstreamSlot>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            path: Cow::Borrowed("/socket.io"),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            upgrade_timeout: Duration::from_secs(10),
            max_payload: 1_000_000,
            ws_read_buffer: 1024,
            max_queued_packets: 1024,
            max_queued_bytes: 8 * 1024 * 1024,
            stall_timeout: Duration::from_secs(10),
            allow_eio3: true,
            session_headers: Vec::new(),
            upstream_slot: None,
        }
    }
}

impl EngineConfig {
    /// Whether `path` (a request's URI path) is this server's.
    pub(super) fn serves(&self, path: &str) -> bool {
        let base = self.path.trim_end_matches('/');
        path.strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// `max_payload` as a length in memory (it is a `u64` because the handshake says so).
    pub(super) fn max_payload_len(&self) -> usize {
        usize::try_from(self.max_payload).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_its_path_and_everything_under_it_like_node() {
        let config = EngineConfig {
            path: "/engine.io".into(),
            ..EngineConfig::default()
        };
        assert!(config.serves("/engine.io"));
        assert!(config.serves("/engine.io/"));
        assert!(config.serves("/engine.io/x"));
        assert!(config.serves("/engine.io/..%2fsites"));
        assert!(!config.serves("/engine.iox"));
        assert!(!config.serves("/socket.io/"));
    }
}
