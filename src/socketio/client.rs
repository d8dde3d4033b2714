//! One Engine.IO session's Socket.IO state machine, as centrifuge's `Client`: the namespaces
//! it joined, CONNECT and DISCONNECT, and the packets it receives. The hub knows nothing of
//! sessions; this knows nothing of who else is in a room.
//!
//! A session carries at most one socket per namespace. CONNECT to a namespace the session is
//! connected to is answered again with the same socket id (a client that lost the first
//! reply); one still being decided is left to that decision. Any packet that does not decode,
//! or whose payload is not what its type requires, closes the session, as Node does.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use engineioxide_core::{ProtocolVersion, Str};
use socketioxide_core::packet::{Packet, PacketData};
use socketioxide_core::parser::{ParseError, ParserState};

use super::Shared;
use super::ack::AckSender;
use super::event::{self, Event, InvalidPayload};
use super::namespace::{ConnectFuture, Handshake, Namespace, Refusal};
use super::packet::{self, Encoded};
use super::recovery::Recovery;
use super::socket::{Admission, DisconnectReason, Socket};
use super::transport::{CloseReason, Transport};

/// The CONNECT_ERROR message for a namespace that does not exist, as Node words it.
const INVALID_NAMESPACE: &str = "Invalid namespace";
/// How long a CONNECT waits for the shared store's word on the session it names; past it,
/// this process's own copy, if any, stands.
const SHARED_SESSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The Socket.IO state of one Engine.IO session, kept inline in the engine's session.
#[derive(Default)]
pub struct SessionState {
    /// A binary packet waiting for its attachments.
    parser: ParserState,
    sockets: Mutex<Sockets>,
}

#[derive(Default)]
struct Sockets {
    /// One per namespace, connecting or connected.
    list: Vec<Socket>,
    /// Set by `on_close`: no socket may start after the session's last cleanup.
    closed: bool,
}

/// What a CONNECT finds on the session.
enum Start {
    New(Socket),
    Existing(Socket),
    Closed,
}

impl fmt::Debug for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sockets = self.sockets();
        f.debug_struct("SessionState")
            .field("sockets", &sockets.list)
            .field("closed", &sockets.closed)
            .finish()
    }
}

impl SessionState {
    /// The session's socket on `namespace`, or a new one from `make`.
    fn start(&self, namespace: &str, make: impl FnOnce() -> Socket) -> Start {
        let mut sockets = self.sockets();
        if sockets.closed {
            return Start::Closed;
        }
        let existing = sockets
            .list
            .iter()
            .find(|s| s.namespace().path() == namespace);
        if let Some(socket) = existing {
            return Start::Existing(socket.clone());
        }
        let socket = make();
        sockets.list.push(socket.clone());
        Start::New(socket)
    }

    fn connected(&self, namespace: &str) -> Option<Socket> {
        let sockets = self.sockets();
        let mut all = sockets.list.iter();
        all.find(|s| s.namespace().path() == namespace && s.is_connected())
            .cloned()
    }

    fn remove(&self, namespace: &str) -> Option<Socket> {
        let mut sockets = self.sockets();
        let at = sockets
            .list
            .iter()
            .position(|s| s.namespace().path() == namespace)?;
        Some(sockets.list.swap_remove(at))
    }

    /// Drop `socket` from the session, if it is still there.
    pub(crate) fn forget(&self, socket: &Socket) {
        self.sockets().list.retain(|s| !s.ptr_eq(socket));
    }

    pub(crate) fn has_connected_socket(&self) -> bool {
        self.sockets().list.iter().any(Socket::is_connected)
    }

    /// Close the session to new sockets and hand back the ones it has. This also breaks the
    /// cycle session → socket → session.
    fn close(&self) -> Vec<Socket> {
        let mut sockets = self.sockets();
        sockets.closed = true;
        std::mem::take(&mut sockets.list)
    }

    /// A panic elsewhere cannot leave the list half-updated, so a poisoned lock is still
    /// good to use.
    fn sockets(&self) -> MutexGuard<'_, Sockets> {
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a session is closed for what it sent.
#[derive(Debug, thiserror::Error)]
enum Violation {
    #[error(transparent)]
    Decode(#[from] ParseError),
    #[error(transparent)]
    Payload(#[from] InvalidPayload),
    #[error("CONNECT_ERROR is the server's to send")]
    ConnectError,
}

/// A session opened: watch it for a CONNECT in time; protocol 4 clients join `/` at once.
pub(crate) fn open<T: Transport>(io: &Shared, transport: &Arc<T>) {
    let session: Arc<dyn Transport> = transport.clone();
    io.deadlines.watch(Arc::downgrade(&session));
    if transport.protocol() == ProtocolVersion::V3 {
        if io.namespace("/").is_none() {
            tracing::warn!(session = %transport.id(), "protocol 4 client, but no `/` namespace");
            transport.close(CloseReason::ServerClose);
            return;
        }
        connect(io, transport, Str::from("/"), None);
    }
}

pub(crate) fn message<T: Transport>(io: &Shared, transport: &Arc<T>, text: Str) {
    let decoded = packet::decode_text(&io.limits, &transport.state().parser, text);
    receive(io, transport, decoded);
}

pub(crate) fn binary<T: Transport>(io: &Shared, transport: &Arc<T>, data: Bytes) {
    let decoded = packet::decode_binary(&io.limits, &transport.state().parser, data);
    receive(io, transport, decoded);
}

/// The session ended: each of its sockets leaves its namespace.
pub(crate) fn close<T: Transport>(transport: &Arc<T>, reason: CloseReason) {
    for socket in transport.state().close() {
        socket.end(DisconnectReason::Session(reason));
    }
}

fn receive<T: Transport>(
    io: &Shared,
    transport: &Arc<T>,
    decoded: Result<Option<Packet>, ParseError>,
) {
    let handled = match decoded {
        Ok(Some(packet)) => dispatch(io, transport, packet),
        Ok(None) => Ok(()),
        Err(e) => Err(Violation::from(e)),
    };
    if let Err(violation) = handled {
        tracing::debug!(session = %transport.id(), %violation, "invalid packet; closing the session");
        transport.close(CloseReason::ParseError);
    }
}

fn dispatch<T: Transport>(
    io: &Shared,
    transport: &Arc<T>,
    packet: Packet,
) -> Result<(), Violation> {
    let namespace = namespace_path(transport.protocol(), packet.ns);
    let state = transport.state();
    match packet.inner {
        PacketData::Connect(auth) => {
            let auth = event::read_auth(auth)?;
            connect(io, transport, namespace, auth);
        }
        PacketData::Disconnect => {
            if let Some(socket) = state.remove(&namespace) {
                socket.end(DisconnectReason::ClientDisconnect);
            }
        }
        PacketData::Event(payload, ack) | PacketData::BinaryEvent(payload, ack) => {
            let (name, args) = event::read_event(payload)?;
            if let Some(socket) = state.connected(&namespace) {
                let ack = ack.map(|id| AckSender::new(socket.clone(), id));
                let event = Event { name, args, ack };
                socket.namespace().handler().on_event(&socket, event);
            }
        }
        PacketData::EventAck(payload, id) | PacketData::BinaryAck(payload, id) => {
            let args = event::read_ack(payload)?;
            if let Some(socket) = state.connected(&namespace) {
                socket.resolve_ack(id, args);
            }
        }
        PacketData::ConnectError(_) => return Err(Violation::ConnectError),
    }
    Ok(())
}

/// Protocol 4 clients put a query after the namespace (`/admin?token=1`); it is not part of
/// the name.
fn namespace_path(protocol: ProtocolVersion, namespace: Str) -> Str {
    match (protocol, namespace.find('?')) {
        (ProtocolVersion::V3, Some(at)) => namespace.slice(..at),
        _ => namespace,
    }
}

fn connect<T: Transport>(io: &Shared, transport: &Arc<T>, path: Str, auth: Option<Str>) {
    let Some(namespace) = io.namespace(&path) else {
        let _ = send(
            transport.as_ref(),
            &packet::connect_error(&path, INVALID_NAMESPACE),
        );
        return;
    };
    match namespace.shared_session_question(transport.as_ref(), auth.as_deref()) {
        Some((pid, question)) => {
            // The session may have been kept by another instance: the shared store decides
            // which copy stands before the CONNECT is. The client sends nothing else to this
            // namespace until it is answered.
            let transport = transport.clone();
            tokio::spawn(async move {
                let answer = match tokio::time::timeout(SHARED_SESSION_TIMEOUT, question).await {
                    Ok(answer) => answer,
                    Err(_) => Err(format!("no answer within {SHARED_SESSION_TIMEOUT:?}")),
                };
                // Debug: with Redis down, every returning client would log it; the store's
                // own errors are logged and counted once per failed write.
                if let Err(error) = &answer {
                    tracing::debug!(%error, "cannot ask the shared store for a kept session");
                }
                namespace.settle_shared_session(pid, answer);
                start_socket(namespace, &transport, &path, auth);
            });
        }
        None => start_socket(namespace, transport, &path, auth),
    }
}

/// Start the socket a CONNECT asks for and put it to the namespace's handler.
fn start_socket<T: Transport>(
    namespace: Namespace,
    transport: &Arc<T>,
    path: &Str,
    auth: Option<Str>,
) {
    let mut recovery = Recovery::Fresh;
    let make = || {
        let arrival = namespace.arrival(transport.as_ref(), auth.as_deref());
        recovery = arrival.recovery;
        let session: Arc<dyn Transport> = transport.clone();
        Socket::new(arrival.id, namespace.clone(), session, arrival.continuity)
    };
    let socket = match transport.state().start(path, make) {
        Start::New(socket) => socket,
        Start::Existing(socket) => {
            if socket.is_connected() {
                let _ = socket.queue(&socket.connect_reply());
            }
            return;
        }
        Start::Closed => return,
    };
    let verdict = namespace
        .handler()
        .connect(Handshake::new(socket.clone(), auth, recovery));
    decide(verdict, move |verdict| finish(&socket, verdict));
}

/// Take a verdict that is ready at once inline (no task, and the reply goes out before the
/// session's next packet is read); wait for any other on a task of its own.
fn decide(mut verdict: ConnectFuture, then: impl FnOnce(Result<(), Refusal>) + Send + 'static) {
    let mut cx = Context::from_waker(Waker::noop());
    match verdict.as_mut().poll(&mut cx) {
        Poll::Ready(verdict) => then(verdict),
        Poll::Pending => {
            tokio::spawn(async move { then(verdict.await) });
        }
    }
}

fn finish(socket: &Socket, verdict: Result<(), Refusal>) {
    match verdict {
        Ok(()) => match socket.admit() {
            Admission::Admitted => socket.namespace().handler().on_connect(socket),
            Admission::Gone => {}
            Admission::NamespaceClosed => socket.refuse(INVALID_NAMESPACE),
        },
        Err(refusal) => socket.refuse(refusal.message()),
    }
}

fn send(transport: &dyn Transport, encoded: &Encoded) -> Result<(), super::SendError> {
    transport.send(encoded.text.clone(), &encoded.attachments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_4_namespaces_drop_their_query() {
        let path = |protocol, ns| namespace_path(protocol, Str::from(ns)).to_string();
        assert_eq!(path(ProtocolVersion::V3, "/admin?token=1"), "/admin");
        assert_eq!(path(ProtocolVersion::V3, "/admin"), "/admin");
        assert_eq!(
            path(ProtocolVersion::V4, "/admin?token=1"),
            "/admin?token=1"
        );
    }
}
