//! The operators' status page: per site, the connected sockets by transport, the users
//! online and the busiest rooms; the health of Redis and of the calls to Frappe; and the last
//! refused handshakes with the headers that decided them. What a glance should answer ("is
//! anyone connected? why is this client refused?") without reading logs or Node's source.
//!
//! `/status` is the page (plain HTML, no script, refreshed every 5 s), `/status.json` the same
//! snapshot for programs. Both are read-only and served to loopback callers (and over the
//! bench's Unix socket) or to callers presenting `realtime_admin_token`: the names of users
//! online are not for the world.

mod page;
mod snapshot;

pub use page::render;
pub use snapshot::{snapshot, summary};
