//! Room names Frappe publishes to (spec §5.4) and who-is-viewing presence (spec §5.3).
//!
//! Room names are opaque strings; doctype and docname go in unescaped, as in Frappe. The
//! names here are the ones of a site's own namespace; a socket's [`ClientState::room`] gives
//! the name it joins (prefixed with the site in `/`, see [`crate::audience`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;

use crate::audience::{self, Scope};
use crate::auth::Session;
use crate::caps::Seat;
use crate::config::FrappeVersion;
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

/// Frappe 13 and 14: who is typing in a document.
pub fn typing(doctype: &str, docname: &str) -> String {
    format!("typing:{doctype}/{docname}")
}

/// A socket's own state: who it is, how its rooms are named, and which documents it has open.
#[derive(Debug)]
pub struct ClientState {
    pub session: Session,
    scope: Scope,
    open_docs: Mutex<BTreeSet<(String, String)>>,
    budget: Mutex<EventBudget>,
    /// Held for the socket's lifetime; dropping the state frees the connection's place.
    _seat: Seat,
}

impl ClientState {
    pub fn new(session: Session, seat: Seat, limits: &Limits, scope: Scope) -> Arc<Self> {
        Arc::new(Self {
            session,
            scope,
            open_docs: Mutex::new(BTreeSet::new()),
            budget: Mutex::new(EventBudget::new(limits)),
            _seat: seat,
        })
    }

    /// `room` (a Frappe room name) as this socket joins it.
    pub fn room(&self, room: String) -> String {
        self.scope.room(room)
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

/// `doc_viewers` and `doc_typers`: the distinct users in a document's room.
#[derive(Serialize)]
struct DocUsers<'a> {
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

/// Tells a document's viewers who views it and, on Frappe 13 and 14, who types in it. A
/// document's viewers are in its room of the site's namespace and of `/` alike.
pub struct Announcer<'a> {
    pub io: &'a SocketIo,
    /// The socket whose move prompted the announcement.
    pub socket: &'a SocketRef,
    pub me: &'a ClientState,
    pub version: FrappeVersion,
}

impl Announcer<'_> {
    pub fn has_typing_indicators(&self) -> bool {
        !self.version.has_site_namespaces()
    }

    /// Send `doc_viewers` with the distinct users viewing a document to everyone viewing it.
    ///
    /// From Frappe 15 on, nothing is sent when the only viewer left is the announcing user
    /// (a lone viewer is not told about himself); Frappe 13 and 14 send it anyway.
    pub async fn viewers(&self, doctype: &str, docname: &str, presence: Presence) {
        let room = open_doc(doctype, docname);
        let viewers = self.members(&room, presence);
        if self.version.has_site_namespaces()
            && let [only] = viewers.as_slice()
            && *only == self.me.session.user
        {
            return;
        }
        self.tell(&room, "doc_viewers", doctype, docname, viewers, presence)
            .await;
    }

    /// Send `doc_typers` with the distinct users typing in a document to its viewers.
    pub async fn typers(&self, doctype: &str, docname: &str) {
        let typers = self.members(&typing(doctype, docname), Presence::Staying);
        let room = open_doc(doctype, docname);
        self.tell(
            &room,
            "doc_typers",
            doctype,
            docname,
            typers,
            Presence::Staying,
        )
        .await;
    }

    /// The users of the sockets in `room` of the site, wherever they are connected.
    fn members(&self, room: &str, presence: Presence) -> Vec<String> {
        audience::room_of_site(self.io, &self.me.session.site, room)
            .into_iter()
            .flat_map(|(namespace, name)| namespace.within(name).sockets())
            .filter(|other| presence == Presence::Staying || other.id != self.socket.id)
            .filter_map(|other| other.extensions.get::<Arc<ClientState>>())
            .map(|state| state.session.user.clone())
            .collect()
    }

    async fn tell(
        &self,
        room: &str,
        event: &str,
        doctype: &str,
        docname: &str,
        users: Vec<String>,
        presence: Presence,
    ) {
        let payload = DocUsers {
            doctype,
            docname,
            users: distinct_in_order(users),
        };
        for (namespace, name) in audience::room_of_site(self.io, &self.me.session.site, room) {
            let audience = match presence {
                Presence::Staying => namespace.within(name),
                Presence::Departing => namespace.within(name).except(self.socket.id),
            };
            if let Err(e) = audience.emit(event, &payload).await {
                tracing::debug!(error = %e, event, "not delivered to every viewer");
            }
        }
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
        assert_eq!(typing("ToDo", "1"), "typing:ToDo/1");
    }

    #[test]
    fn a_user_with_two_tabs_is_listed_once() {
        let users = ["b", "a", "b", "c", "a"].map(String::from).to_vec();
        assert_eq!(distinct_in_order(users), ["b", "a", "c"]);
    }
}
