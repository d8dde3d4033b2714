//! One socket's Frappe state: who the client is, how its rooms are named, which documents it
//! has open, its event budget, its place under the connection caps, and why the server
//! disconnected it, if it did. Kept in the socket (`Socket::set_state`) for its life.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::audience::Scope;
use crate::auth::Session;
use crate::caps::Seat;
use crate::disconnect::DisconnectCause;
use crate::limits::{EventBudget, Limits, Verdict};
use crate::socketio::Socket;

/// Disconnect `socket` on purpose, for `cause`: its disconnect is counted and logged under
/// that cause (the first one given stays). The client gets DISCONNECT and does not reconnect
/// by itself.
pub fn disconnect(socket: &Socket, cause: DisconnectCause) {
    if let Some(client) = socket.state::<ClientState>() {
        let _ = client.cause.set(cause);
    }
    socket.disconnect();
}

/// Numbers sockets in the order they connected.
static CONNECTED: AtomicU64 = AtomicU64::new(0);

/// A socket's own state: who it is, how its rooms are named, and which documents it has open.
#[derive(Debug)]
pub struct ClientState {
    pub session: Session,
    /// Its place in the order sockets connected in: Node lists an app's presence in that
    /// order (it walks the namespace's sockets).
    pub connected: u64,
    scope: Scope,
    open_docs: Mutex<BTreeSet<(String, String)>>,
    budget: Mutex<EventBudget>,
    /// Per event an app queues for its backend: that event's own budget.
    queue_budgets: Mutex<HashMap<String, EventBudget>>,
    /// Set when the server disconnects the socket on purpose, for the disconnect's label.
    cause: OnceLock<DisconnectCause>,
    /// It came back for a kept session and got its rooms back.
    resuming: OnceLock<()>,
    /// Held for the socket's lifetime; dropping the state frees the connection's place.
    _seat: Seat,
}

impl ClientState {
    pub fn new(session: Session, seat: Seat, limits: &Limits, scope: Scope) -> Self {
        Self {
            session,
            connected: CONNECTED.fetch_add(1, Ordering::Relaxed),
            scope,
            open_docs: Mutex::new(BTreeSet::new()),
            budget: Mutex::new(EventBudget::new(limits)),
            queue_budgets: Mutex::default(),
            cause: OnceLock::new(),
            resuming: OnceLock::new(),
            _seat: seat,
        }
    }

    /// Why the server disconnected this socket, if it did so on purpose (see [`disconnect`]).
    pub fn cause(&self) -> Option<DisconnectCause> {
        self.cause.get().copied()
    }

    /// Mark the socket as resuming a kept session (its rooms are back).
    pub fn resuming(&self) {
        let _ = self.resuming.set(());
    }

    pub fn is_resuming(&self) -> bool {
        self.resuming.get().is_some()
    }

    /// `room` (a Frappe room name) as this socket joins it.
    pub fn room(&self, room: String) -> String {
        self.scope.room(room)
    }

    /// The Frappe room name of a room this socket joined (without the site prefix of `/`).
    pub fn frappe_room<'a>(&self, joined: &'a str) -> Option<&'a str> {
        self.scope.frappe_room(joined)
    }

    /// Spend one client event from this socket's budget.
    pub fn spend_event(&self, limits: &Limits) -> Verdict {
        self.budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spend(limits)
    }

    /// Spend one of `event`'s queueing budget (`limits`, the app's rate for it); whether the
    /// event may go on its stream.
    pub fn spend_queued(&self, event: &str, limits: &Limits) -> bool {
        let mut budgets = self
            .queue_budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let budget = budgets
            .entry(event.to_owned())
            .or_insert_with(|| EventBudget::new(limits));
        budget.spend(limits) == Verdict::Handle
    }

    fn open_docs(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, String)>> {
        // The set stays consistent even if a holder panicked: every update is one call.
        self.open_docs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn remember_open(&self, doctype: &str, docname: &str) {
        self.open_docs()
            .insert((doctype.to_owned(), docname.to_owned()));
    }

    pub fn forget_open(&self, doctype: &str, docname: &str) {
        self.open_docs()
            .remove(&(doctype.to_owned(), docname.to_owned()));
    }

    /// The documents it has open.
    pub fn open(&self) -> BTreeSet<(String, String)> {
        self.open_docs().clone()
    }

    pub fn take_open(&self) -> BTreeSet<(String, String)> {
        std::mem::take(&mut *self.open_docs())
    }
}
