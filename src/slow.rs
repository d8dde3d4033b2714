//! Slow consumers: websocket clients that stopped taking bytes.
//!
//! Each socket's send queue is bounded by packets (engine.io's `max_buffer_size`); while a
//! client does not read, its connection's kernel buffer fills, then that queue, then sends to
//! it are dropped. Dropping silently would leave the page wrong without it knowing, so the
//! connection is cut instead and the client reconnects and resyncs:
//! - at once (after [`OVERFLOW_GRACE`]) when a broadcast finds a full queue, for every
//!   websocket whose connection has taken no bytes since;
//! - otherwise once a connection has taken no bytes for `realtime_slow_client_timeout`.
//!
//! The bytes a slow client can hold are bounded too: the queue holds at most
//! `max_buffer_size` packets, a broadcast's packet is shared by every socket it went to (it is
//! serialized once), and the connection itself holds one websocket write buffer and what the
//! kernel accepted. Polling clients hold nothing between polls beyond the same packet bound,
//! and one that stops polling is ended by engine.io's heartbeat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use ::metrics::counter;

use crate::app::App;
use crate::connection::WriteMeter;
use crate::metrics;

/// How often stalled connections are looked for when no queue has overflowed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// After an overflow, a connection stalled this long is one whose queue filled: a client that
/// reads, however slowly, never stays stalled this long on loopback or a LAN.
const OVERFLOW_GRACE: Duration = Duration::from_millis(500);

/// The websocket connections of live sockets, by Engine.IO session id.
#[derive(Default)]
pub struct SlowConsumers {
    websockets: Mutex<HashMap<String, Arc<WriteMeter>>>,
    overflowed: Notify,
}

impl SlowConsumers {
    /// Watch `meter`, the websocket connection of session `sid`.
    pub fn track(&self, sid: String, meter: Arc<WriteMeter>) {
        let mut websockets = self.lock();
        // Upgrade requests naming a session that never existed leave an entry behind;
        // drop entries whose connection is gone whenever the map has doubled.
        if websockets.len() >= 1024 && websockets.len().is_power_of_two() {
            websockets.retain(|_, meter| Arc::strong_count(meter) > 1);
        }
        websockets.insert(sid, meter);
    }

    /// Stop watching session `sid`; returns whether its connection was cut as slow.
    pub fn forget(&self, sid: &str) -> bool {
        self.lock().remove(sid).is_some_and(|meter| meter.is_cut())
    }

    /// A send found some socket's queue full.
    pub fn note_overflow(&self) {
        self.overflowed.notify_one();
    }

    /// Cut slow connections until the task is aborted.
    pub async fn run(self: Arc<Self>, app: Arc<App>) {
        loop {
            let threshold = tokio::select! {
                () = tokio::time::sleep(SWEEP_EVERY) => app.settings().config.slow_client_timeout,
                () = self.overflowed.notified() => {
                    // Give the writer a moment: the queue may have filled in a burst that a
                    // reading client is about to drain.
                    tokio::time::sleep(OVERFLOW_GRACE).await;
                    OVERFLOW_GRACE
                }
            };
            self.cut_stalled(threshold);
        }
    }

    /// Cut every connection that has taken no bytes for `threshold`; returns how many.
    fn cut_stalled(&self, threshold: Duration) -> usize {
        let websockets = self.lock();
        let mut cut = 0;
        for (sid, meter) in websockets.iter() {
            let Some(stalled) = meter.stalled_for() else {
                continue;
            };
            if stalled >= threshold && !meter.is_cut() {
                meter.cut();
                cut += 1;
                counter!(metrics::SLOW_CONSUMERS).increment(1);
                tracing::warn!(socket = %sid, stalled_ms = u64::try_from(stalled.as_millis()).unwrap_or(u64::MAX),
                    "cutting a slow consumer: its connection takes no bytes");
            }
        }
        cut
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<WriteMeter>>> {
        // Each operation leaves the map whole, so a poisoned lock still guards a usable map.
        self.websockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
