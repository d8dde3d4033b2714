//! Who-is-viewing presence (protocol §5.3): who is in a document's rooms, told to its viewers,
//! and the users in a room, for the apps' presence lists.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::audience;
use crate::client::ClientState;
use crate::config::FrappeVersion;
use crate::rooms;
use crate::shared::presence::{Move, RedisPresence};
use crate::socketio::{Io, Sid};

/// `doc_viewers` and `doc_typers`: the distinct users in a document's room.
#[derive(Serialize)]
struct DocUsers<'a> {
    doctype: &'a str,
    docname: &'a str,
    users: Vec<String>,
}

/// Tells a document's viewers who views it and, on Frappe 13 and 14, who types in it. A
/// document's viewers are in its room of the site's namespace and of `/` alike.
///
/// A socket that is leaving is out of its rooms before its disconnect handler announces it
/// (as in Node), so who is in a room is always who stays.
pub struct Announcer<'a> {
    pub io: &'a Io,
    /// The client whose move prompted the announcement, and its socket.
    pub me: &'a ClientState,
    pub socket: Sid,
    pub version: FrappeVersion,
    /// Where viewers are kept when several instances share them (Frappe 15 on); `None`:
    /// this process's rooms.
    pub shared: Option<&'a RedisPresence>,
}

impl Announcer<'_> {
    pub fn has_typing_indicators(&self) -> bool {
        !self.version.has_site_namespaces()
    }

    /// The socket opened (`Move::Opened`, once in the document's room) or left a document:
    /// send `doc_viewers` with the distinct users viewing it to everyone viewing it.
    ///
    /// From Frappe 15 on, nothing is sent when the only viewer left is the announcing user
    /// (a lone viewer is not told about himself); Frappe 13 and 14 send it anyway.
    pub fn viewers(&self, doctype: &str, docname: &str, how: Move) {
        if let Some(shared) = self.shared
            && self.version.has_site_namespaces()
        {
            let (site, user) = (&self.me.session.site, &self.me.session.user);
            shared.moved(site, doctype, docname, self.socket, user, how);
            return;
        }
        let room = rooms::open_doc(doctype, docname);
        let viewers = self.members(&room);
        if self.version.has_site_namespaces()
            && let [only] = viewers.as_slice()
            && *only == self.me.session.user
        {
            return;
        }
        self.tell(&room, "doc_viewers", doctype, docname, viewers);
    }

    /// Send `doc_typers` with the distinct users typing in a document to its viewers.
    pub fn typers(&self, doctype: &str, docname: &str) {
        let typers = self.members(&rooms::typing(doctype, docname));
        let room = rooms::open_doc(doctype, docname);
        self.tell(&room, "doc_typers", doctype, docname, typers);
    }

    /// The user of every socket in `room`, a user with two tabs twice: the lone-viewer rule
    /// above counts sockets, as Node does.
    fn members(&self, room: &str) -> Vec<String> {
        socket_users(self.io, &self.me.session.site, room)
    }

    fn tell(&self, room: &str, event: &str, doctype: &str, docname: &str, users: Vec<String>) {
        let payload = DocUsers {
            doctype,
            docname,
            users: distinct_in_order(users),
        };
        for (namespace, name) in audience::room_of_site(self.io, &self.me.session.site, room) {
            if let Err(e) = namespace.broadcast(Some(&name), None, event, &payload) {
                tracing::warn!(error = %e, event, "cannot encode a presence event");
            }
        }
    }
}

/// The distinct users of the sockets in `room` of `site`, wherever they are connected, in the
/// order their sockets connected (as Node's app handlers list them, walking the namespace's
/// sockets).
pub fn users_in(io: &Io, site: &str, room: &str) -> Vec<String> {
    let mut sockets = room_sockets(io, site, room);
    sockets.sort_unstable_by_key(|(connected, _)| *connected);
    distinct_in_order(sockets.into_iter().map(|(_, user)| user).collect())
}

/// The user of each socket in `room` of `site`, wherever it is connected.
fn socket_users(io: &Io, site: &str, room: &str) -> Vec<String> {
    let sockets = room_sockets(io, site, room);
    sockets.into_iter().map(|(_, user)| user).collect()
}

/// Each socket in `room` of `site`, wherever it is connected: when it connected (its place in
/// [`ClientState::connected`]'s order) and its user.
fn room_sockets(io: &Io, site: &str, room: &str) -> Vec<(u64, String)> {
    audience::room_of_site(io, site, room)
        .into_iter()
        .flat_map(|(namespace, name)| namespace.sockets_in(&name))
        .filter_map(|other| {
            let client = other.state::<ClientState>()?;
            Some((client.connected, client.session.user.clone()))
        })
        .collect()
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
    fn a_user_with_two_tabs_is_listed_once() {
        let users = ["b", "a", "b", "c", "a"].map(String::from).to_vec();
        assert_eq!(distinct_in_order(users), ["b", "a", "c"]);
    }
}
