//! Our Engine.IO server (protocol 4, and 3 for socket.io-client 2.x): sessions, the
//! long-polling and websocket transports, the upgrade between them, and the heartbeat. It
//! knows nothing of Socket.IO or Frappe: the layer above implements
//! [`EngineHandler`](crate::engine::EngineHandler) and mounts an
//! [`EngineService`](crate::engine::EngineService). (Links here name their full path: with
//! the line in lib.rs, rustdoc resolves them from the crate root.)
//!
//! Why ours and not engineioxide (docs/design.md has the measurements): one task per
//! websocket session instead of three, no eagerly allocated channel blocks (3.4 KB of heap
//! per idle websocket session instead of 17 KB), the first PING after `pingInterval` as the
//! official suite expects, PING/PONG/CLOSE out of band of the data queue, and a queue bounded
//! in packets and bytes whose overflow names the session and cuts it.
//!
//! Reused: engineioxide-core's `Sid`, `Str`, `Packet::parse` and polling payload *decoder*
//! (but for Engine.IO 3 text payloads: see `payload`); tokio-tungstenite for websocket
//! framing.
//!
//! Modules by responsibility: `config` what the server is told, `request` what a request
//! asks and the error answers, `session` a session's state and queue, `heartbeat` the
//! PING/PONG timing, `payload` polling bodies, `polling` and `websocket` the transports,
//! `upgrade` the move from one to the other.
//!
//! Where this differs from the contract planned between `src/engine` and the Socket.IO layer
//! above it, and why:
//! - [`EngineConfig::session_headers`](crate::engine::EngineConfig::session_headers): the
//!   headers a session keeps of its request. The engine cannot know which the layer above
//!   reads, and keeping all of them pins hyper's 16 KiB read buffer per session (see
//!   `request::keep_for_session`).
//! - `on_close` runs on the session's own task, never inside `send` or `close`: a broadcast
//!   holding the layer's room lock may overflow a queue, and an `on_close` that takes that
//!   lock from inside the `send` would deadlock.
//! - [`SendErrorKind`](crate::engine::SendErrorKind) is `QueueFull { limit }`,
//!   `TooManyBytes { limit }` or `Closed`.
//! - [`EngineService`](crate::engine::EngineService) takes and answers `axum::body::Body`,
//!   so it drops into an axum `Router` (as `fallback_service` or `route_service`) and wraps
//!   one as `inner`.
//! - Error code 4 (`Forbidden`) is never sent: there is no `allowRequest` hook here.

mod config;
mod heartbeat;
mod payload;
mod polling;
mod request;
mod session;
mod sticky;
mod upgrade;
mod websocket;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use tower::Service;

pub use config::EngineConfig;
pub use engineioxide_core::{ProtocolVersion, Sid, Str, TransportType};
pub use session::{CloseReason, SendError, SendErrorKind, Session, SlowReason};
pub use sticky::UpstreamSlot;

use heartbeat::{Heartbeat, Timing};
use request::RequestError;
use session::{Limits, Polling, Registry};

/// What the layer above hears of its sessions. Calls are synchronous and run on a
/// transport's task or request: they must not block (spawn async work).
pub trait EngineHandler: Send + Sync + 'static {
    /// Per-session data, inline in [`Session::data`].
    type Data: Default + Send + Sync + 'static;

    /// A session opened; `session` is already registered. Data sent from here goes out
    /// right after the open packet.
    fn on_open(&self, session: &Arc<Session<Self::Data>>);
    /// A message packet's text, without the leading `4`.
    fn on_message(&self, session: &Arc<Session<Self::Data>>, text: Str);
    /// A binary packet's data.
    fn on_binary(&self, session: &Arc<Session<Self::Data>>, data: Bytes);
    /// The session ended; called exactly once per opened session, from its own task.
    fn on_close(&self, session: &Arc<Session<Self::Data>>, reason: CloseReason);
}

/// What every transport of one engine needs.
struct Core<H: EngineHandler> {
    handler: Arc<H>,
    config: EngineConfig,
    registry: Arc<Registry<H::Data>>,
}

impl<H: EngineHandler> Core<H> {
    fn timing(&self) -> Timing {
        Timing {
            interval: self.config.ping_interval,
            timeout: self.config.ping_timeout,
        }
    }

    /// A session for `request` (the head that opened it), not registered yet.
    fn new_session(
        &self,
        protocol: ProtocolVersion,
        request: Parts,
        polling: bool,
    ) -> Arc<Session<H::Data>> {
        let request = request::keep_for_session(request, &self.config.session_headers);
        let polling = polling.then(|| Polling {
            heartbeat: Heartbeat::new(protocol, self.timing(), tokio::time::Instant::now()),
            ping_due: false,
            pong_due: false,
            poller: false,
        });
        let limits = Limits {
            packets: self.config.max_queued_packets,
            bytes: self.config.max_queued_bytes,
        };
        let id = match self.config.upstream_slot {
            Some(slot) => slot.new_sid(),
            None => Sid::new(),
        };
        Arc::new(Session::new(
            id,
            protocol,
            H::Data::default(),
            request,
            limits,
            polling,
            Arc::downgrade(&self.registry),
        ))
    }

    /// Make `session` findable by its id, then tell the handler.
    fn register(&self, session: &Arc<Session<H::Data>>) {
        self.registry.insert(session.clone());
        self.handler.on_open(session);
    }

    /// The open packet's JSON: exactly the keys clients (and the official suite) expect.
    /// `upgrades` lists websocket only for a session that opened on polling.
    fn open_packet(&self, session: &Session<H::Data>, polling: bool) -> String {
        format!(
            r#"{{"sid":"{}","upgrades":[{}],"pingInterval":{},"pingTimeout":{},"maxPayload":{}}}"#,
            session.id,
            if polling { r#""websocket""# } else { "" },
            self.config.ping_interval.as_millis(),
            self.config.ping_timeout.as_millis(),
            self.config.max_payload,
        )
    }

    fn sessions(&self) -> usize {
        self.registry.len()
    }

    /// Answer one Engine.IO request.
    async fn handle(self: Arc<Self>, request: Request<Body>) -> Response<Body> {
        let key = request::websocket_key(request.headers()).cloned();
        let parsed = match request::parse(
            request.method(),
            request.uri().query(),
            key.is_some(),
            self.config.allow_eio3,
        ) {
            Ok(parsed) => parsed,
            Err(error) => return error.response(),
        };
        let Some(sid) = parsed.sid else {
            return match key {
                Some(key) => websocket::accept(&self, parsed.protocol, request, &key),
                None => polling::open(&self, &parsed, request.into_parts().0),
            };
        };
        let Some(session) = self.registry.get(sid) else {
            return RequestError::UnknownSid.response();
        };
        if session.protocol != parsed.protocol {
            return RequestError::BadRequest.response();
        }
        if polling::expire_if_late(&session) {
            return RequestError::UnknownSid.response();
        }
        match key {
            Some(key) => upgrade::accept(&self, session, request, &key),
            None if parsed.post => polling::push(&self, &session, request).await,
            None => polling::poll(&session, &parsed, self.config.max_payload_len()).await,
        }
    }
}

/// A tower service: requests for [`EngineConfig::path`] are Engine.IO's, any other goes to
/// `inner`.
///
/// Dropping it does not close the sessions: their tasks run on until the clients leave or
/// [`EngineService::close_all`]. A server that exits closes them with its connections, which
/// is what a restart wants: the listening port must be closed before any client is told to
/// go, or clients reconnect to a process that is going away.
pub struct EngineService<H: EngineHandler, S> {
    core: Arc<Core<H>>,
    inner: S,
}

impl<H: EngineHandler, S: Clone> Clone for EngineService<H, S> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<H: EngineHandler, S> EngineService<H, S> {
    pub fn new(handler: Arc<H>, config: EngineConfig, inner: S) -> Self {
        Self {
            core: Arc::new(Core {
                handler,
                config,
                registry: Arc::default(),
            }),
            inner,
        }
    }

    /// How many sessions are open.
    pub fn sessions(&self) -> usize {
        self.core.sessions()
    }

    pub fn get(&self, sid: Sid) -> Option<Arc<Session<H::Data>>> {
        self.core.registry.get(sid)
    }

    /// Close every open session with `reason` (e.g. `ServerShutdown`).
    pub fn close_all(&self, reason: CloseReason) {
        for session in self.core.registry.all() {
            session.close(reason);
        }
    }
}

type BoxResponse = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<H, S> Service<Request<Body>> for EngineService<H, S>
where
    H: EngineHandler,
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxResponse;

    /// Always ready: `inner` is made ready in the future of the call that needs it.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if self.core.config.serves(request.uri().path()) {
            let core = self.core.clone();
            return Box::pin(async move { Ok(core.handle(request).await) });
        }
        let mut inner = self.inner.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            inner.call(request).await
        })
    }
}

/// A handler that records what it hears, and a core to test with.
#[cfg(test)]
mod testing {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    pub struct Recorder {
        pub closed: Mutex<Vec<(Sid, CloseReason)>>,
    }

    impl EngineHandler for Recorder {
        type Data = ();
        fn on_open(&self, _: &Arc<Session<()>>) {}
        fn on_message(&self, _: &Arc<Session<()>>, _: Str) {}
        fn on_binary(&self, _: &Arc<Session<()>>, _: Bytes) {}
        fn on_close(&self, session: &Arc<Session<()>>, reason: CloseReason) {
            if let Ok(mut closed) = self.closed.lock() {
                closed.push((session.id, reason));
            }
        }
    }

    pub fn core() -> Core<Recorder> {
        Core {
            handler: Arc::default(),
            config: EngineConfig::default(),
            registry: Arc::default(),
        }
    }

    /// A registered Engine.IO 4 session on long-polling, from an empty request.
    pub fn polling_session(core: &Core<Recorder>) -> Arc<Session<()>> {
        let (parts, ()) = http::Request::new(()).into_parts();
        let session = core.new_session(ProtocolVersion::V4, parts, true);
        core.register(&session);
        session
    }
}

#[cfg(test)]
mod tests {
    use super::testing::core;
    use super::*;

    #[test]
    fn the_open_packet_has_exactly_the_keys_clients_expect() {
        let core = core();
        let (parts, ()) = Request::new(()).into_parts();
        let session = core.new_session(ProtocolVersion::V4, parts, true);
        let polling: serde_json::Value =
            serde_json::from_str(&core.open_packet(&session, true)).expect("json");
        assert_eq!(
            polling,
            serde_json::json!({
                "sid": session.id.to_string(),
                "upgrades": ["websocket"],
                "pingInterval": 25000,
                "pingTimeout": 20000,
                "maxPayload": 1000000,
            })
        );
        let websocket: serde_json::Value =
            serde_json::from_str(&core.open_packet(&session, false)).expect("json");
        assert_eq!(websocket["upgrades"], serde_json::json!([]));
    }

    #[test]
    fn dropping_the_service_leaves_the_sessions_and_close_all_ends_them() {
        let service = EngineService::new(
            Arc::new(testing::Recorder::default()),
            EngineConfig::default(),
            (),
        );
        let (parts, ()) = Request::new(()).into_parts();
        let session = service.core.new_session(ProtocolVersion::V4, parts, false);
        service.core.registry.insert(session.clone());
        assert_eq!(service.sessions(), 1);
        let clone = service.clone();
        drop(service);
        assert!(!session.is_closed(), "a dropped service closes nothing");
        clone.close_all(CloseReason::ServerShutdown);
        assert_eq!(session.close_reason(), Some(CloseReason::ServerShutdown));
    }
}
