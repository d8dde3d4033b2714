//! The heartbeat of one session, as a state machine with a single deadline, so a transport
//! needs one timer for it and the timing rules are tested without a clock.
//!
//! Engine.IO 4: the server sends PING `ping_interval` after the session opened (not at once:
//! the official suite counts packets, and clients expect the open packet to be followed by
//! data, not by a PING) and then every `ping_interval` (the protocol's "every pingInterval
//! ms", counted from the previous PING rather than from its PONG, so the client's round trip
//! does not stretch the cadence), waiting `ping_timeout` for each PONG.
//! Engine.IO 3: the client pings; the server answers each PING with a PONG and gives up when
//! no PING came for `ping_interval + ping_timeout`.

use std::time::Duration;

use engineioxide_core::ProtocolVersion;
use tokio::time::Instant;

/// The two durations the open packet announces.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// v4: the next PING goes out at this instant.
    PingAt(Instant),
    /// v4: a PING went out at `sent`; its PONG is due by `by`.
    PongBy { sent: Instant, by: Instant },
    /// v3: the client's next PING is due by this instant.
    ClientPingBy(Instant),
}

/// What is due when the deadline has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing yet (woken early, or the deadline moved).
    Nothing,
    /// Send a PING now.
    Ping,
    /// The client missed its PONG or PING: close the session.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat(Phase);

impl Heartbeat {
    /// The heartbeat of a session that opened (or upgraded) at `now`.
    pub fn new(protocol: ProtocolVersion, timing: Timing, now: Instant) -> Self {
        Self(match protocol {
            ProtocolVersion::V4 => Phase::PingAt(now + timing.interval),
            ProtocolVersion::V3 => Phase::ClientPingBy(now + timing.interval + timing.timeout),
        })
    }

    /// When [`Heartbeat::poll`] next has something to do.
    pub fn deadline(&self) -> Instant {
        match self.0 {
            Phase::PingAt(at) | Phase::PongBy { by: at, .. } | Phase::ClientPingBy(at) => at,
        }
    }

    /// Whether the client has missed its deadline by `now`.
    pub fn expired(&self, now: Instant) -> bool {
        match self.0 {
            Phase::PingAt(_) => false,
            Phase::PongBy { by, .. } | Phase::ClientPingBy(by) => now >= by,
        }
    }

    /// What is due at `now`; a PING reported here counts as sent when it was due, so the
    /// heartbeat keeps its schedule whatever the timer's lateness: the PONG is due
    /// `interval + timeout` after the previous one, as a client counts it. Only a PING so late
    /// that this has passed gets a whole timeout from now.
    pub fn poll(&mut self, timing: Timing, now: Instant) -> Due {
        if now < self.deadline() {
            return Due::Nothing;
        }
        match self.0 {
            Phase::PingAt(due) => {
                let on_schedule = due + timing.timeout;
                self.0 = Phase::PongBy {
                    sent: due,
                    by: if on_schedule > now {
                        on_schedule
                    } else {
                        now + timing.timeout
                    },
                };
                Due::Ping
            }
            Phase::PongBy { .. } | Phase::ClientPingBy(_) => Due::TimedOut,
        }
    }

    /// A PONG arrived (v4): the next PING goes an interval after the last one. One that
    /// nobody asked for changes nothing.
    pub fn pong(&mut self, timing: Timing, now: Instant) {
        if let Phase::PongBy { sent, .. } = self.0 {
            self.0 = Phase::PingAt((sent + timing.interval).max(now));
        }
    }

    /// A PING arrived from the client (v3); the server answers it, and the next is due later.
    pub fn client_ping(&mut self, timing: Timing, now: Instant) {
        if let Phase::ClientPingBy(_) = self.0 {
            self.0 = Phase::ClientPingBy(now + timing.interval + timing.timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        interval: Duration::from_millis(300),
        timeout: Duration::from_millis(200),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn v4_pings_only_after_the_interval_then_waits_the_timeout_for_the_pong() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(ProtocolVersion::V4, TIMING, start);
        assert_eq!(heartbeat.deadline(), start + ms(300));
        assert_eq!(heartbeat.poll(TIMING, start), Due::Nothing);
        assert_eq!(heartbeat.poll(TIMING, start + ms(299)), Due::Nothing);
        assert_eq!(heartbeat.poll(TIMING, start + ms(300)), Due::Ping);
        assert_eq!(heartbeat.deadline(), start + ms(500));
        assert!(!heartbeat.expired(start + ms(499)));
        assert!(heartbeat.expired(start + ms(500)));
        assert_eq!(heartbeat.poll(TIMING, start + ms(500)), Due::TimedOut);
    }

    #[test]
    fn a_late_timer_does_not_move_the_schedule() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(ProtocolVersion::V4, TIMING, start);
        assert_eq!(heartbeat.poll(TIMING, start + ms(305)), Due::Ping);
        assert_eq!(
            heartbeat.deadline(),
            start + ms(500),
            "the PONG is due on schedule"
        );
        heartbeat.pong(TIMING, start + ms(350));
        assert_eq!(heartbeat.deadline(), start + ms(600), "the next PING too");
        let mut starved = Heartbeat::new(ProtocolVersion::V4, TIMING, start);
        assert_eq!(starved.poll(TIMING, start + ms(900)), Due::Ping);
        assert_eq!(
            starved.deadline(),
            start + ms(1100),
            "a PING past its whole window still gets a timeout to answer"
        );
    }

    #[test]
    fn v4_pings_every_interval_counted_from_the_last_ping() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(ProtocolVersion::V4, TIMING, start);
        heartbeat.pong(TIMING, start + ms(100));
        assert_eq!(
            heartbeat.deadline(),
            start + ms(300),
            "an unasked PONG is ignored"
        );
        assert_eq!(heartbeat.poll(TIMING, start + ms(300)), Due::Ping);
        heartbeat.pong(TIMING, start + ms(350));
        assert_eq!(
            heartbeat.deadline(),
            start + ms(600),
            "the PONG's round trip does not stretch the cadence"
        );
        assert!(!heartbeat.expired(start + ms(10_000)), "no PONG is awaited");
    }

    #[test]
    fn v3_waits_interval_plus_timeout_for_each_client_ping() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(ProtocolVersion::V3, TIMING, start);
        assert_eq!(heartbeat.deadline(), start + ms(500));
        heartbeat.client_ping(TIMING, start + ms(400));
        assert_eq!(heartbeat.deadline(), start + ms(900));
        assert_eq!(heartbeat.poll(TIMING, start + ms(899)), Due::Nothing);
        assert_eq!(heartbeat.poll(TIMING, start + ms(900)), Due::TimedOut);
    }
}
