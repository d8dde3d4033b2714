//! The handler of every namespace Frappe's clients connect to (`/` and `/<site>`): it hands
//! each handshake to [`Admission`], dispatches the client events Frappe's service handles
//! (protocol §5) and the installed apps' events, and counts and announces what a disconnect
//! leaves.
//!
//! Arguments are positional and untrusted: anything missing, empty or not a string makes the
//! event a no-op, never an error that reaches the connection.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use ::metrics::{counter, histogram};

use crate::admission::Admission;
use crate::app::App;
use crate::app_handlers;
use crate::auth::Subject;
use crate::client::{self, ClientState};
use crate::disconnect::DisconnectCause;
use crate::limits::Verdict;
use crate::metrics;
use crate::presence::Announcer;
use crate::rooms;
use crate::sessions::transport_label;
use crate::shared::presence::{Move, RedisPresence};
use crate::socketio::{
    self, ConnectFuture, DisconnectReason, Event, Handshake, Io, NamespaceHandler, Socket,
};

/// Socket.IO emit with no arguments: an empty tuple-like value, so the frame is `["pong"]`.
const NO_ARGS: [(); 0] = [];

/// Frappe's side of a namespace. One serves `/` and every site's namespace.
///
/// It holds the server its namespaces belong to (presence reaches a site's viewers in both of
/// its namespaces), and the server holds its namespaces: the two live as long as the process.
#[derive(Clone)]
pub struct Frappe {
    app: Arc<App>,
    io: Io,
    admission: Arc<Admission>,
    /// Presence shared with other instances, if kept on Redis.
    presence: Option<Arc<RedisPresence>>,
}

impl Frappe {
    pub fn new(
        app: Arc<App>,
        io: Io,
        admission: Arc<Admission>,
        presence: Option<Arc<RedisPresence>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            app,
            io,
            admission,
            presence,
        })
    }
}

impl NamespaceHandler for Frappe {
    /// Admission decides (see [`Admission::admit`]); a refusal's text is what the client gets
    /// in `connect_error`.
    fn connect(&self, handshake: Handshake) -> ConnectFuture {
        let (app, admission) = (self.app.clone(), self.admission.clone());
        let auth = handshake
            .auth()
            .and_then(|text| serde_json::from_str::<Value>(text).ok());
        let recovery = handshake.recovery().clone();
        let socket = handshake.socket;
        Box::pin(async move {
            admission
                .admit(&app, &socket, auth.as_ref(), &recovery)
                .await
                .map_err(|refusal| socketio::Refusal::new(refusal.to_string()))
        })
    }

    fn on_connect(&self, socket: &Socket) {
        let Some(client) = socket.state::<ClientState>() else {
            return;
        };
        let session = &client.session;
        tracing::info!(site = %session.site, user = %session.user,
            namespace = socket.namespace().path(), recovered = socket.recovered(),
            transport = transport_label(socket.transport_type()), "client connected");
        if client.is_resuming() {
            self.resumed(socket, client);
        }
        if session.is_guest() {
            return;
        }
        if let Some(gap) = self.app.reconnects.arrived(&session.site, &session.user) {
            counter!(metrics::RECONNECTS, "site" => session.site.clone()).increment(1);
            histogram!(metrics::RECONNECT_DELAY, "site" => session.site.clone()).record(gap);
        }
    }

    /// A known event first spends the socket's budget; unknown events are ignored without
    /// spending it. Events that ask Frappe or Redis run on a task of their own. An event that
    /// is not Frappe's goes to the handlers of the site's installed apps, if any.
    fn on_event(&self, socket: &Socket, event: Event) {
        let Some(client) = socket.state::<ClientState>() else {
            return;
        };
        let Some(kind) = ClientEvent::from_name(&event.name) else {
            self.on_app_event(socket, client, event);
            return;
        };
        if !within_budget(socket, &self.app, client) {
            return;
        }
        let args = event.args.deserialize::<EventArgs>().ok();
        if kind.asks_elsewhere() {
            let (frappe, socket) = (self.clone(), socket.clone());
            tokio::spawn(async move {
                if let Some(client) = socket.state::<ClientState>() {
                    frappe.here(&socket, client).handle_async(kind, args).await;
                }
            });
        } else {
            self.here(socket, client).handle(kind, args);
        }
    }

    /// The socket has already left its rooms: the viewers of the documents it had open are
    /// told who stays.
    fn on_disconnect(&self, socket: &Socket, reason: DisconnectReason) {
        let Some(client) = socket.state::<ClientState>() else {
            return;
        };
        let here = self.here(socket, client);
        let presence = here.presence();
        for (doctype, docname) in client.take_open() {
            presence.viewers(&doctype, &docname, Move::Left);
        }
        let session = &client.session;
        let reason = DisconnectCause::of(reason, client.cause()).label();
        counter!(metrics::DISCONNECTS, "site" => session.site.clone(), "reason" => reason)
            .increment(1);
        if !session.is_guest() {
            self.app.reconnects.departed(&session.site, &session.user);
        }
        tracing::info!(site = %session.site, user = %session.user,
            transport = transport_label(socket.transport_type()), reason, "client disconnected");
    }
}

impl Frappe {
    /// Run the installed apps' handlers of `event`, in `sites/apps.txt` order, on a task of
    /// their own (they may wait on Frappe). The client's acknowledgement goes to the first
    /// handler that answers one.
    fn on_app_event(&self, socket: &Socket, client: &ClientState, event: Event) {
        let settings = self.app.settings();
        let handlers = settings
            .app_handlers
            .for_event(&event.name, &client.session.installed_apps);
        if handlers.is_empty() || !within_budget(socket, &self.app, client) {
            return;
        }
        let args: Vec<Value> = event.args.deserialize().unwrap_or_default();
        let (app, io, socket) = (self.app.clone(), self.io.clone(), socket.clone());
        let mut ack = event.ack;
        tokio::spawn(async move {
            let Some(client) = socket.state::<ClientState>() else {
                return;
            };
            let cx = app_handlers::Context {
                socket: &socket,
                client,
                io: &io,
                frappe: &app.frappe,
                redis: &app.redis,
                max_rooms: settings.config.limits.max_rooms,
            };
            for handler in handlers {
                counter!(metrics::APP_EVENTS, "site" => client.session.site.clone(),
                    "app" => handler.app.clone())
                .increment(1);
                handler.run(&cx, &args, &mut ack).await;
            }
        });
    }

    /// A socket that came back for its kept session was admitted: count how, and tell the
    /// viewers of the documents it has open again that it is back.
    fn resumed(&self, socket: &Socket, client: &ClientState) {
        let site = client.session.site.clone();
        // It can lose its replay between the handshake and admission, if the log was
        // trimmed meanwhile; it is then admitted afresh.
        let outcome = if socket.recovered() {
            "recovered"
        } else {
            "too_old"
        };
        counter!(metrics::RECOVERIES, "site" => site.clone(), "outcome" => outcome).increment(1);
        counter!(metrics::EVENTS_REPLAYED, "site" => site).increment(socket.replayed() as u64);
        let here = self.here(socket, client);
        let presence = here.presence();
        for (doctype, docname) in client.open() {
            presence.viewers(&doctype, &docname, Move::Opened);
        }
    }

    fn here<'a>(&'a self, socket: &'a Socket, client: &'a ClientState) -> Here<'a> {
        Here {
            socket,
            io: &self.io,
            app: &self.app,
            client,
            shared_presence: self.presence.as_deref(),
        }
    }
}

/// The client events Frappe's service handles (protocol §5.2).
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

/// The client events Frappe's own service handles, by name; no app's handler may take one.
const FRAPPE_EVENTS: [(&str, ClientEvent); 13] = [
    ("ping", ClientEvent::Ping),
    ("doctype_subscribe", ClientEvent::DoctypeSubscribe),
    ("doctype_unsubscribe", ClientEvent::DoctypeUnsubscribe),
    ("doc_subscribe", ClientEvent::DocSubscribe),
    ("doc_unsubscribe", ClientEvent::DocUnsubscribe),
    ("task_subscribe", ClientEvent::TaskSubscribe),
    ("progress_subscribe", ClientEvent::TaskSubscribe),
    ("task_unsubscribe", ClientEvent::TaskUnsubscribe),
    ("doc_open", ClientEvent::DocOpen),
    ("doc_close", ClientEvent::DocClose),
    ("doc_typing", ClientEvent::DocTyping),
    ("doc_typing_stopped", ClientEvent::DocTypingStopped),
    ("open_in_editor", ClientEvent::OpenInEditor),
];

/// The names of the client events Frappe's own service handles.
pub fn frappe_events() -> Vec<&'static str> {
    FRAPPE_EVENTS.iter().map(|(name, _)| *name).collect()
}

impl ClientEvent {
    /// Whether handling it waits on Frappe (a permission check) or Redis.
    fn asks_elsewhere(self) -> bool {
        matches!(
            self,
            Self::DoctypeSubscribe | Self::DocSubscribe | Self::DocOpen | Self::OpenInEditor
        )
    }

    fn from_name(name: &str) -> Option<Self> {
        FRAPPE_EVENTS
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, kind)| *kind)
    }
}

/// What an event handler works with: the socket, the server, and the socket's own state.
struct Here<'a> {
    socket: &'a Socket,
    io: &'a Io,
    app: &'a App,
    client: &'a ClientState,
    shared_presence: Option<&'a RedisPresence>,
}

impl Here<'_> {
    /// The events answered at once.
    fn handle(&self, kind: ClientEvent, args: Option<EventArgs>) {
        match kind {
            ClientEvent::Ping => self.pong(),
            ClientEvent::DoctypeUnsubscribe => self.doctype_unsubscribe(args),
            ClientEvent::DocUnsubscribe => self.doc_unsubscribe(args),
            ClientEvent::TaskSubscribe => self.task_subscribe(args),
            ClientEvent::TaskUnsubscribe => self.task_unsubscribe(args),
            ClientEvent::DocClose => self.doc_close(args),
            ClientEvent::DocTyping => self.doc_typing(args, true),
            ClientEvent::DocTypingStopped => self.doc_typing(args, false),
            ClientEvent::DoctypeSubscribe
            | ClientEvent::DocSubscribe
            | ClientEvent::DocOpen
            | ClientEvent::OpenInEditor => {}
        }
    }

    /// The events that wait on Frappe or Redis ([`ClientEvent::asks_elsewhere`]).
    async fn handle_async(&self, kind: ClientEvent, args: Option<EventArgs>) {
        match kind {
            ClientEvent::DoctypeSubscribe => self.doctype_subscribe(args).await,
            ClientEvent::DocSubscribe => self.doc_subscribe(args).await,
            ClientEvent::DocOpen => self.doc_open(args).await,
            ClientEvent::OpenInEditor => self.open_in_editor(args).await,
            other => self.handle(other, args),
        }
    }

    /// Join `room` (a Frappe room name) unless the socket already is in
    /// `realtime_max_rooms_per_socket` rooms.
    fn join_within_limit(&self, room: String) -> bool {
        let max_rooms = self.app.settings().config.limits.max_rooms;
        if self.socket.room_count() >= max_rooms {
            let site = self.client.session.site.clone();
            counter!(metrics::CLIENT_EVENTS_DROPPED, "site" => site, "reason" => "room_limit")
                .increment(1);
            tracing::debug!(site = %self.client.session.site, user = %self.client.session.user,
                max_rooms, "room limit reached; subscription ignored");
            return false;
        }
        let (socket, client) = (self.socket, self.client);
        let join = || socket.join(&client.room(room.clone()));
        // A full queue cuts the client as a slow consumer; a closed one means it is gone.
        let send = |event: &str, message: &Value| {
            let _ = socket.emit(event, message);
        };
        self.app
            .last_state
            .subscribe(&client.session.site, &room, join, send);
        true
    }

    fn leave(&self, room: String) {
        self.socket.leave(&self.client.room(room));
    }

    async fn may_subscribe(&self, subject: Subject<'_>) -> bool {
        let session = &self.client.session;
        self.app.frappe.may_subscribe(session, subject).await
    }

    fn presence(&self) -> Announcer<'_> {
        Announcer {
            io: self.io,
            me: self.client,
            socket: self.socket.id(),
            version: self.app.settings().config.frappe_version,
            shared: self.shared_presence,
        }
    }

    fn pong(&self) {
        // A full queue cuts this client as a slow consumer; a closed one means it is gone.
        let _ = self.socket.emit("pong", &NO_ARGS);
    }

    async fn doctype_subscribe(&self, args: Option<EventArgs>) {
        let Some(doctype) = args.and_then(|a| a.text(0).map(str::to_owned)) else {
            return;
        };
        if self.may_subscribe(Subject::Doctype(&doctype)).await {
            self.join_within_limit(rooms::doctype(&doctype));
        }
    }

    fn doctype_unsubscribe(&self, args: Option<EventArgs>) {
        if let Some(doctype) = args.as_ref().and_then(|a| a.text(0)) {
            self.leave(rooms::doctype(doctype));
        }
    }

    async fn doc_subscribe(&self, args: Option<EventArgs>) {
        let Some((doctype, docname)) = args.and_then(|a| a.doc()) else {
            return;
        };
        if self.may_subscribe(Subject::Doc(&doctype, &docname)).await {
            self.join_within_limit(rooms::doc(&doctype, &docname));
        }
    }

    fn doc_unsubscribe(&self, args: Option<EventArgs>) {
        if let Some((doctype, docname)) = args.and_then(|a| a.doc()) {
            self.leave(rooms::doc(&doctype, &docname));
        }
    }

    fn task_subscribe(&self, args: Option<EventArgs>) {
        if let Some(task_id) = args.as_ref().and_then(|a| a.text(0)) {
            self.join_within_limit(rooms::task(task_id));
        }
    }

    fn task_unsubscribe(&self, args: Option<EventArgs>) {
        if let Some(task_id) = args.as_ref().and_then(|a| a.text(0)) {
            self.leave(rooms::task(task_id));
        }
    }

    async fn doc_open(&self, args: Option<EventArgs>) {
        let Some((doctype, docname)) = args.and_then(|a| a.doc()) else {
            return;
        };
        if !self.may_subscribe(Subject::Doc(&doctype, &docname)).await
            || !self.join_within_limit(rooms::open_doc(&doctype, &docname))
        {
            return;
        }
        self.client.remember_open(&doctype, &docname);
        let presence = self.presence();
        presence.viewers(&doctype, &docname, Move::Opened);
        if presence.has_typing_indicators() {
            presence.typers(&doctype, &docname);
        }
    }

    fn doc_close(&self, args: Option<EventArgs>) {
        let Some((doctype, docname)) = args.and_then(|a| a.doc()) else {
            return;
        };
        self.leave(rooms::open_doc(&doctype, &docname));
        self.client.forget_open(&doctype, &docname);
        self.presence().viewers(&doctype, &docname, Move::Left);
    }

    /// `doc_typing` / `doc_typing_stopped` (Frappe 13 and 14; later versions ignore them):
    /// join or leave the document's typing room, then tell its viewers who is typing.
    fn doc_typing(&self, args: Option<EventArgs>, typing: bool) {
        let presence = self.presence();
        if !presence.has_typing_indicators() {
            return;
        }
        let Some((doctype, docname)) = args.and_then(|a| a.doc()) else {
            return;
        };
        let room = rooms::typing(&doctype, &docname);
        if typing {
            if !self.join_within_limit(room) {
                return;
            }
        } else {
            self.leave(room);
        }
        presence.typers(&doctype, &docname);
    }

    /// Publishes the build overlay's "open this file" request for `bench watch`. Frappe's
    /// Python service allows it only in developer mode and never for Guest; so do we.
    async fn open_in_editor(&self, args: Option<EventArgs>) {
        let (app, client) = (self.app, self.client);
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
}

/// Spend one event from the socket's budget; `false` means the event is ignored. A client
/// that keeps flooding for a whole burst's worth of events is disconnected.
fn within_budget(socket: &Socket, app: &App, client: &ClientState) -> bool {
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
        client::disconnect(socket, DisconnectCause::RateLimited);
    }
    false
}

/// Every positional argument of an event.
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
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
