//! Publishing as `frappe.publish_realtime` does: JSON on the Redis channel `events` of
//! `redis_queue`, serialised like `frappe.as_json` (indent 1, sorted keys; protocol §6.1).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use redis::aio::MultiplexedConnection;

use crate::recorder::Clock;

/// The event name the clients look for.
pub const EVENT: &str = "bench";

/// Frappe's Redis channel for realtime events.
const CHANNEL: &str = "events";

pub struct Publisher {
    conn: MultiplexedConnection,
    site: String,
    pad: String,
    seq: u64,
}

impl Publisher {
    pub async fn connect(redis_url: &str, site: &str, pad_bytes: usize) -> Result<Self> {
        let client = redis::Client::open(redis_url).context("redis URL")?;
        let conn = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .context("connecting to redis-server timed out")?
        .context("connecting to redis-server")?;
        Ok(Self {
            conn,
            site: site.to_owned(),
            pad: "x".repeat(pad_bytes),
            seq: 0,
        })
    }

    /// Publish one event per room, in one round trip, each stamped with `step` and the time
    /// just before it is sent.
    pub async fn publish<'a>(
        &mut self,
        step: u32,
        rooms: impl IntoIterator<Item = &'a str>,
        clock: &Clock,
    ) -> Result<u64> {
        let mut pipe = redis::pipe();
        let mut count = 0;
        for room in rooms {
            self.seq += 1;
            let body = frappe_message(&FrappeMessage {
                site: &self.site,
                room,
                step,
                seq: self.seq,
                sent_ns: clock.now_ns(),
                pad: &self.pad,
            });
            pipe.cmd("PUBLISH").arg(CHANNEL).arg(body).ignore();
            count += 1;
        }
        if count > 0 {
            let () = pipe
                .query_async(&mut self.conn)
                .await
                .context("publishing to redis")?;
        }
        Ok(count)
    }

    /// How many connections are subscribed to `events` (the server, once ready).
    pub async fn subscribers(&mut self) -> Result<u64> {
        let (_, count): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(CHANNEL)
            .query_async(&mut self.conn)
            .await
            .context("PUBSUB NUMSUB")?;
        Ok(count)
    }

    /// CPU time redis-server has used so far (`used_cpu_sys` + `used_cpu_user` of `INFO cpu`,
    /// from getrusage: microseconds, where /proc's clock ticks are 10 ms). Redis writes every
    /// publication to every subscriber, so its share of a delivery's cost grows with the
    /// number of server instances; a step reads it before and after.
    pub async fn redis_cpu(&mut self) -> Result<Duration> {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut self.conn)
            .await
            .context("INFO cpu")?;
        cpu_of_info(&info).context("INFO cpu has no used_cpu_sys and used_cpu_user")
    }

    pub async fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async(&mut self.conn)
            .await
            .with_context(|| format!("SET {key}"))?;
        Ok(())
    }
}

struct FrappeMessage<'a> {
    site: &'a str,
    room: &'a str,
    step: u32,
    seq: u64,
    sent_ns: u64,
    pad: &'a str,
}

/// `{"event", "message": {"pad", "seq", "step", "t"}, "namespace", "room"}` laid out as
/// Python's `json.dumps(indent=1, sort_keys=True)`. Site and room come from us and need no
/// escaping beyond quotes and backslashes, which are escaped all the same.
fn frappe_message(m: &FrappeMessage<'_>) -> String {
    let mut out = String::with_capacity(128 + m.pad.len());
    let _ = write!(
        out,
        "{{\n \"event\": \"{EVENT}\",\n \"message\": {{\n  \"pad\": \"{}\",\n  \"seq\": {},\n  \"step\": {},\n  \"t\": {}\n }},\n \"namespace\": \"{}\",\n \"room\": \"{}\"\n}}",
        escape(m.pad),
        m.seq,
        m.step,
        m.sent_ns,
        escape(m.site),
        escape(m.room),
    );
    out
}

/// `used_cpu_sys` + `used_cpu_user` (seconds) of an `INFO cpu` reply. Not the `_children`
/// fields (forks for persistence, which a run turns off) nor `_main_thread` (a part of them).
fn cpu_of_info(info: &str) -> Option<Duration> {
    let field = |name: &str| {
        info.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(':')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    Duration::try_from_secs_f64(field("used_cpu_sys")? + field("used_cpu_user")?).ok()
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn messages_have_frappes_shape() {
        let text = frappe_message(&FrappeMessage {
            site: "a.local",
            room: "user:u\"1@example.com",
            step: 3,
            seq: 17,
            sent_ns: 123_456,
            pad: "xx",
        });
        let value: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            value,
            json!({"event": "bench", "namespace": "a.local", "room": "user:u\"1@example.com",
                   "message": {"pad": "xx", "seq": 17, "step": 3, "t": 123_456}})
        );
        assert!(text.starts_with("{\n \"event\": \"bench\",\n \"message\": {\n  \"pad\""));
        let stamp = crate::engineio::stamp(&text).expect("stamp");
        assert_eq!((stamp.step, stamp.sent_ns), (3, 123_456));
    }

    #[test]
    fn redis_cpu_is_system_plus_user_time() {
        let info = "# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:0.750000\r\n\
                    used_cpu_sys_children:9.000000\r\nused_cpu_user_children:9.000000\r\n\
                    used_cpu_sys_main_thread:1.000000\r\n";
        assert_eq!(cpu_of_info(info), Some(Duration::from_secs(2)));
        assert_eq!(cpu_of_info("# CPU\r\nused_cpu_sys_children:1.0\r\n"), None);
    }
}
