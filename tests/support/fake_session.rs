//! A fake Engine.IO session for the Socket.IO layer's tests (`socketio.rs`, `fuzz_layer.rs`):
//! it records what it is asked to send and how it was closed, and a [`Client`] on it plays
//! the engine's part. Included with `#[path]`; each file uses part of it.
#![allow(dead_code, reason = "each test file uses part of it")]

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use frappe_realtime::socketio::{
    CloseReason, Io, ProtocolVersion, SendError, SendErrorKind, SessionState, Sid, Str, Transport,
    TransportType,
};

pub struct Fake {
    id: Sid,
    protocol: ProtocolVersion,
    request: http::request::Parts,
    state: SessionState,
    /// Packets it takes before its queue is full.
    capacity: usize,
    sent: Mutex<Vec<(Str, Vec<Bytes>)>>,
    closed: Mutex<Option<CloseReason>>,
}

impl Transport for Fake {
    fn id(&self) -> Sid {
        self.id
    }

    fn protocol(&self) -> ProtocolVersion {
        self.protocol
    }

    fn transport_type(&self) -> TransportType {
        TransportType::Websocket
    }

    fn send(&self, text: Str, attachments: &[Bytes]) -> Result<(), SendError> {
        let error = |kind| SendError { sid: self.id, kind };
        if lock(&self.closed).is_some() {
            return Err(error(SendErrorKind::Closed));
        }
        let mut sent = lock(&self.sent);
        if sent.len() >= self.capacity {
            return Err(error(SendErrorKind::QueueFull {
                limit: self.capacity,
            }));
        }
        sent.push((text, attachments.to_vec()));
        Ok(())
    }

    fn send_burst(&self, groups: &[(Str, &[Bytes])]) -> Result<(), SendError> {
        if lock(&self.closed).is_some() {
            return Err(SendError {
                sid: self.id,
                kind: SendErrorKind::Closed,
            });
        }
        let mut sent = lock(&self.sent);
        sent.extend(
            groups
                .iter()
                .map(|(text, attachments)| (text.clone(), attachments.to_vec())),
        );
        Ok(())
    }

    fn close(&self, reason: CloseReason) {
        lock(&self.closed).get_or_insert(reason);
    }

    fn request(&self) -> &http::request::Parts {
        &self.request
    }

    fn state(&self) -> &SessionState {
        &self.state
    }
}

pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A client on a fake session, playing the engine's part: it feeds the session's packets to
/// the `Io` and reports the session's end to it once, as the engine does.
pub struct Client {
    io: Io,
    transport: Arc<Fake>,
    /// How many of the sent packets the test has read.
    read: Mutex<usize>,
    reported_close: Mutex<bool>,
}

impl Client {
    pub fn open(io: &Io) -> Self {
        Self::open_with(io, ProtocolVersion::V4, usize::MAX)
    }

    pub fn open_with(io: &Io, protocol: ProtocolVersion, capacity: usize) -> Self {
        let transport = Arc::new(Fake {
            id: Sid::new(),
            protocol,
            request: http::Request::new(()).into_parts().0,
            state: SessionState::default(),
            capacity,
            sent: Mutex::new(Vec::new()),
            closed: Mutex::new(None),
        });
        io.on_open(&transport);
        let client = Self {
            io: io.clone(),
            transport,
            read: Mutex::new(0),
            reported_close: Mutex::new(false),
        };
        client.report_close();
        client
    }

    pub fn sid(&self) -> Sid {
        self.transport.id
    }

    pub fn send(&self, text: &str) {
        self.io
            .on_message(&self.transport, Str::from(text.to_owned()));
        self.report_close();
    }

    pub fn send_binary(&self, data: &[u8]) {
        self.io
            .on_binary(&self.transport, Bytes::copy_from_slice(data));
        self.report_close();
    }

    /// The engine's `on_close`, once, after the session was closed by this layer.
    pub fn report_close(&self) {
        if let Some(reason) = self.closed() {
            self.end(reason);
        }
    }

    /// The session ends (the engine's `on_close`), once.
    pub fn end(&self, reason: CloseReason) {
        let mut reported = lock(&self.reported_close);
        if !*reported {
            *reported = true;
            lock(&self.transport.closed).get_or_insert(reason);
            self.io.on_close(&self.transport, reason);
        }
    }

    pub fn closed(&self) -> Option<CloseReason> {
        *lock(&self.transport.closed)
    }

    /// The packets sent since the last call, with their attachments.
    pub fn packets(&self) -> Vec<(String, Vec<Bytes>)> {
        let sent = lock(&self.transport.sent);
        let mut read = lock(&self.read);
        let new = sent[*read..]
            .iter()
            .map(|(text, attachments)| (text.to_string(), attachments.clone()))
            .collect();
        *read = sent.len();
        new
    }

    /// The texts sent since the last call.
    pub fn texts(&self) -> Vec<String> {
        self.packets().into_iter().map(|(text, _)| text).collect()
    }

    /// Every text sent, as shared buffers (for pointer comparisons).
    pub fn raw_sent(&self) -> Vec<Str> {
        let sent = lock(&self.transport.sent);
        sent.iter().map(|(text, _)| text.clone()).collect()
    }

    /// Connect to `namespace` and read the reply; returns the socket id it names.
    pub fn connect(&self, namespace: &str) -> String {
        let packet = match namespace {
            "/" => "0".to_owned(),
            custom => format!("0{custom},"),
        };
        self.send(&packet);
        let texts = self.texts();
        let reply = texts.first().expect("a CONNECT reply");
        connect_reply_sid(reply, namespace)
    }
}

/// The socket id of a protocol 5 CONNECT reply, checking that it carries exactly `sid`.
pub fn connect_reply_sid(reply: &str, namespace: &str) -> String {
    let prefix = match namespace {
        "/" => "0".to_owned(),
        custom => format!("0{custom},"),
    };
    let payload = reply
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{reply:?} is no CONNECT reply on {namespace}"));
    let payload: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(payload).expect("a JSON object");
    assert_eq!(payload.keys().collect::<Vec<_>>(), ["sid"], "{reply}");
    payload["sid"].as_str().expect("a string sid").to_owned()
}
