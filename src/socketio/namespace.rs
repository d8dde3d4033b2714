//! A namespace: its handler, its sockets and rooms, and broadcasts to them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use engineioxide_core::{ProtocolVersion, Sid, Str};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::event::Event;
use super::hub::Hub;
use super::packet::{self, EncodeError, Encoded};
use super::recovery::{
    self, KeptSession, Leaving, LoggedEntry, Lookup, Mirror, Offset, Recovery, RecoveryConfig,
    RecoveryStats, SessionAnswer, SharedSessions, Store,
};
use super::socket::{Continuity, DisconnectReason, Restore, Socket};
use super::transport::{SendError, SendErrorKind, Transport};

/// What a namespace does with its sockets. The callbacks other than `connect` are
/// synchronous and run on the session's own task, in the order the client sent its packets:
/// they must not block, so async work is spawned.
pub trait NamespaceHandler: Send + Sync + 'static {
    /// Decide a CONNECT. `Ok` admits the socket; the rooms it joined in here are entered and
    /// only then is the CONNECT reply sent, so nothing published after the client sees
    /// `connect` is missed. Before `Ok` the socket receives nothing and no other socket sees
    /// it. `Err` sends CONNECT_ERROR `{"message"}` and forgets the socket.
    fn connect(&self, handshake: Handshake) -> ConnectFuture;

    /// The socket is connected and its CONNECT reply queued (Node's `connection` event).
    fn on_connect(&self, _socket: &Socket) {}

    fn on_event(&self, _socket: &Socket, _event: Event) {}

    /// The socket has left every room and its namespace; its state is still readable.
    fn on_disconnect(&self, _socket: &Socket, _reason: DisconnectReason) {}
}

/// The verdict of [`NamespaceHandler::connect`]. A future that is ready at once is taken
/// inline, so a synchronous decision costs no task.
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send>>;

/// A refused CONNECT: the client gets CONNECT_ERROR with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    message: String,
}

impl Refusal {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A CONNECT being decided: the socket it would admit, the client's auth payload, and what
/// connection state recovery found for it.
#[derive(Debug)]
pub struct Handshake {
    /// Not connected yet: it may join rooms, keep state and read the request.
    pub socket: Socket,
    auth: Option<Str>,
    recovery: Recovery,
}

impl Handshake {
    pub(crate) fn new(socket: Socket, auth: Option<Str>, recovery: Recovery) -> Self {
        Self {
            socket,
            auth,
            recovery,
        }
    }

    /// Whether the client came back for a kept session, and if so which rooms it had. The
    /// handler re-checks the client as on any connect, and joins those of the rooms it still
    /// allows: only events to rooms joined again are replayed. A socket it admits without
    /// them should [`Socket::decline_recovery`].
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The auth payload's JSON text: an object, checked before the handler is asked. It is a
    /// slice of the client's frame, so keep a copy of what you need rather than the text.
    pub fn auth(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    /// The auth payload as `T`; an absent one reads as `{}`, as Node's `handshake.auth`.
    pub fn auth_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.auth().unwrap_or("{}"))
    }
}

/// What one broadcast queued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The sockets it was addressed to.
    pub recipients: usize,
    pub queued: usize,
    /// The sends a session's queue refused, each naming the session and the bound it hit;
    /// the engine cuts those sessions as slow consumers.
    pub refused: Vec<SendError>,
    /// Sockets whose session was already closing.
    pub closed: usize,
}

/// A namespace. Cheap to clone.
#[derive(Clone)]
pub struct Namespace(Arc<Inner>);

struct Inner {
    path: Str,
    handler: Arc<dyn NamespaceHandler>,
    hub: Hub<Socket>,
    /// The replay log and kept sessions, when connection state recovery is on. Publications
    /// are logged and fanned out, and recovering sockets admitted, under its lock: so none
    /// falls between a replay and the live stream, and none is in both.
    recovery: Option<Mutex<Store>>,
    /// Where the store is copied to outlive the process, if anywhere.
    mirror: Option<Mirror>,
    /// Recovery shared with the bench's other instances, if it is.
    shared: Option<SharedSessions>,
}

/// A new socket's id and recovery state, decided from its CONNECT.
pub(crate) struct Arrival {
    pub(crate) id: Sid,
    pub(crate) continuity: Option<Continuity>,
    pub(crate) recovery: Recovery,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Namespace").field(&self.path()).finish()
    }
}

impl Namespace {
    pub(crate) fn new(
        path: Str,
        handler: Arc<dyn NamespaceHandler>,
        recovery: Option<RecoveryConfig>,
        mirror: Option<Mirror>,
        shared: Option<SharedSessions>,
    ) -> Self {
        Self(Arc::new(Inner {
            path,
            handler,
            hub: Hub::new(),
            recovery: recovery.map(|config| Mutex::new(Store::new(config))),
            mirror,
            shared,
        }))
    }

    pub fn path(&self) -> &str {
        &self.0.path
    }

    pub(crate) fn path_str(&self) -> &Str {
        &self.0.path
    }

    pub(crate) fn handler(&self) -> &dyn NamespaceHandler {
        self.0.handler.as_ref()
    }

    pub(crate) fn hub(&self) -> &Hub<Socket> {
        &self.0.hub
    }

    /// Connected sockets.
    pub fn len(&self) -> usize {
        self.0.hub.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many sockets are in `room`: O(1).
    pub fn room_len(&self, room: &str) -> usize {
        self.0.hub.room_len(room)
    }

    /// Every room whose name `wanted` accepts, with how many sockets are in it.
    pub fn room_sizes(&self, wanted: impl Fn(&str) -> bool) -> Vec<(Arc<str>, usize)> {
        self.0.hub.room_sizes(wanted)
    }

    /// What recovery holds now (trimmed to its bounds first); `None` when it is off.
    pub fn recovery_stats(&self) -> Option<RecoveryStats> {
        let mut store = self.recovery_store()?;
        Some(store.stats(Instant::now()))
    }

    /// The recovery store, locked; `None` when recovery is off. Lock order: the store, then a
    /// socket's rooms, then the hub.
    pub(crate) fn recovery_store(&self) -> Option<MutexGuard<'_, Store>> {
        let store = self.0.recovery.as_ref()?;
        Some(store.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// With recovery shared between instances: the question to put to the shared store before
    /// a CONNECT with `auth` on `transport` is decided, if it names a session.
    pub(crate) fn shared_session_question(
        &self,
        transport: &dyn Transport,
        auth: Option<&str>,
    ) -> Option<(Sid, SessionAnswer)> {
        let SharedSessions(source) = self.0.shared.as_ref()?;
        if transport.protocol() == ProtocolVersion::V3 || self.0.recovery.is_none() {
            return None;
        }
        let Some(Ok(pid)) = recovery::Request::from_auth(auth).pid() else {
            return None;
        };
        Some((pid, source.take(self.path(), pid)))
    }

    /// Settle the kept session `pid` with the shared store's answer (see [`Store::settle`]).
    pub(crate) fn settle_shared_session(
        &self,
        pid: Sid,
        answer: Result<Option<KeptSession>, String>,
    ) {
        if let Some(mut store) = self.recovery_store() {
            store.settle(pid, answer, Instant::now());
        }
    }

    /// The id and recovery state of a socket a CONNECT with `auth` starts on `transport`.
    /// A kept session the auth names is taken out of the store here (one use).
    pub(crate) fn arrival(&self, transport: &dyn Transport, auth: Option<&str>) -> Arrival {
        let fresh = |id, continuity, recovery| Arrival {
            id,
            continuity,
            recovery,
        };
        // Protocol 4 clients name their socket after the session, and know no recovery.
        if transport.protocol() == ProtocolVersion::V3 {
            return fresh(transport.id(), None, Recovery::Fresh);
        }
        let Some(mut store) = self.recovery_store() else {
            return fresh(Sid::new(), None, Recovery::Fresh);
        };
        let request = recovery::Request::from_auth(auth);
        let takes_offsets = recovery::takes_offsets(transport.request(), &request);
        let lookup = match request.pid() {
            None => {
                let continuity = Continuity::new(takes_offsets, None);
                return fresh(Sid::new(), Some(continuity), Recovery::Fresh);
            }
            Some(Err(())) => Lookup::Unknown,
            Some(Ok(pid)) => {
                let lookup = store.take(pid, request.offset(), Instant::now());
                if matches!(lookup, Lookup::Found { .. } | Lookup::TooOld) {
                    self.mirror(|mirror| mirror.taken(self.path(), pid));
                }
                lookup
            }
        };
        let (id, restore, recovery) = match lookup {
            Lookup::Found { pid, kept, after } => {
                let rooms = kept.rooms.clone();
                let restore = Restore { pid, after, rooms };
                (kept.sid, Some(restore), Recovery::Restoring(kept.rooms))
            }
            Lookup::Expired => (Sid::new(), None, Recovery::Expired),
            Lookup::Unknown => (Sid::new(), None, Recovery::Unknown),
            Lookup::TooOld => (Sid::new(), None, Recovery::TooOld),
        };
        fresh(id, Some(Continuity::new(takes_offsets, restore)), recovery)
    }

    pub fn sockets(&self) -> Vec<Socket> {
        self.0.hub.snapshot(None, None)
    }

    pub fn sockets_in(&self, room: &str) -> Vec<Socket> {
        self.0.hub.snapshot(Some(room), None)
    }

    /// Emit `event` with `payload` (a tuple for several arguments) to the sockets in `room`,
    /// or in the whole namespace when `None`, except the socket `except`. The packet is
    /// encoded once; each recipient's queue gets a reference to the same bytes.
    ///
    /// With connection state recovery, the publication also gets the next offset and goes
    /// into the replay log; sockets that take offsets get the packet with its offset (encoded
    /// once too), the others the plain one. With recovery shared between instances, offsets
    /// come from the bench's log ([`Namespace::broadcast_at`]) and this one is not logged.
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        room: Option<&str>,
        except: Option<Sid>,
        event: &str,
        payload: &T,
    ) -> Result<Delivery, EncodeError> {
        if self.0.recovery.is_some() && self.0.shared.is_none() {
            return self.broadcast_logged(room, except, event, payload);
        }
        let recipients = self.0.hub.snapshot(room, except);
        if recipients.is_empty() {
            return Ok(Delivery::default());
        }
        let encoded = packet::event(&self.0.path, event, payload, None)?;
        Ok(deliver(&encoded, None, &recipients))
    }

    fn broadcast_logged<T: Serialize + ?Sized>(
        &self,
        room: Option<&str>,
        except: Option<Sid>,
        event: &str,
        payload: &T,
    ) -> Result<Delivery, EncodeError> {
        if self.audience_len(room) == 0 && !self.has_kept_sessions() {
            // No one hears it now, and no one could ask for it later.
            return Ok(Delivery::default());
        }
        let plain = packet::event(&self.0.path, event, payload, None)?;
        let Some(mut store) = self.recovery_store() else {
            return Ok(Delivery::default());
        };
        let offset = store.next_offset();
        let numbered = plain.with_offset(&offset.to_string());
        if numbered.attachments.is_empty() {
            // The entry copies the text: built only when there is a mirror to write it to.
            self.mirror(|mirror| {
                let entry = LoggedEntry {
                    offset,
                    room: room.map(str::to_owned),
                    except,
                    text: numbered.text.to_string(),
                };
                mirror.logged(self.path(), &entry);
            });
        }
        let logged = numbered.clone();
        store.log(offset, room.map(Arc::from), except, logged, Instant::now());
        let recipients = self.0.hub.snapshot(room, except);
        drop(store);
        Ok(deliver(&plain, Some((&numbered, offset)), &recipients))
    }

    /// Broadcast a publication of the bench's shared log under its `offset` (see
    /// [`Namespace::broadcast`]). It is logged even when no socket here hears it: a client
    /// cut from another instance may come here for it. One whose offset this namespace
    /// already passed is neither logged nor delivered again.
    pub fn broadcast_at<T: Serialize + ?Sized>(
        &self,
        offset: Offset,
        room: Option<&str>,
        except: Option<Sid>,
        event: &str,
        payload: &T,
    ) -> Result<Delivery, EncodeError> {
        let plain = packet::event(&self.0.path, event, payload, None)?;
        let Some(mut store) = self.recovery_store() else {
            let recipients = self.0.hub.snapshot(room, except);
            return Ok(deliver(&plain, None, &recipients));
        };
        if !store.accept_offset(offset) {
            return Ok(Delivery::default());
        }
        let numbered = plain.with_offset(&offset.to_string());
        let logged = numbered.clone();
        store.log(offset, room.map(Arc::from), except, logged, Instant::now());
        let recipients = self.0.hub.snapshot(room, except);
        drop(store);
        Ok(deliver(&plain, Some((&numbered, offset)), &recipients))
    }

    /// Keep a cut socket's session, in the store and its mirror.
    pub(crate) fn keep(&self, leaving: Leaving) {
        let Some(mut store) = self.recovery_store() else {
            return;
        };
        self.mirror(|mirror| mirror.kept(self.path(), leaving.pid, &leaving.mirrored()));
        store.keep(leaving, Instant::now());
    }

    /// Whether recovery is shared with the bench's other instances.
    pub(crate) fn shares_sessions(&self) -> bool {
        self.0.shared.is_some()
    }

    /// With recovery shared between instances, tell the mirror what a connected socket would
    /// leave if this process died now (see [`recovery::RecoveryMirror::live`]).
    pub(crate) fn live(&self, leaving: &Leaving) {
        if self.shares_sessions() {
            self.mirror(|mirror| mirror.live(self.path(), leaving.pid, &leaving.mirrored()));
        }
    }

    /// With recovery shared between instances: a connected socket left for good.
    pub(crate) fn ended(&self, pid: Sid) {
        if self.shares_sessions() {
            self.mirror(|mirror| mirror.ended(self.path(), pid));
        }
    }

    /// Keep the session of every connected socket, as if each was cut now: for a process
    /// that is going away with a mirror that outlives it. The sockets stay as they are.
    /// Returns how many were kept.
    pub(crate) fn keep_all(&self) -> usize {
        let sockets = self.sockets();
        sockets
            .iter()
            .filter(|socket| socket.keep(socket.rooms()))
            .count()
    }

    /// Take back what a mirror kept from a previous process: its log in offset order and its
    /// sessions, each with how long ago it was written.
    pub fn restore(
        &self,
        log: Vec<(LoggedEntry, std::time::Duration)>,
        sessions: Vec<(Sid, KeptSession, std::time::Duration)>,
    ) {
        if let Some(mut store) = self.recovery_store() {
            store.restore(log, sessions, Instant::now());
        }
    }

    fn mirror(&self, write: impl FnOnce(&dyn recovery::RecoveryMirror)) {
        if let Some(Mirror(mirror)) = &self.0.mirror {
            write(mirror.as_ref());
        }
    }

    fn audience_len(&self, room: Option<&str>) -> usize {
        match room {
            Some(room) => self.0.hub.room_len(room),
            None => self.0.hub.len(),
        }
    }

    fn has_kept_sessions(&self) -> bool {
        self.recovery_store()
            .is_some_and(|store| store.has_kept_sessions())
    }

    /// Disconnect every socket and admit none from now on.
    pub(crate) fn close(&self) {
        for socket in self.0.hub.close() {
            socket.kick(DisconnectReason::NamespaceRemoved);
        }
    }
}

/// Queue a publication to each recipient: `numbered` (with its offset) to the sockets that
/// take offsets, `plain` to the others.
fn deliver(
    plain: &Encoded,
    numbered: Option<(&Encoded, Offset)>,
    recipients: &[Socket],
) -> Delivery {
    let mut delivery = Delivery {
        recipients: recipients.len(),
        ..Delivery::default()
    };
    for socket in recipients {
        let sent = match numbered {
            Some((numbered, offset)) => socket.send_logged(plain, numbered, offset),
            None => socket.send(plain),
        };
        match sent {
            Ok(()) => delivery.queued += 1,
            Err(e) if e.kind != SendErrorKind::Closed => delivery.refused.push(e),
            Err(_) => delivery.closed += 1,
        }
    }
    delivery
}
