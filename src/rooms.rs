//! Room names Frappe publishes to (spec §5.4) and who-is-viewing presence (spec §5.3).
//!
//! Room names are opaque strings; doctype and docname go in unescaped, as in Frappe.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use socketioxide::extract::SocketRef;

use crate::auth::Session;
use crate::caps::Seat;
use crate::limits::{EventBudget, Limits, Verdict};

pub const WEBSITE: &str = "website";
/// System Users only.
pub const ALL: &str = "all";

pub fn user(user: &str) -> String {
    format!("user:{user}")
}

pub fn doctype(doctype: &str) -> String {
    format!("doctype:{doctype}")
}

pub fn doc(doctype: &str, docname: &str) -> String {
    format!("doc:{doctype}/{docname}")
}

pub fn open_doc(doctype: &str, docname: &str) -> String {
    format!("open_doc:{doctype}/{docname}")
}

pub fn task(task_id: &str) -> String {
    format!("task_progress:{task_id}")
}

/// A socket's own state: who it is and which documents it has open.
#[derive(Debug)]
pub struct ClientState {
    pub session: Session,
    open_docs: Mutex<BTreeSet<(String, String)>>,
    budget: Mutex<EventBudget>,
    /// Held for the socket's lifetime; dropping the state frees the connection's place.
    _seat: Seat,
}

impl ClientState {
    pub fn new(session: Session, seat: Seat, limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            session,
            open_docs: Mutex::new(BTreeSet::new()),
            budget: Mutex::new(EventBudget::new(limits)),
            _seat: seat,
        })
    }

    /// Spend one client event from this socket's budget.
    pub fn spend_event(&self, limits: &Limits) -> Verdict {
        self.budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spend(limits)
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

    pub fn take_open(&self) -> BTreeSet<(String, String)> {
        std::mem::take(&mut *self.open_docs())
    }
}

#[derive(Serialize)]
struct DocViewers<'a> {
    doctype: &'a str,
    docname: &'a str,
    users: Vec<String>,
}

/// Whether the socket announcing presence is still among the viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Staying,
    /// Disconnecting: socketioxide runs the disconnect handler while the socket is still in
    /// its rooms, so it must be left out by hand (Node has already left by then).
    Departing,
}

/// Send `doc_viewers` with the distinct users viewing a document to everyone viewing it.
///
/// Like Frappe, nothing is sent when the only viewer left is the announcing user (a lone
/// viewer is not told about himself).
pub async fn announce_viewers(
    socket: &SocketRef,
    me: &ClientState,
    doctype: &str,
    docname: &str,
    presence: Presence,
) {
    let room = open_doc(doctype, docname);
    let viewers: Vec<String> = socket
        .within(room.clone())
        .sockets()
        .into_iter()
        .filter(|other| presence == Presence::Staying || other.id != socket.id)
        .filter_map(|other| other.extensions.get::<Arc<ClientState>>())
        .map(|state| state.session.user.clone())
        .collect();
    if let [only] = viewers.as_slice()
        && *only == me.session.user
    {
        return;
    }
    let payload = DocViewers {
        doctype,
        docname,
        users: distinct_in_order(viewers),
    };
    let audience = match presence {
        Presence::Staying => socket.within(room),
        Presence::Departing => socket.to(room),
    };
    if let Err(e) = audience.emit("doc_viewers", &payload).await {
        tracing::debug!(error = %e, "doc_viewers not delivered to every viewer");
    }
}

fn distinct_in_order(users: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    users
        .into_iter()
        .filter(|user| seen.insert(user.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_match_frappe() {
        assert_eq!(user("a@x.com"), "user:a@x.com");
        assert_eq!(doc("Sales Invoice", "SINV/1"), "doc:Sales Invoice/SINV/1");
        assert_eq!(open_doc("ToDo", "1"), "open_doc:ToDo/1");
        assert_eq!(doctype("ToDo"), "doctype:ToDo");
        assert_eq!(task("abc"), "task_progress:abc");
    }

    #[test]
    fn a_user_with_two_tabs_is_listed_once() {
        let users = ["b", "a", "b", "c", "a"].map(String::from).to_vec();
        assert_eq!(distinct_in_order(users), ["b", "a", "c"]);
    }
}
