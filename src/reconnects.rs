//! Which connects are reconnects, for the metrics operators watch after a restart or a
//! network blip.
//!
//! Definition (documented in docs/metrics.md): a connect is a *reconnect* when the same user
//! disconnected from the same site less than the reconnect window ago. Guests share one
//! identity, so they are not tracked. A user's new tab opened within the window after another
//! tab closed also counts; the socket.io sid cannot tell them apart, as it is new each time.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Remembered departures are swept when the map reaches this size, then at twice the size
/// that survived the sweep, so the cost of sweeping stays amortised O(1) per departure.
const FIRST_SWEEP_AT: usize = 1024;

pub struct ReconnectTracker {
    window: Duration,
    state: Mutex<Departures>,
}

struct Departures {
    at: HashMap<(String, String), Instant>,
    sweep_at: usize,
}

impl ReconnectTracker {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            state: Mutex::new(Departures {
                at: HashMap::new(),
                sweep_at: FIRST_SWEEP_AT,
            }),
        }
    }

    /// Note that `user` left `site` now.
    pub fn departed(&self, site: &str, user: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .at
            .insert((site.to_owned(), user.to_owned()), Instant::now());
        if state.at.len() >= state.sweep_at {
            let window = self.window;
            state.at.retain(|_, left| left.elapsed() < window);
            state.sweep_at = (state.at.len() * 2).max(FIRST_SWEEP_AT);
        }
    }

    /// If `user` left `site` within the window, how long ago (and forget the departure).
    pub fn arrived(&self, site: &str, user: &str) -> Option<Duration> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let left = state.at.remove(&(site.to_owned(), user.to_owned()))?;
        Some(left.elapsed()).filter(|gap| *gap < self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_return_within_the_window_is_a_reconnect_once() {
        let tracker = ReconnectTracker::new(Duration::from_secs(60));
        assert_eq!(tracker.arrived("a", "u"), None);
        tracker.departed("a", "u");
        assert!(
            tracker.arrived("b", "u").is_none(),
            "another site is not a reconnect"
        );
        assert!(tracker.arrived("a", "u").is_some());
        assert!(tracker.arrived("a", "u").is_none(), "counted once");
    }

    #[test]
    fn departures_older_than_the_window_are_forgotten() {
        let tracker = ReconnectTracker::new(Duration::ZERO);
        for i in 0..3000 {
            tracker.departed("a", &format!("user{i}"));
        }
        assert!(tracker.arrived("a", "user1").is_none());
        let state = tracker.state.lock().expect("lock");
        assert!(state.at.len() < FIRST_SWEEP_AT, "swept: {}", state.at.len());
    }
}
