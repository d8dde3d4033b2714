//! Frappe → clients: the subscriber on Redis channel `events` and the routing of each
//! publication to its site namespace and room (spec §6).
//!
//! One task reads the channel and delivers in arrival order, so events from one publisher
//! reach a client in the order they were published. Pub/sub keeps nothing for a subscriber
//! that is away: the loop reconnects with backoff and a PING watchdog, and what was published
//! meanwhile is lost, exactly as with Frappe's own service.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::LocalAdapter;

use crate::config::is_truthy;

/// The channel `frappe.publish_realtime` publishes on.
pub const CHANNEL: &str = "events";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle link is probed, and how long the probe may take.
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Event names Socket.IO reserves; a client cannot be sent these as ordinary events.
const RESERVED_EVENTS: [&str; 6] = [
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
    Room {
        site: String,
        room: String,
    },
    /// No room (e.g. `build_event` from `bench watch`): every site namespace.
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
    pub fn as_str(self) -> &'static str {
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

/// Read a message as Frappe v15+ publishes it: `{"event", "message", "namespace", "room"}`.
pub fn parse(payload: &[u8]) -> Result<Publication, Malformed> {
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
            _ => return Err(Malformed::RoomWithoutNamespace),
        },
    };
    Ok(Publication {
        event,
        message: object.remove("message").unwrap_or(Value::Null),
        target,
    })
}

/// Send a publication to its audience on this node.
pub async fn deliver(io: &SocketIo<LocalAdapter>, publication: &Publication) {
    let Publication {
        event,
        message,
        target,
    } = publication;
    match target {
        Target::Room { site, room } => {
            let Some(namespace) = io.of(format!("/{site}")) else {
                metrics::counter!("frappe_realtime_events_dropped_total", "reason" => "unknown_site")
                    .increment(1);
                tracing::debug!(%site, %event, "event for a site this bench does not serve");
                return;
            };
            let result = namespace.to(room.clone()).emit(event, message).await;
            note_undelivered(site, result);
        }
        Target::EverySite => {
            for namespace in io.nsps() {
                let site = namespace.ns_path().trim_start_matches('/').to_owned();
                note_undelivered(&site, namespace.emit(event, message).await);
            }
        }
    }
}

/// A broadcast still reaches every other socket when some sockets' queues are full; count the
/// ones that missed it.
fn note_undelivered(site: &str, result: Result<(), socketioxide::BroadcastError>) {
    if let Err(error) = result {
        tracing::debug!(%site, %error, "event not queued for some sockets");
        if let socketioxide::BroadcastError::Socket(failed) = error {
            metrics::counter!("frappe_realtime_socket_send_dropped_total")
                .increment(failed.len() as u64);
        }
    }
}

/// Subscribe to `events` forever, delivering each message, reconnecting when the link dies.
pub async fn run(io: SocketIo<LocalAdapter>, client: redis::Client) {
    let mut backoff = new_backoff();
    loop {
        match subscribe(&client).await {
            Ok(pubsub) => {
                tracing::info!(channel = CHANNEL, "subscribed to Frappe's events");
                backoff = new_backoff();
                let why = pump(&io, pubsub).await;
                tracing::warn!(reason = why, "lost the Redis subscription; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to Redis; retrying"),
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(5));
        tokio::time::sleep(delay).await;
    }
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

async fn subscribe(client: &redis::Client) -> Result<redis::aio::PubSub, String> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
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
async fn pump(io: &SocketIo<LocalAdapter>, pubsub: redis::aio::PubSub) -> &'static str {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return "connection closed" };
                handle(io, message.get_payload_bytes()).await;
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

async fn handle(io: &SocketIo<LocalAdapter>, payload: &[u8]) {
    metrics::counter!("frappe_realtime_events_received_total").increment(1);
    match parse(payload) {
        Ok(publication) => deliver(io, &publication).await,
        Err(malformed) => {
            metrics::counter!("frappe_realtime_events_dropped_total", "reason" => malformed.as_str())
                .increment(1);
            // The payload is never logged: it can carry anything a site published.
            tracing::warn!(
                reason = malformed.as_str(),
                bytes = payload.len(),
                "dropped a malformed message from Redis"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(value: Value) -> Result<Publication, Malformed> {
        parse(value.to_string().as_bytes())
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
    fn malformed_messages_are_named() {
        assert_eq!(parse(b"{oops"), Err(Malformed::NotJson));
        assert_eq!(parse(b"null"), Err(Malformed::NotAnObject));
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
