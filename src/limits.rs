//! Per-socket limits on what a client can make the server do: events per second (a token
//! bucket: short bursts pass, a sustained flood is dropped, and a client that keeps flooding
//! is disconnected) and rooms per socket (each subscription costs memory and delivery work).

use std::time::Instant;

/// The limits in force, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// `realtime_client_events_per_second`: sustained rate of client events.
    pub events_per_second: f64,
    /// `realtime_client_event_burst`: events allowed at once; also how many dropped events in
    /// a row make a client abusive.
    pub event_burst: f64,
    /// `realtime_max_rooms_per_socket`, counting the connect-time rooms (`user:`, `website`,
    /// `all`), hence at least 4.
    pub max_rooms: usize,
}

impl Default for Limits {
    /// Generous: Frappe's desk sends a few events a second and follows dozens of rooms.
    fn default() -> Self {
        Self {
            events_per_second: 100.0,
            event_burst: 500.0,
            max_rooms: 500,
        }
    }
}

/// What to do with one client event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Handle,
    Drop,
    /// Dropped, and the client has flooded for a whole burst's worth: disconnect it.
    Disconnect,
}

/// A socket's token bucket.
#[derive(Debug)]
pub struct EventBudget {
    tokens: f64,
    refilled: Instant,
    dropped_in_a_row: u32,
}

impl EventBudget {
    pub fn new(limits: &Limits) -> Self {
        Self {
            tokens: limits.event_burst,
            refilled: Instant::now(),
            dropped_in_a_row: 0,
        }
    }

    pub fn spend(&mut self, limits: &Limits) -> Verdict {
        self.spend_at(limits, Instant::now())
    }

    fn spend_at(&mut self, limits: &Limits, now: Instant) -> Verdict {
        let earned = now.duration_since(self.refilled).as_secs_f64() * limits.events_per_second;
        self.tokens = (self.tokens + earned).min(limits.event_burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.dropped_in_a_row = 0;
            return Verdict::Handle;
        }
        self.dropped_in_a_row += 1;
        if f64::from(self.dropped_in_a_row) >= limits.event_burst {
            Verdict::Disconnect
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LIMITS: Limits = Limits {
        events_per_second: 10.0,
        event_burst: 5.0,
        max_rooms: 10,
    };

    #[test]
    fn a_burst_passes_a_flood_is_dropped_then_disconnected() {
        let start = Instant::now();
        let mut budget = EventBudget::new(&LIMITS);
        let verdicts: Vec<_> = (0..10).map(|_| budget.spend_at(&LIMITS, start)).collect();
        assert_eq!(&verdicts[..5], &[Verdict::Handle; 5]);
        assert_eq!(&verdicts[5..9], &[Verdict::Drop; 4]);
        assert_eq!(verdicts[9], Verdict::Disconnect);
    }

    #[test]
    fn the_budget_refills_at_the_configured_rate() {
        let start = Instant::now();
        let mut budget = EventBudget::new(&LIMITS);
        for _ in 0..5 {
            budget.spend_at(&LIMITS, start);
        }
        assert_eq!(budget.spend_at(&LIMITS, start), Verdict::Drop);
        let later = start + Duration::from_millis(250); // 2.5 events earned
        assert_eq!(budget.spend_at(&LIMITS, later), Verdict::Handle);
        assert_eq!(budget.spend_at(&LIMITS, later), Verdict::Handle);
        assert_eq!(budget.spend_at(&LIMITS, later), Verdict::Drop);
    }
}
