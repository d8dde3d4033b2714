//! Our Engine.IO server over loopback, for what the official engine.io-protocol suite
//! (tests/e2e/protocol/2-protocol-suites.test.mjs) does not cover: Engine.IO 3, the numeric error codes,
//! and slow consumers on both transports. Every wait is bounded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use frappe_realtime::engine::{
    CloseReason, EngineConfig, EngineHandler, EngineService, Session, Sid, SlowReason, Str,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

const BOUND: Duration = Duration::from_secs(10);

/// Echoes, and records which sessions opened and how they closed.
#[derive(Default)]
struct Recorder {
    opened: Mutex<Vec<Arc<Session<()>>>>,
    closed: Mutex<Vec<(Sid, CloseReason)>>,
    changed: Notify,
}

impl EngineHandler for Recorder {
    type Data = ();

    fn on_open(&self, session: &Arc<Session<()>>) {
        self.opened.lock().expect("lock").push(session.clone());
        self.changed.notify_waiters();
    }

    fn on_message(&self, session: &Arc<Session<()>>, text: Str) {
        let _ = session.send(text, &[]);
    }

    fn on_binary(&self, session: &Arc<Session<()>>, data: Bytes) {
        let _ = session.send_binary(data);
    }

    fn on_close(&self, session: &Arc<Session<()>>, reason: CloseReason) {
        self.closed.lock().expect("lock").push((session.id, reason));
        self.changed.notify_waiters();
    }
}

impl Recorder {
    /// Wait (bounded) until `found` finds something in the recorder.
    async fn wait<T>(&self, what: &str, found: impl Fn(&Self) -> Option<T>) -> T {
        tokio::time::timeout(BOUND, async {
            loop {
                let changed = self.changed.notified();
                if let Some(value) = found(self) {
                    return value;
                }
                // Also look again now and then: a change may come between the look and the wait.
                let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    async fn session(&self) -> Arc<Session<()>> {
        self.wait("a session", |r| {
            r.opened.lock().expect("lock").first().cloned()
        })
        .await
    }

    async fn close_reason(&self, sid: Sid) -> CloseReason {
        self.wait("the session to close", |r| {
            let closed = r.closed.lock().expect("lock");
            closed
                .iter()
                .find(|(id, _)| *id == sid)
                .map(|(_, reason)| *reason)
        })
        .await
    }
}

async fn start(config: EngineConfig) -> (SocketAddr, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let engine = EngineService::new(recorder.clone(), config, Router::new());
    let app = Router::new().fallback_service(engine);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, recorder)
}

fn config() -> EngineConfig {
    EngineConfig {
        path: "/engine.io".into(),
        ..EngineConfig::default()
    }
}

/// One HTTP/1.1 request on its own connection: status and body.
async fn http(address: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    tokio::time::timeout(BOUND, async {
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        stream.write_all(body).await.expect("write");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        let status = std::str::from_utf8(&response[9..12])
            .expect("ascii")
            .parse()
            .expect("a status");
        (status, response[split + 4..].to_vec())
    })
    .await
    .expect("an answer in time")
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next(ws: &mut Client) -> Message {
    tokio::time::timeout(BOUND, ws.next())
        .await
        .expect("a message in time")
        .expect("the websocket open")
        .expect("a message")
}

/// The sid in an open packet's JSON (`…0{"sid":"…",…}`).
fn sid_of(open: &[u8]) -> String {
    let text = String::from_utf8_lossy(open);
    let start = text.find(r#""sid":""#).expect("a sid") + 7;
    text[start..start + 16].to_owned()
}

#[tokio::test]
async fn errors_have_numeric_codes_and_other_paths_go_to_the_inner_service() {
    let (address, _) = start(config()).await;
    let (status, body) = http(address, "GET", "/engine.io/?EIO=5&transport=polling", b"").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        br#"{"code":5,"message":"Unsupported protocol version"}"#
    );
    let (status, body) = http(address, "GET", "/engine.io/?EIO=4&transport=x", b"").await;
    assert_eq!(
        (status, body.as_slice()),
        (400, &br#"{"code":0,"message":"Transport unknown"}"#[..])
    );
    let unknown = "/engine.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAA";
    let (status, body) = http(address, "GET", unknown, b"").await;
    assert_eq!(
        (status, body.as_slice()),
        (400, &br#"{"code":1,"message":"Session ID unknown"}"#[..])
    );
    let (status, _) = http(address, "GET", "/elsewhere", b"").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn engine_io_3_polling_answers_client_pings_and_prefixes_lengths() {
    let (address, _) = start(config()).await;
    let (status, open) = http(address, "GET", "/engine.io/?EIO=3&transport=polling", b"").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(open.clone()).expect("a text payload");
    let (length, packet) = text.split_once(':').expect("length-prefixed");
    assert_eq!(
        length.parse::<usize>().ok(),
        Some(packet.encode_utf16().count())
    );
    assert!(packet.starts_with("0{"), "{packet}");
    let path = format!("/engine.io/?EIO=3&transport=polling&sid={}", sid_of(&open));
    let (status, ok) = http(address, "POST", &path, "1:26:4héllo".as_bytes()).await;
    assert_eq!((status, ok.as_slice()), (200, &b"ok"[..]));
    let (status, answer) = http(address, "GET", &path, b"").await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(answer).expect("text"), "1:36:4héllo");
}

#[tokio::test]
async fn engine_io_3_websocket_echoes_binary_with_its_type_byte_and_answers_pings() {
    let (address, _) = start(config()).await;
    let url = format!("ws://{address}/engine.io/?EIO=3&transport=websocket");
    let (mut ws, _) = tokio::time::timeout(BOUND, tokio_tungstenite::connect_async(url))
        .await
        .expect("in time")
        .expect("a websocket");
    let open = next(&mut ws).await;
    assert!(open.to_text().expect("text").starts_with("0{"));
    ws.send(Message::Binary(Bytes::from_static(&[4, 1, 2, 3])))
        .await
        .expect("send");
    ws.send(Message::text("2")).await.expect("send");
    let received = [next(&mut ws).await, next(&mut ws).await];
    assert_eq!(
        received,
        [
            Message::Binary(Bytes::from_static(&[4, 1, 2, 3])),
            Message::text("3")
        ]
    );
}

#[tokio::test]
async fn a_websocket_that_takes_no_bytes_is_cut_as_stalled() {
    let (address, recorder) = start(EngineConfig {
        stall_timeout: Duration::from_millis(300),
        max_queued_packets: usize::MAX,
        max_queued_bytes: usize::MAX,
        ..config()
    })
    .await;
    let url = format!("ws://{address}/engine.io/?EIO=4&transport=websocket");
    // Connected, and then never read from again.
    let (_client, _) = tokio::time::timeout(BOUND, tokio_tungstenite::connect_async(url))
        .await
        .expect("in time")
        .expect("a websocket");
    let session = recorder.session().await;
    let chunk: Str = "x".repeat(64 * 1024).into();
    let flood = async {
        while session.send(chunk.clone(), &[]).is_ok() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(BOUND, flood)
        .await
        .expect("the session is cut in time");
    assert_eq!(
        recorder.close_reason(session.id).await,
        CloseReason::SlowConsumer(SlowReason::Stalled)
    );
}

#[tokio::test]
async fn a_polling_session_with_data_and_no_get_is_cut_as_stalled() {
    let (address, recorder) = start(EngineConfig {
        stall_timeout: Duration::from_millis(200),
        ..config()
    })
    .await;
    let (status, _) = http(address, "GET", "/engine.io/?EIO=4&transport=polling", b"").await;
    assert_eq!(status, 200);
    let session = recorder.session().await;
    session.send("waiting".into(), &[]).expect("queued");
    assert_eq!(
        recorder.close_reason(session.id).await,
        CloseReason::SlowConsumer(SlowReason::Stalled)
    );
}

#[tokio::test]
async fn an_overflowing_queue_cuts_the_session_it_names() {
    let (address, recorder) = start(EngineConfig {
        max_queued_packets: 2,
        ..config()
    })
    .await;
    let (_, open) = http(address, "GET", "/engine.io/?EIO=4&transport=polling", b"").await;
    let path = format!("/engine.io/?EIO=4&transport=polling&sid={}", sid_of(&open));
    let session = recorder.session().await;
    let error = session
        .send(
            "a".into(),
            &[Bytes::from_static(b"b"), Bytes::from_static(b"c")],
        )
        .expect_err("3 packets do not fit in 2");
    assert_eq!(error.sid, session.id);
    assert_eq!(
        recorder.close_reason(session.id).await,
        CloseReason::SlowConsumer(SlowReason::QueueFull)
    );
    let (status, _) = http(address, "GET", &path, b"").await;
    assert_eq!(status, 400, "the session is gone");
}

#[tokio::test]
async fn closing_a_websocket_session_sends_close_then_ends_the_websocket() {
    let (address, recorder) = start(config()).await;
    let url = format!("ws://{address}/engine.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio::time::timeout(BOUND, tokio_tungstenite::connect_async(url))
        .await
        .expect("in time")
        .expect("a websocket");
    assert!(
        next(&mut ws)
            .await
            .to_text()
            .expect("text")
            .starts_with("0{")
    );
    let session = recorder.session().await;
    session.close(CloseReason::ServerClose);
    assert_eq!(next(&mut ws).await, Message::text("1"));
    assert!(matches!(next(&mut ws).await, Message::Close(_)));
    assert_eq!(
        recorder.close_reason(session.id).await,
        CloseReason::ServerClose
    );
}

#[tokio::test]
async fn what_was_queued_on_polling_arrives_on_the_websocket_after_the_upgrade() {
    let (address, recorder) = start(config()).await;
    let (_, open) = http(address, "GET", "/engine.io/?EIO=4&transport=polling", b"").await;
    let sid = sid_of(&open);
    recorder
        .session()
        .await
        .send("queued before".into(), &[])
        .expect("queued");
    let url = format!("ws://{address}/engine.io/?EIO=4&transport=websocket&sid={sid}");
    let (mut ws, _) = tokio::time::timeout(BOUND, tokio_tungstenite::connect_async(url))
        .await
        .expect("in time")
        .expect("a websocket");
    ws.send(Message::text("2probe")).await.expect("send");
    assert_eq!(next(&mut ws).await, Message::text("3probe"));
    ws.send(Message::text("5")).await.expect("send");
    assert_eq!(next(&mut ws).await, Message::text("4queued before"));
    let polling = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    let (status, _) = http(address, "GET", &polling, b"").await;
    assert_eq!(status, 400, "the session is on the websocket now");
}

/// engineioxide-core's v3 text decoder spun forever, never yielding, on a length that ends
/// inside a surrogate pair with bytes after it: one such POST took a worker thread for good.
/// Two workers, so that a regression fails on the client's timeout instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_io_3_length_inside_a_surrogate_pair_is_refused_not_spun_on() {
    let (address, recorder) = start(config()).await;
    let (_, open) = http(address, "GET", "/engine.io/?EIO=3&transport=polling", b"").await;
    let path = format!("/engine.io/?EIO=3&transport=polling&sid={}", sid_of(&open));
    let (status, body) = http(address, "POST", &path, "1:😀x".as_bytes()).await;
    assert_eq!(
        (status, body.as_slice()),
        (400, &br#"{"code":3,"message":"Bad request"}"#[..])
    );
    let session = recorder.session().await;
    assert_eq!(
        recorder.close_reason(session.id).await,
        CloseReason::ParseError
    );
}
