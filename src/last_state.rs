//! Last state on subscribe: the latest publication of each event to a room whose subscribers
//! want the current state at once, sent to a socket when it joins that room.
//!
//! A client that opens a long job's progress after the job started would otherwise show
//! nothing until the next `task_progress`. Kept: every `task_progress:` room, plus the room
//! prefixes and event names the operator lists. Bounded by entries, bytes and age.
//!
//! Order: a subscriber joins the room and reads the kept state under this store's lock, and
//! the bridge records a publication under it before fanning it out. So a subscriber gets the
//! state and then every later publication; at worst one publication twice, never an older
//! state after a newer one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::rooms;

/// What is kept and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastStateConfig {
    /// Entries older than this are neither sent nor kept.
    pub max_age: Duration,
    /// Room name prefixes whose publications are kept (`task_progress:` always is).
    pub rooms: Vec<String>,
    /// Event names kept in whatever room they are published to.
    pub events: Vec<String>,
    pub max_entries: usize,
    pub max_bytes: usize,
}

impl Default for LastStateConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(600),
            rooms: Vec::new(),
            events: Vec::new(),
            max_entries: 10_000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

impl LastStateConfig {
    fn keeps(&self, room: &str, event: &str) -> bool {
        room.starts_with(rooms::TASK_PREFIX)
            || self
                .rooms
                .iter()
                .any(|prefix| room.starts_with(prefix.as_str()))
            || self.events.iter().any(|kept| kept == event)
    }
}

/// A site's room, as Frappe names it (without the `/` namespace's site prefix).
type RoomKey = (String, String);

struct Entry {
    event: String,
    message: Value,
    size: usize,
    at: Instant,
    order: u64,
}

#[derive(Default)]
struct Kept {
    /// Per room, the latest publication of each event, in publication order.
    rooms: HashMap<RoomKey, Vec<Entry>>,
    /// Every entry by age: (room, event).
    order: BTreeMap<u64, (RoomKey, String)>,
    bytes: usize,
    next: u64,
}

/// The kept state of every site. `None` config: off.
pub struct LastState {
    config: Option<LastStateConfig>,
    kept: Mutex<Kept>,
}

impl LastState {
    pub fn new(config: Option<LastStateConfig>) -> Self {
        Self {
            config,
            kept: Mutex::new(Kept::default()),
        }
    }

    /// Keep `message` as the latest `event` of `room` of `site`, if that room or event is
    /// kept. `size` is its size on Redis, for the byte bound.
    pub fn record(&self, site: &str, room: &str, event: &str, message: &Value, size: usize) {
        let Some(config) = &self.config else {
            return;
        };
        if !config.keeps(room, event) || size > config.max_bytes {
            return;
        }
        let now = Instant::now();
        let mut kept = self.lock();
        let key = (site.to_owned(), room.to_owned());
        kept.remove(&key, event);
        let order = kept.next;
        kept.next += 1;
        kept.bytes += size;
        kept.order.insert(order, (key.clone(), event.to_owned()));
        kept.rooms.entry(key).or_default().push(Entry {
            event: event.to_owned(),
            message: message.clone(),
            size,
            at: now,
            order,
        });
        kept.trim(config, now);
    }

    /// Run `join` (the socket enters `room` of `site`), then `send` each kept event of that
    /// room, oldest first, all under the store's lock (see the module's note on order).
    pub fn subscribe(
        &self,
        site: &str,
        room: &str,
        join: impl FnOnce(),
        mut send: impl FnMut(&str, &Value),
    ) {
        let Some(config) = &self.config else {
            join();
            return;
        };
        let kept = self.lock();
        join();
        let key = (site.to_owned(), room.to_owned());
        let now = Instant::now();
        let fresh = |entry: &&Entry| now.saturating_duration_since(entry.at) <= config.max_age;
        for entry in kept.rooms.get(&key).into_iter().flatten().filter(fresh) {
            send(&entry.event, &entry.message);
        }
    }

    /// Entries and bytes kept now.
    pub fn size(&self) -> (usize, usize) {
        let kept = self.lock();
        (kept.order.len(), kept.bytes)
    }

    /// Every update is one call that leaves the maps consistent, so a poisoned lock is still
    /// good to use.
    fn lock(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Kept {
    fn remove(&mut self, key: &RoomKey, event: &str) {
        let Some(entries) = self.rooms.get_mut(key) else {
            return;
        };
        let Some(at) = entries.iter().position(|entry| entry.event == event) else {
            return;
        };
        let entry = entries.remove(at);
        if entries.is_empty() {
            self.rooms.remove(key);
        }
        self.order.remove(&entry.order);
        self.bytes -= entry.size;
    }

    /// Drop the oldest entries while over a bound or too old.
    fn trim(&mut self, config: &LastStateConfig, now: Instant) {
        while let Some((_, (key, event))) = self.order.first_key_value() {
            let over = self.order.len() > config.max_entries || self.bytes > config.max_bytes;
            let oldest = self.rooms.get(key).and_then(|entries| entries.first());
            let old = oldest.is_some_and(|e| now.saturating_duration_since(e.at) > config.max_age);
            if !over && !old {
                break;
            }
            let (key, event) = (key.clone(), event.clone());
            self.remove(&key, &event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kept_by(max_entries: usize, max_bytes: usize) -> LastState {
        LastState::new(Some(LastStateConfig {
            rooms: vec!["doc:".into()],
            events: vec!["ai_progress".into()],
            max_entries,
            max_bytes,
            ..LastStateConfig::default()
        }))
    }

    fn state_of(store: &LastState, site: &str, room: &str) -> Vec<(String, Value)> {
        let mut sent = Vec::new();
        let mut joined = false;
        store.subscribe(
            site,
            room,
            || joined = true,
            |e, m| sent.push((e.to_owned(), m.clone())),
        );
        assert!(joined);
        sent
    }

    #[test]
    fn a_subscriber_gets_the_latest_of_each_event_of_a_kept_room() {
        let store = kept_by(100, 1 << 20);
        store.record(
            "s",
            "task_progress:1",
            "task_progress",
            &json!({"p": 1}),
            10,
        );
        store.record(
            "s",
            "task_progress:1",
            "task_progress",
            &json!({"p": 2}),
            10,
        );
        store.record("s", "task_progress:1", "msgprint", &json!("hi"), 10);
        store.record("s", "doctype:ToDo", "list_update", &json!({}), 10);
        store.record("s", "user:a", "ai_progress", &json!({"step": 3}), 10);
        assert_eq!(
            state_of(&store, "s", "task_progress:1"),
            [
                ("task_progress".to_owned(), json!({"p": 2})),
                ("msgprint".to_owned(), json!("hi"))
            ]
        );
        assert!(
            state_of(&store, "s", "doctype:ToDo").is_empty(),
            "not a kept room"
        );
        assert_eq!(state_of(&store, "s", "user:a").len(), 1, "a kept event");
        assert!(state_of(&store, "other", "task_progress:1").is_empty());
        assert_eq!(store.size(), (3, 30));
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let store = kept_by(3, 1 << 20);
        for n in 0..100 {
            store.record(
                "s",
                &format!("task_progress:{n}"),
                "task_progress",
                &json!(n),
                10,
            );
        }
        assert_eq!(store.size(), (3, 30));
        assert_eq!(state_of(&store, "s", "task_progress:99").len(), 1);
        assert!(state_of(&store, "s", "task_progress:0").is_empty());
        let store = kept_by(100, 25);
        for n in 0..10 {
            store.record("s", &format!("doc:T/{n}"), "doc_update", &json!(n), 10);
        }
        assert_eq!(store.size(), (2, 20));
    }

    #[test]
    fn off_keeps_nothing_and_still_joins() {
        let store = LastState::new(None);
        store.record("s", "task_progress:1", "task_progress", &json!(1), 1);
        assert!(state_of(&store, "s", "task_progress:1").is_empty());
    }
}
