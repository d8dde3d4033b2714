//! Connection caps per site, per client address and per user: one tenant, one address or one
//! account cannot take every connection the process can hold. All are off unless configured.
//!
//! A socket holds a [`Seat`] for its lifetime; dropping the seat (when the socket's state is
//! dropped, whatever ended it) gives it back, so counts never drift.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The caps in force (`realtime_max_connections_per_site`, `…_per_ip`, `…_per_user`);
/// `None` means no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub per_site: Option<usize>,
    pub per_ip: Option<usize>,
    pub per_user: Option<usize>,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapExceeded {
    Site,
    Ip,
    User,
}

impl CapExceeded {
    pub fn label(self) -> &'static str {
        match self {
            Self::Site => "too_many_connections_site",
            Self::Ip => "too_many_connections_ip",
            Self::User => "too_many_connections_user",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Site(String),
    Ip(IpAddr),
    User(String, String),
}

/// Live connection counts, shared by every namespace.
#[derive(Debug, Default)]
pub struct Seats {
    counts: Mutex<HashMap<Key, usize>>,
}

/// One admitted connection's place in the counts.
#[derive(Debug)]
pub struct Seat {
    seats: Arc<Seats>,
    keys: Vec<Key>,
}

impl Seats {
    /// Take a seat for a connection of `user` on `site` from `ip`, or say which cap is full.
    /// Checking and counting happen under one lock, so concurrent handshakes cannot both
    /// take the last seat.
    pub fn take(
        self: &Arc<Self>,
        caps: &Caps,
        site: &str,
        ip: Option<IpAddr>,
        user: &str,
    ) -> Result<Seat, CapExceeded> {
        let mut wanted = vec![(Key::Site(site.to_owned()), caps.per_site, CapExceeded::Site)];
        if let Some(ip) = ip {
            wanted.push((Key::Ip(ip), caps.per_ip, CapExceeded::Ip));
        }
        wanted.push((
            Key::User(site.to_owned(), user.to_owned()),
            caps.per_user,
            CapExceeded::User,
        ));
        let mut counts = self.lock();
        for (key, cap, exceeded) in &wanted {
            if let Some(cap) = cap
                && counts.get(key).copied().unwrap_or(0) >= *cap
            {
                return Err(*exceeded);
            }
        }
        let keys: Vec<Key> = wanted.into_iter().map(|(key, _, _)| key).collect();
        for key in &keys {
            *counts.entry(key.clone()).or_insert(0) += 1;
        }
        Ok(Seat {
            seats: self.clone(),
            keys,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, usize>> {
        // Every update is a whole increment or decrement, so a poisoned map is still consistent.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut counts = self.seats.lock();
        for key in &self.keys {
            if let Some(count) = counts.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[test]
    fn each_cap_refuses_once_full_and_a_dropped_seat_frees_its_place() {
        let seats = Arc::new(Seats::default());
        let caps = Caps {
            per_site: Some(3),
            per_ip: Some(2),
            per_user: Some(1),
        };
        let first = seats.take(&caps, "a", LOOPBACK, "u1").expect("first seat");
        assert_eq!(
            seats.take(&caps, "a", LOOPBACK, "u1").unwrap_err(),
            CapExceeded::User
        );
        let _second = seats.take(&caps, "a", LOOPBACK, "u2").expect("second user");
        assert_eq!(
            seats.take(&caps, "a", LOOPBACK, "u3").unwrap_err(),
            CapExceeded::Ip
        );
        let _third = seats
            .take(&caps, "a", None, "u3")
            .expect("no address known");
        assert_eq!(
            seats.take(&caps, "a", None, "u4").unwrap_err(),
            CapExceeded::Site
        );
        assert!(seats.take(&caps, "b", None, "u1").is_ok(), "other site");
        drop(first);
        assert!(seats.take(&caps, "a", None, "u1").is_ok());
    }

    #[test]
    fn no_caps_admit_everything_and_leave_no_counts_behind() {
        let seats = Arc::new(Seats::default());
        let taken: Vec<_> = (0..100)
            .map(|_| seats.take(&Caps::default(), "a", LOOPBACK, "u"))
            .collect();
        assert!(taken.iter().all(Result::is_ok));
        drop(taken);
        assert!(seats.lock().is_empty());
    }
}
