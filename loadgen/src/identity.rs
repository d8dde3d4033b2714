//! Who the simulated browsers are: one `sid` cookie per user, and the user it stands for.
//!
//! The web stand-in and the clients both derive everything from the user number, so the
//! stand-in needs no session table (19.5k entries would be fine, but a table could drift from
//! what the clients send). A per-run nonce makes the sids as long as Frappe's and unguessable
//! across runs, and lets the stand-in tell a real session from a forged one (Guest).

/// The sids and users of one run.
#[derive(Debug, Clone)]
pub struct Identities {
    nonce: String,
}

impl Identities {
    /// Fresh identities: 32 random hex digits shared by every sid of this run.
    pub fn new() -> Self {
        let nonce = (0..32)
            .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
            .collect();
        Self { nonce }
    }

    /// The identities of a run whose nonce is `nonce` (the web stand-in's side).
    pub fn with_nonce(nonce: String) -> Self {
        Self { nonce }
    }

    /// What makes this run's sids its own.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// The `sid` cookie of user `k`.
    pub fn sid(&self, k: usize) -> String {
        format!("lg{k}x{}", self.nonce)
    }

    /// The user `k` is logged in as, as `get_user_info` names it.
    pub fn user(k: usize) -> String {
        format!("user{k}@example.com")
    }

    /// Frappe's room of user `k` (protocol §5.4).
    pub fn user_room(k: usize) -> String {
        format!("user:{}", Self::user(k))
    }

    /// The user behind `sid`, if it is one this run issued.
    pub fn parse_sid(&self, sid: &str) -> Option<usize> {
        let (k, nonce) = sid.strip_prefix("lg")?.split_once('x')?;
        if nonce != self.nonce {
            return None;
        }
        k.parse().ok()
    }
}

impl Default for Identities {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_round_trip_and_foreign_ones_do_not() {
        let ids = Identities::new();
        assert_eq!(ids.parse_sid(&ids.sid(4711)), Some(4711));
        assert_eq!(ids.sid(1).len(), 2 + 1 + 1 + 32);
        let other = Identities::new();
        assert_eq!(ids.parse_sid(&other.sid(4711)), None);
        let same = Identities::with_nonce(ids.nonce().to_owned());
        assert_eq!(same.parse_sid(&ids.sid(3)), Some(3));
        assert_eq!(ids.parse_sid("Guest"), None);
        assert_eq!(ids.parse_sid("lgx"), None);
        assert_eq!(Identities::user_room(7), "user:user7@example.com");
    }
}
