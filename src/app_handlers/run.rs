//! Running one compiled handler for one event of one socket.

use ::metrics::counter;
use serde_json::{Value, json};

use super::spec::{Destination, Emit, Forward, Handler, Method, Queue};
use super::template::Vars;
use crate::audience;
use crate::auth::{FrappeClient, Subject};
use crate::client::ClientState;
use crate::config::is_truthy;
use crate::metrics;
use crate::presence;
use crate::queue_redis::QueueRedis;
use crate::rooms;
use crate::socketio::{AckSender, Io, Sid, Socket};

/// Socket.IO emit with no arguments (`["pong"]`).
const NO_ARGS: [(); 0] = [];

/// What a handler works with: the sender, its state, the server and the site's client.
pub struct Context<'a> {
    pub socket: &'a Socket,
    pub client: &'a ClientState,
    pub io: &'a Io,
    pub frappe: &'a FrappeClient,
    /// `redis_queue`, where queued client events go.
    pub redis: &'a QueueRedis,
    /// `realtime_max_rooms_per_socket`: a join beyond it is not made, as for Frappe's own.
    pub max_rooms: usize,
}

impl Context<'_> {
    fn site(&self) -> &str {
        &self.client.session.site
    }

    fn in_room(&self, room: &str) -> bool {
        let joined = self.client.room(room.to_owned());
        self.socket.rooms().iter().any(|r| **r == *joined)
    }

    /// Emit to `room` of the site in every namespace it has members in.
    fn to_room<T: serde::Serialize + ?Sized>(
        &self,
        room: &str,
        skip_sender: bool,
        event: &str,
        data: &T,
    ) {
        let except = skip_sender.then(|| self.socket.id());
        for (namespace, name) in audience::room_of_site(self.io, self.site(), room) {
            if let Err(e) = namespace.broadcast(Some(&name), except, event, data) {
                tracing::warn!(error = %e, event, "cannot encode an app handler's event");
            }
        }
    }
}

impl Handler {
    /// Run for an event with `args`. `ack` is the client's acknowledgement, taken by a
    /// `forward` with `reply` or by a `queue`. Every failed check ends it quietly, as Node's
    /// handlers return.
    pub async fn run(&self, cx: &Context<'_>, args: &[Value], ack: &mut Option<AckSender>) {
        let mut vars = self.vars(cx, args);
        if !self.checks_pass(cx, &vars).await {
            return;
        }
        if !self.move_rooms(cx, &vars) {
            return;
        }
        if let Some(room) = self.presence.as_ref().and_then(|r| r.render(&vars)) {
            let users = presence::users_in(cx.io, cx.site(), &room);
            let listed = serde_json::to_string(&users).unwrap_or_default();
            vars.set(
                "presence",
                json!({"users": users, "count": users.len(), "json": listed}),
            );
        }
        for emit in &self.emit {
            emit.send(cx, &vars);
        }
        if let Some(forward) = &self.forward {
            forward.send(cx, &vars, args, self, ack).await;
        }
        if let Some(queue) = &self.queue {
            queue.send(cx, &vars, args, self, ack).await;
        }
    }

    fn vars(&self, cx: &Context<'_>, args: &[Value]) -> Vars {
        let mut vars = Vars::default();
        for (name, value) in self.args.iter().zip(args) {
            vars.set(name, value.clone());
        }
        vars.set(
            "socket",
            json!({"user": cx.client.session.user, "id": cx.socket.id().to_string()}),
        );
        vars.set("site", Value::String(cx.site().to_owned()));
        vars
    }

    async fn checks_pass(&self, cx: &Context<'_>, vars: &Vars) -> bool {
        let arg = |name: &str| vars.arg(name).cloned().unwrap_or(Value::Null);
        let truthy = self.require.iter().all(|name| is_truthy(&arg(name)));
        let strings = self
            .strings
            .iter()
            .all(|name| matches!(arg(name), Value::String(s) if !s.is_empty()));
        let patterns = self
            .patterns
            .iter()
            .all(|(name, regex)| matches!(arg(name), Value::String(s) if regex.is_match(&s)));
        if !(truthy && strings && patterns) {
            return false;
        }
        if let Some(room) = &self.member_of
            && !room.render(vars).is_some_and(|room| cx.in_room(&room))
        {
            return false;
        }
        if let Some((doctype, name)) = &self.permission {
            let (Some(doctype), Some(name)) = (doctype.render(vars), name.render(vars)) else {
                return false;
            };
            let subject = Subject::Doc(&doctype, &name);
            if !cx.frappe.may_subscribe(&cx.client.session, subject).await {
                return false;
            }
        }
        match &self.method {
            Some(method) => method.accepts(cx, vars, self).await,
            None => true,
        }
    }

    /// `leave`, then `join` (within the socket's room limit); false if the join was refused.
    fn move_rooms(&self, cx: &Context<'_>, vars: &Vars) -> bool {
        if let Some(room) = self.leave.as_ref().and_then(|r| r.render(vars)) {
            cx.socket.leave(&cx.client.room(room));
        }
        if let Some(room) = self.join.as_ref().and_then(|r| r.render(vars)) {
            if cx.socket.room_count() >= cx.max_rooms {
                tracing::debug!(
                    site = cx.site(),
                    app = self.app,
                    "room limit reached; app join ignored"
                );
                return false;
            }
            cx.socket.join(&cx.client.room(room));
        }
        true
    }
}

impl Method {
    /// Whether the method's answer holds a truthy value where `accept` says.
    async fn accepts(&self, cx: &Context<'_>, vars: &Vars, handler: &Handler) -> bool {
        let Some(query) = self
            .args
            .iter()
            .map(|(key, value)| Some((key.clone(), value.render(vars)?)))
            .collect::<Option<Vec<_>>>()
        else {
            return false;
        };
        let path = format!("/api/method/{}", self.call);
        match cx
            .frappe
            .call_app(&cx.client.session, "app_method", &path, &query, None)
            .await
        {
            Ok(answer) => self
                .accept
                .iter()
                .try_fold(&answer, |value, key| value.get(key))
                .is_some_and(is_truthy),
            Err(failure) => {
                tracing::warn!(site = cx.site(), user = %cx.client.session.user, app = handler.app,
                    event = handler.event, why = %failure.detail, "an app handler's check failed");
                false
            }
        }
    }
}

impl Emit {
    fn send(&self, cx: &Context<'_>, vars: &Vars) {
        let data = match &self.data {
            Some(data) => match data.render(vars) {
                Some(value) => Some(value),
                None => return,
            },
            None => None,
        };
        let room = match &self.to {
            // A full queue cuts the client as a slow consumer; a closed one means it is gone.
            Destination::Sender => {
                let _ = match &data {
                    Some(value) => cx.socket.emit(&self.event, value),
                    None => cx.socket.emit(&self.event, &NO_ARGS),
                };
                return;
            }
            Destination::User => (rooms::user(&cx.client.session.user), false),
            Destination::Room { room, skip_sender } => match room.render(vars) {
                Some(room) => (room, *skip_sender),
                None => return,
            },
        };
        match &data {
            Some(value) => cx.to_room(&room.0, room.1, &self.event, value),
            None => cx.to_room(&room.0, room.1, &self.event, &NO_ARGS),
        }
    }
}

impl Forward {
    async fn send(
        &self,
        cx: &Context<'_>,
        vars: &Vars,
        args: &[Value],
        handler: &Handler,
        ack: &mut Option<AckSender>,
    ) {
        let Some(path) = self.path.render(vars) else {
            return;
        };
        let body = match &self.body {
            Some(body) => body.render(vars),
            None => Some(args.first().cloned().unwrap_or(Value::Null)),
        };
        let Some(body) = body else {
            return;
        };
        let answer = cx
            .frappe
            .call_app(&cx.client.session, "app_forward", &path, &[], Some(&body))
            .await;
        let reply = match answer {
            Ok(answer) => answer.get("message").cloned().unwrap_or(Value::Null),
            Err(failure) => {
                tracing::warn!(site = cx.site(), user = %cx.client.session.user, app = handler.app,
                    event = handler.event, why = %failure.detail, "an app handler's forward failed");
                json!({"error": failure.kind.label()})
            }
        };
        if self.reply
            && let Some(ack) = ack.take()
        {
            // A full queue cuts the client as a slow consumer; a closed one means it is gone.
            let _ = ack.send(&(reply,));
        }
    }
}

impl Queue {
    /// Put the event on its stream with who sent it and an id of the server's; the client's
    /// acknowledgement, if it asked for one, gets `{"id"}` or `{"error"}`. A backend answers
    /// later with `publish_realtime` to the user's room, naming the id.
    async fn send(
        &self,
        cx: &Context<'_>,
        vars: &Vars,
        args: &[Value],
        handler: &Handler,
        ack: &mut Option<AckSender>,
    ) {
        let outcome = self.push(cx, vars, args, handler).await;
        let label = match &outcome {
            Ok(_) => "queued",
            Err(reason) => reason,
        };
        counter!(metrics::CLIENT_EVENTS_QUEUED, "site" => cx.site().to_owned(),
            "app" => handler.app.clone(), "outcome" => label)
        .increment(1);
        let reply = match outcome {
            Ok(id) => json!({ "id": id }),
            Err(reason) => json!({ "error": reason }),
        };
        if let Some(ack) = ack.take() {
            // A full queue cuts the client as a slow consumer; a closed one means it is gone.
            let _ = ack.send(&(reply,));
        }
    }

    /// The entry's id, or why it was not queued (a metric label and the client's error).
    async fn push(
        &self,
        cx: &Context<'_>,
        vars: &Vars,
        args: &[Value],
        handler: &Handler,
    ) -> Result<String, &'static str> {
        let stream = self.stream.render(vars).ok_or("bad_arguments")?;
        let payload = serde_json::to_string(args).map_err(|_| "bad_arguments")?;
        if payload.len() > self.max_bytes {
            return Err("too_large");
        }
        if !cx.client.spend_queued(&handler.event, &self.rate) {
            return Err("rate_limited");
        }
        let id = Sid::new().to_string();
        let session = &cx.client.session;
        let at = metrics::unix_now_ms();
        let fields = [
            ("id", id.clone()),
            ("site", session.site.clone()),
            ("user", session.user.clone()),
            ("socket_id", cx.socket.id().to_string()),
            ("app", handler.app.clone()),
            ("event", handler.event.clone()),
            ("args", payload),
            ("at", at.to_string()),
        ];
        let added: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(&stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_len)
            .arg("*")
            .arg(&fields[..])
            .query_async(&mut cx.redis.connection())
            .await;
        match added {
            Ok(_) => Ok(id),
            Err(e) => {
                tracing::warn!(site = cx.site(), app = handler.app, event = handler.event,
                    error = %e, "cannot queue a client event on its stream");
                Err("unavailable")
            }
        }
    }
}
