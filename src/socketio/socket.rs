//! One socket: a session's membership of one namespace, from CONNECT to disconnect.
//!
//! A socket is `Connecting` while its namespace decides, `Connected` once admitted, then
//! `Closed`. Only a connected socket is in the namespace's hub and receives packets. Phase
//! changes and room changes happen under the socket's own lock, taken before the hub's, so
//! a socket can neither join a room after it left them all nor enter a hub after closing.

use std::any::Any;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use engineioxide_core::{ProtocolVersion, Sid, TransportType};
use serde::Serialize;

use super::ack::{AckReply, Pending};
use super::event::Args;
use super::namespace::Namespace;
use super::packet::{self, EncodeError, Encoded};
use super::transport::{CloseReason, SendError, SendErrorKind, Transport};

/// A socket. Cheap to clone; clones are the same socket.
#[derive(Clone)]
pub struct Socket(Arc<Inner>);

struct Inner {
    /// Own id, not the session's: connection state recovery gives a socket its old id back
    /// on a new session.
    id: Sid,
    namespace: Namespace,
    transport: Arc<dyn Transport>,
    /// A [`Phase`]; written under `rooms`' lock, read without it on every send.
    phase: AtomicU8,
    /// The rooms joined, by interned name. Its lock also orders phase changes.
    rooms: Mutex<Vec<Arc<str>>>,
    state: OnceLock<Box<dyn Any + Send + Sync>>,
    acks: Mutex<Pending>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Connecting,
    Connected,
    Closed,
}

/// How an admission ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Admitted,
    /// The socket was closed while its namespace decided.
    Gone,
    /// The namespace was removed while it decided.
    NamespaceClosed,
}

/// Why a socket left its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT; its session lives on.
    ClientDisconnect,
    /// [`Socket::disconnect`].
    ServerDisconnect,
    NamespaceRemoved,
    /// The Engine.IO session ended.
    Session(CloseReason),
}

impl DisconnectReason {
    /// A bounded label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientDisconnect => "client_disconnect",
            Self::ServerDisconnect => "server_disconnect",
            Self::NamespaceRemoved => "namespace_removed",
            Self::Session(reason) => reason.label(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Send(#[from] SendError),
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.0.id)
            .field("namespace", &self.0.namespace.path())
            .field("session", &self.0.transport.id())
            .finish()
    }
}

impl Socket {
    pub(crate) fn new(id: Sid, namespace: Namespace, transport: Arc<dyn Transport>) -> Self {
        Self(Arc::new(Inner {
            id,
            namespace,
            transport,
            phase: AtomicU8::new(Phase::Connecting as u8),
            rooms: Mutex::new(Vec::new()),
            state: OnceLock::new(),
            acks: Mutex::new(Pending::default()),
        }))
    }

    pub fn id(&self) -> Sid {
        self.0.id
    }

    /// The Engine.IO session carrying this socket, as [`SendError`]s name it.
    pub fn session_id(&self) -> Sid {
        self.0.transport.id()
    }

    pub fn namespace(&self) -> &Namespace {
        &self.0.namespace
    }

    pub fn protocol(&self) -> ProtocolVersion {
        self.0.transport.protocol()
    }

    pub fn transport_type(&self) -> TransportType {
        self.0.transport.transport_type()
    }

    /// The session's handshake request head.
    pub fn request(&self) -> &http::request::Parts {
        self.0.transport.request()
    }

    /// The state the namespace keeps for this socket (e.g. who the client is).
    pub fn state<T: Any>(&self) -> Option<&T> {
        self.0.state.get()?.downcast_ref()
    }

    /// Keep `state` for the socket's life; false (and `state` dropped) if it already has one.
    pub fn set_state<T: Any + Send + Sync>(&self, state: T) -> bool {
        self.0.state.set(Box::new(state)).is_ok()
    }

    pub fn is_connected(&self) -> bool {
        self.phase() == Phase::Connected
    }

    /// Join `room`. While connecting, the room is entered on admission.
    pub fn join(&self, room: &str) {
        let mut rooms = self.joined();
        let phase = self.phase();
        if phase == Phase::Closed || rooms.iter().any(|joined| **joined == *room) {
            return;
        }
        let name = match phase {
            Phase::Connected => self.hub_join(room),
            _ => Arc::from(room),
        };
        rooms.push(name);
    }

    pub fn leave(&self, room: &str) {
        let mut rooms = self.joined();
        let Some(at) = rooms.iter().position(|joined| **joined == *room) else {
            return;
        };
        let name = rooms.swap_remove(at);
        if self.phase() == Phase::Connected {
            self.0.namespace.hub().leave(&name, self.0.id);
        }
    }

    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.joined().clone()
    }

    pub fn room_count(&self) -> usize {
        self.joined().len()
    }

    /// Emit `event` with `payload` (a tuple for several arguments) to this socket.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, payload: &T) -> Result<(), EmitError> {
        let encoded = packet::event(self.0.namespace.path_str(), event, payload, None)?;
        Ok(self.send(&encoded)?)
    }

    /// Emit `event` with arguments as received, e.g. to relay a client event.
    pub fn emit_args(&self, event: &str, args: &Args) -> Result<(), SendError> {
        let encoded = packet::event_with_args(self.0.namespace.path_str(), event, args);
        self.send(&encoded)
    }

    /// Emit `event` and wait for the client's ack.
    pub fn emit_with_ack<T: Serialize + ?Sized>(
        &self,
        event: &str,
        payload: &T,
    ) -> Result<AckReply, EmitError> {
        let (id, answer) = self.acks().register();
        // From here on, dropping `reply` (on any error) forgets the ack.
        let reply = AckReply::new(self.clone(), id, answer);
        let encoded = packet::event(self.0.namespace.path_str(), event, payload, Some(id))?;
        self.send(&encoded)?;
        Ok(reply)
    }

    /// Disconnect the socket from its namespace: the client gets DISCONNECT (and does not
    /// reconnect by itself); the session and its other namespaces stay. A full queue cannot
    /// stop it: the socket is gone here at once, and the engine cuts a session it cannot
    /// write to. On a socket still connecting this drops its CONNECT unanswered; a handler
    /// that wants the client told refuses it instead.
    pub fn disconnect(&self) {
        self.kick(DisconnectReason::ServerDisconnect);
    }

    /// The server's side of a disconnect, for any reason.
    pub(crate) fn kick(&self, reason: DisconnectReason) {
        self.0.transport.state().forget(self);
        if self.shut() == Phase::Connected {
            let packet = packet::disconnect(self.0.namespace.path_str());
            // Full: the engine is cutting the session; closed: it is gone. Either way the
            // client is no longer in this namespace.
            let _ = self.queue(&packet);
            self.0.namespace.handler().on_disconnect(self, reason);
        }
    }

    /// Close the socket for `reason` without telling the client (it asked, or its session
    /// ended); runs the handler's `on_disconnect` if it was connected.
    pub(crate) fn end(&self, reason: DisconnectReason) {
        if self.shut() == Phase::Connected {
            self.0.namespace.handler().on_disconnect(self, reason);
        }
    }

    /// Admit a connecting socket: enter the hub and the rooms joined while connecting, queue
    /// the CONNECT reply, and only then count as connected. Publications before that skip
    /// the socket (the client has not seen `connect`); every later one is queued after the
    /// reply.
    pub(crate) fn admit(&self) -> Admission {
        let mut rooms = self.joined();
        if self.phase() != Phase::Connecting {
            return Admission::Gone;
        }
        let hub = self.0.namespace.hub();
        if !hub.add(self.0.id, self.clone()) {
            // Still connecting: refusing it is the caller's, with the reason.
            return Admission::NamespaceClosed;
        }
        for room in rooms.iter_mut() {
            *room = hub.join(room, self.0.id, self.clone());
        }
        // A full or closed queue means the engine is ending the session; its on_close then
        // takes this socket out again.
        let _ = self.queue(&self.connect_reply());
        self.set_phase(Phase::Connected);
        Admission::Admitted
    }

    /// Refuse a connecting socket: CONNECT_ERROR `{"message"}`, unless it was closed meanwhile.
    pub(crate) fn refuse(&self, message: &str) {
        self.0.transport.state().forget(self);
        if self.shut() == Phase::Connecting {
            tracing::debug!(namespace = self.0.namespace.path(), session = %self.session_id(),
                message, "CONNECT refused");
            let _ = self.queue(&packet::connect_error(self.0.namespace.path_str(), message));
        }
    }

    pub(crate) fn connect_reply(&self) -> Encoded {
        packet::connect_reply(self.0.namespace.path_str(), self.protocol(), self.0.id)
    }

    /// Queue `encoded` if the socket is connected.
    pub(crate) fn send(&self, encoded: &Encoded) -> Result<(), SendError> {
        if !self.is_connected() {
            return Err(SendError {
                sid: self.session_id(),
                kind: SendErrorKind::Closed,
            });
        }
        self.queue(encoded)
    }

    /// Queue `encoded` whatever the phase: for the packets that change it.
    pub(crate) fn queue(&self, encoded: &Encoded) -> Result<(), SendError> {
        let Encoded { text, attachments } = encoded;
        self.0.transport.send(text.clone(), attachments)
    }

    pub(crate) fn resolve_ack(&self, id: i64, args: Args) {
        self.acks().resolve(id, args);
    }

    pub(crate) fn forget_ack(&self, id: i64) {
        self.acks().forget(id);
    }

    pub(crate) fn ptr_eq(&self, other: &Socket) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Close the socket: out of its rooms and hub, pending acks dropped. Returns the phase it
    /// was in, so that only the first closer acts on a connected socket.
    fn shut(&self) -> Phase {
        let mut rooms = self.joined();
        let was = self.phase();
        if was == Phase::Closed {
            return was;
        }
        self.set_phase(Phase::Closed);
        let left = std::mem::take(&mut *rooms);
        if was == Phase::Connected {
            let hub = self.0.namespace.hub();
            for room in &left {
                hub.leave(room, self.0.id);
            }
            hub.remove(self.0.id);
        }
        drop(rooms);
        self.acks().clear();
        was
    }

    fn hub_join(&self, room: &str) -> Arc<str> {
        self.0.namespace.hub().join(room, self.0.id, self.clone())
    }

    fn phase(&self) -> Phase {
        match self.0.phase.load(Ordering::Acquire) {
            p if p == Phase::Connecting as u8 => Phase::Connecting,
            p if p == Phase::Connected as u8 => Phase::Connected,
            _ => Phase::Closed,
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.0.phase.store(phase as u8, Ordering::Release);
    }

    /// A panic elsewhere cannot leave the list half-updated, so a poisoned lock is still
    /// good to use.
    fn joined(&self) -> MutexGuard<'_, Vec<Arc<str>>> {
        self.0.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acks(&self) -> MutexGuard<'_, Pending> {
        self.0.acks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
