//! Slow consumers: websocket clients that stopped taking bytes.
//!
//! While a client does not read, its connection's kernel buffer fills, then its socket's send
//! queue (engine.io's `max_buffer_size` packets), then sends to it are dropped. Dropping
//! silently would leave the page wrong without it knowing, so the connection is cut instead
//! and the client reconnects and resyncs. A connection that takes no bytes is cut:
//! - once publications worth more than `realtime_slow_client_max_bytes` were queued for it
//!   since it stopped (the byte bound),
//! - 0.5 s after a broadcast found its queue full (the packet bound),
//! - once it has taken no bytes for `realtime_slow_client_timeout`.
//!
//! Bytes are charged only to sockets already seen stalled, so delivery to clients that keep up
//! costs one atomic load per publication. Polling clients hold at most the same packet bound
//! between polls, and one that stops polling is ended by engine.io's heartbeat.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use socketioxide::adapter::LocalAdapter;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::Sid;
use tokio::sync::Notify;

use ::metrics::counter;

use crate::app::App;
use crate::connection::WriteMeter;
use crate::metrics;

/// How often stalled connections are looked for when no queue has overflowed.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// After an overflow, a connection stalled this long is one whose queue filled: a client that
/// reads, however slowly, never stays stalled this long on loopback or a LAN.
const OVERFLOW_GRACE: Duration = Duration::from_millis(500);

type Meters = HashMap<Sid, Arc<WriteMeter>>;

/// The websocket connections of live sockets, by Engine.IO session id.
#[derive(Default)]
pub struct SlowConsumers {
    websockets: Mutex<Meters>,
    /// The connections stalled at the last sweep: the only ones publications are charged to.
    stalled: Mutex<Meters>,
    any_stalled: AtomicBool,
    /// `realtime_slow_client_max_bytes`, refreshed by every sweep, so that delivery never
    /// reads the settings for a bound that only applies once some socket is stalled.
    max_backlog: AtomicU64,
    overflowed: Notify,
}

impl SlowConsumers {
    /// Watch `meter`, the websocket connection of session `sid`.
    pub fn track(&self, sid: Sid, meter: Arc<WriteMeter>) {
        let mut websockets = lock(&self.websockets);
        // An upgrade request naming a session that no longer exists leaves an entry behind;
        // drop entries whose connection is gone whenever the map doubles.
        if websockets.len() >= 1024 && websockets.len().is_power_of_two() {
            websockets.retain(|_, meter| Arc::strong_count(meter) > 1);
        }
        websockets.insert(sid, meter);
    }

    /// Stop watching session `sid`; returns whether its connection was cut as slow.
    pub fn forget(&self, sid: Sid) -> bool {
        lock(&self.stalled).remove(&sid);
        lock(&self.websockets)
            .remove(&sid)
            .is_some_and(|meter| meter.is_cut())
    }

    /// A send found some socket's queue full.
    pub fn note_overflow(&self) {
        self.overflowed.notify_one();
    }

    /// Charge a publication of `bytes` sent to `room` (every socket when `None`) of
    /// `namespace` to the stalled sockets it went to; cut those past the byte bound.
    pub fn charge(
        &self,
        namespace: &BroadcastOperators<LocalAdapter>,
        room: Option<&str>,
        bytes: usize,
    ) {
        if !self.any_stalled.load(Ordering::Relaxed) {
            return;
        }
        let max_bytes = self.max_backlog.load(Ordering::Relaxed);
        let stalled = lock(&self.stalled);
        for (sid, meter) in stalled.iter() {
            let Some(socket) = namespace.get_socket(*sid) else {
                continue;
            };
            if room.is_some_and(|room| !socket.rooms().iter().any(|joined| joined == room)) {
                continue;
            }
            let backlog = meter.add_backlog(bytes as u64);
            if backlog > max_bytes && !meter.is_cut() {
                cut(
                    sid,
                    meter,
                    "more bytes queued than realtime_slow_client_max_bytes",
                );
            }
        }
    }

    /// Cut slow connections until the task is aborted.
    pub async fn run(self: Arc<Self>, app: Arc<App>) {
        loop {
            let config = &app.settings().config;
            self.max_backlog
                .store(config.slow_client_max_bytes, Ordering::Relaxed);
            let timeout = config.slow_client_timeout;
            let (threshold, why) = tokio::select! {
                () = tokio::time::sleep(SWEEP_EVERY) => (
                    timeout,
                    "took no bytes for realtime_slow_client_timeout",
                ),
                () = self.overflowed.notified() => {
                    // Give the writer a moment: the queue may have filled in a burst that a
                    // reading client is about to drain.
                    tokio::time::sleep(OVERFLOW_GRACE).await;
                    (OVERFLOW_GRACE, "its send queue overflowed")
                }
            };
            self.sweep(threshold, why);
        }
    }

    /// Cut every connection that has taken no bytes for `threshold`, and note which are
    /// stalled at all, for [`SlowConsumers::charge`].
    fn sweep(&self, threshold: Duration, why: &'static str) {
        let websockets = lock(&self.websockets);
        let mut stalled = lock(&self.stalled);
        stalled.clear();
        for (sid, meter) in websockets.iter() {
            let Some(stalled_for) = meter.stalled_for() else {
                continue;
            };
            if meter.is_cut() {
                continue;
            }
            if stalled_for >= threshold {
                cut(sid, meter, why);
            } else {
                stalled.insert(*sid, meter.clone());
            }
        }
        self.any_stalled
            .store(!stalled.is_empty(), Ordering::Relaxed);
    }
}

fn cut(sid: &Sid, meter: &WriteMeter, why: &'static str) {
    meter.cut();
    counter!(metrics::SLOW_CONSUMERS).increment(1);
    let stalled_ms = meter
        .stalled_for()
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    tracing::warn!(socket = %sid, stalled_ms, why, "cutting a slow consumer");
}

fn lock(meters: &Mutex<Meters>) -> std::sync::MutexGuard<'_, Meters> {
    // Each operation leaves the map whole, so a poisoned lock still guards a usable map.
    meters.lock().unwrap_or_else(PoisonError::into_inner)
}
