//! Admission: whether a Socket.IO handshake becomes a connected socket of a site, and in which
//! rooms it starts.
//!
//! Three steps, the first failure wins: the local checks ([`crate::handshake::check`]: site,
//! namespace, origin, a credential present), the site's word on the credential
//! (`get_user_info`), and a place under the connection caps. An admitted socket gets its
//! [`ClientState`] and its own rooms before the client is told it is connected, so it misses
//! nothing published from then on; one that came back for a kept session (connection state
//! recovery) gets its rooms back instead, if it is still the same user.

mod refusal;
mod refused;

use std::sync::Arc;

use axum::extract::ConnectInfo;
use serde_json::Value;

use ::metrics::counter;

use crate::app::{App, Settings};
use crate::audience::{self, Scope};
use crate::auth::Session;
use crate::caps::Seat;
use crate::client::ClientState;
use crate::connection::Peer;
use crate::handshake::{self, Namespace, Policy};
use crate::metrics;
use crate::rooms;
use crate::sessions::transport_label;
use crate::socketio::{Recovery, Socket};

pub use refusal::Refusal;
pub use refused::{RecentRefusals, RefusedHandshake};

/// The door every handshake goes through; it remembers the last ones it refused.
#[derive(Debug, Default)]
pub struct Admission {
    refused: RecentRefusals,
}

impl Admission {
    /// Admit `socket`, or say why not (the text the client gets in `connect_error`). `auth` is
    /// the CONNECT packet's payload; `recovery`, whether it came back for a kept session.
    pub async fn admit(
        &self,
        app: &App,
        socket: &Socket,
        auth: Option<&Value>,
        recovery: &Recovery,
    ) -> Result<(), Refusal> {
        // One configuration throughout, as for every handshake and event (see `App`).
        let settings = app.settings();
        let (site, decision) = decide(app, &settings, socket, auth).await;
        let label = decision.as_ref().map_or_else(Refusal::label, |_| "ok");
        counter!(metrics::HANDSHAKES, "site" => site.clone(), "outcome" => label).increment(1);
        match decision {
            Ok((session, seat)) => {
                welcome(&settings, socket, session, seat, recovery, site);
                Ok(())
            }
            Err(refusal) => {
                self.turn_away(socket, &refusal, recovery, site);
                Err(refusal)
            }
        }
    }

    /// The last refused handshakes, the newest first.
    pub fn recent_refusals(&self) -> Vec<RefusedHandshake> {
        self.refused.newest_first()
    }

    fn turn_away(&self, socket: &Socket, refusal: &Refusal, recovery: &Recovery, site: String) {
        if let Some(outcome) = recovery.label() {
            // A kept session whose client is no longer let in is not resumed.
            let outcome = match recovery {
                Recovery::Restoring(_) => "refused",
                _ => outcome,
            };
            counter!(metrics::RECOVERIES, "site" => site.clone(), "outcome" => outcome)
                .increment(1);
        }
        let namespace = socket.namespace().path();
        let transport = transport_label(socket.transport_type());
        tracing::info!(%site, namespace, reason = refusal.label(), transport,
            refusal = %refusal, "handshake refused");
        let refused = RefusedHandshake {
            at_ms: metrics::unix_now_ms(),
            site,
            namespace: namespace.to_owned(),
            reason: refusal.label(),
            message: refusal.to_string(),
            transport,
            host: None,
            origin: None,
            site_name: None,
        };
        self.refused
            .record(refused.with_headers(&socket.request().headers));
    }
}

/// The three steps, and the site the handshake counts under in the metrics: the one checked,
/// else the namespace's (`/` when the root namespace names no site this bench has: never a
/// name taken from the headers).
async fn decide(
    app: &App,
    settings: &Settings,
    socket: &Socket,
    auth: Option<&Value>,
) -> (String, Result<(Session, Seat), Refusal>) {
    let path = socket.namespace().path();
    let namespace = Namespace::from_path(path);
    let headers = &socket.request().headers;
    let policy = Policy {
        default_site: settings.config.default_site.as_deref(),
        sites: &app.sites,
        common_allow_cors: &settings.config.allow_cors,
        version: settings.config.frappe_version,
    };
    let accepted = match handshake::check(namespace, headers, auth, &policy) {
        Ok(accepted) => accepted,
        Err(rejection) => {
            let site = match namespace {
                Namespace::Site(site) => site.to_owned(),
                Namespace::Root => audience::ROOT.to_owned(),
            };
            return (site, Err(rejection.into()));
        }
    };
    let site = accepted.site.clone();
    let session = match app.frappe.get_user_info(accepted).await {
        Ok(session) => session,
        Err(failure) => return (site, Err(Refusal::Unauthorized(failure))),
    };
    let peer = socket.request().extensions.get::<ConnectInfo<Peer>>();
    let ip = handshake::client_ip(peer.and_then(|info| info.0.ip), headers);
    let seat = app
        .seats
        .take(&settings.config.connection_caps, &site, ip, &session.user)
        .map_err(Refusal::TooManyConnections);
    (site, seat.map(|seat| (session, seat)))
}

/// Give an admitted socket its state and rooms.
fn welcome(
    settings: &Settings,
    socket: &Socket,
    session: Session,
    seat: Seat,
    recovery: &Recovery,
    site: String,
) {
    let scope = Scope::new(socket.namespace().path(), &session.site);
    let client = ClientState::new(session, seat, &settings.config.limits, scope);
    join_own_rooms(socket, &client);
    if let Recovery::Restoring(kept) = recovery {
        restore_rooms(socket, &client, kept, &site);
    } else if let Some(outcome) = recovery.label() {
        counter!(metrics::RECOVERIES, "site" => site, "outcome" => outcome).increment(1);
    }
    socket.set_state(client);
}

/// The rooms every socket is in: its user's, its site's `website`, and `all` for System Users.
fn join_own_rooms(socket: &Socket, client: &ClientState) {
    let session = &client.session;
    socket.join(&client.room(rooms::user(&session.user)));
    socket.join(&client.room(rooms::WEBSITE.to_owned()));
    if session.is_system_user() {
        socket.join(&client.room(rooms::ALL.to_owned()));
    }
}

/// Give a socket that came back for its kept session the rooms it had: its `doc:`,
/// `doctype:`, `task_progress:` and `open_doc:` subscriptions were checked when it made them,
/// for the same user. A client that is now someone else (its own rooms are not among the kept
/// ones: another user, site or user type) starts afresh instead.
fn restore_rooms(socket: &Socket, client: &ClientState, kept: &[Arc<str>], site: &str) {
    let own = socket.rooms();
    if !own.iter().all(|room| kept.contains(room)) {
        counter!(metrics::RECOVERIES, "site" => site.to_owned(), "outcome" => "refused")
            .increment(1);
        socket.decline_recovery();
        return;
    }
    client.resuming();
    for room in kept {
        socket.join(room);
        let open = client.frappe_room(room).and_then(rooms::open_doc_of);
        if let Some((doctype, docname)) = open {
            client.remember_open(doctype, docname);
        }
    }
}
