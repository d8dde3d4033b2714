//! The handler file (`realtime/handlers.json`), as written and as compiled: placeholders
//! parsed, patterns compiled, every name a placeholder uses checked, so that a mistake is
//! reported once, at load, and not at every event. The schema is `docs/handlers.schema.json`
//! and the format is explained in `docs/app-handlers.md`.

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::template::{Data, RESERVED, Text};
use crate::limits::Limits;

/// A whole file: one app's handlers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerFile {
    /// Where the schema is, for editors; ignored.
    #[serde(rename = "$schema", default)]
    _schema: Option<String>,
    /// The app the handlers belong to; they run only on sites that have it installed.
    pub app: String,
    pub handlers: Vec<HandlerSpec>,
}

/// One event's handler, as written. Its parts run in a fixed order: the checks (`require`,
/// `strings`, `match`, `member_of`, `permission`, `method`), then `leave` and `join`, then
/// `presence`, then `emit`, then `forward`. A check that fails ends the handler quietly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSpec {
    pub event: String,
    /// Names for the event's positional arguments, in order.
    #[serde(default)]
    pub args: Vec<String>,
    /// Arguments that must be truthy, as JavaScript has it (`if (!x) return`).
    #[serde(default)]
    pub require: Vec<String>,
    /// Arguments that must be non-empty strings.
    #[serde(default)]
    pub strings: Vec<String>,
    /// Arguments that must be strings matching a regular expression.
    #[serde(default, rename = "match")]
    pub patterns: BTreeMap<String, String>,
    /// A room the sender must be in.
    pub member_of: Option<String>,
    /// Frappe must let the sender read this document (`has_permission`).
    pub permission: Option<PermissionSpec>,
    /// An app's whitelisted method must answer truthy, asked with the sender's credential.
    pub method: Option<MethodSpec>,
    pub leave: Option<String>,
    pub join: Option<String>,
    /// A room whose distinct users `{presence.users}`, `{presence.count}` and
    /// `{presence.json}` then list (after `leave` and `join`).
    pub presence: Option<String>,
    #[serde(default)]
    pub emit: Vec<EmitSpec>,
    /// Send the event's payload to the site over HTTP with the sender's credential.
    pub forward: Option<ForwardSpec>,
    /// Put the event on a Redis stream (on `redis_queue`) for a backend job, an agent or a
    /// sidecar to consume.
    pub queue: Option<QueueSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionSpec {
    pub doctype: String,
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSpec {
    /// A dotted method path, called as `GET /api/method/<call>`.
    pub call: String,
    /// Its query arguments.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// Where in the answer the truthy value must be: `message` (default) or e.g.
    /// `message.valid`.
    #[serde(default = "default_accept")]
    pub accept: String,
}

fn default_accept() -> String {
    "message".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitSpec {
    pub event: String,
    /// `sender` (the socket alone), `user` (the sender's user room), or `room` (then `room`).
    pub to: Target,
    pub room: Option<String>,
    /// With `to: room`, leave the sender out.
    #[serde(default)]
    pub skip_sender: bool,
    /// The event's one argument; none when absent.
    pub data: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Sender,
    User,
    Room,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSpec {
    /// A dotted method path (`POST /api/method/<call>`), or
    pub call: Option<String>,
    /// a path on the site (`/api/…`).
    pub path: Option<String>,
    /// The JSON body; the event's first argument when absent.
    pub body: Option<Value>,
    /// Answer the client's acknowledgement, if it asked for one, with Frappe's `message`.
    #[serde(default)]
    pub reply: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// The stream's key; placeholders allowed (e.g. `agent:{site}`).
    pub stream: String,
    /// Largest payload (the arguments as JSON) taken, in bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Events a socket may queue per second, sustained, and at once.
    #[serde(default = "default_per_second")]
    pub per_second: f64,
    #[serde(default = "default_burst")]
    pub burst: f64,
    /// The stream is trimmed to about this many entries.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
}

fn default_max_bytes() -> usize {
    64 * 1024
}

fn default_per_second() -> f64 {
    5.0
}

fn default_burst() -> f64 {
    20.0
}

fn default_max_len() -> usize {
    10_000
}

/// A handler ready to run.
#[derive(Debug)]
pub struct Handler {
    pub app: String,
    pub event: String,
    pub args: Vec<String>,
    pub require: Vec<String>,
    pub strings: Vec<String>,
    pub patterns: Vec<(String, Regex)>,
    pub member_of: Option<Text>,
    pub permission: Option<(Text, Text)>,
    pub method: Option<Method>,
    pub leave: Option<Text>,
    pub join: Option<Text>,
    pub presence: Option<Text>,
    pub emit: Vec<Emit>,
    pub forward: Option<Forward>,
    pub queue: Option<Queue>,
}

#[derive(Debug)]
pub struct Queue {
    pub stream: Text,
    pub max_bytes: usize,
    /// The per-socket rate, as the event budget's limits.
    pub rate: Limits,
    pub max_len: usize,
}

#[derive(Debug)]
pub struct Method {
    pub call: String,
    pub args: Vec<(String, Text)>,
    pub accept: Vec<String>,
}

#[derive(Debug)]
pub struct Emit {
    pub event: String,
    pub to: Destination,
    pub data: Option<Data>,
}

#[derive(Debug)]
pub enum Destination {
    Sender,
    User,
    Room { room: Text, skip_sender: bool },
}

#[derive(Debug)]
pub struct Forward {
    /// A path on the site, placeholders allowed.
    pub path: Text,
    /// `None`: the event's first argument.
    pub body: Option<Data>,
    pub reply: bool,
}

impl HandlerSpec {
    /// Compile for `app`; the error says what is wrong, for the load error's message.
    pub fn compile(self, app: &str) -> Result<Handler, String> {
        let known =
            |root: &str| RESERVED.contains(&root) || self.args.iter().any(|arg| arg == root);
        for arg in &self.args {
            if RESERVED.contains(&arg.as_str()) {
                return Err(format!("argument name `{arg}` is reserved ({RESERVED:?})"));
            }
        }
        for name in self
            .require
            .iter()
            .chain(&self.strings)
            .chain(self.patterns.keys())
        {
            if !self.args.contains(name) {
                return Err(format!("`{name}` is not one of its args {:?}", self.args));
            }
        }
        let text = |what: &str, source: &str| -> Result<Text, String> {
            let text = Text::parse(source).map_err(|e| format!("{what}: {e}"))?;
            let unknown = text.roots().find(|root| !known(root)).map(str::to_owned);
            match unknown {
                Some(root) => Err(format!("{what}: `{{{root}}}` names no argument")),
                None => Ok(text),
            }
        };
        let data = |what: &str, value: &Value| -> Result<Data, String> {
            let data = Data::parse(value).map_err(|e| format!("{what}: {e}"))?;
            match data.roots().into_iter().find(|root| !known(root)) {
                Some(root) => Err(format!("{what}: `{{{root}}}` names no argument")),
                None => Ok(data),
            }
        };
        let patterns = self
            .patterns
            .iter()
            .map(|(arg, pattern)| {
                Regex::new(pattern)
                    .map(|regex| (arg.clone(), regex))
                    .map_err(|e| format!("match.{arg}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let optional = |what: &str, source: &Option<String>| {
            source.as_deref().map(|s| text(what, s)).transpose()
        };
        let permission = match &self.permission {
            Some(p) => Some((
                text("permission.doctype", &p.doctype)?,
                text("permission.name", &p.name)?,
            )),
            None => None,
        };
        let method = match &self.method {
            Some(m) => Some(Method {
                call: checked_method(&m.call)?,
                args: m
                    .args
                    .iter()
                    .map(|(key, value)| {
                        Ok((key.clone(), text(&format!("method.args.{key}"), value)?))
                    })
                    .collect::<Result<_, String>>()?,
                accept: m.accept.split('.').map(str::to_owned).collect(),
            }),
            None => None,
        };
        let emit = self
            .emit
            .iter()
            .map(|e| {
                let to = match (e.to, &e.room) {
                    (Target::Room, Some(room)) => Destination::Room {
                        room: text("emit.room", room)?,
                        skip_sender: e.skip_sender,
                    },
                    (Target::Room, None) => return Err("emit: `to: room` needs `room`".to_owned()),
                    (_, Some(_)) => return Err("emit: `room` goes with `to: room`".to_owned()),
                    (Target::Sender, None) => Destination::Sender,
                    (Target::User, None) => Destination::User,
                };
                Ok(Emit {
                    event: e.event.clone(),
                    to,
                    data: e.data.as_ref().map(|d| data("emit.data", d)).transpose()?,
                })
            })
            .collect::<Result<_, String>>()?;
        let forward = match &self.forward {
            Some(f) => Some(Forward {
                path: match (&f.call, &f.path) {
                    (Some(call), None) => text(
                        "forward.call",
                        &format!("/api/method/{}", checked_method(call)?),
                    )?,
                    (None, Some(path)) if path.starts_with('/') => text("forward.path", path)?,
                    (None, Some(_)) => return Err("forward.path must start with `/`".to_owned()),
                    _ => return Err("forward needs exactly one of `call` and `path`".to_owned()),
                },
                body: f
                    .body
                    .as_ref()
                    .map(|b| data("forward.body", b))
                    .transpose()?,
                reply: f.reply,
            }),
            None => None,
        };
        let queue = match &self.queue {
            Some(q) => {
                let finite_positive = |v: f64| v.is_finite() && v > 0.0;
                if !finite_positive(q.per_second) || !finite_positive(q.burst) || q.burst < 1.0 {
                    return Err("queue: per_second must be above 0 and burst at least 1".to_owned());
                }
                Some(Queue {
                    stream: text("queue.stream", &q.stream)?,
                    max_bytes: q.max_bytes,
                    rate: Limits {
                        events_per_second: q.per_second,
                        event_burst: q.burst,
                        ..Limits::default()
                    },
                    max_len: q.max_len.max(1),
                })
            }
            None => None,
        };
        Ok(Handler {
            app: app.to_owned(),
            queue,
            event: self.event.clone(),
            member_of: optional("member_of", &self.member_of)?,
            leave: optional("leave", &self.leave)?,
            join: optional("join", &self.join)?,
            presence: optional("presence", &self.presence)?,
            args: self.args,
            require: self.require,
            strings: self.strings,
            patterns,
            permission,
            method,
            emit,
            forward,
        })
    }
}

/// A dotted Python path: what `/api/method/` takes, and nothing that could leave that path.
fn checked_method(call: &str) -> Result<String, String> {
    let valid = !call.is_empty()
        && call.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if valid {
        Ok(call.to_owned())
    } else {
        Err(format!("`{call}` is not a dotted method path"))
    }
}
