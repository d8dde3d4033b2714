//! The Socket.IO layer through its public API, over a fake Engine.IO session that records what
//! it is asked to send: the socket.io-protocol suite's Socket.IO assertions (against the very
//! handler the suite's server uses), then rooms, broadcasts, acks and the CONNECT lifecycle.
//!
//! Packets are written as the Socket.IO layer sees them: without Engine.IO's leading `4`
//! (the suite's `42["message"]` is `2["message"]` here).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use frappe_realtime::socketio::{
    AckError, CloseReason, ConnectFuture, DisconnectReason, Event, Handshake, Io, IoConfig,
    NamespaceHandler, ProtocolVersion, Recovery, RecoveryConfig, Refusal, Sid, Socket, Str,
    TransportType,
};
use serde_json::json;
use tokio::sync::oneshot;

#[path = "../examples/support/socketio_suite.rs"]
mod suite;

#[path = "support/fake_session.rs"]
mod fake_session;
use fake_session::{Client, connect_reply_sid, lock};

/// Long enough not to fire in a test that is not about it.
const LONG: Duration = Duration::from_secs(60);
/// The connect timeout of the tests about it.
const SHORT: Duration = Duration::from_millis(50);

fn suite_io() -> Io {
    suite::io(LONG)
}

/// Let spawned tasks (async verdicts, the deadline sweeper) run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

const PLACEHOLDERS: &str = r#"{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}"#;

// ---------------------------------------------------------------------------------------
// socket.io-protocol suite, "Socket.IO protocol › connect".

#[tokio::test]
async fn connects_to_the_main_namespace() {
    let client = Client::open(&suite_io());
    client.send("0");
    let texts = client.texts();
    assert_eq!(texts.len(), 2, "{texts:?}");
    connect_reply_sid(&texts[0], "/");
    assert_eq!(texts[1], r#"2["auth",{}]"#);
}

#[tokio::test]
async fn connects_to_the_main_namespace_with_a_payload() {
    let client = Client::open(&suite_io());
    client.send(r#"0{"token":"123"}"#);
    let texts = client.texts();
    connect_reply_sid(&texts[0], "/");
    assert_eq!(texts[1..], [r#"2["auth",{"token":"123"}]"#]);
}

#[tokio::test]
async fn connects_to_a_custom_namespace() {
    let client = Client::open(&suite_io());
    client.send("0/custom,");
    let texts = client.texts();
    connect_reply_sid(&texts[0], "/custom");
    assert_eq!(texts[1..], [r#"2/custom,["auth",{}]"#]);
}

#[tokio::test]
async fn connects_to_a_custom_namespace_with_a_payload() {
    let client = Client::open(&suite_io());
    client.send(r#"0/custom,{"token":"abc"}"#);
    let texts = client.texts();
    connect_reply_sid(&texts[0], "/custom");
    assert_eq!(texts[1..], [r#"2/custom,["auth",{"token":"abc"}]"#]);
}

#[tokio::test]
async fn refuses_an_unknown_namespace_and_keeps_the_session() {
    let client = Client::open(&suite_io());
    client.send("0/random");
    assert_eq!(
        client.texts(),
        [r#"4/random,{"message":"Invalid namespace"}"#]
    );
    assert_eq!(client.closed(), None);
}

#[tokio::test]
async fn closes_on_an_invalid_handshake() {
    let client = Client::open(&suite_io());
    client.send("abc");
    assert_eq!(client.closed(), Some(CloseReason::ParseError));
    assert!(client.texts().is_empty());
}

#[tokio::test]
async fn closes_a_session_with_no_handshake() {
    let client = Client::open(&suite::io(SHORT));
    tokio::time::sleep(SHORT * 3).await;
    assert_eq!(client.closed(), Some(CloseReason::ServerClose));
}

// ---------------------------------------------------------------------------------------
// "Socket.IO protocol › disconnect".

#[tokio::test]
async fn disconnecting_from_the_main_namespace_keeps_the_session_quiet() {
    let client = Client::open(&suite_io());
    client.connect("/");
    client.send("1");
    client.send(r#"2["message","after"]"#);
    assert!(client.texts().is_empty(), "nothing after DISCONNECT");
    assert_eq!(client.closed(), None);
}

#[tokio::test]
async fn connects_then_disconnects_from_a_custom_namespace() {
    let client = Client::open(&suite_io());
    client.connect("/");
    client.connect("/custom");
    client.send("1/custom");
    client.send(r#"2["message","message to main namespace"]"#);
    assert_eq!(
        client.texts(),
        [r#"2["message-back","message to main namespace"]"#]
    );
}

// ---------------------------------------------------------------------------------------
// "Socket.IO protocol › message".

#[tokio::test]
async fn echoes_a_plain_text_packet() {
    let client = Client::open(&suite_io());
    client.connect("/");
    client.send(r#"2["message",1,"2",{"3":[true]}]"#);
    assert_eq!(client.texts(), [r#"2["message-back",1,"2",{"3":[true]}]"#]);
}

#[tokio::test]
async fn echoes_a_packet_with_binary_attachments() {
    let client = Client::open(&suite_io());
    client.connect("/");
    client.send(&format!(r#"52-["message",{PLACEHOLDERS}]"#));
    client.send_binary(&[1, 2, 3]);
    assert!(client.packets().is_empty(), "waits for every attachment");
    client.send_binary(&[4, 5, 6]);
    assert_eq!(
        client.packets(),
        [(
            format!(r#"52-["message-back",{PLACEHOLDERS}]"#),
            vec![
                Bytes::from_static(&[1, 2, 3]),
                Bytes::from_static(&[4, 5, 6])
            ]
        )]
    );
}

#[tokio::test]
async fn acks_a_plain_text_packet() {
    let client = Client::open(&suite_io());
    client.connect("/");
    client.send(r#"2456["message-with-ack",1,"2",{"3":[false]}]"#);
    assert_eq!(client.texts(), [r#"3456[1,"2",{"3":[false]}]"#]);
}

#[tokio::test]
async fn acks_a_packet_with_binary_attachments() {
    let client = Client::open(&suite_io());
    client.connect("/");
    client.send(&format!(r#"52-789["message-with-ack",{PLACEHOLDERS}]"#));
    client.send_binary(&[1, 2, 3]);
    client.send_binary(&[4, 5, 6]);
    assert_eq!(
        client.packets(),
        [(
            format!("62-789[{PLACEHOLDERS}]"),
            vec![
                Bytes::from_static(&[1, 2, 3]),
                Bytes::from_static(&[4, 5, 6])
            ]
        )]
    );
}

#[tokio::test]
async fn closes_on_invalid_formats() {
    for invalid in [
        "abc",                                             // unknown packet type
        "2{}",                                             // invalid payload format
        r#"2abc["message-with-ack",1,"2",{"3":[false]}]"#, // invalid ack id
        "2[]",
        "2[1]",
        r#"4/custom,{"message":"no"}"#, // CONNECT_ERROR is the server's
        "0{bad",                        // auth that is not JSON
        "0[]",                          // auth that is not an object
        "3[1]",                         // ACK without an id
        r#"31{"not":"an array"}"#,
    ] {
        let client = Client::open(&suite_io());
        client.connect("/");
        client.send(invalid);
        assert_eq!(client.closed(), Some(CloseReason::ParseError), "{invalid}");
    }
}

#[tokio::test]
async fn closes_on_a_stray_attachment_or_text_between_attachments() {
    let client = Client::open(&suite_io());
    client.send_binary(&[1]);
    assert_eq!(client.closed(), Some(CloseReason::ParseError));

    let client = Client::open(&suite_io());
    client.connect("/");
    client.send(&format!(r#"52-["message",{PLACEHOLDERS}]"#));
    client.send(r#"2["message",1]"#);
    assert_eq!(client.closed(), Some(CloseReason::ParseError));
}

// ---------------------------------------------------------------------------------------
// A handler for everything else: joins rooms, records events and disconnects, and can hold
// its verdict or refuse.

#[derive(Default)]
struct Recorder {
    rooms: Vec<&'static str>,
    refusal: Option<&'static str>,
    /// Held verdicts: each CONNECT waits for the next sender's signal.
    gates: Mutex<Vec<oneshot::Receiver<()>>>,
    events: Mutex<Vec<(String, String)>>,
    disconnects: Mutex<Vec<(Sid, DisconnectReason)>>,
    /// Admit recovering sockets without their kept rooms.
    declines_recovery: bool,
    /// What each CONNECT found, in order.
    recoveries: Mutex<Vec<Recovery>>,
}

impl Recorder {
    fn joining(rooms: &[&'static str]) -> Arc<Self> {
        Arc::new(Self {
            rooms: rooms.to_vec(),
            ..Self::default()
        })
    }

    /// Refuses after joining a room, which must then come to nothing.
    fn refusing(message: &'static str) -> Arc<Self> {
        Arc::new(Self {
            rooms: vec!["all"],
            refusal: Some(message),
            ..Self::default()
        })
    }

    /// Hold the next CONNECT until the returned sender fires.
    fn hold(&self) -> oneshot::Sender<()> {
        let (tx, rx) = oneshot::channel();
        lock(&self.gates).push(rx);
        tx
    }

    fn disconnects(&self) -> Vec<(Sid, DisconnectReason)> {
        lock(&self.disconnects).clone()
    }
}

impl NamespaceHandler for Recorder {
    fn connect(&self, handshake: Handshake) -> ConnectFuture {
        let rooms = self.rooms.clone();
        let refusal = self.refusal;
        let gate = lock(&self.gates).pop();
        lock(&self.recoveries).push(handshake.recovery().clone());
        let declines = self.declines_recovery;
        Box::pin(async move {
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            for room in rooms {
                handshake.socket.join(room);
            }
            match handshake.recovery() {
                Recovery::Restoring(_) if declines => handshake.socket.decline_recovery(),
                Recovery::Restoring(kept) => kept.iter().for_each(|r| handshake.socket.join(r)),
                _ => {}
            }
            refusal.map_or(Ok(()), |message| Err(Refusal::new(message)))
        })
    }

    fn on_event(&self, _socket: &Socket, event: Event) {
        let record = (event.name.to_string(), event.args.json().to_owned());
        lock(&self.events).push(record);
    }

    fn on_disconnect(&self, socket: &Socket, reason: DisconnectReason) {
        assert_eq!(socket.room_count(), 0, "left its rooms first");
        lock(&self.disconnects).push((socket.id(), reason));
    }
}

fn io_with(namespace: &str, handler: Arc<Recorder>) -> Io {
    let io = Io::new(IoConfig {
        connect_timeout: LONG,
        ..IoConfig::default()
    });
    io.add_namespace(namespace, handler)
        .expect("a new namespace");
    io
}

fn parse_sid(sid: &str) -> Sid {
    sid.parse().expect("a socket id")
}

// ---------------------------------------------------------------------------------------
// The CONNECT lifecycle.

#[tokio::test]
async fn a_second_connect_is_answered_with_the_same_socket_id() {
    let io = io_with("/site", Recorder::joining(&["all"]));
    let client = Client::open(&io);
    let first = client.connect("/site");
    let again = client.connect("/site");
    assert_eq!(first, again);
    let namespace = io.namespace("/site").expect("registered");
    assert_eq!(namespace.len(), 1);
    assert_eq!(namespace.room_len("all"), 1);
}

#[tokio::test]
async fn an_async_verdict_joins_rooms_before_the_reply() {
    let handler = Recorder::joining(&["user:a", "all"]);
    let gate = handler.hold();
    let io = io_with("/site", handler.clone());
    let namespace = io.namespace("/site").expect("registered");
    let client = Client::open(&io);
    client.send("0/site,");
    settle().await;
    assert!(client.texts().is_empty(), "nothing before the verdict");
    let early = namespace.broadcast(Some("all"), None, "early", &1);
    assert_eq!(early.expect("encodes").recipients, 0);

    gate.send(()).expect("the verdict waits");
    settle().await;
    assert_eq!(namespace.room_len("user:a"), 1);
    assert_eq!(namespace.room_len("all"), 1);
    namespace
        .broadcast(Some("user:a"), None, "late", &1)
        .expect("encodes");
    let texts = client.texts();
    connect_reply_sid(&texts[0], "/site");
    assert_eq!(texts[1..], [r#"2/site,["late",1]"#]);
}

#[tokio::test]
async fn a_refused_connect_gets_its_message_and_leaves_no_trace() {
    let io = io_with("/site", Recorder::refusing("Unauthorized"));
    let client = Client::open(&io);
    client.send("0/site,");
    settle().await;
    assert_eq!(client.texts(), [r#"4/site,{"message":"Unauthorized"}"#]);
    let namespace = io.namespace("/site").expect("registered");
    assert_eq!((namespace.len(), namespace.room_len("all")), (0, 0));
    assert_eq!(client.closed(), None);
}

#[tokio::test]
async fn refused_connects_do_not_hold_a_session_past_the_timeout() {
    let io = Io::new(IoConfig {
        connect_timeout: SHORT,
        ..IoConfig::default()
    });
    let handler = Recorder::refusing("no");
    io.add_namespace("/site", handler).expect("new");
    let client = Client::open(&io);
    client.send("0/site,");
    client.send("0/random,");
    tokio::time::sleep(SHORT * 3).await;
    assert_eq!(client.closed(), Some(CloseReason::ServerClose));

    let connected = Client::open(&suite::io(SHORT));
    connected.connect("/");
    tokio::time::sleep(SHORT * 3).await;
    assert_eq!(connected.closed(), None, "a connected session stays");
}

#[tokio::test]
async fn a_session_closed_during_the_verdict_is_not_admitted() {
    let handler = Recorder::joining(&["all"]);
    let gate = handler.hold();
    let io = io_with("/site", handler.clone());
    let client = Client::open(&io);
    client.send("0/site,");
    client.end(CloseReason::TransportClose);
    gate.send(()).expect("the verdict waits");
    settle().await;
    let namespace = io.namespace("/site").expect("registered");
    assert_eq!((namespace.len(), namespace.room_len("all")), (0, 0));
    assert!(handler.disconnects().is_empty(), "it never connected");
}

#[tokio::test]
async fn protocol_4_clients_join_the_root_namespace_at_once() {
    let client = Client::open_with(&suite_io(), ProtocolVersion::V3, usize::MAX);
    assert_eq!(client.texts(), ["0", r#"2["auth",{}]"#]);
    client.send("0/custom?token=1,");
    assert_eq!(client.texts(), ["0/custom,", r#"2/custom,["auth",{}]"#]);
}

#[tokio::test]
async fn protocol_4_clients_need_a_root_namespace() {
    let io = io_with("/site", Recorder::joining(&[]));
    let client = Client::open_with(&io, ProtocolVersion::V3, usize::MAX);
    assert_eq!(client.closed(), Some(CloseReason::ServerClose));
}

// ---------------------------------------------------------------------------------------
// Rooms and broadcasts.

#[tokio::test]
async fn rooms_count_their_members_through_joins_leaves_and_disconnects() {
    let handler = Recorder::joining(&["all"]);
    let io = io_with("/site", handler.clone());
    let namespace = io.namespace("/site").expect("registered");
    let clients: Vec<_> = (0..3).map(|_| Client::open(&io)).collect();
    for client in &clients {
        client.connect("/site");
    }
    assert_eq!((namespace.len(), namespace.room_len("all")), (3, 3));

    let socket_of = |client: &Client| {
        let mut sockets = namespace.sockets().into_iter();
        sockets
            .find(|socket| socket.session_id() == client.sid())
            .expect("connected")
    };
    let (first, second) = (socket_of(&clients[0]), socket_of(&clients[1]));
    first.join("doc:1");
    second.join("doc:1");
    second.join("doc:1");
    assert_eq!(namespace.room_len("doc:1"), 2);
    assert_eq!(second.room_count(), 2);
    assert_eq!(namespace.sockets_in("doc:1").len(), 2);
    first.leave("doc:1");
    assert_eq!(namespace.room_len("doc:1"), 1);
    assert_eq!(first.rooms(), [Arc::from("all")]);

    clients[1].send("1/site,");
    assert_eq!(namespace.room_len("doc:1"), 0);
    assert_eq!((namespace.len(), namespace.room_len("all")), (2, 2));
    clients[2].end(CloseReason::PingTimeout);
    assert_eq!((namespace.len(), namespace.room_len("all")), (1, 1));
    let reasons: Vec<_> = handler.disconnects().into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        reasons,
        [
            DisconnectReason::ClientDisconnect,
            DisconnectReason::Session(CloseReason::PingTimeout)
        ]
    );
}

#[tokio::test]
async fn a_broadcast_is_encoded_once_for_every_member() {
    let io = io_with("/site", Recorder::joining(&["all"]));
    let namespace = io.namespace("/site").expect("registered");
    let clients: Vec<_> = (0..3).map(|_| Client::open(&io)).collect();
    for client in &clients {
        client.connect("/site");
    }
    let delivery = namespace
        .broadcast(Some("all"), None, "msgprint", &json!({"a": 1}))
        .expect("encodes");
    assert_eq!((delivery.recipients, delivery.queued), (3, 3));
    let sent: Vec<Str> = clients
        .iter()
        .map(|c| c.raw_sent().pop().expect("sent"))
        .collect();
    assert_eq!(sent[0], r#"2/site,["msgprint",{"a":1}]"#);
    for other in &sent[1..] {
        assert_eq!(other.as_ptr(), sent[0].as_ptr(), "the same bytes");
    }
}

#[tokio::test]
async fn a_broadcast_skips_the_excepted_socket() {
    let io = io_with("/", Recorder::joining(&["doc"]));
    let namespace = io.namespace("/").expect("registered");
    let (a, b) = (Client::open(&io), Client::open(&io));
    let a_id = parse_sid(&a.connect("/"));
    b.connect("/");
    let delivery = namespace
        .broadcast(Some("doc"), Some(a_id), "viewers", &vec!["x"])
        .expect("encodes");
    assert_eq!(delivery.recipients, 1);
    assert!(a.texts().is_empty());
    assert_eq!(b.texts(), [r#"2["viewers",["x"]]"#]);
    let everyone = namespace.broadcast(None, None, "all", &());
    assert_eq!(everyone.expect("encodes").queued, 2);
}

#[tokio::test]
async fn a_full_queue_is_reported_with_its_session() {
    let io = io_with("/", Recorder::joining(&["r"]));
    let namespace = io.namespace("/").expect("registered");
    // Room for the CONNECT reply only.
    let full = Client::open_with(&io, ProtocolVersion::V4, 1);
    let roomy = Client::open(&io);
    full.connect("/");
    roomy.connect("/");
    let delivery = namespace
        .broadcast(Some("r"), None, "e", &1)
        .expect("encodes");
    assert_eq!(delivery.recipients, 2);
    assert_eq!(delivery.queued, 1);
    assert_eq!(
        delivery.refused.iter().map(|e| e.sid).collect::<Vec<_>>(),
        [full.sid()]
    );
    assert_eq!(delivery.closed, 0);
}

// ---------------------------------------------------------------------------------------
// Server-side disconnects.

#[tokio::test]
async fn removing_a_namespace_disconnects_its_sockets() {
    let handler = Recorder::joining(&["all"]);
    let io = io_with("/site", handler.clone());
    let namespace = io.namespace("/site").expect("registered");
    let client = Client::open(&io);
    let id = parse_sid(&client.connect("/site"));
    assert!(io.remove_namespace("/site"));
    assert!(!io.remove_namespace("/site"));
    assert_eq!(client.texts(), ["1/site,"]);
    assert_eq!(
        handler.disconnects(),
        [(id, DisconnectReason::NamespaceRemoved)]
    );
    assert_eq!((namespace.len(), namespace.room_len("all")), (0, 0));
    client.send("0/site,");
    assert_eq!(
        client.texts(),
        [r#"4/site,{"message":"Invalid namespace"}"#]
    );
    assert_eq!(client.closed(), None);
}

#[tokio::test]
async fn a_namespace_removed_during_a_verdict_refuses_the_socket() {
    let handler = Recorder::joining(&["all"]);
    let gate = handler.hold();
    let io = io_with("/site", handler.clone());
    let client = Client::open(&io);
    client.send("0/site,");
    io.remove_namespace("/site");
    gate.send(()).expect("the verdict waits");
    settle().await;
    assert_eq!(
        client.texts(),
        [r#"4/site,{"message":"Invalid namespace"}"#]
    );
}

#[tokio::test]
async fn a_server_disconnect_tells_the_client_and_keeps_the_session() {
    let handler = Recorder::joining(&["all"]);
    let io = io_with("/site", handler.clone());
    let client = Client::open(&io);
    let id = parse_sid(&client.connect("/site"));
    let socket = io.namespace("/site").expect("registered").sockets()[0].clone();
    assert_eq!(socket.id(), id);
    assert_eq!(socket.session_id(), client.sid());
    assert_ne!(
        socket.id(),
        socket.session_id(),
        "sockets have their own id"
    );
    socket.disconnect();
    socket.disconnect();
    assert_eq!(client.texts(), ["1/site,"]);
    assert_eq!(
        handler.disconnects(),
        [(id, DisconnectReason::ServerDisconnect)]
    );
    assert!(socket.emit("late", &1).is_err(), "no packets after");
    assert_eq!(client.closed(), None);
    let again = client.connect("/site");
    assert_ne!(parse_sid(&again), id, "a new socket");
}

// ---------------------------------------------------------------------------------------
// Events and acks.

#[tokio::test]
async fn events_reach_the_handler_of_their_namespace_only() {
    let handler = Recorder::joining(&[]);
    let io = io_with("/site", handler.clone());
    let client = Client::open(&io);
    client.send(r#"2/site,["before"]"#);
    client.connect("/site");
    client.send(r#"2/site,["doc_subscribe","ToDo",{"a":[1]}]"#);
    client.send(r#"2["elsewhere"]"#);
    assert_eq!(
        *lock(&handler.events),
        [("doc_subscribe".to_owned(), r#""ToDo",{"a":[1]}"#.to_owned())]
    );
    assert_eq!(client.closed(), None);
}

#[tokio::test]
async fn the_server_waits_for_a_client_ack() {
    let io = io_with("/", Recorder::joining(&[]));
    let client = Client::open(&io);
    client.connect("/");
    let socket = io.namespace("/").expect("registered").sockets()[0].clone();

    let reply = socket.emit_with_ack("ask", &("q", 1)).expect("sent");
    let texts = client.texts();
    assert_eq!(texts, [r#"20["ask","q",1]"#]);
    client.send(r#"30["answer",{"n":2}]"#);
    let args = reply.await.expect("answered");
    assert_eq!(args.json(), r#""answer",{"n":2}"#);

    let unanswered = socket.emit_with_ack("ask", &()).expect("sent");
    client.end(CloseReason::TransportClose);
    assert_eq!(unanswered.await, Err(AckError::Disconnected));
}

#[tokio::test]
async fn acks_to_a_client_serialise_their_payload() {
    struct Acker;
    impl NamespaceHandler for Acker {
        fn connect(&self, _: Handshake) -> ConnectFuture {
            Box::pin(std::future::ready(Ok(())))
        }
        fn on_event(&self, _: &Socket, event: Event) {
            if let Some(ack) = event.ack {
                ack.send(&("ok", 2)).expect("queued");
            }
        }
    }
    let io = Io::new(IoConfig::default());
    io.add_namespace("/", Arc::new(Acker)).expect("new");
    let client = Client::open(&io);
    client.connect("/");
    client.send(r#"27["ping"]"#);
    assert_eq!(client.texts(), [r#"37["ok",2]"#]);
}

#[tokio::test]
async fn a_socket_keeps_state_and_reads_its_request() {
    let io = io_with("/", Recorder::joining(&[]));
    let client = Client::open(&io);
    client.connect("/");
    let socket = io.namespace("/").expect("registered").sockets()[0].clone();
    assert!(socket.set_state(7_u32));
    assert!(!socket.set_state(8_u32), "set once");
    assert_eq!(socket.state::<u32>(), Some(&7));
    assert_eq!(socket.state::<String>(), None);
    assert_eq!(socket.request().uri, "/");
    assert_eq!(socket.transport_type(), TransportType::Websocket);
    assert_eq!(socket.protocol(), ProtocolVersion::V4);
    assert_eq!(socket.namespace().path(), "/");
}

#[test]
fn namespaces_are_unique_and_get_their_leading_slash() {
    let io = Io::new(IoConfig::default());
    let handler = Recorder::joining(&[]);
    io.add_namespace("site", handler.clone()).expect("new");
    assert!(io.add_namespace("/site", handler).is_err());
    assert!(io.namespace("site").is_some());
    assert_eq!(io.namespaces().len(), 1);
}

// ---------------------------------------------------------------------------------------
// Connection state recovery.

fn recovering_io(handler: Arc<Recorder>) -> Io {
    let io = Io::new(IoConfig {
        connect_timeout: LONG,
        recovery: Some(RecoveryConfig {
            max_events: 4,
            ..RecoveryConfig::default()
        }),
        ..IoConfig::default()
    });
    io.add_namespace("/site", handler).expect("a new namespace");
    io
}

/// CONNECT to `/site` with `auth`; the reply's `(sid, pid)` and the packets after it.
fn connect_with(client: &Client, auth: &str) -> (String, String, Vec<String>) {
    client.send(&format!("0/site,{auth}"));
    let mut texts = client.texts().into_iter();
    let reply = texts.next().expect("a CONNECT reply");
    let payload = reply.strip_prefix("0/site,").expect("a CONNECT reply");
    let payload: serde_json::Value = serde_json::from_str(payload).expect("JSON");
    let field = |name: &str| payload[name].as_str().expect(name).to_owned();
    (field("sid"), field("pid"), texts.collect())
}

fn publish(io: &Io, room: Option<&str>, n: u32) {
    let namespace = io.namespace("/site").expect("registered");
    namespace.broadcast(room, None, "e", &n).expect("encodes");
}

#[tokio::test]
async fn a_cut_socket_gets_its_id_rooms_and_what_it_missed_once_in_order() {
    let handler = Recorder::joining(&["user:a"]);
    let io = recovering_io(handler.clone());
    let first = Client::open(&io);
    let (sid, pid, _) = connect_with(&first, r#"{"recovery":true}"#);
    let socket = io.namespace("/site").expect("registered").sockets()[0].clone();
    socket.join("doc:1");
    publish(&io, Some("doc:1"), 1);
    assert_eq!(first.texts(), [r#"2/site,["e",1,"1"]"#]);
    first.end(CloseReason::TransportClose);

    publish(&io, Some("doc:1"), 2);
    publish(&io, Some("doc:2"), 99);
    publish(&io, None, 3);
    publish(&io, Some("user:a"), 4);
    let second = Client::open(&io);
    let auth = format!(r#"{{"pid":"{pid}","offset":"1"}}"#);
    let (again, same_pid, replayed) = connect_with(&second, &auth);
    assert_eq!(
        (again.as_str(), same_pid.as_str()),
        (sid.as_str(), pid.as_str())
    );
    assert_eq!(
        replayed,
        [
            r#"2/site,["e",2,"2"]"#,
            r#"2/site,["e",3,"4"]"#,
            r#"2/site,["e",4,"5"]"#
        ]
    );
    let socket = io.namespace("/site").expect("registered").sockets()[0].clone();
    assert!(socket.recovered());
    assert_eq!(socket.replayed(), 3);
    publish(&io, Some("doc:1"), 5);
    assert_eq!(second.texts(), [r#"2/site,["e",5,"6"]"#], "live, once");
    assert!(matches!(
        lock(&handler.recoveries)[1],
        Recovery::Restoring(_)
    ));
}

#[tokio::test]
async fn a_client_disconnect_keeps_nothing_and_an_unknown_pid_connects_afresh() {
    let handler = Recorder::joining(&["user:a"]);
    let io = recovering_io(handler.clone());
    let first = Client::open(&io);
    let (_, pid, _) = connect_with(&first, r#"{"recovery":true}"#);
    first.send("1/site,");
    publish(&io, Some("user:a"), 1);
    let second = Client::open(&io);
    let auth = format!(r#"{{"pid":"{pid}","offset":"0"}}"#);
    let (_, new_pid, replayed) = connect_with(&second, &auth);
    assert_ne!(new_pid, pid);
    assert!(replayed.is_empty());
    let (_, _, nothing) = connect_with(&Client::open(&io), r#"{"pid":"bogus"}"#);
    assert!(nothing.is_empty());
    let found: Vec<_> = lock(&handler.recoveries)
        .iter()
        .filter_map(Recovery::label)
        .collect();
    assert_eq!(found, ["unknown", "unknown"]);
}

#[tokio::test]
async fn a_log_that_lost_what_was_missed_gives_an_ordinary_connect() {
    let handler = Recorder::joining(&["user:a"]);
    let io = recovering_io(handler.clone());
    let first = Client::open(&io);
    let (_, pid, _) = connect_with(&first, r#"{"recovery":true}"#);
    first.end(CloseReason::PingTimeout);
    for n in 0..10 {
        publish(&io, Some("user:a"), n);
    }
    let namespace = io.namespace("/site").expect("registered");
    let stats = namespace.recovery_stats().expect("recovery is on");
    assert_eq!((stats.log_events, stats.kept_sessions), (4, 1), "bounded");
    let auth = format!(r#"{{"pid":"{pid}","offset":"0"}}"#);
    let (_, new_pid, replayed) = connect_with(&Client::open(&io), &auth);
    assert_ne!(new_pid, pid);
    assert!(replayed.is_empty());
    assert_eq!(lock(&handler.recoveries)[1], Recovery::TooOld);
}

#[tokio::test]
async fn a_declined_recovery_replays_nothing_and_gives_a_new_pid() {
    let handler = Arc::new(Recorder {
        rooms: vec!["user:a"],
        declines_recovery: true,
        ..Recorder::default()
    });
    let io = recovering_io(handler);
    let first = Client::open(&io);
    let (sid, pid, _) = connect_with(&first, r#"{"recovery":true}"#);
    first.end(CloseReason::TransportError);
    publish(&io, Some("user:a"), 1);
    let auth = format!(r#"{{"pid":"{pid}","offset":"0"}}"#);
    let (new_sid, new_pid, replayed) = connect_with(&Client::open(&io), &auth);
    assert_ne!(new_pid, pid);
    assert_ne!(new_sid, sid, "not the kept session's id either");
    assert!(replayed.is_empty());
    let namespace = io.namespace("/site").expect("registered");
    assert_eq!(namespace.sockets()[0].id().to_string(), new_sid);
}

#[tokio::test]
async fn sockets_that_do_not_ask_get_events_without_offsets_and_still_recover() {
    let io = recovering_io(Recorder::joining(&["user:a"]));
    let first = Client::open(&io);
    let (_, pid, _) = connect_with(&first, "");
    publish(&io, Some("user:a"), 1);
    assert_eq!(first.texts(), [r#"2/site,["e",1]"#]);
    first.end(CloseReason::TransportClose);
    publish(&io, Some("user:a"), 2);
    // A string argument it took for an offset cannot skip anything.
    let auth = format!(r#"{{"pid":"{pid}","offset":"2"}}"#);
    let (_, same, replayed) = connect_with(&Client::open(&io), &auth);
    assert_eq!(same, pid);
    assert_eq!(replayed, [r#"2/site,["e",2,"2"]"#]);
}
