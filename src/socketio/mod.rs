//! Socket.IO protocol 5 (and 4, for socket.io-client 2.x) over an Engine.IO session.
//!
//! Layers, as in centrifugal/centrifuge: the [`Transport`] is one Engine.IO session (the
//! engine implements it); the client state machine (`client`) is one session's namespaces and
//! packets; the hub (`hub`) is who is in which room of a namespace; publications come from
//! outside (the Frappe bridge) through [`Namespace::broadcast`]. The engine calls the four
//! `on_*` methods of [`Io`]; the Frappe parts register a [`NamespaceHandler`] per namespace.
//!
//! Packets are framed by socketioxide-parser-common; event arguments stay raw JSON (a slice
//! of the frame) until a handler reads them. A broadcast is encoded once and each recipient's
//! queue gets the same bytes.
//!
//! Connection state recovery (`recovery`): [`Namespace::broadcast`] gives each publication
//! an offset and logs it; a socket cut by something not its doing leaves its id and rooms in
//! the namespace's store; a CONNECT whose auth names that session gets them back and what it
//! missed.
//!
//! Several instances need no broker here: each receives every publication itself. For
//! recovery across them the layer takes offsets from outside ([`Namespace::broadcast_at`],
//! fed by the bench's shared log) and asks a [`SessionSource`] for sessions other processes
//! kept ([`IoConfig::shared_sessions`]).

mod ack;
mod client;
mod deadline;
mod event;
mod hub;
mod namespace;
mod packet;
mod recovery;
mod serve;
mod socket;
mod transport;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use socketioxide_core::parser::ParseConfig;

pub use ack::{AckError, AckReply, AckSender};
pub use client::SessionState;
pub use engineioxide_core::{ProtocolVersion, Sid, Str, TransportType};
pub use event::{Args, Event};
pub use namespace::{ConnectFuture, Delivery, Handshake, Namespace, NamespaceHandler, Refusal};
pub use packet::EncodeError;
pub use recovery::{
    KeptSession, LoggedEntry, Mirror, Offset, Recovery, RecoveryConfig, RecoveryMirror,
    RecoveryStats, SessionAnswer, SessionSource, SharedSessions,
};
pub use serve::SocketIoHandler;
pub use socket::{DisconnectReason, EmitError, Socket};
pub use transport::{CloseReason, SendError, SendErrorKind, SlowReason, Transport};

use deadline::ConnectDeadlines;
use packet::Limits;

/// What the Socket.IO layer enforces on its own; the rest (ping, payload size, queue bounds)
/// is the engine's.
#[derive(Debug, Clone)]
pub struct IoConfig {
    /// A session with no connected namespace this long after it opened is closed.
    pub connect_timeout: Duration,
    /// Binary attachments a client may send with one packet.
    pub max_attachments: usize,
    /// Their total size.
    pub max_attachment_bytes: usize,
    /// How long a binary packet may wait for its attachments (checked as each one arrives).
    pub attachment_timeout: Duration,
    /// Connection state recovery, per namespace; `None` turns it off (CONNECT replies then
    /// carry `sid` alone, as the official protocol suite requires).
    pub recovery: Option<RecoveryConfig>,
    /// Where recovery's state is copied to outlive the process (recovery on only).
    pub recovery_mirror: Option<Mirror>,
    /// Recovery shared with the bench's other instances (recovery on only).
    pub shared_sessions: Option<SharedSessions>,
}

impl Default for IoConfig {
    /// Node's `connectTimeout`; attachment limits sized for clients that rarely send binary.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(45),
            max_attachments: 16,
            max_attachment_bytes: 1_000_000,
            attachment_timeout: Duration::from_secs(60),
            recovery: None,
            recovery_mirror: None,
            shared_sessions: None,
        }
    }
}

/// The Socket.IO server: its namespaces, and the entry points the engine calls. Cheap to
/// clone.
#[derive(Clone)]
pub struct Io(Arc<Shared>);

pub(crate) struct Shared {
    namespaces: RwLock<HashMap<Box<str>, Namespace>>,
    limits: Limits,
    deadlines: Arc<ConnectDeadlines>,
    recovery: Option<RecoveryConfig>,
    mirror: Option<Mirror>,
    shared: Option<SharedSessions>,
}

impl Shared {
    fn namespace(&self, path: &str) -> Option<Namespace> {
        let namespaces = self.namespaces.read();
        namespaces
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .cloned()
    }
}

/// A namespace path is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace {0} already exists")]
pub struct NamespaceTaken(pub String);

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("namespaces", &self.namespaces())
            .finish()
    }
}

impl Io {
    pub fn new(config: IoConfig) -> Self {
        let limits = Limits::new(ParseConfig {
            max_incoming_binary_buf_size: config.max_attachment_bytes,
            max_incoming_binaries: config.max_attachments,
            packet_completion_timeout: config.attachment_timeout,
        });
        Self(Arc::new(Shared {
            namespaces: RwLock::new(HashMap::new()),
            limits,
            deadlines: ConnectDeadlines::new(config.connect_timeout),
            recovery: config.recovery,
            mirror: config.recovery_mirror,
            shared: config.shared_sessions,
        }))
    }

    /// The connect timeout of the sessions that open from now on (see [`IoConfig`]).
    pub fn set_connect_timeout(&self, timeout: Duration) {
        self.0.deadlines.set_timeout(timeout);
    }

    /// Serve `path` (`/` or `/name`; a missing leading `/` is added) with `handler`.
    pub fn add_namespace(
        &self,
        path: &str,
        handler: Arc<dyn NamespaceHandler>,
    ) -> Result<Namespace, NamespaceTaken> {
        let path = normalize(path).into_owned();
        let mut namespaces = self.write();
        if namespaces.contains_key(path.as_str()) {
            return Err(NamespaceTaken(path));
        }
        let (recovery, mirror) = (self.0.recovery.clone(), self.0.mirror.clone());
        let shared = self.0.shared.clone();
        let namespace = Namespace::new(Str::from(path.clone()), handler, recovery, mirror, shared);
        namespaces.insert(path.into_boxed_str(), namespace.clone());
        Ok(namespace)
    }

    /// Stop serving `path`: new CONNECTs get `Invalid namespace`, and every socket in it is
    /// disconnected (DISCONNECT to the client, `NamespaceRemoved` to the handler). False if
    /// there was no such namespace.
    pub fn remove_namespace(&self, path: &str) -> bool {
        let removed = self.write().remove(normalize(path).as_ref());
        removed.map(|namespace| namespace.close()).is_some()
    }

    pub fn namespace(&self, path: &str) -> Option<Namespace> {
        self.0.namespace(&normalize(path))
    }

    pub fn namespaces(&self) -> Vec<Namespace> {
        let namespaces = self.0.namespaces.read();
        namespaces
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Keep the session of every connected socket in every namespace, for a process about to
    /// exit whose recovery mirror outlives it.
    /// Returns how many were kept.
    pub fn keep_all_sessions(&self) -> usize {
        self.namespaces()
            .iter()
            .map(|namespace| namespace.keep_all())
            .sum()
    }

    /// An Engine.IO session opened. Call on the runtime.
    pub fn on_open<T: Transport>(&self, transport: &Arc<T>) {
        client::open(&self.0, transport);
    }

    /// A text message arrived, without Engine.IO's leading `4`.
    pub fn on_message<T: Transport>(&self, transport: &Arc<T>, text: Str) {
        client::message(&self.0, transport, text);
    }

    /// A binary message arrived: an attachment of the pending binary packet.
    pub fn on_binary<T: Transport>(&self, transport: &Arc<T>, data: Bytes) {
        client::binary(&self.0, transport, data);
    }

    /// The session ended. Must be called exactly once per session: it disconnects its
    /// sockets and frees what they hold of the session.
    pub fn on_close<T: Transport>(&self, transport: &Arc<T>, reason: CloseReason) {
        client::close(transport, reason);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Box<str>, Namespace>> {
        let namespaces = self.0.namespaces.write();
        namespaces.unwrap_or_else(PoisonError::into_inner)
    }
}

fn normalize(path: &str) -> Cow<'_, str> {
    if path.starts_with('/') {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(format!("/{path}"))
    }
}
