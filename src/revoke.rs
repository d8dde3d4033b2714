//! Session revocation: disconnect every socket of a user on a site, e.g. when the user logs
//! out or is disabled. Frappe's own service has no way to do this; its sockets outlive the
//! session until the tab closes.
//!
//! Two ways in: `POST /admin/disconnect?site=<site>&user=<user>` with
//! `Authorization: Bearer <realtime_admin_token>` (see [`crate::ops`]), or a message
//! `{"site": …, "user": …}` published on the Redis channel [`CHANNEL`] of `redis_queue`.
//! Revoked clients get a Socket.IO DISCONNECT, which socket.io-client does not retry.

use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::client;
use crate::disconnect::DisconnectCause;
use crate::socketio::Io;
use crate::{audience, rooms};

/// The Redis channel (on `redis_queue`) that carries revocations.
pub const CHANNEL: &str = "frappe_realtime:revoke";

/// A revocation as published on [`CHANNEL`].
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revocation {
    pub site: String,
    pub user: String,
}

/// Disconnect every socket of `user` on `site` and forget their remembered `get_user_info`
/// answers, so they cannot reconnect without Frappe's say; returns how many sockets there were.
pub fn disconnect_user(io: &Io, app: &App, site: &str, user: &str) -> usize {
    app.frappe.forget_user(site, user);
    let sockets: Vec<_> = audience::room_of_site(io, site, &rooms::user(user))
        .into_iter()
        .flat_map(|(namespace, room)| namespace.sockets_in(&room))
        .collect();
    let count = sockets.len();
    for socket in sockets {
        client::disconnect(&socket, DisconnectCause::SessionRevoked);
    }
    tracing::info!(%site, %user, sockets = count, "session revoked");
    count
}

/// Handle one message from [`CHANNEL`]; a malformed one is logged (without its payload) and
/// dropped.
pub fn handle(io: &Io, app: &App, payload: &[u8]) {
    match serde_json::from_slice::<Revocation>(payload) {
        Ok(revocation) => {
            disconnect_user(io, app, &revocation.site, &revocation.user);
        }
        Err(_) => tracing::warn!(
            channel = CHANNEL,
            bytes = payload.len(),
            "dropped a revocation that is not {{\"site\", \"user\"}}"
        ),
    }
}
