//! Where a site's sockets and rooms are.
//!
//! A site's clients live in two places. Frappe 15's Desk connects to the site's own namespace
//! `/<site>`, where rooms have Frappe's names (`user:jane@example.com`). Frappe 13 and 14,
//! and non-browser clients (IDE extensions, agents, mobile apps) that connect to the root
//! namespace `/`, share that one namespace between every site, so there a room carries the
//! site as a prefix (`erp.example.com:user:jane@example.com`), which is exactly how Frappe 13
//! and 14 named them (protocol §5.4). Everything that reaches "the sockets of a site" or "room R
//! of a site" goes through here, so no caller forgets the root namespace.

use crate::socketio::{Io, Namespace, Socket};

/// The namespace shared by every site.
pub const ROOT: &str = "/";

/// How the rooms of one socket are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// In `/<site>`: Frappe's room names as they are.
    SiteNamespace,
    /// In `/`: `<site>:<room>`.
    Root { prefix: String },
}

impl Scope {
    /// The scope of a socket of `site` connected to `namespace` (`/` or `/<site>`).
    pub fn new(namespace: &str, site: &str) -> Self {
        if namespace == ROOT {
            Self::Root {
                prefix: root_prefix(site),
            }
        } else {
            Self::SiteNamespace
        }
    }

    /// `room` (a Frappe room name) as this socket joins it.
    pub fn room(&self, room: String) -> String {
        match self {
            Self::SiteNamespace => room,
            Self::Root { prefix } => format!("{prefix}{room}"),
        }
    }

    /// The Frappe room name of a room this socket joined: [`Scope::room`] undone.
    pub fn frappe_room<'a>(&self, joined: &'a str) -> Option<&'a str> {
        match self {
            Self::SiteNamespace => Some(joined),
            Self::Root { prefix } => joined.strip_prefix(prefix.as_str()),
        }
    }
}

fn root_prefix(site: &str) -> String {
    format!("{site}:")
}

/// Room `room` of `site` in each namespace where it can have members, with the name it has
/// there: as it is in `/<site>`, prefixed in `/`.
pub fn room_of_site(io: &Io, site: &str, room: &str) -> Vec<(Namespace, String)> {
    let mut rooms = Vec::with_capacity(2);
    if let Some(namespace) = io.namespace(&format!("/{site}")) {
        rooms.push((namespace, room.to_owned()));
    }
    if let Some(root) = io.namespace(ROOT) {
        rooms.push((root, format!("{}{room}", root_prefix(site))));
    }
    rooms
}

/// The site a root-namespace room belongs to: what comes before its first `:`
/// (`erp.example.com:doctype:ToDo`). Frappe 13 and 14 publish such rooms as they are.
pub fn site_of_prefixed_room(room: &str) -> Option<&str> {
    room.split_once(':')
        .map(|(site, _)| site)
        .filter(|site| !site.is_empty())
}

/// Every socket of `site`: its namespace's, and those in `/` that joined as that site (every
/// socket there is in its site's `website` room).
pub fn site_sockets(io: &Io, site: &str) -> Vec<Socket> {
    let mut sockets = io
        .namespace(&format!("/{site}"))
        .map(|namespace| namespace.sockets())
        .unwrap_or_default();
    if let Some(root) = io.namespace(ROOT) {
        let website = format!("{}{}", root_prefix(site), crate::rooms::WEBSITE);
        sockets.extend(root.sockets_in(&website));
    }
    sockets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_rooms_carry_the_site_as_frappe_14_named_them() {
        let root = Scope::new("/", "erp.example.com");
        assert_eq!(
            root.room("user:a@x.com".into()),
            "erp.example.com:user:a@x.com"
        );
        let own = Scope::new("/erp.example.com", "erp.example.com");
        assert_eq!(own.room("user:a@x.com".into()), "user:a@x.com");
        assert_eq!(
            site_of_prefixed_room("erp.example.com:doc:ToDo/1"),
            Some("erp.example.com")
        );
        assert_eq!(site_of_prefixed_room("no-prefix"), None);
        assert_eq!(site_of_prefixed_room(":user:x"), None);
    }
}
