//! One socket: a session's membership of one namespace, from CONNECT to disconnect.
//!
//! A socket is `Connecting` while its namespace decides, `Connected` once admitted, then
//! `Closed`. Only a connected socket is in the namespace's hub and receives packets. Phase
//! changes and room changes happen under the socket's own lock, taken before the hub's, so
//! a socket can neither join a room after it left them all nor enter a hub after closing.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use bytes::Bytes;
use engineioxide_core::{ProtocolVersion, Sid, Str, TransportType};
use serde::Serialize;

use super::ack::{AckReply, Pending};
use super::event::Args;
use super::namespace::Namespace;
use super::packet::{self, EncodeError, Encoded};
use super::recovery::{self, Leaving, Offset, Store};
use super::transport::{CloseReason, SendError, SendErrorKind, Transport};

/// A socket. Cheap to clone; clones are the same socket.
#[derive(Clone)]
pub struct Socket(Arc<Inner>);

struct Inner {
    /// Own id, not the session's: connection state recovery gives a socket its old id back
    /// on a new session. Settled on admission: a socket given its kept session's id that
    /// does not resume it (declined, or its replay was trimmed meanwhile) gets a new one.
    id: OnceLock<Sid>,
    /// The id until then.
    candidate: Sid,
    namespace: Namespace,
    transport: Arc<dyn Transport>,
    /// A [`Phase`]; written under `rooms`' lock, read without it on every send.
    phase: AtomicU8,
    /// The rooms joined, by interned name. Its lock also orders phase changes.
    rooms: Mutex<Vec<Arc<str>>>,
    state: OnceLock<Box<dyn Any + Send + Sync>>,
    acks: Mutex<Pending>,
    /// Connection state recovery, when the namespace has it (protocol 5 only).
    continuity: Option<Continuity>,
}

/// A socket's part in connection state recovery.
#[derive(Debug)]
pub(crate) struct Continuity {
    /// Whether its events carry their offset (see `recovery::takes_offsets`).
    takes_offsets: bool,
    /// The private id the client recovers with; set on admission (the kept one on recovery).
    pid: OnceLock<Sid>,
    /// The kept session this socket would resume; taken on admission.
    restore: Mutex<Option<Restore>>,
    /// The handler admitted the socket without its kept rooms.
    declined: AtomicBool,
    recovered: AtomicBool,
    replayed: AtomicUsize,
    /// Replay after this if the client names no offset: the log's newest offset on admission,
    /// then, for a socket without offsets, the newest publication queued to it.
    since: AtomicU64,
}

/// A kept session being resumed.
#[derive(Debug)]
pub(crate) struct Restore {
    pub(crate) pid: Sid,
    /// Replay what the log holds after this.
    pub(crate) after: Offset,
    pub(crate) rooms: Vec<Arc<str>>,
}

impl Continuity {
    pub(crate) fn new(takes_offsets: bool, restore: Option<Restore>) -> Self {
        Self {
            takes_offsets,
            pid: OnceLock::new(),
            restore: Mutex::new(restore),
            declined: AtomicBool::new(false),
            recovered: AtomicBool::new(false),
            replayed: AtomicUsize::new(0),
            since: AtomicU64::new(0),
        }
    }

    /// Settle the socket's pid on admission, under the store's lock, and return what it
    /// missed: the kept session's pid and the log after its offset for the rooms it is in
    /// again, if the handler did not decline it and the log still holds all of it; else a
    /// new pid and nothing.
    /// Also says whether the socket needs an id of its own: it was given its kept session's
    /// id, but does not resume it.
    fn admit(&self, store: &Store, id: Sid, rooms: &[Arc<str>]) -> (Sid, Vec<Encoded>, bool) {
        self.since.store(store.last_offset(), Ordering::Relaxed);
        let restore = self
            .restore
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let restoring = restore.is_some();
        let resumable = restore.filter(|restore| {
            !self.declined.load(Ordering::Relaxed) && store.holds_after(restore.after)
        });
        let new_id = restoring && resumable.is_none();
        let (pid, missed) = match resumable {
            Some(restore) => {
                let back: Vec<Arc<str>> = restore
                    .rooms
                    .into_iter()
                    .filter(|room| rooms.contains(room))
                    .collect();
                self.recovered.store(true, Ordering::Relaxed);
                (restore.pid, store.missed(restore.after, id, &back))
            }
            None => (Sid::new(), Vec::new()),
        };
        self.replayed.store(missed.len(), Ordering::Relaxed);
        let pid = *self.pid.get_or_init(|| pid);
        (pid, missed, new_id)
    }

    /// What the socket leaves in the store when it is cut.
    fn leaving(&self, sid: Sid, rooms: Vec<Arc<str>>) -> Option<Leaving> {
        Some(Leaving {
            pid: *self.pid.get()?,
            sid,
            rooms,
            after: self.since.load(Ordering::Relaxed),
            took_offsets: self.takes_offsets,
        })
    }
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
            .field("id", &self.id())
            .field("namespace", &self.0.namespace.path())
            .field("session", &self.0.transport.id())
            .finish()
    }
}

impl Socket {
    pub(crate) fn new(
        id: Sid,
        namespace: Namespace,
        transport: Arc<dyn Transport>,
        continuity: Option<Continuity>,
    ) -> Self {
        Self(Arc::new(Inner {
            id: OnceLock::new(),
            candidate: id,
            namespace,
            transport,
            phase: AtomicU8::new(Phase::Connecting as u8),
            rooms: Mutex::new(Vec::new()),
            state: OnceLock::new(),
            acks: Mutex::new(Pending::default()),
            continuity,
        }))
    }

    pub fn id(&self) -> Sid {
        self.0.id.get().copied().unwrap_or(self.0.candidate)
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

    /// Whether the socket resumed a kept session: its id, its rooms, and what it missed.
    pub fn recovered(&self) -> bool {
        let continuity = self.0.continuity.as_ref();
        continuity.is_some_and(|c| c.recovered.load(Ordering::Relaxed))
    }

    /// How many missed publications were replayed to it on admission.
    pub fn replayed(&self) -> usize {
        let continuity = self.0.continuity.as_ref();
        continuity.map_or(0, |c| c.replayed.load(Ordering::Relaxed))
    }

    /// Admit this connecting socket as a new one rather than resuming its kept session (its
    /// client is no longer who it was): a new id and pid, nothing replayed. Call from `connect`.
    pub fn decline_recovery(&self) {
        if let Some(continuity) = &self.0.continuity {
            continuity.declined.store(true, Ordering::Relaxed);
        }
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
        if phase == Phase::Connected {
            self.mirror_live(&rooms);
        }
    }

    pub fn leave(&self, room: &str) {
        let mut rooms = self.joined();
        let Some(at) = rooms.iter().position(|joined| **joined == *room) else {
            return;
        };
        let name = rooms.swap_remove(at);
        if self.phase() == Phase::Connected {
            self.0.namespace.hub().leave(&name, self.id());
            self.mirror_live(&rooms);
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
        if self.shut().0 == Phase::Connected {
            self.mirror_ended();
            let packet = packet::disconnect(self.0.namespace.path_str());
            // Full: the engine is cutting the session; closed: it is gone. Either way the
            // client is no longer in this namespace.
            let _ = self.queue(&packet);
            self.0.namespace.handler().on_disconnect(self, reason);
        }
    }

    /// Close the socket for `reason` without telling the client (it asked, or its session
    /// ended); runs the handler's `on_disconnect` if it was connected.
    /// A socket cut by something not its doing leaves its session for recovery first.
    pub(crate) fn end(&self, reason: DisconnectReason) {
        let (was, left) = self.shut();
        if was == Phase::Connected {
            if recovery::keeps_session(reason) {
                self.keep(left);
            } else {
                self.mirror_ended();
            }
            self.0.namespace.handler().on_disconnect(self, reason);
        }
    }

    /// With recovery shared between instances, what this socket, in `rooms`, would leave if
    /// its process died now. Only sockets that take offsets: the client's own offset says
    /// what it saw, where the others' replay point moves with every send.
    fn mirror_live(&self, rooms: &[Arc<str>]) {
        let Some(continuity) = &self.0.continuity else {
            return;
        };
        // Checked first: a socket's every join would otherwise copy its rooms for nothing.
        if !continuity.takes_offsets || !self.0.namespace.shares_sessions() {
            return;
        }
        if let Some(leaving) = continuity.leaving(self.id(), rooms.to_vec()) {
            self.0.namespace.live(&leaving);
        }
    }

    /// With recovery shared between instances: this socket left for good.
    fn mirror_ended(&self) {
        if !self.0.namespace.shares_sessions() {
            return;
        }
        let pid = self.0.continuity.as_ref().and_then(|c| c.pid.get());
        if let Some(pid) = pid {
            self.0.namespace.ended(*pid);
        }
    }

    /// Leave this socket's session, with `rooms`, for its client to recover.
    pub(crate) fn keep(&self, rooms: Vec<Arc<str>>) -> bool {
        let Some(continuity) = &self.0.continuity else {
            return false;
        };
        let Some(leaving) = continuity.leaving(self.id(), rooms) else {
            return false;
        };
        self.0.namespace.keep(leaving);
        true
    }

    /// Admit a connecting socket: enter the hub and the rooms joined while connecting, queue
    /// the CONNECT reply (and, on recovery, what it missed), and only then count as
    /// connected. Publications before that skip the socket (the client has not seen
    /// `connect`); every later one is queued after the reply. With recovery this all happens
    /// under the store's lock, so no publication is both replayed and sent, or neither.
    pub(crate) fn admit(&self) -> Admission {
        let store = self.0.namespace.recovery_store();
        let mut rooms = self.joined();
        if self.phase() != Phase::Connecting {
            return Admission::Gone;
        }
        let (pid, missed, new_id) = match (&self.0.continuity, store.as_deref()) {
            (Some(continuity), Some(store)) => {
                let (pid, missed, new_id) = continuity.admit(store, self.0.candidate, &rooms);
                (Some(pid), missed, new_id)
            }
            _ => (None, Vec::new(), false),
        };
        let id = *self
            .0
            .id
            .get_or_init(|| if new_id { Sid::new() } else { self.0.candidate });
        let hub = self.0.namespace.hub();
        if !hub.add(id, self.clone()) {
            // Still connecting: refusing it is the caller's, with the reason.
            return Admission::NamespaceClosed;
        }
        for room in rooms.iter_mut() {
            *room = hub.join(room, id, self.clone());
        }
        // A full or closed queue means the engine is ending the session; its on_close then
        // takes this socket out again.
        let path = self.0.namespace.path_str();
        let _ = self.queue(&packet::connect_reply(path, self.protocol(), id, pid));
        if !missed.is_empty() {
            let burst: Vec<(Str, &[Bytes])> = missed
                .iter()
                .map(|packet| (packet.text.clone(), packet.attachments.as_slice()))
                .collect();
            let _ = self.0.transport.send_burst(&burst);
        }
        self.set_phase(Phase::Connected);
        self.mirror_live(&rooms);
        Admission::Admitted
    }

    /// Refuse a connecting socket: CONNECT_ERROR `{"message"}`, unless it was closed meanwhile.
    pub(crate) fn refuse(&self, message: &str) {
        self.0.transport.state().forget(self);
        if self.shut().0 == Phase::Connecting {
            tracing::debug!(namespace = self.0.namespace.path(), session = %self.session_id(),
                message, "CONNECT refused");
            let _ = self.queue(&packet::connect_error(self.0.namespace.path_str(), message));
        }
    }

    /// The CONNECT reply again, for a client that asks twice.
    pub(crate) fn connect_reply(&self) -> Encoded {
        let pid = self
            .0
            .continuity
            .as_ref()
            .and_then(|c| c.pid.get().copied());
        packet::connect_reply(self.0.namespace.path_str(), self.protocol(), self.id(), pid)
    }

    /// Queue a logged publication: with its offset if the socket takes offsets, else plain
    /// (and then remember it was queued: the client cannot say what it last saw).
    pub(crate) fn send_logged(
        &self,
        plain: &Encoded,
        numbered: &Encoded,
        offset: Offset,
    ) -> Result<(), SendError> {
        let Some(continuity) = &self.0.continuity else {
            return self.send(plain);
        };
        if continuity.takes_offsets {
            return self.send(numbered);
        }
        self.send(plain)?;
        continuity.since.fetch_max(offset, Ordering::Relaxed);
        Ok(())
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
    /// was in, so that only the first closer acts on a connected socket, and the rooms it
    /// left.
    fn shut(&self) -> (Phase, Vec<Arc<str>>) {
        let mut rooms = self.joined();
        let was = self.phase();
        if was == Phase::Closed {
            return (was, Vec::new());
        }
        self.set_phase(Phase::Closed);
        let left = std::mem::take(&mut *rooms);
        if was == Phase::Connected {
            let hub = self.0.namespace.hub();
            for room in &left {
                hub.leave(room, self.id());
            }
            hub.remove(self.id());
        }
        drop(rooms);
        self.acks().clear();
        (was, left)
    }

    fn hub_join(&self, room: &str) -> Arc<str> {
        self.0.namespace.hub().join(room, self.id(), self.clone())
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
