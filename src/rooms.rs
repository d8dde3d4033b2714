//! Room names Frappe publishes to (protocol §5.4). Who is in them is [`crate::presence`]'s.
//!
//! Room names are opaque strings; doctype and docname go in unescaped, as in Frappe. The
//! names here are the ones of a site's own namespace; a socket's
//! [`ClientState::room`](crate::client::ClientState::room) gives the name it joins (prefixed
//! with the site in `/`, see [`crate::audience`]).

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

/// The document of an [`open_doc`] room: doctype names have no `/`, docnames may.
pub fn open_doc_of(room: &str) -> Option<(&str, &str)> {
    room.strip_prefix("open_doc:")?.split_once('/')
}

/// A long job's progress room: its last state is sent to late subscribers
/// ([`crate::last_state`]).
pub const TASK_PREFIX: &str = "task_progress:";

pub fn task(task_id: &str) -> String {
    format!("{TASK_PREFIX}{task_id}")
}

/// Frappe 13 and 14: who is typing in a document.
pub fn typing(doctype: &str, docname: &str) -> String {
    format!("typing:{doctype}/{docname}")
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
}
