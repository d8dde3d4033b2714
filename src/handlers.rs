//! The handshake middleware and the client events Frappe's service handles (spec §4, §5).
//!
//! Arguments are positional and untrusted: anything missing, empty or not a string makes the
//! event a no-op, never an error that reaches the connection.

use std::sync::Arc;

use axum::extract::ConnectInfo;
use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{Event, Extension, SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;

use ::metrics::{counter, histogram};

use crate::app::App;
use crate::audience::{self, Scope};
use crate::auth::Subject;
use crate::connection::Peer;
use crate::handshake::{self, Namespace, Policy, Refusal};
use crate::limits::Verdict;
use crate::metrics;
use crate::revoke::ServerCause;
use crate::rooms::{self, ClientState, Presence};

/// Socket.IO emit with no arguments: an empty tuple-like value, so the frame is `["pong"]`.
const NO_ARGS: [(); 0] = [];

/// Connect middleware: the local checks, then one call to the site. On `Err` the client gets
/// `connect_error` with the refusal's text and nothing else happens.
pub async fn authenticate(
    socket: SocketRef,
    State(app): State<Arc<App>>,
    TryData(auth): TryData<Value>,
) -> Result<(), Refusal> {
    let namespace = Namespace::from_path(socket.ns());
    let headers = &socket.req_parts().headers;
    let settings = app.settings();
    let policy = Policy {
        default_site: settings.config.default_site.as_deref(),
        sites: &app.sites,
        common_allow_cors: &settings.config.allow_cors,
        version: settings.config.frappe_version,
    };
    let checked = handshake::check(namespace, headers, auth.ok().as_ref(), &policy);
    // The metrics' site: the one checked, else the namespace's (`/` when the root namespace
    // names no site this bench has: never a name taken from the headers).
    let site = match (&checked, namespace) {
        (Ok(accepted), _) => accepted.site.clone(),
        (Err(_), Namespace::Site(site)) => site.to_owned(),
        (Err(_), Namespace::Root) => audience::ROOT.to_owned(),
    };
    let outcome = match checked {
        Ok(accepted) => settings
            .frappe
            .get_user_info(accepted)
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
            let scope = Scope::new(socket.ns(), &session.site);
            let client = ClientState::new(session, seat, &settings.config.limits, scope);
            admit(&socket, &app, client);
            Ok(())
        }
        Err(refusal) => {
            tracing::info!(%site, namespace = socket.ns(), reason = label,
                transport = transport(&socket), refusal = %refusal, "handshake refused");
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
    socket.join(client.room(rooms::user(&session.user)));
    socket.join(client.room(rooms::WEBSITE.to_owned()));
    if session.is_system_user() {
        socket.join(client.room(rooms::ALL.to_owned()));
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
    tracing::info!(site = %session.site, user = %session.user, namespace = socket.ns(),
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
    /// Frappe 13 and 14 only: typing indicators.
    DocTyping,
    DocTypingStopped,
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
            "doc_typing" => Self::DocTyping,
            "doc_typing_stopped" => Self::DocTypingStopped,
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
    io: SocketIo,
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
    let here = Here {
        socket: &socket,
        io: &io,
        app: app.as_ref(),
        client: client.as_ref(),
    };
    let args = args.ok();
    match event {
        ClientEvent::Ping => on_ping(&socket),
        ClientEvent::DoctypeSubscribe => doctype_subscribe(&here, args).await,
        ClientEvent::DoctypeUnsubscribe => doctype_unsubscribe(&here, args),
        ClientEvent::DocSubscribe => doc_subscribe(&here, args).await,
        ClientEvent::DocUnsubscribe => doc_unsubscribe(&here, args),
        ClientEvent::TaskSubscribe => task_subscribe(&here, args),
        ClientEvent::TaskUnsubscribe => task_unsubscribe(&here, args),
        ClientEvent::DocOpen => doc_open(&here, args).await,
        ClientEvent::DocClose => doc_close(&here, args).await,
        ClientEvent::DocTyping => doc_typing(&here, args, true).await,
        ClientEvent::DocTypingStopped => doc_typing(&here, args, false).await,
        ClientEvent::OpenInEditor => open_in_editor(&here, args).await,
    }
}

/// What an event handler works with: the socket, the server, and the socket's own state.
struct Here<'a> {
    socket: &'a SocketRef,
    io: &'a SocketIo,
    app: &'a App,
    client: &'a ClientState,
}

impl Here<'_> {
    /// Join `room` (a Frappe room name) unless the socket already is in
    /// `realtime_max_rooms_per_socket` rooms.
    fn join_within_limit(&self, room: String) -> bool {
        let max_rooms = self.app.settings().config.limits.max_rooms;
        if self.socket.rooms().len() >= max_rooms {
            let site = self.client.session.site.clone();
            counter!(metrics::CLIENT_EVENTS_DROPPED, "site" => site, "reason" => "room_limit")
                .increment(1);
            tracing::debug!(site = %self.client.session.site, user = %self.client.session.user,
                max_rooms, "room limit reached; subscription ignored");
            return false;
        }
        self.socket.join(self.client.room(room));
        true
    }

    fn leave(&self, room: String) {
        self.socket.leave(self.client.room(room));
    }

    async fn may_subscribe(&self, subject: Subject<'_>) -> bool {
        let settings = self.app.settings();
        settings
            .frappe
            .may_subscribe(&self.client.session, subject)
            .await
    }

    fn presence(&self) -> rooms::Announcer<'_> {
        rooms::Announcer {
            io: self.io,
            socket: self.socket,
            me: self.client,
            version: self.app.settings().config.frappe_version,
        }
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

async fn doctype_subscribe(here: &Here<'_>, args: Option<EventArgs>) {
    let Some(doctype) = args.and_then(|a| a.text(0).map(str::to_owned)) else {
        return;
    };
    if here.may_subscribe(Subject::Doctype(&doctype)).await {
        here.join_within_limit(rooms::doctype(&doctype));
    }
}

fn doctype_unsubscribe(here: &Here<'_>, args: Option<EventArgs>) {
    if let Some(doctype) = args.as_ref().and_then(|a| a.text(0)) {
        here.leave(rooms::doctype(doctype));
    }
}

async fn doc_subscribe(here: &Here<'_>, args: Option<EventArgs>) {
    let Some((doctype, docname)) = args.and_then(|a| a.doc()) else {
        return;
    };
    if here.may_subscribe(Subject::Doc(&doctype, &docname)).await {
        here.join_within_limit(rooms::doc(&doctype, &docname));
    }
}

fn doc_unsubscribe(here: &Here<'_>, args: Option<EventArgs>) {
    if let Some((doctype, docname)) = args.and_then(|a| a.doc()) {
        here.leave(rooms::doc(&doctype, &docname));
    }
}

fn task_subscribe(here: &Here<'_>, args: Option<EventArgs>) {
    if let Some(task_id) = args.as_ref().and_then(|a| a.text(0)) {
        here.join_within_limit(rooms::task(task_id));
    }
}

fn task_unsubscribe(here: &Here<'_>, args: Option<EventArgs>) {
    if let Some(task_id) = args.as_ref().and_then(|a| a.text(0)) {
        here.leave(rooms::task(task_id));
    }
}

async fn doc_open(here: &Here<'_>, args: Option<EventArgs>) {
    let Some((doctype, docname)) = args.and_then(|a| a.doc()) else {
        return;
    };
    if !here.may_subscribe(Subject::Doc(&doctype, &docname)).await
        || !here.join_within_limit(rooms::open_doc(&doctype, &docname))
    {
        return;
    }
    here.client.remember_open(&doctype, &docname);
    let presence = here.presence();
    presence
        .viewers(&doctype, &docname, Presence::Staying)
        .await;
    if presence.has_typing_indicators() {
        presence.typers(&doctype, &docname).await;
    }
}

async fn doc_close(here: &Here<'_>, args: Option<EventArgs>) {
    let Some((doctype, docname)) = args.and_then(|a| a.doc()) else {
        return;
    };
    here.leave(rooms::open_doc(&doctype, &docname));
    here.client.forget_open(&doctype, &docname);
    here.presence()
        .viewers(&doctype, &docname, Presence::Staying)
        .await;
}

/// `doc_typing` / `doc_typing_stopped` (Frappe 13 and 14; later versions ignore them): join
/// or leave the document's typing room, then tell its viewers who is typing.
async fn doc_typing(here: &Here<'_>, args: Option<EventArgs>, typing: bool) {
    let presence = here.presence();
    if !presence.has_typing_indicators() {
        return;
    }
    let Some((doctype, docname)) = args.and_then(|a| a.doc()) else {
        return;
    };
    let room = rooms::typing(&doctype, &docname);
    if typing {
        if !here.join_within_limit(room) {
            return;
        }
    } else {
        here.leave(room);
    }
    presence.typers(&doctype, &docname).await;
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

/// Publishes the build overlay's "open this file" request for `bench watch`. Frappe's Python
/// service allows it only in developer mode and never for Guest; so do we.
async fn open_in_editor(here: &Here<'_>, args: Option<EventArgs>) {
    let (app, client) = (here.app, here.client);
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
    io: SocketIo,
    State(app): State<Arc<App>>,
    Extension(client): Extension<Arc<ClientState>>,
    reason: DisconnectReason,
) {
    let session = &client.session;
    let presence = rooms::Announcer {
        io: &io,
        socket: &socket,
        me: &client,
        version: app.settings().config.frappe_version,
    };
    for (doctype, docname) in client.take_open() {
        presence
            .viewers(&doctype, &docname, Presence::Departing)
            .await;
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
