//! The handshake middleware and the client events Frappe's service handles (spec §4, §5).
//!
//! Arguments are positional and untrusted: anything missing, empty or not a string makes the
//! event a no-op, never an error that reaches the connection.

use std::sync::Arc;

use axum::extract::ConnectInfo;
use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::Value;
use socketioxide::extract::{Event, Extension, SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;

use ::metrics::{counter, histogram};

use crate::app::App;
use crate::auth::Subject;
use crate::connection::Peer;
use crate::handshake::{self, Refusal};
use crate::limits::Verdict;
use crate::metrics;
use crate::revoke::ServerCause;
use crate::rooms::{self, ClientState, Presence};

/// Socket.IO emit with no arguments: an empty tuple-like value, so the frame is `["pong"]`.
const NO_ARGS: [(); 0] = [];

/// Connect middleware: the local checks, then one call to the site. On `Err` the client gets
/// `connect_error` with the refusal's text and nothing else happens.
pub async fn authenticate(socket: SocketRef, State(app): State<Arc<App>>) -> Result<(), Refusal> {
    let site = socket.ns().trim_start_matches('/').to_owned();
    let headers = &socket.req_parts().headers;
    let settings = app.settings();
    let outcome = match handshake::check(&site, headers, settings.config.default_site.as_deref()) {
        Ok(accepted) => settings
            .frappe
            .get_user_info(&site, accepted)
            .await
            .map_err(Refusal::Unauthorized)
            .and_then(|session| {
                let peer = socket.req_parts().extensions.get::<ConnectInfo<Peer>>();
                let ip = handshake::client_ip(peer.and_then(|info| info.0.ip), headers);
                app.seats
                    .take(&settings.config.connection_caps, &site, ip, &session.user)
                    .map(|seat| (session, seat))
                    .map_err(Refusal::TooManyConnections)
            }),
        Err(refusal) => Err(refusal),
    };
    let label = match &outcome {
        Ok(_) => "ok",
        Err(refusal) => refusal.reason(),
    };
    counter!(metrics::HANDSHAKES, "site" => site.clone(), "outcome" => label).increment(1);
    match outcome {
        Ok((session, seat)) => {
            admit(
                &socket,
                &app,
                ClientState::new(session, seat, &settings.config.limits),
            );
            Ok(())
        }
        Err(refusal) => {
            tracing::info!(%site, reason = label, transport = transport(&socket),
                refusal = %refusal, "handshake refused");
            Err(refusal)
        }
    }
}

/// Join Frappe's rooms and listen for client events.
///
/// This runs inside the middleware, before socketioxide acknowledges the CONNECT: it spawns
/// the connect handler only *after* the ack, so rooms joined there would miss events published
/// the instant the client sees `connect`, and events the client emits right away (its buffered
/// `doc_subscribe`s) could arrive before their listener exists.
fn admit(socket: &SocketRef, app: &App, client: Arc<ClientState>) {
    let session = &client.session;
    watch_if_websocket(socket, app);
    socket.join(rooms::user(&session.user));
    socket.join(rooms::WEBSITE);
    if session.is_system_user() {
        socket.join(rooms::ALL);
    }
    socket.on_fallback(on_event);
    socket.on_disconnect(on_disconnect);
    socket.extensions.insert(client);
}

/// A socket that opened straight on websocket has its own request's connection to watch for
/// slow consumption. Upgraded sockets are registered when their upgrade request arrives; one
/// may already be on websocket here (the upgrade can finish while the join waits for Frappe),
/// but the request it keeps is the polling one, on a connection that is not its websocket.
fn watch_if_websocket(socket: &SocketRef, app: &App) {
    let request = socket.req_parts();
    let opened_on_websocket = request
        .uri
        .query()
        .is_some_and(|query| query.split('&').any(|pair| pair == "transport=websocket"));
    if opened_on_websocket
        && let Some(ConnectInfo(peer)) = request.extensions.get::<ConnectInfo<Peer>>()
    {
        app.slow.track(socket.id, peer.meter.clone());
    }
}

/// Runs once the socket is acknowledged; everything it needs was set up by [`admit`].
pub async fn on_connect(
    socket: SocketRef,
    State(app): State<Arc<App>>,
    Extension(client): Extension<Arc<ClientState>>,
) {
    let session = &client.session;
    tracing::info!(site = %session.site, user = %session.user,
        transport = transport(&socket), "client connected");
    if session.is_guest() {
        return;
    }
    if let Some(gap) = app.reconnects.arrived(&session.site, &session.user) {
        counter!(metrics::RECONNECTS, "site" => session.site.clone()).increment(1);
        histogram!(metrics::RECONNECT_DELAY, "site" => session.site.clone()).record(gap);
    }
}

/// The client events Frappe's service handles (spec §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientEvent {
    Ping,
    DoctypeSubscribe,
    DoctypeUnsubscribe,
    DocSubscribe,
    DocUnsubscribe,
    /// `task_subscribe`, and its older name `progress_subscribe`.
    TaskSubscribe,
    TaskUnsubscribe,
    DocOpen,
    DocClose,
    OpenInEditor,
}

impl ClientEvent {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "ping" => Self::Ping,
            "doctype_subscribe" => Self::DoctypeSubscribe,
            "doctype_unsubscribe" => Self::DoctypeUnsubscribe,
            "doc_subscribe" => Self::DocSubscribe,
            "doc_unsubscribe" => Self::DocUnsubscribe,
            "task_subscribe" | "progress_subscribe" => Self::TaskSubscribe,
            "task_unsubscribe" => Self::TaskUnsubscribe,
            "doc_open" => Self::DocOpen,
            "doc_close" => Self::DocClose,
            "open_in_editor" => Self::OpenInEditor,
            _ => return None,
        })
    }
}

/// Every client event, by name: one handler per socket rather than one `socket.on` per event
/// (socketioxide keeps each socket's handlers in a map of its own, ~670 bytes per connection
/// for these 11). A known event first spends the socket's budget; unknown events are ignored
/// without spending it.
async fn on_event(
    socket: SocketRef,
    State(app): State<Arc<App>>,
    Extension(client): Extension<Arc<ClientState>>,
    Event(event): Event,
    TryData(args): TryData<EventArgs>,
) {
    let Some(event) = ClientEvent::from_name(event.as_str()) else {
        return;
    };
    if !within_budget(&socket, &app, &client) {
        return;
    }
    let (socket, app, client, args) = (&socket, app.as_ref(), client.as_ref(), args.ok());
    match event {
        ClientEvent::Ping => on_ping(socket),
        ClientEvent::DoctypeSubscribe => doctype_subscribe(socket, app, client, args).await,
        ClientEvent::DoctypeUnsubscribe => doctype_unsubscribe(socket, args),
        ClientEvent::DocSubscribe => doc_subscribe(socket, app, client, args).await,
        ClientEvent::DocUnsubscribe => doc_unsubscribe(socket, args),
        ClientEvent::TaskSubscribe => task_subscribe(socket, app, client, args).await,
        ClientEvent::TaskUnsubscribe => task_unsubscribe(socket, args),
        ClientEvent::DocOpen => doc_open(socket, app, client, args).await,
        ClientEvent::DocClose => doc_close(socket, client, args).await,
        ClientEvent::OpenInEditor => open_in_editor(app, client, args).await,
    }
}

fn transport(socket: &SocketRef) -> &'static str {
    match socket.transport_type() {
        socketioxide::TransportType::Polling => "polling",
        socketioxide::TransportType::Websocket => "websocket",
    }
}

fn on_ping(socket: &SocketRef) {
    // A full queue only means this client is far behind; it will not miss a pong it can see.
    let _ = socket.emit("pong", &NO_ARGS);
}

async fn doctype_subscribe(
    socket: &SocketRef,
    app: &App,
    client: &ClientState,
    args: Option<EventArgs>,
) {
    let Some(doctype) = args.and_then(|a| a.text(0).map(str::to_owned)) else {
        return;
    };
    let frappe = &app.settings().frappe;
    if frappe
        .may_subscribe(&client.session, Subject::Doctype(&doctype))
        .await
    {
        join_within_limit(socket, app, client, rooms::doctype(&doctype));
    }
}

fn doctype_unsubscribe(socket: &SocketRef, args: Option<EventArgs>) {
    if let Some(doctype) = args.as_ref().and_then(|a| a.text(0)) {
        socket.leave(rooms::doctype(doctype));
    }
}

async fn doc_subscribe(
    socket: &SocketRef,
    app: &App,
    client: &ClientState,
    args: Option<EventArgs>,
) {
    let Some((doctype, docname)) = args.and_then(|a| a.doc()) else {
        return;
    };
    let frappe = &app.settings().frappe;
    if frappe
        .may_subscribe(&client.session, Subject::Doc(&doctype, &docname))
        .await
    {
        join_within_limit(socket, app, client, rooms::doc(&doctype, &docname));
    }
}

fn doc_unsubscribe(socket: &SocketRef, args: Option<EventArgs>) {
    if let Some((doctype, docname)) = args.and_then(|a| a.doc()) {
        socket.leave(rooms::doc(&doctype, &docname));
    }
}

async fn task_subscribe(
    socket: &SocketRef,
    app: &App,
    client: &ClientState,
    args: Option<EventArgs>,
) {
    if let Some(task_id) = args.as_ref().and_then(|a| a.text(0)) {
        join_within_limit(socket, app, client, rooms::task(task_id));
    }
}

fn task_unsubscribe(socket: &SocketRef, args: Option<EventArgs>) {
    if let Some(task_id) = args.as_ref().and_then(|a| a.text(0)) {
        socket.leave(rooms::task(task_id));
    }
}

async fn doc_open(socket: &SocketRef, app: &App, client: &ClientState, args: Option<EventArgs>) {
    let Some((doctype, docname)) = args.and_then(|a| a.doc()) else {
        return;
    };
    let frappe = &app.settings().frappe;
    if !frappe
        .may_subscribe(&client.session, Subject::Doc(&doctype, &docname))
        .await
        || !join_within_limit(socket, app, client, rooms::open_doc(&doctype, &docname))
    {
        return;
    }
    client.remember_open(&doctype, &docname);
    rooms::announce_viewers(socket, client, &doctype, &docname, Presence::Staying).await;
}

async fn doc_close(socket: &SocketRef, client: &ClientState, args: Option<EventArgs>) {
    let Some((doctype, docname)) = args.and_then(|a| a.doc()) else {
        return;
    };
    socket.leave(rooms::open_doc(&doctype, &docname));
    client.forget_open(&doctype, &docname);
    rooms::announce_viewers(socket, client, &doctype, &docname, Presence::Staying).await;
}

/// Spend one event from the socket's budget; `false` means the event is ignored. A client
/// that keeps flooding for a whole burst's worth of events is disconnected.
fn within_budget(socket: &SocketRef, app: &App, client: &ClientState) -> bool {
    let verdict = client.spend_event(&app.settings().config.limits);
    if verdict == Verdict::Handle {
        return true;
    }
    let site = client.session.site.clone();
    counter!(metrics::CLIENT_EVENTS_DROPPED, "site" => site, "reason" => "rate_limited")
        .increment(1);
    if verdict == Verdict::Disconnect {
        tracing::warn!(site = %client.session.site, user = %client.session.user,
            "disconnecting a client that keeps exceeding its event rate");
        socket.extensions.insert(ServerCause("rate_limited"));
        let _ = socket.clone().disconnect();
    }
    false
}

/// Join `room` unless the socket already is in `realtime_max_rooms_per_socket` rooms.
fn join_within_limit(socket: &SocketRef, app: &App, client: &ClientState, room: String) -> bool {
    let max_rooms = app.settings().config.limits.max_rooms;
    if socket.rooms().len() >= max_rooms {
        let site = client.session.site.clone();
        counter!(metrics::CLIENT_EVENTS_DROPPED, "site" => site, "reason" => "room_limit")
            .increment(1);
        tracing::debug!(site = %client.session.site, user = %client.session.user, max_rooms,
            "room limit reached; subscription ignored");
        return false;
    }
    socket.join(room);
    true
}

/// Publishes the build overlay's "open this file" request for `bench watch`. Frappe's Python
/// service allows it only in developer mode and never for Guest; so do we.
async fn open_in_editor(app: &App, client: &ClientState, args: Option<EventArgs>) {
    if !app.settings().config.developer_mode || client.session.is_guest() {
        return;
    }
    let Some(Value::Object(request)) = args.and_then(|a| a.0.into_iter().next()) else {
        return;
    };
    let payload = Value::Object(request).to_string();
    if let Err(e) = app.redis.publish("open_in_editor", &payload).await {
        tracing::warn!(error = %e, "cannot publish open_in_editor");
    }
}

async fn on_disconnect(
    socket: SocketRef,
    State(app): State<Arc<App>>,
    Extension(client): Extension<Arc<ClientState>>,
    reason: DisconnectReason,
) {
    let session = &client.session;
    for (doctype, docname) in client.take_open() {
        rooms::announce_viewers(&socket, &client, &doctype, &docname, Presence::Departing).await;
    }
    let cut_as_slow = app.slow.forget(socket.id);
    let reason = match (reason, socket.extensions.get::<ServerCause>()) {
        _ if cut_as_slow => "slow_consumer",
        (DisconnectReason::ServerNSDisconnect, Some(ServerCause(cause))) => cause,
        (reason, _) => disconnect_label(reason),
    };
    counter!(metrics::DISCONNECTS, "site" => session.site.clone(), "reason" => reason).increment(1);
    if !session.is_guest() {
        app.reconnects.departed(&session.site, &session.user);
    }
    tracing::info!(site = %session.site, user = %session.user,
        transport = transport(&socket), reason, "client disconnected");
}

/// A bounded label for why a socket went away.
fn disconnect_label(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport_close",
        DisconnectReason::ClientNSDisconnect => "client_disconnect",
        DisconnectReason::HeartbeatTimeout => "ping_timeout",
        DisconnectReason::TransportError => "transport_error",
        DisconnectReason::PacketParsingError => "packet_parsing_error",
        DisconnectReason::MultipleHttpPollingError => "multiple_polling_error",
        DisconnectReason::ServerNSDisconnect => "server_disconnect",
        DisconnectReason::ClosingServer => "server_shutdown",
    }
}

/// Every positional argument of an event. socketioxide hands a non-tuple type only the first
/// argument, so this deserialises as a tuple of any length.
#[derive(Debug, Default)]
pub struct EventArgs(Vec<Value>);

impl EventArgs {
    /// Argument `index` if it is a non-empty string (Frappe skips falsy arguments).
    fn text(&self, index: usize) -> Option<&str> {
        self.0
            .get(index)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    fn doc(&self) -> Option<(String, String)> {
        Some((self.text(0)?.to_owned(), self.text(1)?.to_owned()))
    }
}

impl<'de> Deserialize<'de> for EventArgs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArgsVisitor;
        impl<'de> Visitor<'de> for ArgsVisitor {
            type Value = EventArgs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("event arguments")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<EventArgs, S::Error> {
                let mut args = Vec::new();
                while let Some(arg) = seq.next_element()? {
                    args.push(arg);
                }
                Ok(EventArgs(args))
            }
        }
        // The length is only a hint to the parser; every argument present is read.
        deserializer.deserialize_tuple(usize::MAX, ArgsVisitor)
    }
}
