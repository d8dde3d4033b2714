//! Property-based fuzzing of the layers of our own, on what a client sends them: the Engine.IO
//! server's request checks and polling payloads (`src/engine`, through the public
//! `EngineService` as axum would call it), and the Socket.IO layer's packets (`src/socketio`,
//! through `Io` over the fake Engine.IO session tests/socketio.rs uses, in
//! tests/support/fake_session.rs).
//!
//! Conventions as in fuzz_parsers.rs (shared through tests/support/fuzz.rs): a fixed number of
//! cases per property (see `docs/fuzzing.md`), `PROPTEST_CASES=N` for every property, e.g.
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz_layer`, failures shrunk and saved
//! in `tests/fuzz_layer.proptest-regressions`.
//!
//! A decoder that spins without yielding cannot be timed out from its own runtime, so each
//! case runs under a watchdog thread that prints the case and ends the process if it has not
//! finished in [`HANG`] (such a case is not shrunk: shrinking would spin again at every step).

use std::fmt::{Debug, Write as _};
use std::future::Future;
use std::io::Write as _;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use frappe_realtime::engine::{
    CloseReason, EngineConfig, EngineHandler, EngineService, ProtocolVersion, Session, Sid, Str,
};
use frappe_realtime::socketio::{
    ConnectFuture, Event, Handshake, Io, IoConfig, NamespaceHandler, Socket,
};
use http::header::{CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{Method, Request, StatusCode};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;
use socketioxide_core::Value as SioValue;
use socketioxide_core::packet::PacketData;
use socketioxide_core::parser::{Parse, ParseConfig, ParseError, ParserState};
use socketioxide_parser_common::CommonParser;
use tower::ServiceExt;

#[path = "support/fuzz.rs"]
mod fuzz;
use fuzz::{any_string, config, json_value, pick};

#[path = "support/fake_session.rs"]
mod fake_session;
use fake_session::{Client, connect_reply_sid, lock};

#[path = "../examples/support/socketio_suite.rs"]
mod suite;

// ---------------------------------------------------------------------------------------------
// Case counts (`fuzz::config`)
// ---------------------------------------------------------------------------------------------

const ENGINE_REQUEST_CASES: u32 = 4_096;
const POLLING_POST_CASES: u32 = 4_096;
const POLLING_ROUND_TRIP_CASES: u32 = 2_048;
const SOCKETIO_MESSAGES_CASES: u32 = 2_048;
const SOCKETIO_EVENTS_CASES: u32 = 2_048;

// ---------------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------------

/// How long one case may take, on a loaded 2-core machine in debug, before it counts as hung.
const HANG: Duration = Duration::from_secs(30);

/// Run `future` on a fresh runtime (so that nothing a case spawned outlives it), under a
/// watchdog that reports `case` and ends the process if it hangs.
fn run<T>(case: &impl Debug, future: impl Future<Output = T>) -> T {
    let (done, watched) = mpsc::channel::<()>();
    let described = format!("{case:?}");
    std::thread::spawn(move || {
        if watched.recv_timeout(HANG) == Err(RecvTimeoutError::Timeout) {
            // Not `eprintln!`: the test harness captures that, and the capture is lost on exit.
            let _ = writeln!(
                std::io::stderr(),
                "fuzz_layer: a case did not finish in {HANG:?}: {described}"
            );
            std::process::exit(101);
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let output = runtime.block_on(future);
    drop(done);
    output
}

// ---------------------------------------------------------------------------------------------
// An Engine.IO server to send requests to
// ---------------------------------------------------------------------------------------------

/// What a session's handler heard, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Received {
    Text(String),
    Binary(Vec<u8>),
}

/// Records what it hears and does nothing else.
#[derive(Default)]
struct Recorder {
    opened: Mutex<Vec<Arc<Session<()>>>>,
    received: Mutex<Vec<Received>>,
    closed: Mutex<Vec<(Sid, CloseReason)>>,
}

impl EngineHandler for Recorder {
    type Data = ();

    fn on_open(&self, session: &Arc<Session<()>>) {
        lock(&self.opened).push(session.clone());
    }

    fn on_message(&self, _: &Arc<Session<()>>, text: Str) {
        lock(&self.received).push(Received::Text(text.to_string()));
    }

    fn on_binary(&self, _: &Arc<Session<()>>, data: Bytes) {
        lock(&self.received).push(Received::Binary(data.to_vec()));
    }

    fn on_close(&self, session: &Arc<Session<()>>, reason: CloseReason) {
        lock(&self.closed).push((session.id, reason));
    }
}

/// An engine on `/socket.io`, with a 404 for any other path.
struct Engine {
    service: EngineService<Recorder, Router>,
    recorder: Arc<Recorder>,
}

/// A response, read whole.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Engine {
    fn new(config: EngineConfig) -> Self {
        let recorder = Arc::new(Recorder::default());
        let service = EngineService::new(recorder.clone(), config, Router::new());
        Self { service, recorder }
    }

    async fn call(&self, request: Request<Body>) -> Answer {
        let Ok(response) = self.service.clone().oneshot(request).await;
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("a body that reads");
        Answer {
            status: parts.status,
            content_type: parts
                .headers
                .get(CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            body,
        }
    }

    /// Open a polling session with a well-formed handshake; its id.
    async fn open(&self, protocol: ProtocolVersion, base64: bool) -> Sid {
        let uri = format!(
            "/socket.io/?EIO={}&transport=polling{}",
            eio(protocol),
            if base64 { "&b64=1" } else { "" }
        );
        let answer = self.call(get(&uri)).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        open_packet_sid(&answer.text()).expect("an open packet")
    }

    async fn post(&self, sid: Sid, protocol: ProtocolVersion, post: &Post) -> Answer {
        let uri = format!(
            "/socket.io/?EIO={}&transport=polling&sid={sid}",
            eio(protocol)
        );
        let mut request = Request::post(uri);
        if post.binary {
            request = request.header(CONTENT_TYPE, "application/octet-stream");
        }
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> =
            post.chunks().into_iter().map(Ok).collect();
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        self.call(request.body(body).expect("a request")).await
    }

    /// Let the sessions' tasks run (they report closes).
    async fn settle(&self) {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn close_reason(&self, sid: Sid) -> Option<CloseReason> {
        let closed = lock(&self.recorder.closed);
        closed.iter().find(|(id, _)| *id == sid).map(|(_, r)| *r)
    }
}

fn eio(protocol: ProtocolVersion) -> &'static str {
    match protocol {
        ProtocolVersion::V3 => "3",
        ProtocolVersion::V4 => "4",
    }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("a request")
}

/// The sid of a polling response that starts with the open packet (`0{…}`, or `n:0{…}`).
fn open_packet_sid(text: &str) -> Option<Sid> {
    let json: Value = serde_json::from_str(&text[text.find('{')?..]).ok()?;
    json.get("sid")?.as_str()?.parse().ok()
}

fn protocol() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V4), Just(ProtocolVersion::V3)]
}

// ---------------------------------------------------------------------------------------------
// 1. Engine.IO requests: query, method, upgrade headers
// ---------------------------------------------------------------------------------------------

/// A query value standing for the sid of the session the case opened first.
const LIVE_SID: &str = "LIVESID";

/// The numbered error answers (engine.io's `Server.errors`); 4 is never sent.
const ERROR_MESSAGES: [(u64, &str); 5] = [
    (0, "Transport unknown"),
    (1, "Session ID unknown"),
    (2, "Bad handshake method"),
    (3, "Bad request"),
    (5, "Unsupported protocol version"),
];

#[derive(Debug, Clone)]
struct RequestCase {
    allow_eio3: bool,
    /// A polling session opened before the request, which `LIVE_SID` names.
    live: Option<ProtocolVersion>,
    method: Method,
    path: &'static str,
    query: Option<String>,
    /// The headers of a websocket upgrade (which `oneshot` cannot complete).
    upgrade: bool,
}

/// `s` with every byte a URI query may not hold as it is percent-encoded, except those in
/// `keep`.
fn uri_safe(s: &str, keep: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || b"-._~!$'()*+,;:@/?".contains(&b)
            || keep.contains(b as char)
        {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn query_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => pick(&["EIO", "transport", "sid", "b64"]),
        1 => pick(&["t", "j", "", "eio", "Transport", "SID", "EIO%20", "sid%5B%5D"]),
        1 => "[a-z]{1,4}",
    ]
}

fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => pick(&["4", "3", "polling", "websocket", LIVE_SID, "1"]),
        2 => pick(&["5", "0", "", "04", "4.0", "+4", "Polling", "flashsocket", "websocket,"]),
        1 => "[A-Za-z0-9_-]{16}",
        1 => "[A-Za-z0-9_-]{0,20}",
        1 => any_string().prop_map(|s| uri_safe(&s, "")),
    ]
}

/// `key=value`, or a pair without `=`, or with an empty key, or with two `=`.
fn query_pair() -> impl Strategy<Value = String> {
    (query_key(), query_value(), 0..8u8).prop_map(|(key, value, form)| match form {
        0 => key,
        1 => format!("={value}"),
        2 => format!("{key}={value}={value}"),
        _ => format!("{key}={value}"),
    })
}

/// `pairs` in any order among up to two random pairs, joined.
fn shuffled(pairs: Vec<String>) -> impl Strategy<Value = String> {
    vec(query_pair(), 0..3)
        .prop_flat_map(move |extra| {
            let mut all = pairs.clone();
            all.extend(extra);
            Just(all).prop_shuffle()
        })
        .prop_map(|pairs| pairs.join("&"))
}

/// Queries biased towards the ones that get far: a well-formed handshake, a request for the
/// live session (mostly with its protocol) or for another, each in any order among other
/// pairs; random pairs; any text.
fn query(live: Option<ProtocolVersion>) -> impl Strategy<Value = Option<String>> {
    let b64 = prop::option::of(pick(&["b64=1", "b64=", "b64=true"]));
    let handshake = (
        pick(&["EIO=4", "EIO=3"]),
        prop_oneof![3 => Just("transport=polling".to_owned()), 1 => Just("transport=websocket".to_owned())],
        b64.clone(),
    )
        .prop_flat_map(|(eio, transport, b64)| shuffled([vec![eio, transport], Vec::from_iter(b64)].concat()));
    let eio = match live {
        Some(live) => {
            prop_oneof![3 => Just(format!("EIO={}", eio(live))), 1 => pick(&["EIO=4", "EIO=3"])]
                .boxed()
        }
        None => pick(&["EIO=4", "EIO=3"]).boxed(),
    };
    let session = (
        eio,
        prop_oneof![4 => Just("transport=polling".to_owned()), 1 => Just("transport=websocket".to_owned())],
        prop_oneof![4 => Just(format!("sid={LIVE_SID}")), 1 => pick(&["sid=AAAAAAAAAAAAAAAA", "sid=short", "sid="])],
        b64,
    )
        .prop_flat_map(|(eio, transport, sid, b64)| shuffled([vec![eio, transport, sid], Vec::from_iter(b64)].concat()));
    prop_oneof![
        1 => Just(None),
        5 => handshake.prop_map(Some),
        6 => session.prop_map(Some),
        2 => vec(query_pair(), 0..6).prop_map(|pairs| Some(pairs.join("&"))),
        1 => any_string().prop_map(|s| Some(uri_safe(&s, "&="))),
    ]
}

fn request_case() -> impl Strategy<Value = RequestCase> {
    let method = prop_oneof![
        6 => Just(Method::GET),
        3 => Just(Method::POST),
        1 => select(vec![
            Method::PUT,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
            Method::PATCH,
            Method::from_bytes(b"PURGE").expect("a method"),
        ]),
    ];
    let path = prop_oneof![
        8 => select(vec!["/socket.io/", "/socket.io"]),
        1 => select(vec!["/socket.io//", "/socket.io/x", "/Socket.io/", "/", "/other"]),
    ];
    (any::<bool>(), prop::option::weighted(0.7, protocol()))
        .prop_flat_map(move |(allow_eio3, live)| {
            // An Engine.IO 3 session needs a server that takes Engine.IO 3.
            let live = live.filter(|p| *p == ProtocolVersion::V4 || allow_eio3);
            (
                Just(allow_eio3),
                Just(live),
                method.clone(),
                path.clone(),
                query(live),
                prop::bool::weighted(0.15),
            )
        })
        .prop_map(
            |(allow_eio3, live, method, path, query, upgrade)| RequestCase {
                allow_eio3,
                live,
                method,
                path,
                query,
                upgrade,
            },
        )
}

/// What the engine must do with a request, from the rules engine.io's `Server.verify` applies
/// in this order (transport, protocol, sid, method), with query values taken as they are and
/// the first of a repeated parameter counting.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// A path outside `/socket.io`: the inner service's 404.
    NotServed,
    Refused(u64),
    /// A new polling session.
    Opened(ProtocolVersion),
    /// A long-poll GET on the live session.
    Polled,
    /// A POST to the live session.
    Pushed,
}

fn expected_outcome(case: &RequestCase, query: Option<&str>, live: Option<Sid>) -> Outcome {
    // Everything under the path is the engine's, as in Node's engine.io.
    if case.path != "/socket.io" && !case.path.starts_with("/socket.io/") {
        return Outcome::NotServed;
    }
    let pairs: Vec<(&str, &str)> = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let first = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let websocket = match first("transport") {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return Outcome::Refused(0),
    };
    let protocol = match first("EIO") {
        Some("4") => ProtocolVersion::V4,
        Some("3") if case.allow_eio3 => ProtocolVersion::V3,
        _ => return Outcome::Refused(5),
    };
    let sid_shaped = |s: &str| {
        s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let Some(sid) = first("sid") else {
        if case.method != Method::GET {
            return Outcome::Refused(2);
        }
        if websocket || case.upgrade {
            // No upgrade without a connection to take over.
            return Outcome::Refused(3);
        }
        return Outcome::Opened(protocol);
    };
    if !sid_shaped(sid) {
        return Outcome::Refused(1);
    }
    if !websocket && case.method != Method::GET && case.method != Method::POST {
        return Outcome::Refused(3);
    }
    if websocket && !case.upgrade {
        return Outcome::Refused(3);
    }
    if live.is_none_or(|live| live.as_str() != sid) {
        return Outcome::Refused(1);
    }
    if case.live != Some(protocol) || case.upgrade {
        return Outcome::Refused(3);
    }
    if case.method == Method::POST {
        Outcome::Pushed
    } else {
        Outcome::Polled
    }
}

/// An error answer: 400, JSON, `{"code": 0..=5, "message": <string>}` and nothing else.
fn error_code(answer: &Answer) -> Result<u64, TestCaseError> {
    prop_assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    prop_assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    let json: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| TestCaseError::fail(format!("{e}: {answer:?}")))?;
    let Some(object) = json.as_object() else {
        return Err(TestCaseError::fail(format!("not an object: {json}")));
    };
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    prop_assert_eq!(keys, ["code", "message"], "{}", json);
    let code = json["code"].as_u64().filter(|code| *code <= 5);
    let Some(code) = code else {
        return Err(TestCaseError::fail(format!("code 0..=5: {json}")));
    };
    let message = ERROR_MESSAGES.iter().find(|(c, _)| *c == code).map(|m| m.1);
    prop_assert_eq!(json["message"].as_str(), message, "{}", json);
    Ok(code)
}

/// The open packet of a handshake answer: the keys clients expect, for a session that exists.
fn check_opened(
    engine: &Engine,
    protocol: ProtocolVersion,
    answer: &Answer,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(answer.status, StatusCode::OK);
    prop_assert_eq!(
        answer.content_type.as_deref(),
        Some("text/plain; charset=UTF-8")
    );
    let text = answer.text();
    let packet = match protocol {
        ProtocolVersion::V4 => text.as_str(),
        ProtocolVersion::V3 => {
            let Some((length, packet)) = text.split_once(':') else {
                return Err(TestCaseError::fail(format!("no length: {text}")));
            };
            prop_assert_eq!(
                length.parse::<usize>().ok(),
                Some(packet.encode_utf16().count())
            );
            packet
        }
    };
    let Some(json) = packet.strip_prefix('0') else {
        return Err(TestCaseError::fail(format!("no open packet: {text}")));
    };
    let json: Value =
        serde_json::from_str(json).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
    let mut keys: Vec<&str> = json
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .collect();
    keys.sort_unstable();
    prop_assert_eq!(
        keys,
        [
            "maxPayload",
            "pingInterval",
            "pingTimeout",
            "sid",
            "upgrades"
        ]
    );
    prop_assert_eq!(&json["upgrades"], &serde_json::json!(["websocket"]));
    let sid = open_packet_sid(&text);
    let session = sid.and_then(|sid| engine.service.get(sid));
    prop_assert!(session.is_some(), "the session opened: {}", text);
    prop_assert_eq!(session.map(|s| s.protocol), Some(protocol));
    Ok(())
}

proptest! {
    #![proptest_config(config(ENGINE_REQUEST_CASES))]

    /// Any method, path, query and upgrade headers, for a new session or a live one: never a
    /// panic; the answer is the one the rules give (an independent model of them); every error
    /// is 400 with `{"code": 0..=5, "message"}`; a well-formed handshake GET opens a session
    /// and a refused request opens none.
    #[test]
    fn engine_requests_are_answered_or_refused(case in request_case()) {
        run(&case, async {
            let engine = Engine::new(EngineConfig {
                allow_eio3: case.allow_eio3,
                ..EngineConfig::default()
            });
            let live = match case.live {
                Some(protocol) => {
                    let sid = engine.open(protocol, false).await;
                    // Something to send, so that a long-poll GET answers at once.
                    let session = engine.service.get(sid).expect("the live session");
                    session.send("waiting".into(), &[]).expect("queued");
                    Some(sid)
                }
                None => None,
            };
            let query = case.query.as_ref().map(|query| match live {
                Some(sid) => query.replace(LIVE_SID, sid.as_str()),
                None => query.clone(),
            });
            let uri = match &query {
                Some(query) => format!("{}?{query}", case.path),
                None => case.path.to_owned(),
            };
            let mut request = Request::builder().method(case.method.clone()).uri(&uri);
            if case.upgrade {
                request = request
                    .header(UPGRADE, "websocket")
                    .header(CONNECTION, "Upgrade")
                    .header(SEC_WEBSOCKET_VERSION, "13")
                    .header(SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
            }
            let request = request.body(Body::empty());
            let request = request.map_err(|e| TestCaseError::fail(format!("{e}: {uri}")))?;
            let before = engine.service.sessions();
            let answer = engine.call(request).await;
            let after = engine.service.sessions();

            if answer.status == StatusCode::BAD_REQUEST {
                error_code(&answer)?;
            }
            match expected_outcome(&case, query.as_deref(), live) {
                Outcome::NotServed => prop_assert_eq!(answer.status, StatusCode::NOT_FOUND),
                Outcome::Refused(code) => {
                    prop_assert_eq!(error_code(&answer)?, code, "{:?}", uri);
                    prop_assert_eq!(after, before, "a refused request opens no session");
                }
                Outcome::Opened(protocol) => {
                    check_opened(&engine, protocol, &answer)?;
                    prop_assert_eq!(after, before + 1);
                }
                Outcome::Polled => {
                    prop_assert_eq!(answer.status, StatusCode::OK, "{:?}", answer);
                    prop_assert!(answer.text().contains("4waiting"), "{:?}", answer);
                }
                Outcome::Pushed => {
                    prop_assert_eq!(answer.status, StatusCode::OK, "{:?}", answer);
                    prop_assert_eq!(answer.text(), "ok");
                }
            }
            Ok(())
        })?;
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Polling payloads
// ---------------------------------------------------------------------------------------------

/// A POST body, cut into chunks as it may arrive.
#[derive(Debug, Clone)]
struct Post {
    /// An Engine.IO 3 binary payload (`application/octet-stream`).
    binary: bool,
    body: Vec<u8>,
    /// Chunk lengths; what they leave is the last chunk.
    cuts: Vec<usize>,
}

impl Post {
    fn chunks(&self) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        let mut rest = self.body.as_slice();
        for &cut in &self.cuts {
            let (chunk, after) = rest.split_at(cut.min(rest.len()));
            if !chunk.is_empty() {
                chunks.push(Bytes::copy_from_slice(chunk));
            }
            rest = after;
        }
        if !rest.is_empty() {
            chunks.push(Bytes::copy_from_slice(rest));
        }
        chunks
    }
}

/// A packet as a client encodes it in a POST (text with its `4`, binary in base64).
fn client_packet(protocol: ProtocolVersion, packet: &Received) -> String {
    match (packet, protocol) {
        (Received::Text(text), _) => format!("4{text}"),
        (Received::Binary(data), ProtocolVersion::V4) => format!("b{}", STANDARD.encode(data)),
        (Received::Binary(data), ProtocolVersion::V3) => format!("b4{}", STANDARD.encode(data)),
    }
}

/// `packets` as a client POSTs them: Engine.IO 4 joined by `\x1e`; Engine.IO 3 length-prefixed
/// text (the length in UTF-16 units), or a binary payload (type byte, one byte per digit of
/// the byte length, 0xFF).
fn client_payload(protocol: ProtocolVersion, binary: bool, packets: &[Received]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, packet) in packets.iter().enumerate() {
        match (protocol, binary) {
            (ProtocolVersion::V4, _) => {
                if i > 0 {
                    out.push(0x1e);
                }
                out.extend(client_packet(protocol, packet).bytes());
            }
            (ProtocolVersion::V3, false) => {
                let text = client_packet(protocol, packet);
                out.extend(format!("{}:{text}", text.encode_utf16().count()).bytes());
            }
            (ProtocolVersion::V3, true) => {
                let (kind, body) = match packet {
                    Received::Text(text) => (0, format!("4{text}").into_bytes()),
                    Received::Binary(data) => (1, [&[4][..], data].concat()),
                };
                out.push(kind);
                out.extend(body.len().to_string().bytes().map(|d| d - b'0'));
                out.push(0xff);
                out.extend(body);
            }
        }
    }
    out
}

/// What a POST body must deliver, by the protocol's definition (an independent model of the
/// decoders): the packets up to the first invalid one or a CLOSE.
#[derive(Debug, Default, PartialEq)]
struct Expected {
    delivered: Vec<Received>,
    end: End,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum End {
    #[default]
    Complete,
    /// The client sent CLOSE: what follows is not read.
    Closed,
    Invalid,
}

impl Expected {
    /// Take one packet's text; false when nothing after it counts.
    fn packet(&mut self, protocol: ProtocolVersion, text: &str) -> bool {
        let mut chars = text.chars();
        match chars.next() {
            Some('1') => self.end = End::Closed,
            // PING, PONG (and their probes), UPGRADE, NOOP: nothing for the handler.
            Some('2' | '3' | '5' | '6') => return true,
            Some('4') => {
                self.delivered
                    .push(Received::Text(chars.as_str().to_owned()));
                return true;
            }
            Some('b') => {
                let base64 = match protocol {
                    ProtocolVersion::V4 => Some(chars.as_str()),
                    ProtocolVersion::V3 => chars.as_str().strip_prefix('4'),
                };
                if let Some(data) = base64.and_then(|b| STANDARD.decode(b).ok()) {
                    self.delivered.push(Received::Binary(data));
                    return true;
                }
                self.end = End::Invalid;
            }
            _ => self.end = End::Invalid,
        }
        false
    }

    /// Engine.IO 4: packets separated by `\x1e` (one at the very end is allowed).
    fn v4(body: &[u8]) -> Self {
        let mut expected = Self::default();
        let mut packets: Vec<&[u8]> = body.split(|b| *b == 0x1e).collect();
        if packets.last().is_some_and(|last| last.is_empty()) {
            packets.pop();
        }
        for packet in packets {
            let Ok(text) = std::str::from_utf8(packet) else {
                expected.end = End::Invalid;
                break;
            };
            if !expected.packet(ProtocolVersion::V4, text) {
                break;
            }
        }
        expected
    }

    /// Engine.IO 3 text: `<decimal length>:<packet>`, the length in UTF-16 units of valid
    /// UTF-8 and never inside a surrogate pair; a length of 0 is an empty packet, skipped.
    fn v3_text(body: &[u8]) -> Self {
        let mut expected = Self::default();
        let mut rest = body;
        while !rest.is_empty() {
            let Some(colon) = rest.iter().position(|b| *b == b':') else {
                expected.end = End::Invalid;
                break;
            };
            let digits = &rest[..colon];
            let length = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| String::from_utf8_lossy(digits).parse::<usize>().ok())
                .flatten();
            let Some(length) = length else {
                expected.end = End::Invalid;
                break;
            };
            rest = &rest[colon + 1..];
            // Characters, then `None` where bytes are not UTF-8.
            let mut chars = rest.utf8_chunks().flat_map(|chunk| {
                let broken = (!chunk.invalid().is_empty()).then_some(None);
                chunk.valid().chars().map(Some).chain(broken)
            });
            let mut text = String::new();
            let mut units = 0;
            while units < length {
                let Some(Some(c)) = chars.next() else { break };
                units += c.len_utf16();
                text.push(c);
            }
            if units != length {
                expected.end = End::Invalid;
                break;
            }
            rest = &rest[text.len()..];
            if length > 0 && !expected.packet(ProtocolVersion::V3, &text) {
                break;
            }
        }
        expected
    }
}

/// Bytes that mean something in some payload, to build bodies from.
const TOKENS: &[&[u8]] = &[
    b"4",
    b"b",
    b"b4",
    b"1",
    b"2",
    b"3",
    b"5",
    b"6",
    b"0",
    b":",
    b"\x1e",
    b"12",
    b"3:",
    b"2probe",
    "😀".as_bytes(),
    "é".as_bytes(),
    b"\xf0\x9f",
    b"\xe9",
    b"\xff",
    b"\x00",
    b"\x01",
    b"\x09",
    b"AQID",
    b"AQ==",
    b"=",
    b"x",
    b"",
];

/// Text with the characters payloads give a meaning to, and any other.
fn packet_text(separator_allowed: bool) -> impl Strategy<Value = String> + Clone {
    let special = pick(&[
        "\x1e", ":", "1:", "4", "b", "😀", "é", "\u{ffff}", "\0", "\\",
    ]);
    vec(
        prop_oneof![2 => special, 3 => any::<char>().prop_map(String::from)],
        0..12,
    )
    .prop_map(move |parts| {
        let text = parts.concat();
        if separator_allowed {
            text
        } else {
            text.replace('\x1e', "")
        }
    })
}

/// Packets a client may send in a POST of `protocol` (no `\x1e` inside an Engine.IO 4 text).
fn client_packets(protocol: ProtocolVersion) -> impl Strategy<Value = Vec<Received>> + Clone {
    let packet = prop_oneof![
        3 => packet_text(protocol == ProtocolVersion::V3).prop_map(Received::Text),
        1 => vec(any::<u8>(), 0..24).prop_map(Received::Binary),
    ];
    vec(packet, 0..8)
}

/// A body: a client's encoding of packets, the same changed in one byte, cut short or with a
/// byte inserted, bytes built from `TOKENS`, or any bytes.
fn post_body(protocol: ProtocolVersion, binary: bool) -> impl Strategy<Value = Vec<u8>> {
    let encoded = client_packets(protocol).prop_map(move |p| client_payload(protocol, binary, &p));
    prop_oneof![
        2 => encoded.clone(),
        2 => (encoded.clone(), any::<prop::sample::Index>(), any::<u8>(), 0..3u8).prop_map(
            |(mut body, at, byte, how)| {
                let i = at.index(body.len() + 1);
                match how {
                    0 if i < body.len() => body[i] = byte,
                    1 => body.truncate(i),
                    _ => body.insert(i, byte),
                }
                body
            }
        ),
        2 => vec(select(TOKENS), 0..16).prop_map(|tokens| tokens.concat()),
        1 => vec(any::<u8>(), 0..48),
    ]
}

#[derive(Debug, Clone)]
struct PostCase {
    protocol: ProtocolVersion,
    post: Post,
    max_payload: u64,
}

fn post_case() -> impl Strategy<Value = PostCase> {
    (protocol(), prop::bool::weighted(0.3))
        .prop_flat_map(|(protocol, binary)| {
            let binary = binary && protocol == ProtocolVersion::V3;
            (
                Just(protocol),
                Just(binary),
                post_body(protocol, binary),
                vec(1usize..12, 0..6),
                prop_oneof![4 => Just(1_000_000u64), 1 => 0u64..48],
            )
        })
        .prop_map(|(protocol, binary, body, cuts, max_payload)| PostCase {
            protocol,
            post: Post { binary, body, cuts },
            max_payload,
        })
}

proptest! {
    #![proptest_config(config(POLLING_POST_CASES))]

    /// Any POST body (Engine.IO 4, Engine.IO 3 text or binary payload), in any chunks, under
    /// any `max_payload`: never a panic or a hang. For Engine.IO 4 and 3 text, the handler
    /// gets exactly the packets the model reads before the first invalid one or a CLOSE, the
    /// answer is `ok`, or 400 (code 3) when the model finds an invalid packet, and the session
    /// then ends with `ParseError`. A body over `max_payload` is 413 (or a 400 or CLOSE that
    /// came first), having delivered a prefix of the same packets.
    #[test]
    fn polling_posts_decode_as_the_protocol_says(case in post_case()) {
        run(&case, async {
            let engine = Engine::new(EngineConfig {
                max_payload: case.max_payload,
                ..EngineConfig::default()
            });
            let sid = engine.open(case.protocol, false).await;
            let answer = engine.post(sid, case.protocol, &case.post).await;
            engine.settle().await;
            let delivered = lock(&engine.recorder.received).clone();
            let closed = engine.close_reason(sid);

            // Whatever the payload: an answer the protocol knows, and a session that ended
            // for what it sent if it was refused.
            match answer.status.as_u16() {
                200 => prop_assert_eq!(answer.text(), "ok"),
                400 => prop_assert_eq!(error_code(&answer)?, 3),
                413 => {}
                _ => return Err(TestCaseError::fail(format!("{answer:?}"))),
            }
            if answer.status != StatusCode::OK {
                prop_assert_eq!(closed, Some(CloseReason::ParseError));
            }
            if case.post.binary {
                // No model of Engine.IO 3 binary payloads: the round trip checks those.
                return Ok(());
            }

            let expected = match case.protocol {
                ProtocolVersion::V4 => Expected::v4(&case.post.body),
                ProtocolVersion::V3 => Expected::v3_text(&case.post.body),
            };
            if case.post.body.len() as u64 > case.max_payload {
                prop_assert!(
                    expected.delivered.starts_with(&delivered),
                    "{:?} is no prefix of {:?}", delivered, expected
                );
                match answer.status.as_u16() {
                    413 => {}
                    400 => prop_assert_eq!(expected.end, End::Invalid),
                    _ => prop_assert_eq!(expected.end, End::Closed),
                }
                return Ok(());
            }
            prop_assert_eq!(&delivered, &expected.delivered);
            match expected.end {
                End::Complete => {
                    prop_assert_eq!(answer.status, StatusCode::OK);
                    prop_assert_eq!(closed, None);
                }
                End::Closed => {
                    prop_assert_eq!(answer.status, StatusCode::OK);
                    prop_assert_eq!(closed, Some(CloseReason::TransportClose));
                }
                End::Invalid => prop_assert_eq!(answer.status, StatusCode::BAD_REQUEST),
            }
            Ok(())
        })?;
    }
}

#[derive(Debug, Clone)]
struct RoundTrip {
    protocol: ProtocolVersion,
    /// An Engine.IO 3 client that asked for text payloads only (`b64=1`).
    base64: bool,
    /// The client POSTs an Engine.IO 3 binary payload.
    binary_post: bool,
    /// What the client POSTs.
    up: Vec<Received>,
    cuts: Vec<usize>,
    /// What the server sends.
    down: Vec<Received>,
}

fn round_trip() -> impl Strategy<Value = RoundTrip> {
    (protocol(), any::<bool>(), any::<bool>())
        .prop_flat_map(|(protocol, base64, binary_post)| {
            let v3 = protocol == ProtocolVersion::V3;
            (
                Just(protocol),
                Just(base64 && v3),
                Just(binary_post && v3),
                client_packets(protocol),
                vec(1usize..24, 0..6),
                client_packets(protocol),
            )
        })
        .prop_map(
            |(protocol, base64, binary_post, up, cuts, down)| RoundTrip {
                protocol,
                base64,
                binary_post,
                up,
                cuts,
                down,
            },
        )
}

/// Decode a polling response as a client does: a text payload by the protocol's model (which
/// cannot hang on a wrong length, as engineioxide-core's decoder can), an Engine.IO 3 binary
/// payload with engineioxide-core's decoder.
async fn client_decode(
    protocol: ProtocolVersion,
    answer: &Answer,
) -> Result<Vec<Received>, String> {
    use engineioxide_core::Packet;
    use futures_util::StreamExt;
    let Some(content_type) = answer.content_type.as_deref() else {
        return Err(format!("no content type: {answer:?}"));
    };
    if content_type != "application/octet-stream" {
        let expected = match protocol {
            ProtocolVersion::V4 => Expected::v4(&answer.body),
            ProtocolVersion::V3 => Expected::v3_text(&answer.body),
        };
        if expected.end != End::Complete {
            return Err(format!("{expected:?}: {answer:?}"));
        }
        return Ok(expected.delivered);
    }
    let content_type = http::HeaderValue::from_static("application/octet-stream");
    let packets: Vec<_> = engineioxide_core::payload::decoder(
        Body::from(answer.body.clone()),
        Some(&content_type),
        protocol,
        u64::MAX,
    )
    .collect()
    .await;
    let mut received = Vec::new();
    for packet in packets {
        match packet.map_err(|e| format!("{e}: {answer:?}"))? {
            Packet::Message(text) => received.push(Received::Text(text.to_string())),
            Packet::BinaryV3(data) => received.push(Received::Binary(data.to_vec())),
            other => return Err(format!("unexpected {other:?} in {answer:?}")),
        }
    }
    Ok(received)
}

proptest! {
    #![proptest_config(config(POLLING_ROUND_TRIP_CASES))]

    /// Packet lists of any text (with `\x1e` where the format allows it, i.e. Engine.IO 3) and
    /// binary cross a polling session both ways unchanged: POSTed as a client encodes them (in
    /// any chunks) they reach the handler in order; sent by the server they come back from its
    /// GETs (decoded by the protocol's model, or engineioxide-core's decoder for binary
    /// payloads), for Engine.IO 4, Engine.IO 3 text (`b64=1`) and binary payloads.
    #[test]
    fn polling_payloads_round_trip(case in round_trip()) {
        run(&case, async {
            let engine = Engine::new(EngineConfig::default());
            let sid = engine.open(case.protocol, case.base64).await;
            let post = Post {
                binary: case.binary_post,
                body: client_payload(case.protocol, case.binary_post, &case.up),
                cuts: case.cuts.clone(),
            };
            let answer = engine.post(sid, case.protocol, &post).await;
            prop_assert_eq!(answer.text(), "ok", "{:?}", answer);
            prop_assert_eq!(&*lock(&engine.recorder.received), &case.up);

            let session = engine.service.get(sid).expect("open");
            for packet in &case.down {
                let sent = match packet {
                    Received::Text(text) => session.send(text.clone().into(), &[]),
                    Received::Binary(data) => session.send_binary(Bytes::from(data.clone())),
                };
                sent.expect("queued");
            }
            let uri = format!(
                "/socket.io/?EIO={}&transport=polling&sid={sid}{}",
                eio(case.protocol),
                if case.base64 { "&b64=1" } else { "" }
            );
            let mut received = Vec::new();
            // A GET with nothing queued waits for the next PING: ask only while data waits.
            while received.len() < case.down.len() {
                let answer = engine.call(get(&uri)).await;
                prop_assert_eq!(answer.status, StatusCode::OK, "{:?}", answer);
                let binary = answer.content_type.as_deref() == Some("application/octet-stream");
                prop_assert!(!binary || (case.protocol == ProtocolVersion::V3 && !case.base64));
                let packets = client_decode(case.protocol, &answer).await.map_err(TestCaseError::fail)?;
                prop_assert!(!packets.is_empty(), "{:?}", answer);
                received.extend(packets);
            }
            prop_assert_eq!(received, case.down.clone());
            Ok(())
        })?;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Socket.IO packets
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Message {
    Text(String),
    Binary(Vec<u8>),
}

/// Text shaped like a Socket.IO packet: a type, an attachment count, a namespace, an ack id
/// and a payload, each valid or not.
fn packet_like() -> impl Strategy<Value = String> {
    let kind = pick(&["0", "1", "2", "3", "4", "5", "6", "7", "a", ""]);
    let attachments = prop::option::of(pick(&[
        "0-",
        "1-",
        "2-",
        "17-",
        "-",
        "1",
        "99999999999999999999-",
    ]));
    let namespace = prop::option::of(pick(&[
        "/,",
        "/custom,",
        "/custom",
        "/random,",
        "/custom?x=1,",
        "/é,",
        "//,",
        "/custom,,",
    ]));
    let ack = prop::option::of(pick(&[
        "0",
        "1",
        "42",
        "007",
        "-1",
        "9223372036854775807",
        "9223372036854775808",
    ]));
    let placeholder = (0..3u8).prop_map(|n| format!(r#"{{"_placeholder":true,"num":{n}}}"#));
    let arg = prop_oneof![3 => json_value().prop_map(|v| v.to_string()), 1 => placeholder];
    let event = (
        prop_oneof![
            2 => pick(&["message", "message-with-ack"]),
            1 => any_string(),
        ],
        vec(arg, 0..4),
    )
        .prop_map(|(name, args)| {
            let mut items = vec![Value::from(name).to_string()];
            items.extend(args);
            format!("[{}]", items.join(","))
        });
    let payload = prop_oneof![
        4 => event,
        2 => json_value().prop_map(|v| v.to_string()),
        1 => Just(String::new()),
        1 => (json_value(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            // Cut short, on a character boundary.
            let text = v.to_string();
            let cut = at.index(text.chars().count() + 1);
            text.chars().take(cut).collect()
        }),
        1 => any_string(),
    ];
    (kind, attachments, namespace, ack, payload).prop_map(|(k, a, n, i, p)| {
        format!(
            "{k}{}{}{}{p}",
            a.unwrap_or_default(),
            n.unwrap_or_default(),
            i.unwrap_or_default()
        )
    })
}

/// A packet a client may well send, with its attachments: CONNECT (with an auth object or
/// not), DISCONNECT, EVENT, ACK, BINARY_EVENT and BINARY_ACK, on `/`, `/custom` or a namespace
/// the server does not have, with the suite's event names or any.
fn valid_packet() -> impl Strategy<Value = Vec<Message>> {
    let namespace = pick(&["", "", "/custom,", "/random,", "/custom?x=1,"]);
    let ack = prop_oneof![0..1000i64, Just(i64::MAX)].prop_map(|id| id.to_string());
    let name = prop_oneof![
        3 => pick(&["message", "message-with-ack"]),
        1 => any_string(),
    ]
    .prop_map(|name| Value::from(name).to_string());
    let args = || vec(json_value().prop_map(|v| v.to_string()), 0..4);
    let placeholders = |n: usize| (0..n).map(|i| format!(r#"{{"_placeholder":true,"num":{i}}}"#));
    let binaries = |n: usize| vec(vec(any::<u8>(), 0..8).prop_map(Message::Binary), n);
    let connect = (namespace.clone(), prop::option::of(json_value())).prop_map(|(ns, auth)| {
        let auth = auth.map(|auth| match auth {
            Value::Object(_) => auth.to_string(),
            other => serde_json::json!({ "value": other }).to_string(),
        });
        vec![Message::Text(format!("0{ns}{}", auth.unwrap_or_default()))]
    });
    let disconnect = namespace
        .clone()
        .prop_map(|ns| vec![Message::Text(format!("1{ns}"))]);
    let event = (
        namespace.clone(),
        prop::option::of(ack.clone()),
        name.clone(),
        args(),
    )
        .prop_map(|(ns, ack, name, args)| {
            let items = [vec![name], args].concat().join(",");
            vec![Message::Text(format!(
                "2{ns}{}[{items}]",
                ack.unwrap_or_default()
            ))]
        });
    let reply = (namespace.clone(), ack.clone(), args())
        .prop_map(|(ns, id, args)| vec![Message::Text(format!("3{ns}{id}[{}]", args.join(",")))]);
    let binary_event = (
        1..3usize,
        namespace.clone(),
        prop::option::of(ack.clone()),
        name,
        args(),
    )
        .prop_flat_map(move |(n, ns, ack, name, args)| {
            let items = [vec![name], args, placeholders(n).collect()]
                .concat()
                .join(",");
            let header = format!("5{n}-{ns}{}[{items}]", ack.unwrap_or_default());
            (Just(Message::Text(header)), binaries(n))
        })
        .prop_map(|(header, binaries)| [vec![header], binaries].concat());
    let binary_reply = (1..3usize, namespace, ack, args())
        .prop_flat_map(move |(n, ns, id, args)| {
            let items = [args, placeholders(n).collect()].concat().join(",");
            (
                Just(Message::Text(format!("6{n}-{ns}{id}[{items}]"))),
                binaries(n),
            )
        })
        .prop_map(|(header, binaries)| [vec![header], binaries].concat());
    prop_oneof![
        3 => connect,
        1 => disconnect,
        4 => event,
        1 => reply,
        2 => binary_event,
        1 => binary_reply,
    ]
}

/// Mostly packets a client may send, otherwise packet-shaped text, any text or any bytes.
fn messages() -> impl Strategy<Value = Vec<Message>> {
    let group = prop_oneof![
        12 => valid_packet(),
        2 => packet_like().prop_map(|text| vec![Message::Text(text)]),
        1 => any_string().prop_map(|text| vec![Message::Text(text)]),
        1 => vec(any::<u8>(), 0..8).prop_map(|data| vec![Message::Binary(data)]),
    ];
    vec(group, 1..12).prop_map(|groups| groups.concat())
}

#[derive(Debug, Clone)]
struct SocketIoCase {
    protocol: ProtocolVersion,
    messages: Vec<Message>,
}

/// Whether a packet the server sent is one a client can read: CONNECT_ERROR as
/// `4[/ns,]{"message": <string>}` (the common parser reads only what clients send), anything
/// else through socketioxide-parser-common's decoder with exactly its attachments, and a
/// payload of the shape its type requires, on the suite's namespaces.
fn check_sent(text: &str, attachments: &[Bytes]) -> Result<(), TestCaseError> {
    if let Some(rest) = text.strip_prefix('4') {
        let json = match rest.strip_prefix('/') {
            Some(_) => rest.split_once(',').map(|(_, json)| json),
            None => Some(rest),
        };
        let json: Option<Value> = json.and_then(|json| serde_json::from_str(json).ok());
        let message = json
            .as_ref()
            .and_then(|j| j.get("message"))
            .and_then(Value::as_str);
        prop_assert!(message.is_some(), "{:?}", text);
        prop_assert!(attachments.is_empty());
        return Ok(());
    }
    let config = ParseConfig::default();
    let state = ParserState::default();
    let mut decoded = CommonParser.decode_str(&config, &state, Str::from(text.to_owned()));
    for (i, attachment) in attachments.iter().enumerate() {
        prop_assert!(
            matches!(decoded, Err(ParseError::NeedsMoreBinaryData)),
            "{:?} wants fewer than {} attachments: {:?}",
            text,
            attachments.len(),
            i
        );
        decoded = CommonParser.decode_bin(&config, &state, attachment.clone());
    }
    let packet = decoded.map_err(|e| TestCaseError::fail(format!("{text:?}: {e:?}")))?;
    prop_assert!(["/", "/custom"].contains(&&*packet.ns), "{:?}", text);
    let json = |value: &SioValue| -> Result<Value, TestCaseError> {
        let text = value.as_str().ok_or_else(|| TestCaseError::fail("text"))?;
        serde_json::from_str(text.as_str())
            .map_err(|e| TestCaseError::fail(format!("{e}: {text:?}")))
    };
    match &packet.inner {
        PacketData::Connect(None) | PacketData::Disconnect => {}
        PacketData::Connect(Some(auth)) => prop_assert!(json(auth)?.is_object(), "{:?}", text),
        PacketData::Event(payload, _) | PacketData::BinaryEvent(payload, _) => {
            let payload = json(payload)?;
            let name = payload.as_array().and_then(|items| items.first());
            prop_assert!(name.is_some_and(Value::is_string), "{:?}", text);
        }
        PacketData::EventAck(payload, _) | PacketData::BinaryAck(payload, _) => {
            prop_assert!(json(payload)?.is_array(), "{:?}", text);
        }
        PacketData::ConnectError(_) => return Err(TestCaseError::fail("decoded CONNECT_ERROR")),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(SOCKETIO_MESSAGES_CASES))]

    /// Any sequence of text and binary messages, packet-shaped or not, to the socket.io-protocol
    /// suite's server (echoes and acks on `/`, `/custom`), protocol 5 or 4: never a panic; the
    /// session is still open or closed for `ParseError` (`ServerClose`: no namespace); every
    /// packet sent back is well-formed.
    #[test]
    fn socketio_sessions_take_any_messages(
        protocol in protocol(),
        messages in messages(),
    ) {
        let case = SocketIoCase { protocol, messages };
        run(&case, async {
            let io = suite::io(Duration::from_secs(60));
            let client = Client::open_with(&io, case.protocol, usize::MAX);
            for message in &case.messages {
                if client.closed().is_some() {
                    // The engine delivers nothing to a closed session.
                    break;
                }
                match message {
                    Message::Text(text) => client.send(text),
                    Message::Binary(data) => client.send_binary(data),
                }
            }
            let closed = client.closed();
            prop_assert!(
                matches!(closed, None | Some(CloseReason::ParseError | CloseReason::ServerClose)),
                "{:?}", closed
            );
            for (text, attachments) in client.packets() {
                check_sent(&text, &attachments)?;
            }
            client.end(CloseReason::TransportClose);
            Ok(())
        })?;
    }
}

/// What a namespace handler saw.
#[derive(Default)]
struct Seen {
    connects: Mutex<Vec<(String, Option<String>)>>,
    events: Mutex<Vec<SeenEvent>>,
}

#[derive(Debug, Clone, PartialEq)]
struct SeenEvent {
    namespace: String,
    name: String,
    /// The arguments' JSON text, as `Args::json`.
    args: String,
    /// The same, deserialised.
    values: Vec<Value>,
    attachments: Vec<Bytes>,
    ack: bool,
}

impl NamespaceHandler for Seen {
    fn connect(&self, handshake: Handshake) -> ConnectFuture {
        let namespace = handshake.socket.namespace().path().to_owned();
        let auth = handshake.auth().map(str::to_owned);
        lock(&self.connects).push((namespace, auth));
        Box::pin(std::future::ready(Ok(())))
    }

    fn on_event(&self, socket: &Socket, event: Event) {
        let seen = SeenEvent {
            namespace: socket.namespace().path().to_owned(),
            name: event.name.to_string(),
            args: event.args.json().to_owned(),
            values: event.args.deserialize().unwrap_or_default(),
            attachments: event.args.attachments().to_vec(),
            ack: event.ack.is_some(),
        };
        lock(&self.events).push(seen);
    }
}

/// One argument of an event: JSON, or binary (sent as an attachment).
#[derive(Debug, Clone)]
enum Arg {
    Json(Value),
    Binary(Vec<u8>),
}

#[derive(Debug, Clone)]
struct ClientEvent {
    custom: bool,
    name: String,
    args: Vec<Arg>,
    ack: Option<i64>,
}

impl ClientEvent {
    fn namespace(&self) -> &'static str {
        if self.custom { "/custom" } else { "/" }
    }

    /// The packet text and its attachments, as socket.io-client encodes them.
    fn encode(&self) -> (String, Vec<Bytes>, Vec<Value>) {
        let mut attachments = Vec::new();
        let mut values = Vec::new();
        for arg in &self.args {
            values.push(match arg {
                Arg::Json(value) => value.clone(),
                Arg::Binary(data) => {
                    attachments.push(Bytes::from(data.clone()));
                    serde_json::json!({"_placeholder": true, "num": attachments.len() - 1})
                }
            });
        }
        let mut items = vec![Value::from(self.name.clone())];
        items.extend(values.iter().cloned());
        let kind = match attachments.len() {
            0 => "2".to_owned(),
            n => format!("5{n}-"),
        };
        let namespace = if self.custom { "/custom," } else { "" };
        let ack = self.ack.map(|id| id.to_string()).unwrap_or_default();
        let text = format!("{kind}{namespace}{ack}{}", Value::Array(items));
        (text, attachments, values)
    }
}

fn client_event() -> impl Strategy<Value = ClientEvent> {
    let arg = prop_oneof![
        4 => json_value().prop_map(Arg::Json),
        1 => vec(any::<u8>(), 0..8).prop_map(Arg::Binary),
    ];
    (
        any::<bool>(),
        any_string(),
        vec(arg, 0..5),
        prop::option::of(prop_oneof![0..1000i64, Just(i64::MAX)]),
    )
        .prop_map(|(custom, name, args, ack)| ClientEvent {
            custom,
            name,
            args,
            ack,
        })
}

#[derive(Debug, Clone)]
struct EventsCase {
    protocol: ProtocolVersion,
    /// Connect to `/custom` too (`/` is always joined).
    custom: bool,
    /// The CONNECT auth payloads (protocol 5).
    auth: Option<serde_json::Map<String, Value>>,
    events: Vec<ClientEvent>,
}

fn events_case() -> impl Strategy<Value = EventsCase> {
    let auth = prop::option::of(
        prop::collection::btree_map(any_string(), json_value(), 0..4)
            .prop_map(|map| map.into_iter().collect()),
    );
    (protocol(), any::<bool>(), auth, vec(client_event(), 0..6)).prop_map(
        |(protocol, custom, auth, events)| EventsCase {
            protocol,
            custom,
            auth,
            events,
        },
    )
}

proptest! {
    #![proptest_config(config(SOCKETIO_EVENTS_CASES))]

    /// Valid CONNECT and EVENT packets built from their parts (namespace `/` or `/custom`, an
    /// auth object, any event name, JSON and binary arguments, an ack id or none), protocol 5
    /// or 4: each CONNECT is answered and its handler sees the same auth; the handler of a
    /// connected namespace sees every event with the same name, the same arguments (the JSON
    /// text exactly as sent, the values, the attachments in order) and whether it wants an
    /// ack; an event to a namespace not joined is dropped; the session stays open.
    #[test]
    fn socketio_events_reach_their_handler_intact(case in events_case()) {
        run(&case, async {
            let seen = Arc::new(Seen::default());
            let io = Io::new(IoConfig {
                connect_timeout: Duration::from_secs(60),
                ..IoConfig::default()
            });
            io.add_namespace("/", seen.clone()).expect("new");
            io.add_namespace("/custom", seen.clone()).expect("new");
            let client = Client::open_with(&io, case.protocol, usize::MAX);
            let auth = case.auth.as_ref().map(|auth| Value::Object(auth.clone()).to_string());
            let mut expected_connects = Vec::new();
            match case.protocol {
                ProtocolVersion::V4 => {
                    client.send(&format!("0{}", auth.clone().unwrap_or_default()));
                    connect_reply_sid(&client.texts()[0], "/");
                    expected_connects.push(("/".to_owned(), auth.clone()));
                }
                ProtocolVersion::V3 => {
                    // Joined `/` on open.
                    prop_assert_eq!(client.texts(), ["0"]);
                    expected_connects.push(("/".to_owned(), None));
                }
            }
            if case.custom {
                client.send("0/custom,");
                let reply = &client.texts()[0];
                match case.protocol {
                    ProtocolVersion::V4 => {
                        connect_reply_sid(reply, "/custom");
                    }
                    ProtocolVersion::V3 => prop_assert_eq!(reply, "0/custom,"),
                }
                expected_connects.push(("/custom".to_owned(), None));
            }
            prop_assert_eq!(&*lock(&seen.connects), &expected_connects);

            let mut expected = Vec::new();
            for event in &case.events {
                let (text, attachments, values) = event.encode();
                client.send(&text);
                for attachment in &attachments {
                    client.send_binary(attachment);
                }
                if !event.custom || case.custom {
                    let args = values.iter().map(Value::to_string).collect::<Vec<_>>().join(",");
                    let values = serde_json::from_str(&format!("[{args}]")).expect("JSON");
                    expected.push(SeenEvent {
                        namespace: event.namespace().to_owned(),
                        name: event.name.clone(),
                        args,
                        values,
                        attachments,
                        ack: event.ack.is_some(),
                    });
                }
            }
            prop_assert_eq!(client.closed(), None);
            prop_assert_eq!(&*lock(&seen.events), &expected);
            client.end(CloseReason::TransportClose);
            Ok(())
        })?;
    }
}
