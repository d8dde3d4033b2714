//! A short-lived memory of Frappe's positive `get_user_info` answers, off unless
//! `realtime_user_info_cache_seconds` is set.
//!
//! The trade-off: while an answer is remembered, a handshake with that credential is accepted
//! without asking Frappe, so a logout (or a disabled user) takes effect for *new* connections
//! only after the TTL. Revoking the user through `/admin/disconnect` or the revoke channel
//! forgets their answers at once. Refusals and Guest answers are never remembered, so a fresh
//! login is never held back.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most this many answers are kept: one per live browser session is the expected size, and
/// the bound keeps a flood of distinct valid credentials from growing memory without end.
const CAPACITY: usize = 100_000;

pub struct AnswerCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Hash + Eq, V: Clone> AnswerCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key` if it is younger than the TTL.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_at(key, Instant::now())
    }

    fn get_at(&self, key: &K, now: Instant) -> Option<V> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((stored, value)) if now.duration_since(*stored) < self.ttl => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: K, value: V) {
        self.insert_at(key, value, Instant::now());
    }

    fn insert_at(&self, key: K, value: V, now: Instant) {
        let mut entries = self.lock();
        if entries.len() >= CAPACITY {
            entries.retain(|_, (stored, _)| now.duration_since(*stored) < self.ttl);
            if entries.len() >= CAPACITY {
                return;
            }
        }
        entries.insert(key, (now, value));
    }

    /// Forget every answer for which `matches` holds (a revoked user's).
    pub fn forget(&self, matches: impl Fn(&K, &V) -> bool) {
        self.lock().retain(|key, (_, value)| !matches(key, value));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (Instant, V)>> {
        // Each operation leaves the map whole, so a poisoned lock still guards a usable map.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_served_until_its_ttl_then_asked_again() {
        let cache = AnswerCache::new(Duration::from_secs(5));
        let start = Instant::now();
        cache.insert_at("sid", "alice", start);
        assert_eq!(
            cache.get_at(&"sid", start + Duration::from_secs(4)),
            Some("alice")
        );
        assert_eq!(cache.get_at(&"sid", start + Duration::from_secs(5)), None);
        assert!(
            cache.lock().is_empty(),
            "an expired answer is dropped when seen"
        );
    }

    #[test]
    fn forgetting_a_user_drops_only_their_answers() {
        let cache = AnswerCache::new(Duration::from_secs(60));
        cache.insert("sid-a1", "alice");
        cache.insert("sid-a2", "alice");
        cache.insert("sid-b", "bob");
        cache.forget(|_, user| *user == "alice");
        assert_eq!(cache.get(&"sid-a1"), None);
        assert_eq!(cache.get(&"sid-a2"), None);
        assert_eq!(cache.get(&"sid-b"), Some("bob"));
    }
}
