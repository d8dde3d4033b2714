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
        self.check_arg_names()?;
        let names = Names { args: &self.args };
        let patterns = self
            .patterns
            .iter()
            .map(|(arg, pattern)| {
                Regex::new(pattern)
                    .map(|regex| (arg.clone(), regex))
                    .map_err(|e| format!("match.{arg}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let permission = self
            .permission
            .as_ref()
            .map(|p| p.compile(&names))
            .transpose()?;
        let method = self
            .method
            .as_ref()
            .map(|m| m.compile(&names))
            .transpose()?;
        let emit = self
            .emit
            .iter()
            .map(|e| e.compile(&names))
            .collect::<Result<_, _>>()?;
        let forward = self
            .forward
            .as_ref()
            .map(|f| f.compile(&names))
            .transpose()?;
        let queue = self.queue.as_ref().map(|q| q.compile(&names)).transpose()?;
        Ok(Handler {
            app: app.to_owned(),
            event: self.event.clone(),
            member_of: names.optional("member_of", self.member_of.as_deref())?,
            leave: names.optional("leave", self.leave.as_deref())?,
            join: names.optional("join", self.join.as_deref())?,
            presence: names.optional("presence", self.presence.as_deref())?,
            args: self.args,
            require: self.require,
            strings: self.strings,
            patterns,
            permission,
            method,
            emit,
            forward,
            queue,
        })
    }

    /// The arguments' names are not reserved, and every check names one of them.
    fn check_arg_names(&self) -> Result<(), String> {
        if let Some(arg) = self
            .args
            .iter()
            .find(|arg| RESERVED.contains(&arg.as_str()))
        {
            return Err(format!("argument name `{arg}` is reserved ({RESERVED:?})"));
        }
        let checked = self
            .require
            .iter()
            .chain(&self.strings)
            .chain(self.patterns.keys());
        match checked.into_iter().find(|name| !self.args.contains(name)) {
            Some(name) => Err(format!("`{name}` is not one of its args {:?}", self.args)),
            None => Ok(()),
        }
    }
}

/// What a handler's placeholders may name: its arguments and the server's values.
struct Names<'a> {
    args: &'a [String],
}

impl Names<'_> {
    fn known(&self, root: &str) -> bool {
        RESERVED.contains(&root) || self.args.iter().any(|arg| arg == root)
    }

    fn unknown<'r>(&self, mut roots: impl Iterator<Item = &'r str>) -> Option<String> {
        roots.find(|root| !self.known(root)).map(str::to_owned)
    }

    /// `source` parsed, every placeholder naming something; `what` says where, for errors.
    fn text(&self, what: &str, source: &str) -> Result<Text, String> {
        let text = Text::parse(source).map_err(|e| format!("{what}: {e}"))?;
        match self.unknown(text.roots()) {
            Some(root) => Err(format!("{what}: `{{{root}}}` names no argument")),
            None => Ok(text),
        }
    }

    fn optional(&self, what: &str, source: Option<&str>) -> Result<Option<Text>, String> {
        source.map(|source| self.text(what, source)).transpose()
    }

    fn data(&self, what: &str, value: &Value) -> Result<Data, String> {
        let data = Data::parse(value).map_err(|e| format!("{what}: {e}"))?;
        match self.unknown(data.roots().into_iter()) {
            Some(root) => Err(format!("{what}: `{{{root}}}` names no argument")),
            None => Ok(data),
        }
    }
}

impl PermissionSpec {
    fn compile(&self, names: &Names<'_>) -> Result<(Text, Text), String> {
        Ok((
            names.text("permission.doctype", &self.doctype)?,
            names.text("permission.name", &self.name)?,
        ))
    }
}

impl MethodSpec {
    fn compile(&self, names: &Names<'_>) -> Result<Method, String> {
        let args = self
            .args
            .iter()
            .map(|(key, value)| {
                Ok((
                    key.clone(),
                    names.text(&format!("method.args.{key}"), value)?,
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(Method {
            call: checked_method(&self.call)?,
            args,
            accept: self.accept.split('.').map(str::to_owned).collect(),
        })
    }
}

impl EmitSpec {
    fn compile(&self, names: &Names<'_>) -> Result<Emit, String> {
        let to = match (self.to, &self.room) {
            (Target::Room, Some(room)) => Destination::Room {
                room: names.text("emit.room", room)?,
                skip_sender: self.skip_sender,
            },
            (Target::Room, None) => return Err("emit: `to: room` needs `room`".to_owned()),
            (_, Some(_)) => return Err("emit: `room` goes with `to: room`".to_owned()),
            (Target::Sender, None) => Destination::Sender,
            (Target::User, None) => Destination::User,
        };
        let data = self
            .data
            .as_ref()
            .map(|d| names.data("emit.data", d))
            .transpose()?;
        Ok(Emit {
            event: self.event.clone(),
            to,
            data,
        })
    }
}

impl ForwardSpec {
    fn compile(&self, names: &Names<'_>) -> Result<Forward, String> {
        let path = match (&self.call, &self.path) {
            (Some(call), None) => {
                let path = format!("/api/method/{}", checked_method(call)?);
                names.text("forward.call", &path)?
            }
            (None, Some(path)) if path.starts_with('/') => names.text("forward.path", path)?,
            (None, Some(_)) => return Err("forward.path must start with `/`".to_owned()),
            _ => return Err("forward needs exactly one of `call` and `path`".to_owned()),
        };
        let body = self
            .body
            .as_ref()
            .map(|b| names.data("forward.body", b))
            .transpose()?;
        Ok(Forward {
            path,
            body,
            reply: self.reply,
        })
    }
}

impl QueueSpec {
    fn compile(&self, names: &Names<'_>) -> Result<Queue, String> {
        let finite_positive = |v: f64| v.is_finite() && v > 0.0;
        if !finite_positive(self.per_second) || !finite_positive(self.burst) || self.burst < 1.0 {
            return Err("queue: per_second must be above 0 and burst at least 1".to_owned());
        }
        Ok(Queue {
            stream: names.text("queue.stream", &self.stream)?,
            max_bytes: self.max_bytes,
            rate: Limits {
                events_per_second: self.per_second,
                event_burst: self.burst,
                ..Limits::default()
            },
            max_len: self.max_len.max(1),
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
