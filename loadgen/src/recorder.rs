//! Publish→receive latencies of one measurement step, recorded by every client as events
//! arrive.
//!
//! Publisher and clients live in one process and share one monotonic clock origin, so a
//! latency is simply "now minus the stamp in the payload". Deliveries stamped with another
//! step (a backlog arriving late) are counted apart, so one overloaded step cannot flatter or
//! spoil the next.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency kept exactly (10 minutes, in µs); longer ones are clamped to it.
const MAX_LATENCY_US: u64 = 600_000_000;

/// The run's clock: nanoseconds since a fixed origin, for stamping and for receive times.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// From a histogram of microseconds; all zero when it is empty.
    pub fn of_micros(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// A histogram of microseconds from 1 µs to 10 minutes at 3 significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    // Constant bounds that satisfy the constructor's rules (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Record a duration into a microseconds histogram, clamping out-of-range values.
pub fn record_duration(histogram: &mut Histogram<u64>, duration: Duration) {
    let us = u64::try_from(duration.as_micros()).unwrap_or(MAX_LATENCY_US);
    histogram.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// What one step observed.
#[derive(Debug, Clone)]
pub struct StepWindow {
    pub delivered: u64,
    /// The same by server instance: which instance's clients got them.
    pub delivered_by_instance: Vec<u64>,
    pub stale: u64,
    pub latency: Percentiles,
    /// Receive time of the last delivery of this step, on the run's clock.
    pub last_ns: Option<u64>,
}

struct Window {
    step: u32,
    histogram: Histogram<u64>,
    delivered: u64,
    delivered_by_instance: Vec<u64>,
    stale: u64,
    last_ns: Option<u64>,
}

/// Shared by every client task; the lock is uncontended on the single-threaded runtime.
pub struct Recorder {
    window: Mutex<Window>,
}

impl Recorder {
    /// For clients spread over `instances` server instances.
    pub fn new(instances: usize) -> Self {
        Self {
            window: Mutex::new(Window {
                step: 0,
                histogram: micros_histogram(),
                delivered: 0,
                delivered_by_instance: vec![0; instances.max(1)],
                stale: 0,
                last_ns: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // A panic while recording leaves plain counters behind; keep using them.
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Start counting deliveries stamped with `step` (numbered from 1).
    pub fn begin(&self, step: u32) {
        let mut window = self.lock();
        window.step = step;
        window.histogram.reset();
        window.delivered = 0;
        window.delivered_by_instance.fill(0);
        window.stale = 0;
        window.last_ns = None;
    }

    /// One delivery, received at `now_ns` by a client of server instance `instance`.
    pub fn record(&self, instance: usize, step: u32, sent_ns: u64, now_ns: u64) {
        let mut window = self.lock();
        if step != window.step || step == 0 {
            window.stale += 1;
            return;
        }
        window.delivered += 1;
        if let Some(count) = window.delivered_by_instance.get_mut(instance) {
            *count += 1;
        }
        window.last_ns = Some(now_ns);
        let latency = Duration::from_nanos(now_ns.saturating_sub(sent_ns));
        record_duration(&mut window.histogram, latency);
    }

    /// Deliveries of the current step so far.
    pub fn delivered(&self) -> u64 {
        self.lock().delivered
    }

    /// Every delivery seen since the step began, whichever step it belongs to.
    pub fn seen(&self) -> u64 {
        let window = self.lock();
        window.delivered + window.stale
    }

    /// The current step's figures; later deliveries of it count as stale.
    pub fn end(&self) -> StepWindow {
        let mut window = self.lock();
        let result = StepWindow {
            delivered: window.delivered,
            delivered_by_instance: window.delivered_by_instance.clone(),
            stale: window.stale,
            latency: Percentiles::of_micros(&window.histogram),
            last_ns: window.last_ns,
        };
        window.step = 0;
        result
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_of_other_steps_are_stale() {
        let recorder = Recorder::new(2);
        recorder.begin(2);
        recorder.record(0, 2, 1_000_000, 3_000_000); // 2 ms
        recorder.record(1, 2, 1_000_000, 5_000_000); // 4 ms
        recorder.record(1, 1, 0, 9_000_000);
        assert_eq!(recorder.delivered(), 2);
        assert_eq!(recorder.seen(), 3);
        let window = recorder.end();
        assert_eq!(window.delivered, 2);
        assert_eq!(window.delivered_by_instance, [1, 1]);
        assert_eq!(window.stale, 1);
        assert_eq!(window.last_ns, Some(5_000_000));
        assert!((window.latency.max_ms - 4.0).abs() < 0.01, "{window:?}");
        assert!((window.latency.p50_ms - 2.0).abs() < 0.01, "{window:?}");
        // After the step ended, its stragglers are stale too.
        recorder.record(0, 2, 0, 1);
        assert_eq!(recorder.seen(), 4);
        recorder.begin(3);
        assert_eq!(recorder.seen(), 0);
        assert_eq!(recorder.end().delivered_by_instance, [0, 0]);
    }

    #[test]
    fn empty_histograms_give_zeroes() {
        assert_eq!(
            Percentiles::of_micros(&micros_histogram()),
            Percentiles::default()
        );
    }
}
