//! Frappe → clients: the subscriber on Redis channel `events` and the routing of each
//! publication to its site's room, in the site's namespace and in `/` (protocol §6; see
//! [`crate::audience`]).
//!
//! One task reads the channel and delivers in arrival order, so events from one publisher
//! reach a client in the order they were published. Pub/sub keeps nothing for a subscriber
//! that is away: the loop reconnects with backoff and a PING watchdog, and what was published
//! meanwhile is lost, exactly as with Frappe's own service.
//!
//! With the bench's shared log ([`crate::shared::bench_log`]) the subscriber hands each
//! message to the log instead, and the log's reader delivers it, numbered, from there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use ::metrics::{counter, gauge, histogram};

use crate::app::App;
use crate::config::{FrappeVersion, is_truthy};
use crate::queue_redis::reconnect_backoff;
use crate::sentinel::SentinelConfig;
use crate::shared::bench_log::BenchLog;
use crate::sites::SiteTable;
use crate::socketio::{Delivery, Io, Offset, SendErrorKind};
use crate::{audience, metrics, revoke, rooms};

/// The channel `frappe.publish_realtime` publishes on.
pub const CHANNEL: &str = "events";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle link is probed, and how long the probe may take.
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Event names Socket.IO reserves; a client cannot be sent these as ordinary events.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// One message from `events`, validated.
#[derive(Debug, PartialEq)]
pub struct Publication {
    pub event: String,
    pub message: Value,
    pub target: Target,
}

#[derive(Debug, PartialEq)]
pub enum Target {
    /// Room `room` of `site`, as Frappe 15 names rooms (without the site).
    Room { site: String, room: String },
    /// No room (e.g. `build_event` from `bench watch`): every socket of every site.
    EverySite,
}

/// Why a message was dropped; `as_str` is the bounded label for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    NotJson,
    NotAnObject,
    NoEvent,
    ReservedEvent,
    BadRoom,
    RoomWithoutNamespace,
}

impl Malformed {
    /// The `reason` label of the dropped-event metric.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::NotAnObject => "not_an_object",
            Self::NoEvent => "no_event",
            Self::ReservedEvent => "reserved_event",
            Self::BadRoom => "bad_room",
            Self::RoomWithoutNamespace => "room_without_namespace",
        }
    }
}

/// Read a message as Frappe publishes it: `{"event", "message", "namespace", "room"}` from
/// Frappe 15 on; Frappe 13 and 14 send no namespace and put the site in front of the room
/// (`{"room": "erp.example.com:doctype:ToDo"}`), which `version` says to expect.
pub fn parse(payload: &[u8], version: FrappeVersion) -> Result<Publication, Malformed> {
    let value: Value = serde_json::from_slice(payload).map_err(|_| Malformed::NotJson)?;
    let Value::Object(mut object) = value else {
        return Err(Malformed::NotAnObject);
    };
    let event = match object.remove("event") {
        Some(Value::String(event)) if !event.is_empty() => event,
        _ => return Err(Malformed::NoEvent),
    };
    if RESERVED_EVENTS.contains(&event.as_str()) {
        return Err(Malformed::ReservedEvent);
    }
    // Like Frappe (`if (data.room)`), any falsy room — absent, null, "", false, 0 — means
    // every site.
    let room = match object.remove("room") {
        Some(Value::String(room)) if !room.is_empty() => Some(room),
        Some(room) if is_truthy(&room) => return Err(Malformed::BadRoom),
        _ => None,
    };
    let target = match room {
        None => Target::EverySite,
        Some(room) => match object.remove("namespace") {
            Some(Value::String(site)) if !site.is_empty() => Target::Room { site, room },
            _ if !version.has_site_namespaces() => split_prefixed_room(&room)?,
            _ => return Err(Malformed::RoomWithoutNamespace),
        },
    };
    Ok(Publication {
        event,
        message: object.remove("message").unwrap_or(Value::Null),
        target,
    })
}

/// Frappe 13 and 14's `<site>:<room>` as the site and the room.
fn split_prefixed_room(room: &str) -> Result<Target, Malformed> {
    let site = audience::site_of_prefixed_room(room).ok_or(Malformed::RoomWithoutNamespace)?;
    Ok(Target::Room {
        site: site.to_owned(),
        room: room[site.len() + 1..].to_owned(),
    })
}

/// Send a publication to its audience on this node, under `offset` when it comes from the
/// bench's shared log. `size` is the publication's size on Redis, for the bytes-sent metric.
/// Returns why it reached no one, for the caller to count, if it did not.
fn deliver(
    io: &Io,
    sites: &SiteTable,
    publication: &Publication,
    size: usize,
    offset: Option<Offset>,
) -> Option<&'static str> {
    match &publication.target {
        Target::Room { site, room } => {
            if !sites.contains(site) {
                tracing::debug!(%site, event = %publication.event, "event for a site this bench does not serve");
                return Some("unknown_site");
            }
            let routed = deliver_to_room(io, publication, site, room, size, offset);
            (!routed).then_some("no_listeners")
        }
        // Every socket joins its site's `website` room when it connects and never leaves it,
        // so that room is "every socket of the site", in either namespace.
        Target::EverySite => {
            for site in sites.names() {
                deliver_to_room(io, publication, &site, rooms::WEBSITE, size, offset);
            }
            None
        }
    }
}

/// Emit to room `room` of `site` in each namespace it has members in; false if it had no
/// members anywhere.
fn deliver_to_room(
    io: &Io,
    publication: &Publication,
    site: &str,
    room: &str,
    size: usize,
    offset: Option<Offset>,
) -> bool {
    let mut routed = false;
    for (namespace, name) in audience::room_of_site(io, site, room) {
        let (event, message) = (&publication.event, &publication.message);
        let delivery = match offset {
            Some(offset) => namespace.broadcast_at(offset, Some(&name), None, event, message),
            None => namespace.broadcast(Some(&name), None, event, message),
        };
        match delivery {
            // An empty room costs one lookup: nothing is encoded for it.
            Ok(delivery) if delivery.recipients == 0 => {}
            Ok(delivery) => {
                if !routed {
                    counter!(metrics::EVENTS_ROUTED, "site" => site.to_owned()).increment(1);
                    routed = true;
                }
                record_sent(site, size, &delivery);
            }
            // A JSON value always encodes; this would be a bug in the codec.
            Err(error) => {
                tracing::error!(%site, %error, event = %publication.event, "cannot encode an event");
            }
        }
    }
    routed
}

fn drop_event(reason: &'static str) {
    counter!(metrics::EVENTS_DROPPED, "reason" => reason).increment(1);
}

/// Count what a broadcast to sockets of `site` queued. A broadcast still reaches every other
/// socket when some refuse it.
fn record_sent(site: &str, size: usize, delivery: &Delivery) {
    let dropped = dropped_sends(delivery);
    let sent = delivery.queued as u64;
    let site = site.to_owned();
    counter!(metrics::PACKETS_SENT, "site" => site.clone()).increment(sent);
    counter!(metrics::SENT_BYTES, "site" => site.clone()).increment(sent * size as u64);
    if dropped > 0 {
        tracing::debug!(%site, dropped, "event not queued for some sockets");
        counter!(metrics::SEND_DROPPED, "site" => site).increment(dropped as u64);
    }
}

/// The sends a broadcast dropped because a queue was full of packets. A session whose queue
/// is full, or would hold more than `realtime_slow_client_max_bytes`, is cut by the engine
/// and counted as a slow consumer; only the first is a dropped send, as the byte bound cuts
/// a session *instead of* queueing more for it. Sockets already closing are neither sent to
/// nor dropped: their disconnect is counted where it happens.
fn dropped_sends(delivery: &Delivery) -> usize {
    delivery
        .refused
        .iter()
        .filter(|e| matches!(e.kind, SendErrorKind::QueueFull { .. }))
        .count()
}

/// Whether the bridge is subscribed to `events` right now, for `/ready`.
#[derive(Debug, Clone, Default)]
pub struct Subscription(Arc<AtomicBool>);

impl Subscription {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
        gauge!(metrics::REDIS_CONNECTED).set(if up { 1.0 } else { 0.0 });
    }
}

/// Where the subscription connects.
pub enum EventsRedis {
    /// `redis_queue` (`redis_socketio` on Frappe 13 and 14).
    Url(redis::Client),
    /// The master the sentinels name at each (re)connect; `redis_queue` gives credentials.
    Sentinel {
        sentinel: SentinelConfig,
        queue_url: String,
    },
}

impl EventsRedis {
    async fn client(&self) -> Result<redis::Client, String> {
        match self {
            Self::Url(client) => Ok(client.clone()),
            Self::Sentinel {
                sentinel,
                queue_url,
            } => sentinel.master(queue_url).await,
        }
    }
}

/// Subscribe to `events` forever, delivering each message (or handing it to the bench's
/// shared log), reconnecting when the link dies.
pub async fn run(
    io: Io,
    app: Arc<App>,
    redis: EventsRedis,
    subscription: Subscription,
    bench_log: Option<Arc<BenchLog>>,
) {
    let mut backoff = reconnect_backoff();
    let mut subscribed_before = false;
    subscription.set(false);
    loop {
        match subscribe(&redis).await {
            Ok(pubsub) => {
                tracing::info!(channel = CHANNEL, "subscribed to Frappe's events");
                if subscribed_before {
                    counter!(metrics::REDIS_RECONNECTS).increment(1);
                }
                subscribed_before = true;
                subscription.set(true);
                if let Some(bench_log) = &bench_log {
                    bench_log.subscribed();
                }
                backoff = reconnect_backoff();
                let why = pump(&io, &app, pubsub, bench_log.as_deref()).await;
                subscription.set(false);
                if let Some(bench_log) = &bench_log {
                    bench_log.unsubscribed();
                }
                tracing::warn!(reason = why, "lost the Redis subscription; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to Redis; retrying"),
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(1));
        tokio::time::sleep(delay).await;
    }
}

async fn subscribe(redis: &EventsRedis) -> Result<redis::aio::PubSub, String> {
    let client = redis.client().await?;
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&[CHANNEL, revoke::CHANNEL]).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(pubsub)) => Ok(pubsub),
        // Redis errors carry no URL, so credentials cannot leak here.
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// Deliver messages until the link ends or stops answering PING; returns why.
async fn pump(
    io: &Io,
    app: &App,
    pubsub: redis::aio::PubSub,
    bench_log: Option<&BenchLog>,
) -> &'static str {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return "connection closed" };
                let payload = message.get_payload_bytes();
                if message.get_channel_name() == revoke::CHANNEL {
                    revoke::handle(io, app, payload);
                } else if let Some(bench_log) = bench_log {
                    bench_log.received(payload);
                } else {
                    handle(io, app, payload, None);
                }
            }
            _ = ping.tick() => {
                // In subscribed mode Redis answers `["pong", ""]`, not `+PONG`: accept any reply.
                let answered =
                    tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                if !matches!(answered, Ok(Ok(_))) {
                    return "PING not answered";
                }
            }
        }
    }
}

/// Parse and deliver one message from `events`, under `offset` when it comes from the
/// bench's shared log.
pub fn handle(io: &Io, app: &App, payload: &[u8], offset: Option<Offset>) {
    let received = Instant::now();
    counter!(metrics::REDIS_MESSAGES).increment(1);
    gauge!(metrics::REDIS_LAST_MESSAGE).set(metrics::unix_now());
    match parse(payload, app.settings().config.frappe_version) {
        Ok(publication) => {
            if let Some(reason) = route(io, app, &publication, payload.len(), offset) {
                drop_event(reason);
            }
            histogram!(metrics::DELIVERY_DURATION).record(received.elapsed());
        }
        Err(malformed) => {
            drop_event(malformed.label());
            // The payload is never logged: it can carry anything a site published.
            tracing::warn!(
                reason = malformed.label(),
                bytes = payload.len(),
                "dropped a malformed message from Redis"
            );
        }
    }
}

/// Log one entry of the bench log's last window before this instance takes clients: routed
/// as a live event would be, so it lands in the same logs under the same offset, but not
/// counted as received or dropped (no client could have heard it here). A malformed one was
/// reported where it was first received.
pub fn log_history(io: &Io, app: &App, payload: &[u8], offset: Option<Offset>) {
    if let Ok(publication) = parse(payload, app.settings().config.frappe_version) {
        route(io, app, &publication, payload.len(), offset);
    }
}

/// Remember a room event's last state, then deliver it (see [`deliver`]).
fn route(
    io: &Io,
    app: &App,
    publication: &Publication,
    size: usize,
    offset: Option<Offset>,
) -> Option<&'static str> {
    if let Target::Room { site, room } = &publication.target {
        let event = &publication.event;
        app.last_state
            .record(site, room, event, &publication.message, size);
    }
    deliver(io, &app.sites, publication, size, offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_queues_full_of_packets_count_as_dropped_sends() {
        use crate::socketio::{SendError, Sid};
        let refused = |kind| SendError {
            sid: Sid::new(),
            kind,
        };
        let delivery = Delivery {
            recipients: 10,
            queued: 6,
            refused: vec![
                refused(SendErrorKind::QueueFull { limit: 1024 }),
                refused(SendErrorKind::TooManyBytes { limit: 8 << 20 }),
                refused(SendErrorKind::QueueFull { limit: 1024 }),
            ],
            closed: 1,
        };
        assert_eq!(dropped_sends(&delivery), 2);
        assert_eq!(dropped_sends(&Delivery::default()), 0);
    }

    fn parsed(value: Value) -> Result<Publication, Malformed> {
        parse(value.to_string().as_bytes(), FrappeVersion::V16)
    }

    #[test]
    fn frappe_14_rooms_carry_their_site() {
        let v14 = |value: Value| parse(value.to_string().as_bytes(), FrappeVersion::V14);
        let publication = v14(json!({"event": "list_update", "message": {},
            "room": "erp.example.com:doctype:ToDo"}))
        .expect("valid");
        assert_eq!(
            publication.target,
            Target::Room {
                site: "erp.example.com".into(),
                room: "doctype:ToDo".into()
            }
        );
        assert_eq!(
            v14(json!({"event": "x", "room": "no-site-here"})).err(),
            Some(Malformed::RoomWithoutNamespace)
        );
        // A Frappe 15 message still routes on a bench said to be 14.
        assert!(matches!(
            v14(json!({"event": "x", "room": "user:a", "namespace": "s"})).map(|p| p.target),
            Ok(Target::Room { site, room }) if site == "s" && room == "user:a"
        ));
        // And a Frappe 14 message on a Frappe 15 bench is malformed, as before.
        assert_eq!(
            parsed(json!({"event": "x", "room": "s:user:a"})).err(),
            Some(Malformed::RoomWithoutNamespace)
        );
    }

    #[test]
    fn a_room_event_goes_to_its_site() {
        let publication = parsed(
            json!({"event": "list_update", "message": {"doctype": "ToDo"},
            "namespace": "a.local", "room": "doctype:ToDo"}),
        )
        .expect("valid");
        assert_eq!(publication.event, "list_update");
        assert_eq!(publication.message, json!({"doctype": "ToDo"}));
        assert_eq!(
            publication.target,
            Target::Room {
                site: "a.local".into(),
                room: "doctype:ToDo".into()
            }
        );
    }

    #[test]
    fn no_room_means_every_site_and_missing_message_is_null() {
        for room in [json!(""), json!(null), json!(false), json!(0)] {
            let publication = parsed(json!({"event": "build_event", "room": room})).expect("valid");
            assert_eq!(publication.target, Target::EverySite);
            assert_eq!(publication.message, Value::Null);
        }
    }

    #[test]
    fn numbers_are_forwarded_exactly() {
        // Without serde_json's float_roundtrip this came out as ...407 -> ...408.
        let payload = br#"{"event":"x","message":981821831.3959407,"room":""}"#;
        let publication = parse(payload, FrappeVersion::V16).expect("valid");
        assert_eq!(publication.message.to_string(), "981821831.3959407");
    }

    #[test]
    fn malformed_messages_are_named() {
        assert_eq!(parse(b"{oops", FrappeVersion::V16), Err(Malformed::NotJson));
        assert_eq!(
            parse(b"null", FrappeVersion::V16),
            Err(Malformed::NotAnObject)
        );
        assert_eq!(parsed(json!({"event": 3})), Err(Malformed::NoEvent));
        assert_eq!(parsed(json!({"message": {}})), Err(Malformed::NoEvent));
        assert_eq!(
            parsed(json!({"event": "disconnect", "room": "all", "namespace": "a"})),
            Err(Malformed::ReservedEvent)
        );
        assert_eq!(
            parsed(json!({"event": "x", "room": "all"})),
            Err(Malformed::RoomWithoutNamespace)
        );
        assert_eq!(
            parsed(json!({"event": "x", "room": 5, "namespace": "a"})),
            Err(Malformed::BadRoom)
        );
    }
}
