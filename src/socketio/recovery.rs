//! Connection state recovery (socket.io ≥ 4.6): a namespace's replay log and the sessions
//! kept for sockets that were cut, in memory.
//!
//! Every publication a namespace broadcasts gets an offset and goes into the log, unless
//! nobody could ever ask for it again (no recipient and no kept session). A socket cut by
//! something that is not its doing (see [`keeps_session`]) leaves its id and rooms here under
//! its private id (`pid`). A client that comes back in time names the pid and the last
//! offset it saw; it gets the same id, its rooms, and what the log holds after that offset
//! for those rooms. One use: a kept session is taken out when a CONNECT names it, whatever
//! the namespace's handler then decides.
//!
//! The log is bounded by events, bytes and age, kept sessions by count and age: a flood of
//! publications trims the log rather than growing it, and a client whose offset has been
//! trimmed away gets an ordinary connect ([`Lookup::TooOld`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engineioxide_core::{Sid, Str};
use serde::{Deserialize, Serialize};

use super::packet::Encoded;
use super::socket::DisconnectReason;
use super::transport::CloseReason;

/// A publication's place in its namespace's log: 1, 2, 3…, or, when the offsets come from
/// the bench's shared log ([`SharedSessions`]), that log's entry id packed in a number
/// (increasing, with gaps). Clients see it as a decimal string, the last argument of each
/// event.
pub type Offset = u64;

/// The bounds of recovery, per namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// How long a cut socket's session is kept, and publications with it.
    pub window: Duration,
    /// Publications the log holds at most.
    pub max_events: usize,
    /// Their total encoded size.
    pub max_bytes: usize,
    /// Kept sessions at most; the oldest goes first.
    pub max_sessions: usize,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(120),
            max_events: 10_000,
            max_bytes: 16 * 1024 * 1024,
            max_sessions: 100_000,
        }
    }
}

/// Where a namespace's log and kept sessions are copied so that they outlive the process
/// (the product's Redis store). Called under the namespace store's lock: hand the write to
/// another task, never wait for it here.
pub trait RecoveryMirror: Send + Sync + 'static {
    /// A publication went into `namespace`'s log.
    fn logged(&self, namespace: &str, entry: &LoggedEntry);
    /// A session was kept under `pid`, for the store's window.
    fn kept(&self, namespace: &str, pid: Sid, session: &KeptSession);
    /// The session `pid` was taken by a returning client, or dropped.
    fn taken(&self, namespace: &str, pid: Sid);
    /// With recovery shared between instances ([`SharedSessions`]): the connected socket
    /// `pid` would leave `session` if its process died now (it was admitted, or its rooms
    /// changed). Only sockets that take offsets: for them `after` does not move.
    fn live(&self, _namespace: &str, _pid: Sid, _session: &KeptSession) {}
    /// With recovery shared between instances: the connected socket `pid` left for good.
    fn ended(&self, _namespace: &str, _pid: Sid) {}
}

/// A [`RecoveryMirror`] in [`IoConfig`](super::IoConfig).
#[derive(Clone)]
pub struct Mirror(pub Arc<dyn RecoveryMirror>);

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mirror")
    }
}

/// Where this process finds the sessions other processes kept (recovery across instances):
/// asked before every CONNECT that names a session, and the authority on it. A session it
/// does not have was taken elsewhere, or never kept, even if this process holds a copy.
pub trait SessionSource: Send + Sync + 'static {
    /// Take the session `pid` of `namespace` out of the shared store; an error when the store
    /// cannot say (this process's own copy then stands).
    fn take(&self, namespace: &str, pid: Sid) -> SessionAnswer;
}

/// What a [`SessionSource`] answers, in time.
pub type SessionAnswer =
    futures_util::future::BoxFuture<'static, Result<Option<KeptSession>, String>>;

/// Recovery shared by the instances of a bench, in [`IoConfig`](super::IoConfig): offsets come
/// from the bench's log ([`Namespace::broadcast_at`](super::Namespace::broadcast_at)), and kept
/// sessions from this source. What a namespace broadcasts of its own accord
/// ([`Namespace::broadcast`](super::Namespace::broadcast)) is then not logged: no other instance
/// has it, so it could not be replayed in the same order everywhere.
#[derive(Clone)]
pub struct SharedSessions(pub Arc<dyn SessionSource>);

impl std::fmt::Debug for SharedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSessions")
    }
}

/// A logged publication as a mirror keeps it: the event's text with its offset. Packets
/// with binary attachments are not mirrored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedEntry {
    pub offset: Offset,
    pub room: Option<String>,
    pub except: Option<Sid>,
    pub text: String,
}

/// A kept session as a mirror keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptSession {
    pub sid: Sid,
    pub rooms: Vec<String>,
    pub after: Offset,
    pub took_offsets: bool,
}

/// What a namespace's recovery holds now, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    pub log_events: usize,
    pub log_bytes: usize,
    pub kept_sessions: usize,
}

/// What a CONNECT asked of recovery, and what it found; the namespace's handler reads it
/// from the [`Handshake`](super::Handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Recovery is off, or the client named no previous session.
    Fresh,
    /// A kept session: the socket has its old id, and these rooms come back if the handler
    /// admits it (see [`Socket::decline_recovery`](super::Socket::decline_recovery)).
    Restoring(Vec<Arc<str>>),
    /// The session was kept but its time ran out.
    Expired,
    /// No such session: never kept, already taken, or forgotten.
    Unknown,
    /// The session was kept, but the log no longer holds everything it missed.
    TooOld,
}

impl Recovery {
    /// A bounded label for metrics (`outcome`); `None` for a CONNECT that asked nothing.
    pub fn label(&self) -> Option<&'static str> {
        match self {
            Self::Fresh => None,
            Self::Restoring(_) => Some("recovered"),
            Self::Expired => Some("expired"),
            Self::Unknown => Some("unknown"),
            Self::TooOld => Some("too_old"),
        }
    }
}

/// The recovery fields of a CONNECT's auth payload. socket.io-client sends `pid` and `offset`
/// once it has a pid; `recovery: true` is ours, for clients that want offsets from their first
/// connect.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Request {
    pid: Option<String>,
    offset: Option<String>,
    #[serde(default)]
    recovery: bool,
}

impl Request {
    /// Read from the auth text; anything unreadable asks nothing.
    pub(crate) fn from_auth(auth: Option<&str>) -> Self {
        auth.and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default()
    }

    /// A client names its previous session; unparseable pids name none we could have issued.
    pub(crate) fn pid(&self) -> Option<Result<Sid, ()>> {
        let pid = self.pid.as_deref()?;
        Some(pid.parse().map_err(|_| ()))
    }

    pub(crate) fn offset(&self) -> Option<Offset> {
        self.offset.as_deref()?.parse().ok()
    }

    /// Whether the socket is given offsets with its events (see `takes_offsets`).
    pub(crate) fn wants_offsets(&self) -> bool {
        self.recovery || self.pid.is_some()
    }
}

/// Whether a socket gets each event's offset as an extra last argument. JavaScript handlers
/// ignore an extra argument; python-socketio's call `handler(*args)` and fail on it, and
/// Frappe's Node service never sent one. So: a page in a browser (socket.io-client in
/// JavaScript), a client that names its previous session (only socket.io-client ≥ 4.6 does),
/// and a client that asks.
pub(crate) fn takes_offsets(request: &http::request::Parts, asked: &Request) -> bool {
    let browser = request
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|ua| ua.to_str().ok())
        .is_some_and(|ua| ua.starts_with("Mozilla/"));
    browser || asked.wants_offsets()
}

/// Whether a socket that left for `reason` keeps its session: not when the client left or
/// was sent away for cause, nor when it broke the protocol.
pub(crate) fn keeps_session(reason: DisconnectReason) -> bool {
    match reason {
        DisconnectReason::Session(closed) => matches!(
            closed,
            CloseReason::TransportClose
                | CloseReason::TransportError
                | CloseReason::PingTimeout
                | CloseReason::SlowConsumer(_)
                | CloseReason::ServerShutdown
        ),
        DisconnectReason::ClientDisconnect
        | DisconnectReason::ServerDisconnect
        | DisconnectReason::NamespaceRemoved => false,
    }
}

/// One logged publication.
struct Entry {
    offset: Offset,
    room: Option<Arc<str>>,
    except: Option<Sid>,
    /// The event with its offset, as a recovering socket gets it.
    packet: Encoded,
    size: usize,
    at: Instant,
}

/// A session kept for a socket that was cut.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    /// The socket's id, given back.
    pub(crate) sid: Sid,
    pub(crate) rooms: Vec<Arc<str>>,
    /// Replay after this offset when the client names none it can be trusted with.
    pub(crate) after: Offset,
    /// Whether the socket had offsets: only then is the client's own offset its last seen.
    pub(crate) took_offsets: bool,
    order: u64,
    at: Instant,
}

/// What a socket leaves when it is cut.
#[derive(Debug)]
pub(crate) struct Leaving {
    pub(crate) pid: Sid,
    pub(crate) sid: Sid,
    pub(crate) rooms: Vec<Arc<str>>,
    pub(crate) after: Offset,
    pub(crate) took_offsets: bool,
}

impl Leaving {
    /// Back from a mirror.
    fn from_mirrored(pid: Sid, session: KeptSession) -> Self {
        Self {
            pid,
            sid: session.sid,
            rooms: session.rooms.into_iter().map(Arc::from).collect(),
            after: session.after,
            took_offsets: session.took_offsets,
        }
    }

    /// As a mirror keeps it.
    pub(crate) fn mirrored(&self) -> KeptSession {
        KeptSession {
            sid: self.sid,
            rooms: self.rooms.iter().map(|room| room.to_string()).collect(),
            after: self.after,
            took_offsets: self.took_offsets,
        }
    }
}

/// What a CONNECT's pid found.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Replay after `after`, to the kept rooms.
    Found {
        pid: Sid,
        kept: Kept,
        after: Offset,
    },
    Expired,
    Unknown,
    TooOld,
}

/// One namespace's log and kept sessions.
pub(crate) struct Store {
    config: RecoveryConfig,
    log: VecDeque<Entry>,
    log_bytes: usize,
    /// The newest offset given.
    last: Offset,
    /// The newest offset trimmed from the log: a replay after an older one is incomplete.
    trimmed: Offset,
    kept: HashMap<Sid, Kept>,
    /// Kept sessions by age, for expiry and for evicting the oldest.
    kept_order: BTreeMap<u64, Sid>,
    /// Sessions that expired, remembered one more window so a late client hears `Expired`
    /// rather than `Unknown`; the same bounds as `kept`.
    expired: HashMap<Sid, u64>,
    expired_order: BTreeMap<u64, (Sid, Instant)>,
    next_order: u64,
}

impl Store {
    pub(crate) fn new(config: RecoveryConfig) -> Self {
        Self {
            config,
            log: VecDeque::new(),
            log_bytes: 0,
            last: 0,
            trimmed: 0,
            kept: HashMap::new(),
            kept_order: BTreeMap::new(),
            expired: HashMap::new(),
            expired_order: BTreeMap::new(),
            next_order: 0,
        }
    }

    /// The newest offset given: a socket admitted now has seen nothing after it.
    pub(crate) fn last_offset(&self) -> Offset {
        self.last
    }

    /// Whether a publication with no recipient could still be asked for.
    pub(crate) fn has_kept_sessions(&self) -> bool {
        !self.kept.is_empty()
    }

    /// Give the next publication its offset.
    pub(crate) fn next_offset(&mut self) -> Offset {
        self.last += 1;
        self.last
    }

    /// Take `offset`, given by the bench's log, as the next publication's: false if the log
    /// already went past it. The same offset again is one publication for several rooms
    /// (an all-sites event in `/`, once per site).
    pub(crate) fn accept_offset(&mut self, offset: Offset) -> bool {
        if offset < self.last {
            return false;
        }
        self.last = offset;
        true
    }

    /// Settle the session `pid` with what the shared store said of it: its copy replaces
    /// this process's; none means it was taken elsewhere (or never kept), so this process's
    /// copy is stale; an error leaves this process's copy standing.
    pub(crate) fn settle(
        &mut self,
        pid: Sid,
        answer: Result<Option<KeptSession>, String>,
        now: Instant,
    ) {
        match answer {
            Ok(Some(session)) => {
                let leaving = Leaving::from_mirrored(pid, session);
                self.keep(leaving, now);
            }
            Ok(None) => {
                if let Some(stale) = self.kept.remove(&pid) {
                    self.kept_order.remove(&stale.order);
                }
            }
            Err(_) => {}
        }
    }

    /// Log the publication `offset` (given by [`Store::next_offset`]), then trim the log to
    /// its bounds.
    pub(crate) fn log(
        &mut self,
        offset: Offset,
        room: Option<Arc<str>>,
        except: Option<Sid>,
        packet: Encoded,
        now: Instant,
    ) {
        let size = packet.size();
        self.log_bytes += size;
        self.log.push_back(Entry {
            offset,
            room,
            except,
            packet,
            size,
            at: now,
        });
        self.trim(now);
    }

    /// Take back what a mirror kept: `log` in offset order and `sessions`, each with how
    /// long ago it was written. Later offsets continue after every offset restored.
    pub(crate) fn restore(
        &mut self,
        log: Vec<(LoggedEntry, Duration)>,
        sessions: Vec<(Sid, KeptSession, Duration)>,
        now: Instant,
    ) {
        let ago = |age: Duration| now.checked_sub(age).unwrap_or(now);
        for (entry, age) in log {
            if entry.offset <= self.last {
                continue;
            }
            let packet = Encoded {
                text: Str::from(entry.text),
                attachments: Vec::new(),
            };
            let size = packet.size();
            self.last = entry.offset;
            self.log_bytes += size;
            self.log.push_back(Entry {
                offset: entry.offset,
                room: entry.room.map(Arc::from),
                except: entry.except,
                packet,
                size,
                at: ago(age),
            });
        }
        for (pid, session, age) in sessions {
            self.last = self.last.max(session.after);
            self.keep(Leaving::from_mirrored(pid, session), ago(age));
        }
        self.trim(now);
    }

    /// Keep the session of a socket that was cut.
    pub(crate) fn keep(&mut self, leaving: Leaving, now: Instant) {
        self.trim(now);
        while self.kept.len() >= self.config.max_sessions.max(1) {
            let Some((_, oldest)) = self.kept_order.pop_first() else {
                break;
            };
            self.kept.remove(&oldest);
        }
        self.forget_expired(leaving.pid);
        let order = self.order();
        let kept = Kept {
            sid: leaving.sid,
            rooms: leaving.rooms,
            after: leaving.after,
            took_offsets: leaving.took_offsets,
            order,
            at: now,
        };
        if let Some(replaced) = self.kept.insert(leaving.pid, kept) {
            self.kept_order.remove(&replaced.order);
        }
        self.kept_order.insert(order, leaving.pid);
    }

    /// Take the session `pid` names, if the log still holds everything it missed after
    /// `offset` (the client's last seen; trusted only from a socket that had offsets).
    pub(crate) fn take(&mut self, pid: Sid, offset: Option<Offset>, now: Instant) -> Lookup {
        self.trim(now);
        let Some(kept) = self.kept.remove(&pid) else {
            return match self.forget_expired(pid) {
                true => Lookup::Expired,
                false => Lookup::Unknown,
            };
        };
        self.kept_order.remove(&kept.order);
        let after = match offset {
            // An offset we never gave is no one's last seen.
            Some(offset) if kept.took_offsets && offset <= self.last => offset,
            _ => kept.after,
        };
        if after < self.trimmed {
            return Lookup::TooOld;
        }
        Lookup::Found { pid, kept, after }
    }

    /// Whether a replay after `after` would still be complete.
    pub(crate) fn holds_after(&self, after: Offset) -> bool {
        after >= self.trimmed
    }

    /// The packets a socket `sid` in `rooms` missed after `after`, in order: those to the
    /// whole namespace or to one of its rooms, and not sent with it excepted.
    pub(crate) fn missed(&self, after: Offset, sid: Sid, rooms: &[Arc<str>]) -> Vec<Encoded> {
        let start = self.log.partition_point(|entry| entry.offset <= after);
        let log = self.log.range(start..);
        log.filter(|entry| entry.except != Some(sid))
            .filter(|entry| match &entry.room {
                None => true,
                Some(room) => rooms.iter().any(|joined| joined == room),
            })
            .map(|entry| entry.packet.clone())
            .collect()
    }

    /// Trim by age first, then report.
    pub(crate) fn stats(&mut self, now: Instant) -> RecoveryStats {
        self.trim(now);
        RecoveryStats {
            log_events: self.log.len(),
            log_bytes: self.log_bytes,
            kept_sessions: self.kept.len(),
        }
    }

    fn trim(&mut self, now: Instant) {
        let window = self.config.window;
        let expired = |at: Instant| now.saturating_duration_since(at) > window;
        while let Some(oldest) = self.log.front() {
            let over =
                self.log.len() > self.config.max_events || self.log_bytes > self.config.max_bytes;
            if !over && !expired(oldest.at) {
                break;
            }
            self.trimmed = oldest.offset;
            self.log_bytes -= oldest.size;
            self.log.pop_front();
        }
        while let Some((&order, &pid)) = self.kept_order.first_key_value() {
            let Some(kept) = self.kept.get(&pid) else {
                self.kept_order.remove(&order);
                continue;
            };
            if !expired(kept.at) {
                break;
            }
            let at = kept.at;
            self.kept.remove(&pid);
            self.kept_order.remove(&order);
            self.remember_expired(pid, at);
        }
        while let Some((&order, &(pid, at))) = self.expired_order.first_key_value() {
            if now.saturating_duration_since(at) <= window * 2 {
                break;
            }
            self.expired_order.remove(&order);
            self.expired.remove(&pid);
        }
    }

    fn remember_expired(&mut self, pid: Sid, at: Instant) {
        while self.expired.len() >= self.config.max_sessions.max(1) {
            let Some((_, (oldest, _))) = self.expired_order.pop_first() else {
                break;
            };
            self.expired.remove(&oldest);
        }
        let order = self.order();
        self.expired.insert(pid, order);
        self.expired_order.insert(order, (pid, at));
    }

    /// Forget that `pid` expired; true if it had.
    fn forget_expired(&mut self, pid: Sid) -> bool {
        match self.expired.remove(&pid) {
            Some(order) => {
                self.expired_order.remove(&order);
                true
            }
            None => false,
        }
    }

    fn order(&mut self) -> u64 {
        self.next_order += 1;
        self.next_order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::socketio::SlowReason;

    fn packet(text: &str) -> Encoded {
        Encoded {
            text: Str::from(text.to_owned()),
            attachments: Vec::new(),
        }
    }

    fn texts(packets: &[Encoded]) -> Vec<&str> {
        packets.iter().map(|p| p.text.as_str()).collect()
    }

    fn config(max_events: usize, max_bytes: usize) -> RecoveryConfig {
        RecoveryConfig {
            window: Duration::from_secs(10),
            max_events,
            max_bytes,
            max_sessions: 2,
        }
    }

    fn publish(store: &mut Store, room: Option<&str>, text: &str, now: Instant) -> Offset {
        let offset = store.next_offset();
        store.log(offset, room.map(Arc::from), None, packet(text), now);
        offset
    }

    fn leaving(pid: Sid, rooms: &[&str], after: Offset) -> Leaving {
        Leaving {
            pid,
            sid: Sid::new(),
            rooms: rooms.iter().map(|r| Arc::from(*r)).collect(),
            after,
            took_offsets: true,
        }
    }

    #[test]
    fn a_kept_session_gets_what_its_rooms_missed_in_order_once() {
        let now = Instant::now();
        let mut store = Store::new(config(100, 1 << 20));
        let seen = publish(&mut store, Some("a"), "1", now);
        let pid = Sid::new();
        store.keep(leaving(pid, &["a", "b"], seen), now);
        publish(&mut store, Some("a"), "2", now);
        publish(&mut store, Some("c"), "other room", now);
        publish(&mut store, None, "everyone", now);
        publish(&mut store, Some("b"), "3", now);
        let Lookup::Found { kept, after, .. } = store.take(pid, Some(seen), now) else {
            panic!("the session is kept");
        };
        let missed = store.missed(after, kept.sid, &kept.rooms);
        assert_eq!(texts(&missed), ["2", "everyone", "3"]);
        assert!(matches!(store.take(pid, Some(seen), now), Lookup::Unknown));
    }

    #[test]
    fn offsets_from_the_bench_log_are_taken_in_order_and_one_may_repeat() {
        let now = Instant::now();
        let mut store = Store::new(config(100, 1 << 20));
        assert!(store.accept_offset(1_000));
        store.log(1_000, Some(Arc::from("a")), None, packet("x in a"), now);
        // One all-sites publication, a room per site in `/`: the same offset again.
        assert!(store.accept_offset(1_000));
        store.log(1_000, Some(Arc::from("b")), None, packet("x in b"), now);
        assert!(store.accept_offset(5_000));
        store.log(5_000, Some(Arc::from("a")), None, packet("y"), now);
        assert!(!store.accept_offset(4_000), "the log went past it");
        assert_eq!(store.last_offset(), 5_000);
        let missed = store.missed(1_000, Sid::new(), &[Arc::from("a"), Arc::from("b")]);
        assert_eq!(texts(&missed), ["y"]);
    }

    #[test]
    fn the_shared_store_decides_which_copy_of_a_session_stands() {
        let now = Instant::now();
        let mut store = Store::new(config(100, 1 << 20));
        let seen = publish(&mut store, Some("a"), "1", now);
        let pid = Sid::new();
        // Taken elsewhere: this process's copy is stale and goes.
        store.keep(leaving(pid, &["a"], seen), now);
        store.settle(pid, Ok(None), now);
        assert!(matches!(store.take(pid, Some(seen), now), Lookup::Unknown));
        // Kept by another instance: its copy is the one resumed.
        let theirs = KeptSession {
            sid: Sid::new(),
            rooms: vec!["b".to_owned()],
            after: seen,
            took_offsets: true,
        };
        store.keep(leaving(pid, &["a"], seen), now);
        store.settle(pid, Ok(Some(theirs.clone())), now);
        let Lookup::Found { kept, .. } = store.take(pid, Some(seen), now) else {
            panic!("their session is kept here now");
        };
        assert_eq!((kept.sid, kept.rooms), (theirs.sid, vec![Arc::from("b")]));
        // The shared store cannot say: this process's copy stands.
        store.keep(leaving(pid, &["a"], seen), now);
        store.settle(pid, Err("Redis is down".to_owned()), now);
        assert!(matches!(
            store.take(pid, Some(seen), now),
            Lookup::Found { .. }
        ));
    }

    #[test]
    fn the_clients_offset_wins_only_if_it_had_offsets() {
        let now = Instant::now();
        let mut store = Store::new(config(100, 1 << 20));
        for text in ["1", "2", "3"] {
            publish(&mut store, None, text, now);
        }
        let pid = Sid::new();
        store.keep(leaving(pid, &[], 1), now);
        let Lookup::Found { after, .. } = store.take(pid, Some(2), now) else {
            panic!("kept");
        };
        assert_eq!(after, 2);
        let mut without = leaving(pid, &[], 1);
        without.took_offsets = false;
        store.keep(without, now);
        let Lookup::Found { after, .. } = store.take(pid, Some(2), now) else {
            panic!("kept");
        };
        assert_eq!(after, 1, "a string argument is not an offset");
        store.keep(leaving(pid, &[], 1), now);
        let Lookup::Found { after, .. } = store.take(pid, Some(99), now) else {
            panic!("kept");
        };
        assert_eq!(after, 1, "an offset never given is ignored");
    }

    #[test]
    fn the_log_is_bounded_by_events_bytes_and_age() {
        let now = Instant::now();
        let mut store = Store::new(config(3, 1 << 20));
        for n in 0..1000 {
            publish(&mut store, None, &n.to_string(), now);
        }
        assert_eq!(store.stats(now).log_events, 3);
        let mut store = Store::new(config(100, 10));
        for _ in 0..50 {
            publish(&mut store, None, "abcd", now);
        }
        let stats = store.stats(now);
        assert!(stats.log_bytes <= 10, "{stats:?}");
        publish(&mut store, None, "late", now);
        let later = now + Duration::from_secs(11);
        assert_eq!(store.stats(later).log_events, 0);
    }

    #[test]
    fn a_trimmed_offset_is_too_old() {
        let now = Instant::now();
        let mut store = Store::new(config(2, 1 << 20));
        let seen = publish(&mut store, None, "1", now);
        let pid = Sid::new();
        store.keep(leaving(pid, &[], seen), now);
        assert!(store.holds_after(seen));
        for text in ["2", "3", "4"] {
            publish(&mut store, None, text, now);
        }
        assert!(!store.holds_after(seen));
        assert!(matches!(store.take(pid, Some(seen), now), Lookup::TooOld));
    }

    #[test]
    fn kept_sessions_expire_and_are_bounded() {
        let now = Instant::now();
        let mut store = Store::new(config(10, 1 << 20));
        let [a, b, c] = [Sid::new(), Sid::new(), Sid::new()];
        for pid in [a, b, c] {
            store.keep(leaving(pid, &[], 0), now);
        }
        assert_eq!(store.stats(now).kept_sessions, 2);
        assert!(
            matches!(store.take(a, None, now), Lookup::Unknown),
            "oldest evicted"
        );
        let later = now + Duration::from_secs(11);
        assert_eq!(store.stats(later).kept_sessions, 0);
        assert!(matches!(store.take(b, None, later), Lookup::Expired));
        assert!(matches!(store.take(b, None, later), Lookup::Unknown));
        let much_later = now + Duration::from_secs(31);
        assert!(matches!(store.take(c, None, much_later), Lookup::Unknown));
    }

    #[test]
    fn excepted_sockets_miss_nothing_of_their_own() {
        let now = Instant::now();
        let mut store = Store::new(config(10, 1 << 20));
        let sid = Sid::new();
        let offset = store.next_offset();
        store.log(offset, None, Some(sid), packet("mine"), now);
        assert!(store.missed(0, sid, &[]).is_empty());
        assert_eq!(store.missed(0, Sid::new(), &[]).len(), 1);
    }

    #[test]
    fn sessions_are_kept_only_for_cuts_that_are_not_the_clients_doing() {
        let session = DisconnectReason::Session;
        assert!(keeps_session(session(CloseReason::TransportClose)));
        assert!(keeps_session(session(CloseReason::PingTimeout)));
        assert!(keeps_session(session(CloseReason::SlowConsumer(
            SlowReason::QueueFull
        ))));
        assert!(!keeps_session(session(CloseReason::ParseError)));
        assert!(!keeps_session(DisconnectReason::ClientDisconnect));
        assert!(!keeps_session(DisconnectReason::ServerDisconnect));
    }

    #[test]
    fn requests_read_from_auth() {
        let request = Request::from_auth(Some(r#"{"pid":"x","offset":"12"}"#));
        assert!(request.wants_offsets());
        assert_eq!(request.offset(), Some(12));
        assert!(matches!(request.pid(), Some(Err(()))));
        let request = Request::from_auth(Some(r#"{"recovery":true}"#));
        assert!(request.wants_offsets() && request.pid().is_none());
        assert!(!Request::from_auth(None).wants_offsets());
        assert!(!Request::from_auth(Some("[1]")).wants_offsets());
    }
}

#[cfg(test)]
mod restore_tests {
    use super::*;

    #[test]
    fn a_restored_store_replays_and_continues_its_offsets() {
        let now = Instant::now();
        let mut store = Store::new(RecoveryConfig::default());
        let entry = |offset, room: &str| LoggedEntry {
            offset,
            room: Some(room.to_owned()),
            except: None,
            text: format!("2[\"e\",{offset},\"{offset}\"]"),
        };
        let log = vec![
            (entry(7, "a"), Duration::from_secs(3)),
            (entry(8, "b"), Duration::from_secs(2)),
        ];
        let (pid, sid) = (Sid::new(), Sid::new());
        let session = KeptSession {
            sid,
            rooms: vec!["a".to_owned()],
            after: 6,
            took_offsets: true,
        };
        store.restore(log, vec![(pid, session, Duration::from_secs(1))], now);
        assert_eq!(store.next_offset(), 9, "offsets continue");
        let Lookup::Found { kept, after, .. } = store.take(pid, Some(6), now) else {
            panic!("the session is back");
        };
        assert_eq!(kept.sid, sid);
        let missed = store.missed(after, kept.sid, &kept.rooms);
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].text.as_str(), "2[\"e\",7,\"7\"]");
    }
}
