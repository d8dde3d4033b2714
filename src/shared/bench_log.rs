//! The bench's one ordered log of Frappe's events, for recovery across instances
//! (`realtime_shared_state: "redis"` with `realtime_recovery_store: "redis"`).
//!
//! Frappe publishes on pub/sub, which numbers nothing: each instance numbering what it
//! received gives offsets that mean nothing to the others. So one instance at a time, the
//! *copier*, copies every message of `events` into the stream [`STREAM`], and every instance,
//! the copier too, delivers from that stream (`XREAD`), with the entry's id as the offset its
//! clients see. Every instance then logs the same publications under the same offsets, and a
//! client cut from one instance resumes on any other: its kept session is in Redis under one
//! key space for the bench (`crate::recovery_store`), its missed events in the new
//! instance's own log.
//!
//! The copier holds a lease ([`LEASE`], [`LEASE_FOR`], renewed every [`RENEW`]); the others
//! try to take it as often, but only while subscribed to `events`. A clean stop gives it up
//! at once (the next copier starts within [`RENEW`]); a killed copier's lease runs out
//! (within [`LEASE_FOR`] + [`RENEW`]). What is published meanwhile is not lost: every
//! instance remembers what it received in the last [`RECENT_FOR`] and which of it its own
//! reader has met in the stream, and a new copier first copies what it received after the
//! stream's last entries (found by their content) or, where it cannot place them (an empty
//! stream after a Redis restart), what its reader never met.
//!
//! A Redis restart without persistence empties the stream: what the copier had not written,
//! or an instance had not read, by then is lost for that instance's clients, and a reader
//! that lagged may get a few entries twice from the next copier (README, "Several
//! instances").
//!
//! Costs: one more Redis round trip between Frappe's publish and delivery, and the stream in
//! Redis (at most [`STREAM_CAP`] entries, gone a window after the last publication).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::metrics::counter;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::mpsc;

use crate::metrics::{self, millis};
use crate::queue_redis::reconnect_backoff;
use crate::socketio::{Offset, RecoveryConfig};

#[cfg(test)]
use super::keys::PREFIX;

/// The stream: entries with one field, `m`, the message as Frappe published it.
const STREAM: &str = "frappe_realtime:shared:events";
/// Which instance copies now: its name, for [`LEASE_FOR`] unless renewed.
const LEASE: &str = "frappe_realtime:shared:copier";
const LEASE_FOR: Duration = Duration::from_secs(3);
/// How often the copier renews the lease and the others try to take it: the longest a clean
/// stop leaves the bench without a copier (what is published meanwhile is delivered late,
/// not lost). Four tries a second per instance cost Redis nothing.
const RENEW: Duration = Duration::from_millis(250);
/// What an instance remembers of what it received, for a hand-over: longer than the longest
/// gap between two copiers (a killed one's lease running out, then the next try).
const RECENT_FOR: Duration = Duration::from_secs(10);
const RECENT_MAX: usize = 20_000;
const RECENT_MAX_BYTES: usize = 16 << 20;
/// How far ahead of the last message met in the Stream the reader looks for the next.
const MET_WITHIN: usize = 256;
/// Entries the stream keeps at most (Redis trims it roughly).
const STREAM_CAP: usize = 100_000;
/// How many of the stream's last entries a new copier looks for in what it received.
const TAIL: usize = 8;
/// Messages waiting for the copier at most; past it one is lost (counted).
const QUEUE: usize = 65_536;
/// Entries copied, or read, in one round trip at most.
const BATCH: usize = 512;
/// Entries read in one `XRANGE` at most.
const PAGE: usize = 1_000;
/// `XREAD`'s "from the stream's next entry on".
const NEXT_ENTRY: &str = "$";
/// How long one `XREAD` waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);

/// Take the lease if it is free, or renew it if it is this instance's: 1, else 0.
const LEASE_SCRIPT: &str = "local holder = redis.call('GET', KEYS[1]) \
    if holder and holder ~= ARGV[1] then return 0 end \
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1";
/// Give the lease up if this instance holds it.
const RELEASE_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) else return 0 end";

/// An entry of the stream: its id (`<ms>-<seq>`) and the message.
pub type Entry = (String, Bytes);

/// This instance's part in the bench's log.
pub struct BenchLog {
    /// The instance's name, the lease's value while it copies.
    instance: String,
    window: Duration,
    connection: ConnectionManager,
    /// Whether this instance copies now; changed under `recent`'s lock, so that what it
    /// received goes either into a hand-over's catch-up or to the queue, never both.
    copier: AtomicBool,
    /// Whether this instance is subscribed to `events` now: only then may it copy, since
    /// only then does what it remembers hold everything since its subscription began.
    subscribed: AtomicBool,
    recent: Mutex<Recent>,
    queue: mpsc::Sender<Bytes>,
}

/// What an instance received lately, oldest first, each with when (Unix ms) and its number
/// in the order received, and how far its own reader has met them in the Stream.
#[derive(Default)]
struct Recent {
    messages: VecDeque<Received>,
    bytes: usize,
    next_number: u64,
    /// The number of the first message this instance's reader has not met in the Stream:
    /// everything before it was copied by someone.
    unseen_from: u64,
}

struct Received {
    payload: Bytes,
    at: u64,
    number: u64,
}

impl Recent {
    /// Remember `payload`, forgetting what is older than [`RECENT_FOR`] or past the bounds.
    fn push(&mut self, payload: Bytes, now: u64) {
        self.bytes += payload.len();
        let number = self.next_number;
        self.next_number += 1;
        self.messages.push_back(Received {
            payload,
            at: now,
            number,
        });
        self.forget_old(now);
    }

    /// Forget what is older than [`RECENT_FOR`] at `now`, or past the bounds.
    fn forget_old(&mut self, now: u64) {
        let oldest = now.saturating_sub(millis(RECENT_FOR));
        while self.messages.len() > RECENT_MAX
            || self.bytes > RECENT_MAX_BYTES
            || self.messages.front().is_some_and(|m| m.at < oldest)
        {
            let Some(gone) = self.messages.pop_front() else {
                break;
            };
            self.bytes -= gone.payload.len();
        }
    }

    /// This instance's reader met `payload` in the Stream: it and what came before it are
    /// copied. Looked for among the next [`MET_WITHIN`] unseen messages: the reader follows
    /// the subscription closely, so one it does not find there this instance did not receive.
    /// Called for every event: the first unseen message is found by its number, not by a walk.
    fn met(&mut self, payload: &[u8]) {
        let Some(oldest) = self.messages.front().map(|m| m.number) else {
            return;
        };
        let first_unseen =
            usize::try_from(self.unseen_from.saturating_sub(oldest)).unwrap_or(usize::MAX);
        let unseen = self.messages.range(first_unseen.min(self.messages.len())..);
        if let Some(found) = unseen.take(MET_WITHIN).find(|m| m.payload == payload) {
            self.unseen_from = found.number + 1;
        }
    }

    /// What the Stream lacks: what was received after the Stream's `tail` (the last place
    /// where its messages come in a row); failing that (the Stream is empty, or new after a
    /// Redis restart), what this instance's reader has not met in it.
    fn missing_after(&self, tail: &[Entry]) -> Vec<Bytes> {
        let received: Vec<&Bytes> = self.messages.iter().map(|m| &m.payload).collect();
        let wanted: Vec<&Bytes> = tail.iter().map(|(_, payload)| payload).collect();
        let found = (wanted.len()..=received.len())
            .rev()
            .find(|&end| !wanted.is_empty() && received[end - wanted.len()..end] == wanted[..]);
        match found {
            Some(end) => received[end..]
                .iter()
                .map(|payload| (*payload).clone())
                .collect(),
            None => self
                .messages
                .iter()
                .filter(|m| m.number >= self.unseen_from)
                .map(|m| m.payload.clone())
                .collect(),
        }
    }
}

impl BenchLog {
    /// This instance's part, and the task to run: the lease and the copier.
    pub fn start(
        client: redis::Client,
        instance: String,
        recovery: &RecoveryConfig,
    ) -> redis::RedisResult<(Arc<Self>, impl Future<Output = ()> + use<>)> {
        // A connection of its own, back within [`RENEW`] of Redis answering: while no one
        // copies, nothing reaches any client.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(RENEW);
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        let (queue, pending) = mpsc::channel(QUEUE);
        let log = Arc::new(Self {
            instance,
            window: recovery.window,
            connection,
            copier: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            recent: Mutex::new(Recent::default()),
            queue,
        });
        let task = {
            let log = log.clone();
            async move {
                tokio::join!(log.clone().hold_lease(), log.copy(pending));
            }
        };
        Ok((log, task))
    }

    /// Whether this instance copies `events` into the stream now.
    pub fn is_copier(&self) -> bool {
        self.copier.load(Ordering::Relaxed)
    }

    /// A message from `events`: remembered for a hand-over, and copied if this instance is
    /// the copier.
    pub fn received(&self, payload: &[u8]) {
        let payload = Bytes::copy_from_slice(payload);
        let now = metrics::unix_now_ms();
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if self.is_copier() {
            self.enqueue(payload.clone());
        }
        recent.push(payload, now);
    }

    /// The subscription to `events` is (again) in place: this instance may copy.
    pub fn subscribed(&self) {
        self.subscribed.store(true, Ordering::Relaxed);
    }

    /// The subscription to `events` is lost: this instance receives nothing to copy, so it
    /// stops copying and gives the lease up at its next tick, for a subscribed one.
    pub fn unsubscribed(&self) {
        self.subscribed.store(false, Ordering::Relaxed);
        self.stop_copying("the subscription to events is lost");
    }

    /// At a clean stop, once nothing is copied any more: give the lease up, so that another
    /// instance copies from its next try.
    pub async fn leave(&self) {
        self.release(&mut self.connection.clone()).await;
    }

    /// Give the lease up if this instance holds it.
    async fn release(&self, connection: &mut ConnectionManager) {
        let released: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(RELEASE_SCRIPT)
            .arg(1)
            .arg(LEASE)
            .arg(&self.instance)
            .query_async(connection)
            .await;
        match released {
            Ok(1) => tracing::info!("gave up the bench log's copier lease"),
            Ok(_) => {}
            // Redis is away: the lease runs out by itself.
            Err(e) => tracing::debug!(error = %e, "cannot give up the bench log's copier lease"),
        }
    }

    /// The stream's entries of the last window, to log before this instance takes clients,
    /// and the id to read on from. Redis down or slow costs the recovery of clients from
    /// before, never the start: reading then goes on from the stream's next entry.
    pub async fn recent_entries(&self) -> (Vec<Entry>, String) {
        let since = metrics::unix_now_ms().saturating_sub(millis(self.window));
        let start = format!("{since}-0");
        let mut entries = Vec::new();
        let read = self.read_pages(&start, &mut entries);
        match tokio::time::timeout(Duration::from_secs(5), read).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the bench log; reading on from its next entry");
                return (Vec::new(), NEXT_ENTRY.to_owned());
            }
            Err(_) => {
                tracing::warn!(
                    "the bench log did not answer in time; reading on from its next entry"
                );
                return (Vec::new(), NEXT_ENTRY.to_owned());
            }
        }
        let last = entries.last().map_or(start, |(id, _)| id.clone());
        (entries, last)
    }

    /// Append the stream's entries from `start` on to `entries`, [`PAGE`] at a time (each
    /// page is one command under the connection's response timeout), [`STREAM_CAP`] at most.
    async fn read_pages(&self, start: &str, entries: &mut Vec<Entry>) -> redis::RedisResult<()> {
        let mut connection = self.connection.clone();
        let mut from = start.to_owned();
        while entries.len() < STREAM_CAP {
            let page: Value = redis::cmd("XRANGE")
                .arg(STREAM)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut connection)
                .await?;
            let page = entries_of(page);
            let Some(next) = page.last().and_then(|(id, _)| id_after(id)) else {
                break;
            };
            let full = page.len() == PAGE;
            entries.extend(page);
            if !full {
                break;
            }
            from = next;
        }
        Ok(())
    }

    /// Read the stream after `last` forever, handing each entry to `deliver` in order, on a
    /// connection of its own (a blocked `XREAD` holds its connection).
    pub async fn read(
        self: Arc<Self>,
        client: redis::Client,
        mut last: String,
        deliver: impl Fn(Entry),
    ) {
        let mut backoff = reconnect_backoff();
        loop {
            match reader_connection(&client).await {
                Ok(mut connection) => {
                    backoff = reconnect_backoff();
                    let deliver = |entry: Entry| {
                        self.met(&entry.1);
                        deliver(entry);
                    };
                    let e = read_on(&mut connection, &mut last, &deliver).await;
                    tracing::warn!(error = %e, "lost the bench log; reading on");
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the bench log; retrying"),
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(1));
            tokio::time::sleep(delay).await;
        }
    }

    fn met(&self, payload: &[u8]) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.met(payload);
    }

    /// Take or renew the lease every [`RENEW`]; a new copier first catches up.
    async fn hold_lease(self: Arc<Self>) {
        let mut connection = self.connection.clone();
        let mut ticks = tokio::time::interval(RENEW);
        loop {
            ticks.tick().await;
            if !self.subscribed.load(Ordering::Relaxed) {
                self.stop_copying("the subscription to events is lost");
                self.release(&mut connection).await;
                continue;
            }
            match self.try_lease(&mut connection).await {
                Ok(true) if !self.is_copier() => match self.tail(&mut connection).await {
                    Ok(tail) => self.take_over(&tail),
                    Err(e) => tracing::warn!(error = %e, "cannot read the bench log's end"),
                },
                Ok(true) => {}
                Ok(false) => self.stop_copying("another instance holds the lease"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hold the bench log's copier lease");
                    self.stop_copying("the lease could not be renewed");
                }
            }
        }
    }

    /// Take the lease if it is free, or renew it if it is this instance's: whether this
    /// instance holds it now.
    async fn try_lease(&self, connection: &mut ConnectionManager) -> redis::RedisResult<bool> {
        let held: i64 = redis::cmd("EVAL")
            .arg(LEASE_SCRIPT)
            .arg(1)
            .arg(LEASE)
            .arg(&self.instance)
            .arg(millis(LEASE_FOR))
            .query_async(connection)
            .await?;
        Ok(held == 1)
    }

    /// The stream's last entries, oldest first.
    async fn tail(&self, connection: &mut ConnectionManager) -> redis::RedisResult<Vec<Entry>> {
        let value: Value = redis::cmd("XREVRANGE")
            .arg(STREAM)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(TAIL)
            .query_async(connection)
            .await?;
        let mut tail = entries_of(value);
        tail.reverse();
        Ok(tail)
    }

    /// Become the copier: first queue what this instance received after the stream's `tail`
    /// (what the last copier did not copy), then every message as it comes.
    fn take_over(&self, tail: &[Entry]) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        // Nothing may have come for a while: what is remembered is then too old to copy.
        recent.forget_old(metrics::unix_now_ms());
        let missing = recent.missing_after(tail);
        // Copier first: the copy task drops what it finds queued while this is not set.
        self.copier.store(true, Ordering::Relaxed);
        for payload in &missing {
            self.enqueue(payload.clone());
        }
        drop(recent);
        tracing::info!(
            caught_up = missing.len(),
            "this instance now copies Frappe's events into the bench log"
        );
    }

    fn stop_copying(&self, why: &'static str) {
        let _recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if self.copier.swap(false, Ordering::Relaxed) {
            tracing::info!(
                reason = why,
                "this instance no longer copies into the bench log"
            );
        }
    }

    fn enqueue(&self, payload: Bytes) {
        if self.queue.try_send(payload).is_err() {
            counter!(metrics::EVENTS_DROPPED, "reason" => "bench_log_full").increment(1);
        }
    }

    /// Append queued messages to the stream, in order, a pipeline at a time.
    async fn copy(self: Arc<Self>, mut pending: mpsc::Receiver<Bytes>) {
        let mut connection = self.connection.clone();
        let window_ms = millis(self.window);
        while let Some(first) = pending.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match pending.try_recv() {
                    Ok(payload) => batch.push(payload),
                    Err(_) => break,
                }
            }
            if !self.is_copier() {
                // The lease was lost with these queued: the next copier copies them from
                // what it received, and copying them here too would log them twice.
                continue;
            }
            let mut pipe = redis::pipe();
            for payload in &batch {
                pipe.cmd("XADD")
                    .arg(STREAM)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(STREAM_CAP)
                    .arg("*")
                    .arg("m")
                    .arg(payload.as_ref())
                    .ignore();
            }
            pipe.cmd("PEXPIRE").arg(STREAM).arg(window_ms).ignore();
            if let Err(error) = pipe.query_async::<()>(&mut connection).await {
                tracing::warn!(%error, events = batch.len(), "cannot copy events into the bench log");
                counter!(metrics::EVENTS_DROPPED, "reason" => "bench_log_error")
                    .increment(batch.len() as u64);
            }
        }
    }
}

/// The offset clients see for the entry `id` (`<ms>-<seq>`): the two packed in one number
/// that grows with the id; `None` for an id past what fits (a clock 500 years ahead, or a
/// million entries in one millisecond).
pub fn offset_of(id: &str) -> Option<Offset> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    (ms < 1 << 44 && seq < 1 << 20).then_some(ms << 20 | seq)
}

/// The smallest id after `id` (`XRANGE`'s exclusive start is Redis 6.2 on).
fn id_after(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let seq: u64 = seq.parse().ok()?;
    Some(format!("{ms}-{}", seq.checked_add(1)?))
}

/// The entries of an `XRANGE`/`XREVRANGE` reply; an entry without `m` is skipped.
fn entries_of(value: Value) -> Vec<Entry> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items.into_iter().filter_map(entry).collect()
}

fn entry(item: Value) -> Option<Entry> {
    let Value::Array(mut parts) = item else {
        return None;
    };
    let fields = parts.pop()?;
    let id: String = redis::from_redis_value(parts.pop()?).ok()?;
    let Value::Array(fields) = fields else {
        return None;
    };
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let name: String = redis::from_redis_value(name).ok()?;
        if name == "m" {
            let payload: Vec<u8> = redis::from_redis_value(value).ok()?;
            return Some((id, Bytes::from(payload)));
        }
    }
    None
}

/// Deliver the stream's entries after `last` as they come, until the connection fails.
async fn read_on(
    connection: &mut MultiplexedConnection,
    last: &mut String,
    deliver: &impl Fn(Entry),
) -> redis::RedisError {
    if last == NEXT_ENTRY {
        // "$" would miss what comes between two reads: pin it to an id.
        match last_id(connection).await {
            Ok(id) => *last = id,
            Err(e) => return e,
        }
    }
    loop {
        match read_after(connection, last).await {
            Ok(batch) => {
                for entry in batch {
                    last.clone_from(&entry.0);
                    deliver(entry);
                }
            }
            Err(e) => return e,
        }
    }
}

/// The id of the stream's last entry, or the id before any when it is empty.
async fn last_id(connection: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    let value: Value = redis::cmd("XREVRANGE")
        .arg(STREAM)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(connection)
        .await?;
    Ok(entries_of(value)
        .pop()
        .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
}

/// The entries after `last`, waiting up to [`BLOCK`] for some.
async fn read_after(
    connection: &mut MultiplexedConnection,
    last: &str,
) -> redis::RedisResult<Vec<Entry>> {
    let value: Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(BATCH)
        .arg("BLOCK")
        .arg(millis(BLOCK))
        .arg("STREAMS")
        .arg(STREAM)
        .arg(last)
        .query_async(connection)
        .await?;
    // `[[stream, [entries…]]]`, or nil when nothing came.
    let Value::Array(streams) = value else {
        return Ok(Vec::new());
    };
    Ok(streams
        .into_iter()
        .filter_map(|stream| match stream {
            Value::Array(mut parts) => parts.pop(),
            _ => None,
        })
        .flat_map(entries_of)
        .collect())
}

async fn reader_connection(client: &redis::Client) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(messages: &[&str]) -> Recent {
        let mut recent = Recent::default();
        for (i, m) in messages.iter().enumerate() {
            recent.push(Bytes::from(m.to_string()), 1_000 + i as u64);
        }
        recent
    }

    fn tail(messages: &[&str]) -> Vec<Entry> {
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("{i}-0"), Bytes::from(m.to_string())))
            .collect()
    }

    fn texts(payloads: Vec<Bytes>) -> Vec<String> {
        payloads
            .into_iter()
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .collect()
    }

    #[test]
    fn a_new_copier_copies_what_came_after_the_streams_end() {
        let recent = received(&["a", "b", "c", "d", "e"]);
        let missing = recent.missing_after(&tail(&["b", "c"]));
        assert_eq!(texts(missing), ["d", "e"]);
        // Caught up already: nothing.
        assert!(recent.missing_after(&tail(&["d", "e"])).is_empty());
    }

    #[test]
    fn a_repeated_message_is_placed_by_the_run_it_ends() {
        // "p" comes three times; the tail "x p" places the end after the second.
        let recent = received(&["p", "x", "p", "y", "p"]);
        let missing = recent.missing_after(&tail(&["x", "p"]));
        assert_eq!(texts(missing), ["y", "p"]);
    }

    #[test]
    fn after_a_redis_restart_what_the_reader_never_met_is_copied() {
        // "a" and "b" were copied and read before Redis restarted; "c" and "d" came while
        // no one copied. The Stream is new and empty.
        let mut recent = received(&["a", "b", "c", "d"]);
        recent.met(b"a");
        recent.met(b"b");
        assert_eq!(texts(recent.missing_after(&[])), ["c", "d"]);
        // The Stream's tail out of sight (it holds what this instance never received):
        // the same.
        assert_eq!(texts(recent.missing_after(&tail(&["zz"]))), ["c", "d"]);
        // A quiet Stream that expired: everything was met, nothing is copied.
        recent.met(b"c");
        recent.met(b"d");
        assert!(recent.missing_after(&[]).is_empty());
    }

    #[test]
    fn the_reader_meets_messages_after_older_ones_were_forgotten() {
        let mut recent = Recent::default();
        for n in 0..RECENT_MAX + 5 {
            recent.push(Bytes::from(n.to_string()), 20_000);
        }
        // The first five were forgotten (count bound); numbers go on from where they were.
        recent.met(b"10");
        recent.met(b"11");
        let missing = recent.missing_after(&[]);
        assert_eq!(missing.len(), RECENT_MAX + 5 - 12);
        assert_eq!(texts(missing[..1].to_vec()), ["12"]);
    }

    #[test]
    fn the_reader_meets_messages_in_order_and_skips_what_it_never_received() {
        let mut recent = received(&["a", "b", "a", "c"]);
        recent.met(b"a");
        recent.met(b"never received here");
        recent.met(b"a"); // the second "a", after the first
        assert_eq!(texts(recent.missing_after(&[])), ["c"]);
    }

    #[test]
    fn what_was_received_is_bounded_by_age_count_and_bytes() {
        let mut recent = Recent::default();
        recent.push(Bytes::from_static(b"old"), 1_000);
        recent.push(Bytes::from_static(b"new"), 1_000 + millis(RECENT_FOR) + 1);
        assert_eq!(recent.messages.len(), 1, "older than RECENT_FOR");
        let big = Bytes::from(vec![0u8; RECENT_MAX_BYTES / 2 + 1]);
        recent.push(big.clone(), 20_000);
        recent.push(big, 20_000);
        assert_eq!(recent.messages.len(), 1, "over RECENT_MAX_BYTES");
        assert_eq!(recent.bytes, RECENT_MAX_BYTES / 2 + 1);
        for n in 0..RECENT_MAX + 10 {
            recent.push(Bytes::from(n.to_string()), 20_000);
        }
        assert_eq!(recent.messages.len(), RECENT_MAX);
    }

    #[test]
    fn the_next_page_starts_after_the_last_id() {
        assert_eq!(
            id_after("1733500000000-7").as_deref(),
            Some("1733500000000-8")
        );
        assert_eq!(id_after("nonsense"), None);
    }

    #[test]
    fn the_keys_are_the_shared_ones() {
        assert!(STREAM.starts_with(PREFIX) && LEASE.starts_with(PREFIX));
    }

    #[test]
    fn offsets_grow_with_stream_ids() {
        let ids = ["1733500000000-0", "1733500000000-1", "1733500000001-0"];
        let offsets: Vec<Offset> = ids.iter().filter_map(|id| offset_of(id)).collect();
        assert_eq!(offsets.len(), 3);
        assert!(offsets.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(offset_of("1-2"), Some((1 << 20) | 2));
        for bad in ["", "12", "x-1", "1-x", "1-1048576", "17592186044416-0"] {
            assert_eq!(offset_of(bad), None, "{bad}");
        }
    }
}
