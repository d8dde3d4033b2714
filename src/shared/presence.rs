//! `doc_viewers` across instances (`realtime_shared_state: "redis"`, Frappe 15 on): who
//! views a document is kept on the bench's `redis_queue`, so every instance lists the viewers
//! on every instance, and the list goes out through Frappe's own `events` channel, which every
//! instance delivers to its sockets in the document's room.
//!
//! One Lua script ([`SCRIPT`]) applies a change and announces the result, atomically: Redis
//! runs scripts one at a time and delivers what they publish in that order, so the last list
//! a room receives is the list as it stands, whichever instances changed it at once.
//!
//! Keys, under `frappe_realtime:shared:`:
//! - `doc:<site>:<doctype>/<docname>`: a sorted set of the document's sockets,
//!   `<instance>|<socket id>|<user>`, scored by when they opened it (the list's order);
//! - `held:<instance>`: the documents the instance has sockets in, so that the others can
//!   clear and re-announce them when it dies.
//!
//! A socket counts while its instance's `alive` key exists (see [`crate::shared`]); when
//! another instance finds that key gone, it clears the dead one's sockets from the documents
//! it held and tells their remaining viewers ([`RedisPresence::reap`]).
//!
//! Changes are queued to one task, so a socket's own changes reach Redis in the order it made
//! them (an open never overtakes the close after it).

use std::sync::Arc;

use ::metrics::counter;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::metrics;
use crate::socketio::Sid;

use super::keys::{PREFIX, alive_key};

/// Frappe's channel, which every instance's bridge delivers from.
const EVENTS: &str = "events";
/// Changes waiting for the writer at most; past it a change is lost (counted) and the
/// document's list is right again at its next change.
const QUEUE: usize = 65_536;

/// Applies one change to a document's sockets, then publishes `doc_viewers` to its room.
///
/// KEYS: the document's set, the acting instance's `held` set. ARGV: the change (`join`,
/// `leave`, `reap`), its member (for `reap`, the dead instance), its score (ms), the `alive`
/// key prefix, the channel, the site, doctype and docname, the user who caused it (for the
/// lone-viewer rule), and the document as `held` records it.
const SCRIPT: &str = r#"
local change, subject = ARGV[1], ARGV[2]
if change == 'join' then
  redis.call('ZADD', KEYS[1], ARGV[3], subject)
  redis.call('SADD', KEYS[2], ARGV[10])
elseif change == 'leave' then
  redis.call('ZREM', KEYS[1], subject)
end
local alive, seen, users, sockets = {}, {}, {}, 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local instance, user = string.match(member, '^([^|]*)|[^|]*|(.*)$')
  if instance ~= nil and alive[instance] == nil then
    alive[instance] = not (change == 'reap' and instance == subject)
      and redis.call('EXISTS', ARGV[4] .. instance) == 1
  end
  if instance ~= nil and alive[instance] then
    sockets = sockets + 1
    if not seen[user] then
      seen[user] = true
      users[#users + 1] = user
    end
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
if sockets == 0 then
  redis.call('DEL', KEYS[1])
end
if sockets == 1 and users[1] == ARGV[9] then
  return sockets
end
local listed = {}
for i, user in ipairs(users) do
  listed[i] = cjson.encode(user)
end
local message = '{"doctype":' .. cjson.encode(ARGV[7]) .. ',"docname":' .. cjson.encode(ARGV[8])
  .. ',"users":[' .. table.concat(listed, ',') .. ']}'
redis.call('PUBLISH', ARGV[5], '{"event":"doc_viewers","message":' .. message
  .. ',"namespace":' .. cjson.encode(ARGV[6])
  .. ',"room":' .. cjson.encode('open_doc:' .. ARGV[7] .. '/' .. ARGV[8]) .. '}')
return sockets
"#;

/// What a socket did to a document's viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Opened,
    Left,
}

/// A document of a site, as `held` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Document(String, String, String);

impl Document {
    fn key(&self) -> String {
        let Document(site, doctype, docname) = self;
        format!("{PREFIX}doc:{site}:{doctype}/{docname}")
    }
}

/// One change for the writer.
#[derive(Debug)]
struct Change {
    document: Document,
    /// `join`, `leave` or `reap`.
    kind: &'static str,
    /// The member (`instance|socket|user`), or for `reap` the dead instance.
    subject: String,
    /// Whose move it was, for the lone-viewer rule ("" for none).
    mover: String,
}

/// This instance's side of the shared presence. Cheap to share.
pub struct RedisPresence {
    /// A random name for this process, in every member it writes.
    instance: String,
    changes: mpsc::Sender<Change>,
}

impl RedisPresence {
    /// The presence of `instance`, and the task that writes its changes in order.
    pub fn start(
        connection: ConnectionManager,
        instance: String,
    ) -> (Arc<Self>, impl Future<Output = ()>) {
        let (changes, receiver) = mpsc::channel(QUEUE);
        let writer = write_changes(receiver, connection, instance.clone());
        (Arc::new(Self { instance, changes }), writer)
    }

    /// `socket` of `user` opened or left a document of `site`: record it and tell the
    /// document's viewers on every instance.
    pub fn moved(
        &self,
        site: &str,
        doctype: &str,
        docname: &str,
        socket: Sid,
        user: &str,
        how: Move,
    ) {
        let change = Change {
            document: Document(site.to_owned(), doctype.to_owned(), docname.to_owned()),
            kind: match how {
                Move::Opened => "join",
                Move::Left => "leave",
            },
            subject: format!("{}|{socket}|{user}", self.instance),
            mover: user.to_owned(),
        };
        self.queue(change);
    }

    fn queue(&self, change: Change) {
        if self.changes.try_send(change).is_err() {
            counter!(metrics::PRESENCE_WRITES_LOST).increment(1);
        }
    }

    /// Clear every document a dead instance held, telling each one's remaining viewers.
    pub async fn reap(
        &self,
        connection: &mut ConnectionManager,
        dead: &str,
    ) -> redis::RedisResult<()> {
        let held_key = format!("{PREFIX}held:{dead}");
        let held: Vec<String> = connection.smembers(&held_key).await?;
        for document in held
            .iter()
            .filter_map(|text| serde_json::from_str(text).ok())
        {
            self.queue(Change {
                document,
                kind: "reap",
                subject: dead.to_owned(),
                mover: String::new(),
            });
        }
        tracing::info!(
            instance = dead,
            documents = held.len(),
            "an instance stopped; its viewers are cleared"
        );
        connection.del(&held_key).await
    }
}

/// Run each change's script, in order.
async fn write_changes(
    mut receiver: mpsc::Receiver<Change>,
    mut connection: ConnectionManager,
    instance: String,
) {
    let held_key = format!("{PREFIX}held:{instance}");
    let alive_prefix = alive_key("");
    while let Some(change) = receiver.recv().await {
        let Document(site, doctype, docname) = &change.document;
        let document = serde_json::to_string(&change.document).unwrap_or_default();
        let result: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(SCRIPT)
            .arg(2)
            .arg(change.document.key())
            .arg(&held_key)
            .arg(change.kind)
            .arg(&change.subject)
            .arg(metrics::unix_now_ms())
            .arg(&alive_prefix)
            .arg(EVENTS)
            .arg(site)
            .arg(doctype)
            .arg(docname)
            .arg(&change.mover)
            .arg(document)
            .query_async(&mut connection)
            .await;
        if let Err(e) = result {
            counter!(metrics::PRESENCE_WRITES_LOST).increment(1);
            tracing::warn!(error = %e, "a presence change did not reach Redis");
        }
    }
}
