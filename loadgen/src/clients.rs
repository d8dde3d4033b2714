//! The simulated browser tabs: one tokio task per connection, each holding its websocket,
//! answering pings, stamping the receive time of every event, and — while a reconnect storm
//! is under way — coming back after its connection drops, as socket.io-client does, and with
//! `--recover` recovering its session as socket.io-client ≥ 4.6 does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::engineio::{self, ConnectError, Connected, Frame, Socket, Target};
use crate::identity::Identities;
use crate::recorder::{Clock, Percentiles, Recorder, micros_histogram, record_duration};

/// socket.io-client's reconnection backoff (`reconnectionDelay`, `reconnectionDelayMax`,
/// `randomizationFactor`; Frappe's client keeps the defaults 1000 ms, 5000 ms, 0.5): the n-th
/// retry (from 0) waits `delay · 2ⁿ` ± `jitter` of it, capped at `max`. The first retry thus
/// comes 0.5–1.5 s after the drop.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub delay: Duration,
    pub max: Duration,
    pub jitter: f64,
    /// Give up after this many failed retries (0: never). Frappe's client gives up after 3;
    /// a storm measurement wants every client back, so the default is 0.
    pub attempts: u32,
}

impl Backoff {
    pub fn wait(&self, retry: u32) -> Duration {
        let base = self.delay.as_secs_f64() * 2f64.powi(retry.min(30) as i32);
        let deviation = base * self.jitter * fastrand::f64();
        // As backo2: the deviation is added or subtracted with equal chance.
        let jittered = if fastrand::bool() {
            base + deviation
        } else {
            base - deviation
        };
        Duration::from_secs_f64(jittered.clamp(0.0, self.max.as_secs_f64()))
    }
}

/// Failure counts by kind, plus the last message of each kind (to explain them).
#[derive(Debug, Default)]
pub struct Failures {
    counts: Mutex<BTreeMap<&'static str, (u64, String)>>,
}

impl Failures {
    fn add(&self, error: &ConnectError) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = counts.entry(error.kind()).or_default();
        entry.0 += 1;
        entry.1 = error.to_string();
    }

    fn add_timeout(&self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = counts.entry("timeout").or_default();
        entry.0 += 1;
        entry.1 = "no namespace CONNECT within the connect timeout".into();
    }

    /// Counts by kind since the previous call, which starts a new count.
    pub fn take(&self) -> BTreeMap<String, (u64, String)> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut *counts)
            .into_iter()
            .map(|(kind, entry)| (kind.to_owned(), entry))
            .collect()
    }
}

/// What every client task shares.
pub struct Shared {
    /// Where each server instance listens; client `k` connects to `targets[k % len]`.
    pub targets: Vec<Target>,
    pub identities: Identities,
    pub clock: Clock,
    pub recorder: Recorder,
    pub connect_timeout: Duration,
    pub backoff: Backoff,
    /// Sockets currently joined to the namespace.
    pub connected: AtomicUsize,
    /// Whether a dropped client comes back (only during a reconnect storm).
    pub reconnect: AtomicBool,
    /// Successful reconnections since the flag was last raised.
    pub reconnections: AtomicU64,
    /// Whether clients recover their sessions (`--recover`).
    pub recover: bool,
    /// Reconnections that recovered their session (the reply named the pid they sent);
    /// reset by whoever measures them.
    pub recovered: AtomicU64,
    /// Bumped to drop every client's connection at once; each session watches it.
    pub cut: watch::Sender<u64>,
    /// Connection attempts of any kind that failed.
    pub failures: Failures,
    /// Events other than the load generator's (counted, not measured).
    pub other_events: AtomicU64,
}

/// One client's first connection: its latency, or why it failed.
type FirstResult = Result<Duration, Option<ConnectError>>;

struct Client {
    task: JoinHandle<()>,
    alive: Arc<AtomicBool>,
    user: usize,
    /// The server instance it connects to (an index into [`Shared::targets`]).
    instance: usize,
}

/// The figures of one [`Pool::grow`].
#[derive(Debug)]
pub struct GrowOutcome {
    pub attempted: usize,
    pub connected: usize,
    pub wall: Duration,
    pub latency: Percentiles,
    pub failures: BTreeMap<String, (u64, String)>,
}

/// A set of clients; `tabs_per_sid` clients share each sid (the tabs of one browser).
pub struct Pool {
    shared: Arc<Shared>,
    clients: Vec<Client>,
    tabs_per_sid: usize,
}

impl Pool {
    pub fn new(shared: Arc<Shared>, tabs_per_sid: usize) -> Self {
        Self {
            shared,
            clients: Vec::new(),
            tabs_per_sid: tabs_per_sid.max(1),
        }
    }

    /// Distinct sids among the clients connected now.
    pub fn credentials(&self) -> usize {
        self.clients
            .iter()
            .filter(|c| c.alive.load(Ordering::Relaxed))
            .map(|c| c.user)
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// Clients joined to the namespace right now.
    pub fn alive(&self) -> usize {
        self.clients
            .iter()
            .filter(|c| c.alive.load(Ordering::Relaxed))
            .count()
    }

    /// Clients joined right now on each server instance, in instance order.
    pub fn alive_by_instance(&self) -> Vec<usize> {
        let mut alive = vec![0; self.shared.targets.len()];
        for client in &self.clients {
            if client.alive.load(Ordering::Relaxed)
                && let Some(count) = alive.get_mut(client.instance)
            {
                *count += 1;
            }
        }
        alive
    }

    /// The user of a random client that is connected now.
    pub fn random_alive_user(&self) -> Option<usize> {
        if self.clients.is_empty() {
            return None;
        }
        for _ in 0..64 {
            let client = &self.clients[fastrand::usize(..self.clients.len())];
            if client.alive.load(Ordering::Relaxed) {
                return Some(client.user);
            }
        }
        self.clients
            .iter()
            .find(|c| c.alive.load(Ordering::Relaxed))
            .map(|c| c.user)
    }

    /// How many connected clients are logged in as `user` (the tabs sharing its sid).
    pub fn tabs_of(&self, user: usize) -> usize {
        let first = user * self.tabs_per_sid;
        self.clients
            .iter()
            .skip(first)
            .take(self.tabs_per_sid)
            .filter(|c| c.alive.load(Ordering::Relaxed))
            .count()
    }

    /// Add clients until there are `total`, at most `concurrency` connecting at once, and
    /// wait (until `deadline` at most) for each first attempt to end. A client whose first
    /// attempt fails is gone; the outcome counts it. Clients go to the server instances in
    /// turn, so each has its share whatever the total (and tabs sharing a sid land on
    /// different instances, as a browser's tabs behind nginx's round-robin may).
    pub async fn grow(
        &mut self,
        total: usize,
        concurrency: usize,
        deadline: Instant,
    ) -> GrowOutcome {
        let started = Instant::now();
        let before = self.clients.len();
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let (results, mut results_rx) = mpsc::unbounded_channel::<FirstResult>();
        self.shared.failures.take();
        let instances = self.shared.targets.len().max(1);
        for index in before..total {
            let user = index / self.tabs_per_sid;
            let instance = index % instances;
            let sid = self.shared.identities.sid(user);
            let alive = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn(run_client(
                self.shared.clone(),
                Tab { sid, instance },
                alive.clone(),
                permits.clone(),
                results.clone(),
            ));
            self.clients.push(Client {
                task,
                alive,
                user,
                instance,
            });
        }
        drop(results);
        let attempted = total.saturating_sub(before);
        let mut latencies: Histogram<u64> = micros_histogram();
        let mut connected = 0;
        let mut ended = 0;
        while ended < attempted {
            let Ok(Some(result)) =
                tokio::time::timeout_at(deadline.into(), results_rx.recv()).await
            else {
                break;
            };
            ended += 1;
            if let Ok(latency) = result {
                connected += 1;
                record_duration(&mut latencies, latency);
            }
        }
        let mut failures = self.shared.failures.take();
        if ended < attempted {
            failures.insert(
                "unfinished".into(),
                (
                    (attempted - ended) as u64,
                    "still connecting when the phase's time ran out".into(),
                ),
            );
        }
        GrowOutcome {
            attempted,
            connected,
            wall: started.elapsed(),
            latency: Percentiles::of_micros(&latencies),
            failures,
        }
    }

    /// Disconnect every client (their tasks end; the kernel closes the sockets).
    pub fn close(&mut self) {
        for client in self.clients.drain(..) {
            client.task.abort();
            if client.alive.swap(false, Ordering::Relaxed) {
                self.shared.connected.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}

/// Marks a client connected for as long as it lives, and disconnected when dropped — also
/// when the task is aborted mid-session.
struct Joined<'a> {
    shared: &'a Shared,
    alive: &'a AtomicBool,
}

impl<'a> Joined<'a> {
    fn new(shared: &'a Shared, alive: &'a AtomicBool) -> Self {
        alive.store(true, Ordering::Relaxed);
        shared.connected.fetch_add(1, Ordering::Relaxed);
        Self { shared, alive }
    }
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        if self.alive.swap(false, Ordering::Relaxed) {
            self.shared.connected.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What a client that recovers its session (`--recover`) keeps between connections, as
/// socket.io-client ≥ 4.6 does: the session's pid and the offset of the last event it got.
#[derive(Debug, Default)]
struct Resume {
    pid: Option<String>,
    offset: Option<String>,
}

impl Resume {
    /// The CONNECT payload: `recovery: true` asks frappe-realtime for offsets (its opt-in for
    /// clients that are not browsers), then `pid` and `offset` once there is a session.
    fn auth(&self) -> String {
        let mut auth = serde_json::json!({ "recovery": true });
        if let Some(pid) = &self.pid {
            auth["pid"] = pid.as_str().into();
        }
        if let Some(offset) = &self.offset {
            auth["offset"] = offset.as_str().into();
        }
        auth.to_string()
    }

    /// An event carried `offset` (reuses the buffer: this runs for every delivery).
    fn saw(&mut self, offset: &str) {
        let last = self.offset.get_or_insert_with(String::new);
        last.clear();
        last.push_str(offset);
    }

    /// A connection was joined with the reply's `pid`; whether it recovered the session.
    fn joined(&mut self, pid: Option<String>) -> bool {
        let recovered = pid.is_some() && pid == self.pid;
        self.pid = pid;
        recovered
    }
}

/// Who a client is and where it connects: its sid and its server instance.
struct Tab {
    sid: String,
    instance: usize,
}

async fn attempt(
    shared: &Shared,
    tab: &Tab,
    resume: Option<&Resume>,
) -> Result<Connected, Option<ConnectError>> {
    let Some(target) = shared.targets.get(tab.instance) else {
        let error = ConnectError::Protocol(format!("no server instance {}", tab.instance));
        shared.failures.add(&error);
        return Err(Some(error));
    };
    let auth = resume.map(Resume::auth);
    match tokio::time::timeout(
        shared.connect_timeout,
        engineio::connect(target, &tab.sid, auth.as_deref()),
    )
    .await
    {
        Ok(Ok(socket)) => Ok(socket),
        Ok(Err(error)) => {
            shared.failures.add(&error);
            Err(Some(error))
        }
        Err(_) => {
            shared.failures.add_timeout();
            Err(None)
        }
    }
}

async fn run_client(
    shared: Arc<Shared>,
    tab: Tab,
    alive: Arc<AtomicBool>,
    permits: Arc<Semaphore>,
    first: mpsc::UnboundedSender<FirstResult>,
) {
    let started = Instant::now();
    let mut resume = shared.recover.then(Resume::default);
    let joined = {
        let Ok(_permit) = permits.acquire().await else {
            return;
        };
        attempt(&shared, &tab, resume.as_ref()).await
    };
    let mut socket = match joined {
        Ok(joined) => {
            let _ = first.send(Ok(started.elapsed()));
            if let Some(resume) = resume.as_mut() {
                resume.joined(joined.pid);
            }
            joined.socket
        }
        Err(error) => {
            let _ = first.send(Err(error));
            return;
        }
    };
    drop(first);
    loop {
        {
            let _joined = Joined::new(&shared, &alive);
            // The session owns the socket and closes it when it ends: a client holding its
            // dead connection while it reconnects would need two descriptors, and 19.5k
            // clients would run out of them mid-storm.
            session(&shared, tab.instance, socket, resume.as_mut()).await;
        }
        match reconnect(&shared, &tab, resume.as_ref()).await {
            Some(again) => {
                shared.reconnections.fetch_add(1, Ordering::Relaxed);
                if resume.as_mut().is_some_and(|r| r.joined(again.pid)) {
                    shared.recovered.fetch_add(1, Ordering::Relaxed);
                }
                socket = again.socket;
            }
            None => return,
        }
    }
}

/// After a drop: wait and retry with backoff while reconnecting is on (always, for a client
/// that recovers its session: one the server cut comes back for what it missed). `None` when
/// the client gives up — reconnecting is off, it ran out of attempts, or the server refused
/// the namespace (socket.io-client does not retry a CONNECT_ERROR either).
async fn reconnect(shared: &Shared, tab: &Tab, resume: Option<&Resume>) -> Option<Connected> {
    let mut retry = 0;
    let wanted = || resume.is_some() || shared.reconnect.load(Ordering::Relaxed);
    loop {
        if !wanted() {
            return None;
        }
        tokio::time::sleep(shared.backoff.wait(retry)).await;
        if !wanted() {
            return None;
        }
        match attempt(shared, tab, resume).await {
            Ok(socket) => return Some(socket),
            Err(Some(ConnectError::Refused(_))) => return None,
            Err(_) => {
                retry += 1;
                if shared.backoff.attempts != 0 && retry >= shared.backoff.attempts {
                    return None;
                }
            }
        }
    }
}

/// Read until the connection ends or is cut, answering pings, stamping events and noting
/// their offsets; then close it (a cut drops the TCP connection without a goodbye, as a
/// network blip does).
async fn session(
    shared: &Shared,
    instance: usize,
    mut socket: Socket,
    mut resume: Option<&mut Resume>,
) {
    let mut cut = shared.cut.subscribe();
    // One future for the session's life: a new one per message would register with the
    // channel's waiter list (a lock shared by every client) for every delivery.
    let mut cut = std::pin::pin!(cut.changed());
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            _ = &mut cut => return,
        };
        let Some(message) = message else {
            return;
        };
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) | Err(_) => return,
            Ok(_) => continue,
        };
        let frame = engineio::classify(&text);
        if let (Frame::Stamped(_) | Frame::Event, Some(resume)) = (&frame, resume.as_deref_mut())
            && let Some(offset) = engineio::offset(&text)
        {
            resume.saw(offset);
        }
        match frame {
            Frame::Stamped(stamp) => {
                shared
                    .recorder
                    .record(instance, stamp.step, stamp.sent_ns, shared.clock.now_ns());
            }
            Frame::Ping => {
                if socket.send(Message::text("3")).await.is_err() {
                    return;
                }
            }
            Frame::Event => {
                shared.other_events.fetch_add(1, Ordering::Relaxed);
            }
            Frame::Disconnect => return,
            Frame::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_sends_pid_and_offset_once_it_has_them() {
        let mut resume = Resume::default();
        assert_eq!(resume.auth(), r#"{"recovery":true}"#);
        assert!(
            !resume.joined(Some("p1".into())),
            "a first connection recovers nothing"
        );
        resume.saw("41");
        resume.saw("42");
        let auth: serde_json::Value = serde_json::from_str(&resume.auth()).expect("JSON");
        assert_eq!(
            auth,
            serde_json::json!({"recovery": true, "pid": "p1", "offset": "42"})
        );
        assert!(
            resume.joined(Some("p1".into())),
            "the same pid back: recovered"
        );
        assert!(
            !resume.joined(Some("p2".into())),
            "a new pid: a fresh session"
        );
        assert!(!resume.joined(None));
    }

    #[test]
    fn backoff_follows_socket_io_client() {
        let backoff = Backoff {
            delay: Duration::from_millis(1000),
            max: Duration::from_millis(5000),
            jitter: 0.5,
            attempts: 0,
        };
        for _ in 0..200 {
            let first = backoff.wait(0);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_millis(1500));
            let second = backoff.wait(1);
            assert!(second >= Duration::from_millis(1000) && second <= Duration::from_millis(3000));
            assert!(backoff.wait(10) <= Duration::from_millis(5000));
        }
        let uniform = Backoff {
            delay: Duration::from_millis(500),
            jitter: 1.0,
            ..backoff
        };
        for _ in 0..200 {
            assert!(uniform.wait(0) <= Duration::from_millis(1000));
        }
    }
}
