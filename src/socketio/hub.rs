//! Who is in a namespace and in which of its rooms: the local membership index, kept apart
//! (as centrifuge's `Hub` is from its `Client`) from the per-session state machine and from
//! where publications come from. A member is anything cheap to clone (a
//! [`Socket`](super::Socket) in the product), keyed by its id. A fan-out takes a snapshot of
//! the members under a read lock and sends after releasing it, so joins, leaves and connects
//! never wait behind a large broadcast.
//!
//! Room names are interned: the room owns one `Arc<str>` and each member's own list of rooms
//! holds a clone of it, so a membership costs a pointer, not a copy of the name. A room knows
//! its member count, and goes away with its last member.
//!
//! Several instances later: rooms another process can see are a second index kept next to
//! this one (e.g. Redis sets updated from [`Hub::join`] and [`Hub::leave`], which every room
//! change goes through); this one stays the local truth that fan-outs read.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use engineioxide_core::Sid;

pub(crate) struct Hub<M> {
    members: RwLock<Members<M>>,
    rooms: RwLock<HashMap<Arc<str>, Room<M>>>,
}

struct Members<M> {
    /// Set once the namespace is removed: no member may enter after its last snapshot.
    closed: bool,
    all: HashMap<Sid, M>,
}

struct Room<M> {
    /// The interned name, the same allocation as the map's key.
    name: Arc<str>,
    members: HashMap<Sid, M>,
}

impl<M: Clone> Hub<M> {
    pub(crate) fn new() -> Self {
        Self {
            members: RwLock::new(Members {
                closed: false,
                all: HashMap::new(),
            }),
            rooms: RwLock::new(HashMap::new()),
        }
    }

    /// Admit `member`; false once the hub is closed.
    pub(crate) fn add(&self, id: Sid, member: M) -> bool {
        let mut members = write(&self.members);
        if members.closed {
            return false;
        }
        members.all.insert(id, member);
        true
    }

    pub(crate) fn remove(&self, id: Sid) {
        write(&self.members).all.remove(&id);
    }

    /// Put `member` in `room`, creating the room; returns the room's interned name.
    pub(crate) fn join(&self, room: &str, id: Sid, member: M) -> Arc<str> {
        let mut rooms = write(&self.rooms);
        if let Some(existing) = rooms.get_mut(room) {
            existing.members.insert(id, member);
            return existing.name.clone();
        }
        let name: Arc<str> = Arc::from(room);
        let members = HashMap::from([(id, member)]);
        let entry = Room {
            name: name.clone(),
            members,
        };
        rooms.insert(name.clone(), entry);
        name
    }

    /// Take `id` out of `room`; the room goes with its last member.
    pub(crate) fn leave(&self, room: &str, id: Sid) {
        let mut rooms = write(&self.rooms);
        let emptied = rooms.get_mut(room).is_some_and(|existing| {
            existing.members.remove(&id);
            existing.members.is_empty()
        });
        if emptied {
            rooms.remove(room);
        }
    }

    pub(crate) fn len(&self) -> usize {
        read(&self.members).all.len()
    }

    /// How many members `room` has: O(1).
    pub(crate) fn room_len(&self, room: &str) -> usize {
        read(&self.rooms)
            .get(room)
            .map_or(0, |existing| existing.members.len())
    }

    /// Every room whose name `wanted` accepts, with its member count.
    pub(crate) fn room_sizes(&self, wanted: impl Fn(&str) -> bool) -> Vec<(Arc<str>, usize)> {
        read(&self.rooms)
            .values()
            .filter(|room| wanted(&room.name))
            .map(|room| (room.name.clone(), room.members.len()))
            .collect()
    }

    /// The members of `room` (of the whole hub when `None`), without `except`. The locks are
    /// released before this returns: send to the snapshot, not under the lock.
    pub(crate) fn snapshot(&self, room: Option<&str>, except: Option<Sid>) -> Vec<M> {
        let keep = |id: &Sid| Some(*id) != except;
        match room {
            None => {
                let members = read(&self.members);
                let all = members.all.iter();
                all.filter(|(id, _)| keep(id))
                    .map(|(_, m)| m.clone())
                    .collect()
            }
            Some(room) => read(&self.rooms)
                .get(room)
                .map_or_else(Vec::new, |existing| {
                    let all = existing.members.iter();
                    all.filter(|(id, _)| keep(id))
                        .map(|(_, m)| m.clone())
                        .collect()
                }),
        }
    }

    /// Close the hub to newcomers and hand back every member, for their disconnection. Each
    /// member still leaves its rooms itself, as it would on any other disconnect.
    pub(crate) fn close(&self) -> Vec<M> {
        let mut members = write(&self.members);
        members.closed = true;
        members.all.drain().map(|(_, m)| m).collect()
    }
}

/// A panic elsewhere cannot leave these maps half-updated (every update is one call), so a
/// poisoned lock is still good to use.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids<const N: usize>() -> [Sid; N] {
        std::array::from_fn(|_| Sid::new())
    }

    fn sorted(mut members: Vec<u32>) -> Vec<u32> {
        members.sort_unstable();
        members
    }

    #[test]
    fn a_room_counts_its_members_and_goes_with_the_last() {
        let hub = Hub::new();
        let [a, b] = ids();
        hub.join("doc:1", a, 1);
        hub.join("doc:1", b, 2);
        hub.join("doc:1", a, 1);
        assert_eq!(hub.room_len("doc:1"), 2);
        hub.leave("doc:1", a);
        assert_eq!(hub.room_len("doc:1"), 1);
        hub.leave("doc:1", b);
        assert_eq!(hub.room_len("doc:1"), 0);
        assert!(read(&hub.rooms).is_empty(), "an empty room is dropped");
        hub.leave("doc:1", b);
        hub.leave("never", a);
    }

    #[test]
    fn room_names_are_interned() {
        let hub = Hub::new();
        let [a, b] = ids();
        let first = hub.join("user:x", a, 1);
        let second = hub.join("user:x", b, 2);
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn snapshots_leave_out_the_excepted_member() {
        let hub = Hub::new();
        let [a, b, c] = ids();
        for (id, member) in [(a, 1), (b, 2), (c, 3)] {
            assert!(hub.add(id, member));
        }
        hub.join("r", a, 1);
        hub.join("r", b, 2);
        assert_eq!(sorted(hub.snapshot(None, None)), [1, 2, 3]);
        assert_eq!(sorted(hub.snapshot(None, Some(b))), [1, 3]);
        assert_eq!(sorted(hub.snapshot(Some("r"), Some(a))), [2]);
        assert!(hub.snapshot(Some("nobody"), None).is_empty());
        assert_eq!(hub.len(), 3);
    }

    #[test]
    fn a_closed_hub_hands_back_its_members_and_admits_no_one() {
        let hub = Hub::new();
        let [a, b] = ids();
        hub.add(a, 1);
        assert_eq!(hub.close(), [1]);
        assert!(!hub.add(b, 2));
        assert_eq!(hub.len(), 0);
    }

    #[test]
    fn removal_forgets_the_member() {
        let hub = Hub::new();
        let [a] = ids();
        hub.add(a, 1);
        hub.remove(a);
        assert_eq!(hub.len(), 0);
    }
}
