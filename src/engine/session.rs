//! One Engine.IO session: what it keeps of its request, its bounded out-queue, and how it ends.
//!
//! The queue is bounded in packets *and* bytes. An overflow is an error that names the
//! session, and the engine cuts that session at once as a slow consumer: a client that does
//! not keep up is told to reconnect and resync, rather than silently missing packets.
//!
//! Only data goes through the queue. PING, PONG, NOOP and CLOSE are out of band (the
//! transport writes them from flags and its own timers), so a full queue can neither fail a
//! heartbeat nor hold up a close: [`Session::close`] needs no room anywhere.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;
use engineioxide_core::{ProtocolVersion, Sid, Str, TransportType};
use http::request::Parts;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

use super::heartbeat::Heartbeat;

/// Why a session ended, as [`EngineHandler::on_close`](super::EngineHandler::on_close) hears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed it: a CLOSE packet, a websocket close, or its connection ended.
    TransportClose,
    /// The connection failed: an I/O or websocket protocol error.
    TransportError,
    /// The client missed a PONG (v4) or its PING (v3).
    PingTimeout,
    /// The client sent a packet the protocol or the size limit refuses.
    ParseError,
    /// A second GET came while one was waiting (the polling protocol allows one at a time).
    MultiplePolling,
    /// The client does not take what is sent to it fast enough.
    SlowConsumer(SlowReason),
    /// The layer above closed it.
    ServerClose,
    /// The server is shutting down.
    ServerShutdown,
}

/// How a slow consumer was noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowReason {
    /// Its queue held `max_queued_packets` packets.
    QueueFull,
    /// `max_queued_bytes` bytes were queued since its transport last took some.
    TooManyBytes,
    /// Data waited and its transport took none for `stall_timeout`.
    Stalled,
}

/// A send that was refused, naming the session (a broadcast sends to many).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session {sid}: {kind}")]
pub struct SendError {
    pub sid: Sid,
    pub kind: SendErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendErrorKind {
    /// The queue holds `limit` packets; the session was cut as a slow consumer.
    #[error("{limit} packets queued, cut as a slow consumer")]
    QueueFull { limit: usize },
    /// More than `limit` bytes would have been queued since the transport last took some;
    /// the session was cut as a slow consumer.
    #[error("more than {limit} bytes queued, cut as a slow consumer")]
    TooManyBytes { limit: usize },
    /// The session is closed (or closing).
    #[error("closed")]
    Closed,
}

/// One queued Engine.IO data packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Frame {
    /// A message packet's text, without the leading `4`.
    Text(Str),
    /// A binary packet's data.
    Binary(Bytes),
}

impl Frame {
    pub fn len(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Binary(data) => data.len(),
        }
    }
}

/// The bounds of one session's queue.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub packets: usize,
    pub bytes: usize,
}

/// A session's data packets in order, with their total size.
#[derive(Debug, Default)]
pub(super) struct Queue {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// Bytes queued since the websocket's connection stopped taking bytes: what the byte
    /// bound limits. A client that reads, however slowly, is held by the packet bound alone;
    /// one whose connection stopped is cut once this much waits for it.
    backlog: usize,
    /// Since when data has waited in the queue for a transport to take some.
    waiting_since: Option<Instant>,
    /// Packets of a burst (see [`Queue::push_burst`]) still counted outside the packet
    /// bound: one fewer for every packet the transport takes, down to none.
    allowance: usize,
}

/// Past this many slots an emptied queue gives its memory back: an idle session should not
/// keep what one burst needed.
const KEEP_CAPACITY: usize = 4;

impl Queue {
    /// Append a group (a text packet and its attachments, or one binary packet) whole or not
    /// at all, so a receiver never gets half of one. Returns whether the queue was empty.
    fn push(
        &mut self,
        text: Option<Str>,
        binaries: &[Bytes],
        limits: Limits,
        stalled: bool,
    ) -> Result<bool, SendErrorKind> {
        let packets = usize::from(text.is_some()) + binaries.len();
        let bytes = text.as_ref().map_or(0, |text| text.len())
            + binaries.iter().map(Bytes::len).sum::<usize>();
        if self.frames.len() + packets > limits.packets + self.allowance {
            return Err(SendErrorKind::QueueFull {
                limit: limits.packets,
            });
        }
        if !stalled {
            self.backlog = 0;
        } else if self.backlog.saturating_add(bytes) > limits.bytes {
            return Err(SendErrorKind::TooManyBytes {
                limit: limits.bytes,
            });
        }
        let was_empty = self.frames.is_empty();
        self.frames.extend(text.map(Frame::Text));
        self.frames
            .extend(binaries.iter().cloned().map(Frame::Binary));
        self.bytes += bytes;
        if stalled {
            self.backlog += bytes;
        }
        if was_empty {
            self.waiting_since = Some(Instant::now());
        }
        Ok(was_empty)
    }

    /// Append a burst the server itself decided to send (a recovery's replay), whole and
    /// outside the packet bound: a reading client drains it, and what is published after it
    /// still has the whole bound. Returns whether the queue was empty.
    fn push_burst(&mut self, groups: &[(Str, &[Bytes])]) -> bool {
        let was_empty = self.frames.is_empty();
        for (text, binaries) in groups {
            self.bytes += text.len() + binaries.iter().map(Bytes::len).sum::<usize>();
            self.allowance += 1 + binaries.len();
            self.frames.push_back(Frame::Text(text.clone()));
            self.frames
                .extend(binaries.iter().cloned().map(Frame::Binary));
        }
        if was_empty && !self.frames.is_empty() {
            self.waiting_since = Some(Instant::now());
        }
        was_empty
    }

    /// The next packet for the transport, if it is no larger than `budget` bytes or `force`
    /// (a transport always takes at least one packet, however large).
    pub fn pop_within(&mut self, budget: usize, force: bool) -> Option<Frame> {
        if !force && self.frames.front()?.len() > budget {
            return None;
        }
        let frame = self.frames.pop_front()?;
        self.bytes -= frame.len();
        self.allowance = self.allowance.saturating_sub(1);
        if self.frames.is_empty() && self.frames.capacity() > KEEP_CAPACITY {
            self.frames = VecDeque::new();
        }
        Some(frame)
    }

    /// A transport took what it will take for now: what is left starts waiting anew.
    pub fn taken(&mut self, now: Instant) {
        self.waiting_since = (!self.frames.is_empty()).then_some(now);
    }

    pub fn waiting_since(&self) -> Option<Instant> {
        self.waiting_since
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Where an upgrade to websocket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Upgrade {
    None,
    /// A websocket naming this session is open; it has not probed yet.
    Attached,
    /// The websocket answered `2probe`: GETs end at once with NOOP until `5` completes it.
    Probed,
}

/// What a polling session needs besides the queue (`None` on a websocket).
#[derive(Debug)]
pub(super) struct Polling {
    pub heartbeat: Heartbeat,
    /// A PING (v4) waits for the next GET.
    pub ping_due: bool,
    /// A PONG (v3, answering the client's PING) waits for the next GET.
    pub pong_due: bool,
    /// A GET is waiting for something to send.
    pub poller: bool,
}

#[derive(Debug)]
pub(super) struct State {
    pub transport: TransportType,
    pub upgrade: Upgrade,
    pub closing: Option<CloseReason>,
    pub queue: Queue,
    pub polling: Option<Polling>,
}

/// One Engine.IO session. The layer above holds it as `Arc<Session<D>>`, with its own
/// per-session data inline in `data`.
pub struct Session<D> {
    pub id: Sid,
    pub protocol: ProtocolVersion,
    pub data: D,
    request: Parts,
    limits: Limits,
    /// The websocket's connection refused bytes at its last write (its task holds the
    /// connection, the queue is here).
    stalled: AtomicBool,
    state: Mutex<State>,
    /// Wakes whoever waits on this session's transport side (the websocket task, a GET, the
    /// polling driver) when data arrives in an empty queue or the session changes state.
    wake: Notify,
    registry: Weak<Registry<D>>,
}

impl<D> fmt::Debug for Session<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl<D> Session<D> {
    pub(super) fn new(
        id: Sid,
        protocol: ProtocolVersion,
        data: D,
        request: Parts,
        limits: Limits,
        polling: Option<Polling>,
        registry: Weak<Registry<D>>,
    ) -> Self {
        let transport = match polling {
            Some(_) => TransportType::Polling,
            None => TransportType::Websocket,
        };
        Self {
            id,
            protocol,
            data,
            request,
            limits,
            stalled: AtomicBool::new(false),
            state: Mutex::new(State {
                transport,
                upgrade: Upgrade::None,
                closing: None,
                queue: Queue::default(),
                polling,
            }),
            wake: Notify::new(),
            registry,
        }
    }

    /// Polling, or websocket once an upgrade completed (or when it opened on one).
    pub fn transport(&self) -> TransportType {
        self.state().transport
    }

    /// The request that opened the session: method, URI, the headers
    /// [`EngineConfig::session_headers`](super::EngineConfig::session_headers) lists, and its
    /// extensions (the peer's address, `ConnectInfo`, among them).
    pub fn request(&self) -> &Parts {
        &self.request
    }

    /// Queue a text packet (without the leading `4`) and its binary attachments as one group:
    /// nothing else gets between them. Never blocks. When the group does not fit, the session
    /// is cut as a slow consumer and the error says which bound it hit.
    pub fn send(&self, text: Str, attachments: &[Bytes]) -> Result<(), SendError> {
        self.push(Some(text), attachments)
    }

    /// Queue a burst of groups the server chose to send at once (a recovery's replay), whole
    /// and outside the packet bound (see `Queue::push_burst`); only a closed session refuses.
    pub fn send_burst(&self, groups: &[(Str, &[Bytes])]) -> Result<(), SendError> {
        let was_empty = {
            let mut state = self.state();
            if state.closing.is_some() {
                return Err(SendError {
                    sid: self.id,
                    kind: SendErrorKind::Closed,
                });
            }
            state.queue.push_burst(groups)
        };
        if was_empty {
            self.wake.notify_waiters();
        }
        Ok(())
    }

    /// Queue one raw Engine.IO binary packet (what an echo of a client's binary sends).
    pub fn send_binary(&self, data: Bytes) -> Result<(), SendError> {
        self.push(None, std::slice::from_ref(&data))
    }

    /// Close the session with `reason`. Needs no room in the queue: what is queued is
    /// dropped, the transport sends CLOSE where it still can, and `on_close` runs once, from
    /// the session's own task (never from inside this call, so the caller may hold locks
    /// the handler takes). Closing a closed session does nothing.
    pub fn close(&self, reason: CloseReason) {
        let lingers = {
            let mut state = self.state();
            if state.closing.is_some() {
                return;
            }
            state.closing = Some(reason);
            state.queue.clear();
            // A client that POSTs CLOSE often sends its next GET at the same moment; if that
            // GET comes second it must still find the session, and be told it ended (NOOP),
            // not that it never existed (400). Such a session stays known until that GET or
            // its task's grace period (see `polling::drive`) forgets it.
            reason == CloseReason::TransportClose
                && state
                    .polling
                    .as_ref()
                    .is_some_and(|polling| !polling.poller)
        };
        tracing::debug!(sid = %self.id, ?reason, "engine.io session closed");
        if !lingers {
            self.forget();
        }
        self.wake.notify_waiters();
    }

    /// Remove the session from the engine's table: requests naming it get 400 from now on.
    pub(super) fn forget(&self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.remove(self.id);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state().closing.is_some()
    }

    /// What the queue holds: packets and bytes.
    pub fn queued(&self) -> (usize, usize) {
        let state = self.state();
        (state.queue.frames.len(), state.queue.bytes)
    }

    fn push(&self, text: Option<Str>, binaries: &[Bytes]) -> Result<(), SendError> {
        let pushed = {
            let mut state = self.state();
            if state.closing.is_some() {
                Err(SendErrorKind::Closed)
            } else {
                let stalled = self.stalled.load(Ordering::Relaxed);
                state.queue.push(text, binaries, self.limits, stalled)
            }
        };
        match pushed {
            Ok(was_empty) => {
                // A transport that found data waiting takes it without being woken.
                if was_empty {
                    self.wake.notify_waiters();
                }
                Ok(())
            }
            Err(kind) => {
                match kind {
                    SendErrorKind::QueueFull { .. } => {
                        self.close(CloseReason::SlowConsumer(SlowReason::QueueFull));
                    }
                    SendErrorKind::TooManyBytes { .. } => {
                        self.close(CloseReason::SlowConsumer(SlowReason::TooManyBytes));
                    }
                    SendErrorKind::Closed => {}
                }
                Err(SendError { sid: self.id, kind })
            }
        }
    }

    /// The session's state, locked. A panic elsewhere while it was held leaves nothing half
    /// done that matters here, so a poisoned lock is used as it is.
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A wake-up to wait for. Enable it (`Notified::enable`) *before* looking at the state,
    /// so a change made between the look and the wait is not missed.
    pub(super) fn woken(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Wake whoever waits on this session (its state changed).
    pub(super) fn wake(&self) {
        self.wake.notify_waiters();
    }

    pub(super) fn close_reason(&self) -> Option<CloseReason> {
        self.state().closing
    }
}

/// Where a websocket's connection reports whether it takes bytes: the queue's byte bound
/// applies only while it does not.
pub(super) trait Written: Send + Sync {
    /// A write found the connection full (`true`) or took bytes (`false`).
    fn stalled(&self, stalled: bool);
}

impl<D: Send + Sync> Written for Session<D> {
    fn stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Relaxed);
    }
}

/// The live sessions of one engine, by id.
pub(super) struct Registry<D> {
    sessions: Mutex<HashMap<Sid, Arc<Session<D>>>>,
}

impl<D> Default for Registry<D> {
    fn default() -> Self {
        Self {
            sessions: Mutex::default(),
        }
    }
}

impl<D> Registry<D> {
    fn map(&self) -> MutexGuard<'_, HashMap<Sid, Arc<Session<D>>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn insert(&self, session: Arc<Session<D>>) {
        self.map().insert(session.id, session);
    }

    pub fn get(&self, sid: Sid) -> Option<Arc<Session<D>>> {
        self.map().get(&sid).cloned()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn all(&self) -> Vec<Arc<Session<D>>> {
        self.map().values().cloned().collect()
    }

    fn remove(&self, sid: Sid) {
        self.map().remove(&sid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        packets: 3,
        bytes: 10,
    };

    fn session(registry: &Arc<Registry<()>>) -> Arc<Session<()>> {
        let (parts, ()) = http::Request::new(()).into_parts();
        let session = Arc::new(Session::new(
            Sid::new(),
            ProtocolVersion::V4,
            (),
            parts,
            LIMITS,
            None,
            Arc::downgrade(registry),
        ));
        registry.insert(session.clone());
        session
    }

    #[test]
    fn a_full_queue_refuses_naming_the_session_and_cuts_it() {
        let registry = Arc::default();
        let session = session(&registry);
        session.send("a".into(), &[]).expect("1");
        session
            .send("b".into(), &[Bytes::from_static(b"c")])
            .expect("2 and 3");
        let error = session.send("d".into(), &[]).expect_err("a 4th packet");
        assert_eq!(error.sid, session.id);
        assert_eq!(error.kind, SendErrorKind::QueueFull { limit: 3 });
        assert!(
            error
                .to_string()
                .starts_with(&format!("session {}: ", session.id))
        );
        assert_eq!(
            session.close_reason(),
            Some(CloseReason::SlowConsumer(SlowReason::QueueFull))
        );
        assert_eq!(registry.len(), 0, "a cut session is gone at once");
        assert_eq!(
            session.queued(),
            (0, 0),
            "and what it had queued is dropped"
        );
    }

    #[test]
    fn too_many_bytes_refuses_the_whole_group() {
        let registry = Arc::default();
        let session = session(&registry);
        session.stalled(true);
        session.send("12345".into(), &[]).expect("5 bytes");
        let error = session
            .send("12".into(), &[Bytes::from_static(b"1234")])
            .expect_err("11 bytes in all");
        assert_eq!(error.kind, SendErrorKind::TooManyBytes { limit: 10 });
        assert_eq!(
            session.close_reason(),
            Some(CloseReason::SlowConsumer(SlowReason::TooManyBytes))
        );
    }

    #[test]
    fn the_byte_bound_counts_only_while_the_connection_takes_no_bytes() {
        let mut queue = Queue::default();
        let limits = Limits {
            packets: 100,
            bytes: 10,
        };
        let mut push =
            |text: &'static str, stalled| queue.push(Some(text.into()), &[], limits, stalled);
        push("1234567", false).expect("7 bytes while it takes bytes");
        push("123456", true).expect("6 bytes since it stalled");
        push("1234", false).expect("it takes bytes again");
        push("123456", true).expect("6 bytes since it stalled again");
        assert_eq!(
            push("12345", true),
            Err(SendErrorKind::TooManyBytes { limit: 10 })
        );
    }

    #[test]
    fn a_burst_is_queued_whole_and_leaves_the_packet_bound_to_what_follows() {
        let mut queue = Queue::default();
        let limits = Limits {
            packets: 3,
            bytes: 1000,
        };
        let replay: Vec<(Str, &[Bytes])> = (0..5).map(|_| (Str::from("r"), &[][..])).collect();
        assert!(queue.push_burst(&replay), "the queue was empty");
        let push = |queue: &mut Queue| queue.push(Some("live".into()), &[], limits, false);
        for _ in 0..3 {
            push(&mut queue).expect("the whole bound is left after a burst");
        }
        assert_eq!(push(&mut queue), Err(SendErrorKind::QueueFull { limit: 3 }));
        for _ in 0..5 {
            assert!(queue.pop_within(100, false).is_some());
        }
        assert_eq!(
            push(&mut queue),
            Err(SendErrorKind::QueueFull { limit: 3 }),
            "once the burst is taken, the bound is the bound again"
        );
        assert!(queue.pop_within(100, false).is_some());
        push(&mut queue).expect("room again");
    }

    #[test]
    fn close_needs_no_room_in_a_full_queue_and_happens_once() {
        let registry = Arc::default();
        let session = session(&registry);
        for text in ["a", "b", "c"] {
            session.send(text.into(), &[]).expect("fits");
        }
        assert_eq!(session.queued(), (3, 3));
        session.close(CloseReason::ServerClose);
        session.close(CloseReason::PingTimeout);
        assert_eq!(session.close_reason(), Some(CloseReason::ServerClose));
        assert!(session.is_closed());
        assert_eq!(
            session.send("x".into(), &[]).map_err(|e| e.kind),
            Err(SendErrorKind::Closed)
        );
    }

    #[test]
    fn the_transport_takes_within_a_budget_but_always_one() {
        let mut queue = Queue::default();
        let limits = Limits {
            packets: 10,
            bytes: 100,
        };
        assert_eq!(
            queue.push(Some("0123456789".into()), &[], limits, true),
            Ok(true)
        );
        assert_eq!(queue.push(Some("ab".into()), &[], limits, true), Ok(false));
        assert_eq!(queue.pop_within(5, false), None);
        assert_eq!(
            queue.pop_within(5, true),
            Some(Frame::Text("0123456789".into()))
        );
        assert_eq!(queue.pop_within(5, false), Some(Frame::Text("ab".into())));
        assert_eq!(queue.pop_within(5, true), None);
        assert_eq!((queue.frames.len(), queue.bytes), (0, 0));
    }

    #[test]
    fn an_emptied_queue_gives_back_the_memory_of_a_burst() {
        let mut queue = Queue::default();
        let limits = Limits {
            packets: 100,
            bytes: 1000,
        };
        for _ in 0..20 {
            queue
                .push(Some("x".into()), &[], limits, true)
                .expect("fits");
        }
        while queue.pop_within(usize::MAX, true).is_some() {}
        assert_eq!(queue.frames.capacity(), 0);
    }

    #[test]
    fn data_waits_from_the_moment_it_reaches_an_empty_queue_until_taken() {
        let mut queue = Queue::default();
        let limits = Limits {
            packets: 10,
            bytes: 100,
        };
        assert_eq!(queue.waiting_since(), None);
        queue
            .push(Some("a".into()), &[], limits, true)
            .expect("fits");
        let since = queue.waiting_since().expect("waiting");
        queue
            .push(Some("b".into()), &[], limits, true)
            .expect("fits");
        assert_eq!(queue.waiting_since(), Some(since));
        queue.pop_within(usize::MAX, true);
        let later = since + std::time::Duration::from_secs(1);
        queue.taken(later);
        assert_eq!(
            queue.waiting_since(),
            Some(later),
            "what is left waits anew"
        );
        queue.pop_within(usize::MAX, true);
        queue.taken(later);
        assert_eq!(queue.waiting_since(), None);
    }
}
