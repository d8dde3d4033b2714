//! Session ids that nginx's `hash $arg_sid` upstream sends back to the instance that made
//! them, so several instances can sit behind one `upstream` block with long-polling intact.
//!
//! A long-polling client sends every request of its session with `?sid=<id>`, and each must
//! reach the process that holds the session. nginx's `hash` balancer (without `consistent`)
//! picks, for a key, the server at `((crc32(key) >> 16) & 0x7fff) % n` among `n` servers of
//! weight 1, in the order of the `server` lines; a request with no `sid` (the handshake) has
//! an empty key and goes round-robin (`ngx_http_upstream_hash_module.c`,
//! `ngx_http_upstream_get_hash_peer`). So the instance on line `index` draws random ids until
//! one hashes to `index`: `n` draws on average. Only if that server is down does nginx rehash
//! to another, which does not know the session; the client then starts a new one, as it
//! would after any lost session.

use engineioxide_core::Sid;

/// Which `server` line of the upstream block this instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSlot {
    /// From 0, in the order of the `server` lines.
    pub index: usize,
    /// How many `server` lines (all of weight 1) the block has.
    pub count: usize,
}

/// Draws before giving up on a matching id: with `count` slots a draw matches with
/// probability `1/count`, so `64 * count` draws all missing has probability below 1e-27.
const DRAWS_PER_SLOT: usize = 64;

impl UpstreamSlot {
    /// A new random session id that nginx's `hash $arg_sid` sends to this slot.
    pub fn new_sid(self) -> Sid {
        let draws = DRAWS_PER_SLOT * self.count.max(1);
        let mut sid = Sid::new();
        for _ in 0..draws {
            if nginx_hash_pick(sid.as_str(), self.count) == self.index {
                break;
            }
            sid = Sid::new();
        }
        sid
    }
}

/// The server nginx's `hash <key>` balancer tries first for `key`, among `count` servers of
/// weight 1.
fn nginx_hash_pick(key: &str, count: usize) -> usize {
    let hash = (crc32fast::hash(key.as_bytes()) >> 16) & 0x7fff;
    usize::try_from(hash).unwrap_or(0) % count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pick_is_nginx_s() {
        // crc32("abc") = 0x352441c2: (0x352441c2 >> 16) & 0x7fff = 0x3524 = 13604.
        assert_eq!(nginx_hash_pick("abc", 3), 13604 % 3);
        assert_eq!(nginx_hash_pick("abc", 1), 0);
    }

    #[test]
    fn every_slot_gets_ids_that_hash_to_it() {
        for count in 1..=8 {
            for index in 0..count {
                let slot = UpstreamSlot { index, count };
                for _ in 0..50 {
                    assert_eq!(nginx_hash_pick(slot.new_sid().as_str(), count), index);
                }
            }
        }
    }
}
