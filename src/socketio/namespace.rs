//! A namespace: its handler, its sockets and rooms, and broadcasts to them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use engineioxide_core::{Sid, Str};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::event::Event;
use super::hub::Hub;
use super::packet::{self, EncodeError, Encoded};
use super::socket::{DisconnectReason, Socket};
use super::transport::{SendError, SendErrorKind};

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

/// A CONNECT being decided: the socket it would admit, and the client's auth payload.
#[derive(Debug)]
pub struct Handshake {
    /// Not connected yet: it may join rooms, keep state and read the request.
    pub socket: Socket,
    auth: Option<Str>,
}

impl Handshake {
    pub(crate) fn new(socket: Socket, auth: Option<Str>) -> Self {
        Self { socket, auth }
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
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Namespace").field(&self.path()).finish()
    }
}

impl Namespace {
    pub(crate) fn new(path: Str, handler: Arc<dyn NamespaceHandler>) -> Self {
        Self(Arc::new(Inner {
            path,
            handler,
            hub: Hub::new(),
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
    /// Connection state recovery hooks in here: give each publication an offset, keep it in
    /// the room's history for replay, and put the offset in the packet.
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        room: Option<&str>,
        except: Option<Sid>,
        event: &str,
        payload: &T,
    ) -> Result<Delivery, EncodeError> {
        let recipients = self.0.hub.snapshot(room, except);
        if recipients.is_empty() {
            return Ok(Delivery::default());
        }
        let encoded = packet::event(&self.0.path, event, payload, None)?;
        Ok(deliver(&encoded, &recipients))
    }

    /// Disconnect every socket and admit none from now on.
    pub(crate) fn close(&self) {
        for socket in self.0.hub.close() {
            socket.kick(DisconnectReason::NamespaceRemoved);
        }
    }
}

fn deliver(encoded: &Encoded, recipients: &[Socket]) -> Delivery {
    let mut delivery = Delivery {
        recipients: recipients.len(),
        ..Delivery::default()
    };
    for socket in recipients {
        match socket.send(encoded) {
            Ok(()) => delivery.queued += 1,
            Err(e) if e.kind != SendErrorKind::Closed => delivery.refused.push(e),
            Err(_) => delivery.closed += 1,
        }
    }
    delivery
}
