//! The bench's configuration, read the way Frappe's Node service reads it (protocol §1.2).
//!
//! Node merges `config.json` then `sites/common_site_config.json` into its defaults, copying a
//! key only when its value is *truthy* in the JavaScript sense (so `0`, `false`, `""` and `null`
//! never override anything), then applies a few `FRAPPE_*` environment variables. No crate
//! models that rule, so the merge is written here over `serde_json::Value`; every merged value
//! remembers where it came from so that a bad value is reported with its file and key.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::caps::Caps;
use crate::cors::AllowCors;
use crate::last_state::LastStateConfig;
use crate::limits::Limits;
use crate::sentinel::SentinelConfig;
use crate::socketio::RecoveryConfig;
use url::Url;

/// Environment variables Frappe's service honours, and the config key each one overrides.
const ENV_OVERRIDES: [(&str, &str); 5] = [
    ("FRAPPE_SITE", "default_site"),
    ("FRAPPE_REDIS_QUEUE", "redis_queue"),
    ("FRAPPE_REDIS_CACHE", "redis_cache"),
    ("FRAPPE_SOCKETIO_PORT", "socketio_port"),
    ("FRAPPE_SOCKETIO_UDS", "socketio_uds"),
];

const DEFAULT_SOCKETIO_PORT: u16 = 9000;
/// Frappe 13 and 14's default port.
const LEGACY_SOCKETIO_PORT: u16 = 3000;
/// Frappe 13 and 14's Redis for events when neither `redis_socketio` nor
/// `redis_async_broker_port` is set.
const LEGACY_EVENTS_REDIS: &str = "redis://localhost:12311";
const DEFAULT_CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RECONNECT_WINDOW: Duration = Duration::from_secs(60);
/// Well inside engine.io's heartbeat (25 s + 20 s), which would end such a client anyway.
const DEFAULT_SLOW_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Far beyond what a desk page receives in a few seconds, small enough that a thousand
/// stalled clients cannot hold gigabytes.
const DEFAULT_SLOW_CLIENT_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// socket.io's own default `maxDisconnectionDuration` is 2 minutes: longer than a tab's
/// network blip or a laptop's Wi-Fi switch, short enough that kept sessions stay few.
const DEFAULT_RECOVERY_WINDOW: Duration = Duration::from_secs(120);
/// Keys of ours (Node reads none of them) where 0 turns a feature off: merged even though 0
/// is falsy, which Node's `get_conf` would skip.
const ZERO_MEANS_OFF: [&str; 2] = ["realtime_recovery_seconds", "realtime_last_state_seconds"];
/// Enough to keep a bench's gunicorn workers busy without queueing hundreds behind them.
const DEFAULT_CALLBACK_CONCURRENCY: usize = 16;

/// Which Frappe protocol the bench speaks towards its realtime service (protocol §0, §4.2, §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FrappeVersion {
    /// As Frappe 14, over Engine.IO 3 too (socket.io-client 2.x).
    V13,
    /// One namespace `/` with site-prefixed rooms, `redis_socketio`, port 3000, `sid` as a
    /// query parameter, `can_subscribe_doc` / `can_subscribe_doctype`, typing indicators.
    V14,
    /// A namespace per site, `redis_queue`, `sid` as a query parameter,
    /// `can_subscribe_doc` / `can_subscribe_doctype`.
    V15,
    /// `Cookie: sid=…`, `X-Frappe-Socket-Secret`, `has_permission`, `installed_apps`.
    V16,
}

impl FrappeVersion {
    fn from_major(major: u32) -> Self {
        match major {
            ..=13 => Self::V13,
            14 => Self::V14,
            15 => Self::V15,
            _ => Self::V16,
        }
    }

    /// Frappe 15 on serves each site in a namespace `/<site>`; before, every client used `/`
    /// and rooms carried the site as a prefix (protocol §3.1, §5.4).
    pub fn has_site_namespaces(self) -> bool {
        self >= Self::V15
    }
}

impl fmt::Display for FrappeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V13 => "13",
            Self::V14 => "14",
            Self::V15 => "15",
            Self::V16 => "16",
        })
    }
}

/// Where the Unix socket or TCP port the service listens on comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Port(u16),
    Unix(PathBuf),
}

/// Everything the service needs from the bench, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub bench_dir: PathBuf,
    pub listen: Listen,
    /// Redis carrying Frappe's `events` channel, the socket secret and `open_in_editor`:
    /// `redis_queue` from Frappe 15 on, `redis_socketio` before (see [`legacy_events_redis`]).
    pub redis_queue: String,
    /// Read for parity with Frappe (apps' handlers use it); the core service does not.
    pub redis_cache: Option<String>,
    /// Site used when a client reaches us as `localhost` / `127.0.0.1`.
    pub default_site: Option<String>,
    pub developer_mode: bool,
    pub webserver_port: Option<u16>,
    pub webserver_host: Option<String>,
    /// `realtime_callback_url`: send every Frappe callback here instead of the client's Origin.
    pub callback_url: Option<Url>,
    /// `allow_cors` of `common_site_config.json`: the sites' default, as in Frappe (a site's
    /// own `allow_cors` wins; see [`crate::sites`]).
    pub allow_cors: AllowCors,
    /// `realtime_callback_timeout` (seconds): bound on every call to Frappe.
    pub callback_timeout: Duration,
    /// Per-socket limits (`realtime_client_events_per_second`, `realtime_client_event_burst`,
    /// `realtime_max_rooms_per_socket`).
    pub limits: Limits,
    /// `realtime_admin_token`: enables `POST /admin/disconnect` for callers presenting it.
    pub admin_token: Option<Secret>,
    /// `realtime_callback_concurrency`: calls to Frappe under way at once, at most.
    pub callback_concurrency: usize,
    /// `realtime_reconnect_window` (seconds): a connect this soon after the same user left
    /// the same site counts as a reconnect in the metrics.
    pub reconnect_window: Duration,
    pub frappe_version: FrappeVersion,
    /// `realtime_max_connections_per_site`, `…_per_ip`, `…_per_user`: off unless set.
    pub connection_caps: Caps,
    /// `realtime_user_info_cache_seconds`: remember positive `get_user_info` answers this
    /// long (off unless set; see [`crate::answer_cache`] for the trade-off).
    pub user_info_cache_ttl: Option<Duration>,
    /// `realtime_slow_client_timeout` (seconds): a websocket whose connection takes no bytes
    /// for this long while the server has some to send is disconnected as a slow consumer.
    pub slow_client_timeout: Duration,
    /// `realtime_slow_client_max_bytes`: a websocket that takes no bytes while publications
    /// worth more than this are queued for it is disconnected as a slow consumer.
    pub slow_client_max_bytes: u64,
    /// Connection state recovery, per site namespace (`None`: off). From
    /// `realtime_recovery_seconds` (0 turns it off), `realtime_recovery_max_events`,
    /// `…_max_bytes` and `…_max_sessions`.
    pub recovery: Option<RecoveryConfig>,
    /// `realtime_recovery_store`: where recovery keeps its log and sessions.
    pub recovery_store: RecoveryStore,
    /// `realtime_shared_state`: whether several instances share state on `redis_queue`.
    pub shared_state: SharedState,
    /// `redis_queue_sentinel_*` (Frappe 15 on): the subscriber finds the master through
    /// these sentinels instead of `redis_queue`.
    pub redis_sentinel: Option<SentinelConfig>,
    /// Last state on subscribe (`None`: off). From `realtime_last_state_seconds` (0 turns it
    /// off), `…_rooms` (room name prefixes), `…_events`, `…_max_entries`, `…_max_bytes`.
    pub last_state: Option<LastStateConfig>,
}

/// Where connection state recovery keeps its log and kept sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecoveryStore {
    /// This process's memory: a blip is covered, a restart is not.
    #[default]
    Memory,
    /// Also the bench's `redis_queue`: sessions and the log outlive a restart.
    Redis,
}

/// Whether instances share state (several instances on one bench).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SharedState {
    /// Nothing shared: this process is the only instance, or each stands alone.
    #[default]
    Off,
    /// On the bench's `redis_queue`: which instances are alive and what each serves, and who
    /// views which document (Frappe 15 on).
    Redis,
}

/// A configuration value that must never be printed; `Debug` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Compare in time independent of where the values differ (no timing oracle).
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A configuration problem, always naming the file (or variable) and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} must hold a JSON object at its top level")]
    NotAnObject { path: PathBuf },
    #[error("{origin}: key `{key}` {problem}")]
    BadValue {
        origin: Source,
        key: &'static str,
        problem: String,
    },
    #[error(
        "no Redis for events: set `redis_queue` in sites/common_site_config.json or FRAPPE_REDIS_QUEUE"
    )]
    MissingRedisQueue,
}

/// Where a merged value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::Flag(flag) => write!(f, "command-line flag {flag}"),
        }
    }
}

/// Values merged from the files and the environment, each with its origin.
#[derive(Debug, Default)]
struct Layered {
    values: HashMap<String, (Value, Source)>,
    /// Every key the loader looked up, set or not, in the order it did: what
    /// `--check-config` accounts for.
    asked: RefCell<Vec<String>>,
}

impl Layered {
    /// Copy every truthy key of `object` over what is already there (Node's `get_conf`),
    /// and our keys whose 0 means off ([`ZERO_MEANS_OFF`]) whatever their value.
    fn merge_truthy(&mut self, object: Map<String, Value>, source: &Source) {
        for (key, value) in object {
            if is_truthy(&value) || ZERO_MEANS_OFF.contains(&key.as_str()) {
                self.values.insert(key, (value, source.clone()));
            }
        }
    }

    fn set(&mut self, key: &str, value: Value, source: Source) {
        self.values.insert(key.to_owned(), (value, source));
    }

    fn get(&self, key: &str) -> Option<&(Value, Source)> {
        let mut asked = self.asked.borrow_mut();
        if !asked.iter().any(|k| k == key) {
            asked.push(key.to_owned());
        }
        self.values.get(key)
    }

    /// Convert the value of `key` with `parse`; a value it rejects becomes an error naming
    /// the file (or variable) and the key.
    fn typed<T>(
        &self,
        key: &'static str,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some((value, source)) = self.get(key) else {
            return Ok(None);
        };
        parse(value)
            .map(Some)
            .map_err(|problem| ConfigError::BadValue {
                origin: source.clone(),
                key,
                problem,
            })
    }

    fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        self.typed(key, |value| match value {
            Value::String(s) => Ok(s.clone()),
            _ => Err("must be a string".into()),
        })
    }

    fn port(&self, key: &'static str) -> Result<Option<u16>, ConfigError> {
        self.typed(key, |value| {
            let number = match value {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            match number.and_then(|n| u16::try_from(n).ok()) {
                Some(port) if port > 0 => Ok(port),
                _ => Err("must be a TCP port number (1-65535)".into()),
            }
        })
    }

    fn seconds(&self, key: &'static str) -> Result<Option<Duration>, ConfigError> {
        self.typed(key, |value| {
            value
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| "must be a positive number of seconds".into())
        })
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|(value, _)| is_truthy(value))
    }
}

/// JavaScript truthiness, which decides whether a config value overrides (protocol §1.2).
pub(crate) fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A whole number of at least `least` (a count or a size), or `default` when unset.
fn at_least(
    layered: &Layered,
    key: &'static str,
    least: u64,
    default: usize,
) -> Result<usize, ConfigError> {
    layered
        .typed(key, |value| {
            value
                .as_u64()
                .filter(|n| *n >= least)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("must be a whole number, at least {least}"))
        })
        .map(|n| n.unwrap_or(default))
}

/// A number of seconds where 0 means off: `None`, else the duration (`default` when unset).
fn seconds_or_off(
    layered: &Layered,
    key: &'static str,
    default: Duration,
) -> Result<Option<Duration>, ConfigError> {
    let duration = layered
        .typed(key, |value| {
            value
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| "must be a number of seconds (0 turns it off)".to_owned())
        })?
        .unwrap_or(default);
    Ok(Some(duration).filter(|d| !d.is_zero()))
}

/// A list of non-empty strings.
fn names(layered: &Layered, key: &'static str) -> Result<Vec<String>, ConfigError> {
    let list = layered.typed(key, |value| {
        let items = value.as_array().ok_or("must be a list of strings")?;
        items
            .iter()
            .map(|item| item.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "must be a list of non-empty strings".to_owned())
    })?;
    Ok(list.unwrap_or_default())
}

/// Last state on subscribe: what is kept, how long, and its bounds.
/// Redis Sentinel for the subscriber, as Frappe's publisher reads it (protocol §1.3): off
/// unless `redis_queue_sentinel_enabled` is truthy; then the sentinels and the master's
/// service name are required.
fn sentinel(layered: &Layered) -> Result<Option<SentinelConfig>, ConfigError> {
    let enabled = "redis_queue_sentinel_enabled";
    let Some((value, source)) = layered.get(enabled).cloned() else {
        return Ok(None);
    };
    if !is_truthy(&value) {
        return Ok(None);
    }
    let required = |key: &'static str| ConfigError::BadValue {
        origin: source.clone(),
        key,
        problem: format!("must be set when {enabled} is"),
    };
    let sentinels = layered
        .typed("redis_queue_sentinels", |value| {
            let list = value.as_array().ok_or("must be a list of \"host:port\"")?;
            let sentinels = list
                .iter()
                .map(|entry| {
                    entry
                        .as_str()
                        .filter(|text| {
                            text.rsplit_once(':')
                                .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
                        })
                        .map(str::to_owned)
                        .ok_or_else(|| "must be a list of \"host:port\"".to_owned())
                })
                .collect::<Result<Vec<_>, _>>()?;
            if sentinels.is_empty() {
                return Err("must name at least one sentinel".to_owned());
            }
            Ok(sentinels)
        })?
        .ok_or_else(|| required("redis_queue_sentinels"))?;
    let master_service = layered
        .string("redis_queue_master_service")?
        .ok_or_else(|| required("redis_queue_master_service"))?;
    Ok(Some(SentinelConfig {
        sentinels,
        master_service,
        sentinel_username: layered.string("redis_queue_sentinel_username")?,
        sentinel_password: layered.string("redis_queue_sentinel_password")?,
        master_username: layered.string("redis_queue_master_username")?,
        master_password: layered.string("redis_queue_master_password")?,
    }))
}

fn last_state(layered: &Layered) -> Result<Option<LastStateConfig>, ConfigError> {
    let defaults = LastStateConfig::default();
    let key = "realtime_last_state_seconds";
    let Some(max_age) = seconds_or_off(layered, key, defaults.max_age)? else {
        return Ok(None);
    };
    Ok(Some(LastStateConfig {
        max_age,
        rooms: names(layered, "realtime_last_state_rooms")?,
        events: names(layered, "realtime_last_state_events")?,
        max_entries: at_least(
            layered,
            "realtime_last_state_max_entries",
            1,
            defaults.max_entries,
        )?,
        max_bytes: at_least(
            layered,
            "realtime_last_state_max_bytes",
            1024,
            defaults.max_bytes,
        )?,
    }))
}

/// Connection state recovery's window and bounds; a window of 0 turns it off.
fn recovery(layered: &Layered) -> Result<Option<RecoveryConfig>, ConfigError> {
    let defaults = RecoveryConfig::default();
    let key = "realtime_recovery_seconds";
    let Some(window) = seconds_or_off(layered, key, DEFAULT_RECOVERY_WINDOW)? else {
        return Ok(None);
    };
    Ok(Some(RecoveryConfig {
        window,
        max_events: at_least(
            layered,
            "realtime_recovery_max_events",
            1,
            defaults.max_events,
        )?,
        max_bytes: at_least(
            layered,
            "realtime_recovery_max_bytes",
            1024,
            defaults.max_bytes,
        )?,
        max_sessions: at_least(
            layered,
            "realtime_recovery_max_sessions",
            1,
            defaults.max_sessions,
        )?,
    }))
}

/// Overrides given on the command line; they win over files and environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub frappe_version: Option<u32>,
}

impl Config {
    /// Read the bench in `bench_dir` with the process environment.
    pub fn load(bench_dir: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load_with_env(bench_dir, overrides, |var| std::env::var(var).ok())
    }

    /// As [`Config::load`], with the environment given as a function (for tests).
    pub fn load_with_env(
        bench_dir: &Path,
        overrides: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::from_layered(bench_dir, &layered(bench_dir, overrides, env)?)
    }

    /// As [`Config::load`], and where each key it read came from (`--check-config`).
    pub fn explain(bench_dir: &Path, overrides: &Overrides) -> Result<Explained, ConfigError> {
        let layered = layered(bench_dir, overrides, |var| std::env::var(var).ok())?;
        let config = Self::from_layered(bench_dir, &layered)?;
        let keys = layered
            .asked
            .take()
            .into_iter()
            .map(|key| {
                let (value, source) = match layered.values.get(&key) {
                    Some((value, source)) => (Some(shown(&key, value)), Some(source.clone())),
                    None => (None, None),
                };
                KeyOrigin { key, value, source }
            })
            .collect();
        Ok(Explained { config, keys })
    }

    /// A copy fit to print: secrets are already masked by their type; passwords in URLs
    /// are masked here.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        shown.redis_queue = redact_url(&shown.redis_queue);
        shown.redis_cache = shown.redis_cache.as_deref().map(redact_url);
        if let Some(url) = shown.callback_url.as_mut()
            && url.password().is_some()
        {
            let _ = url.set_password(Some(MASK));
        }
        shown
    }
}

/// The configuration `--check-config` shows, and the keys behind it.
#[derive(Debug)]
pub struct Explained {
    pub config: Config,
    /// Every key read, in the order it was read.
    pub keys: Vec<KeyOrigin>,
}

/// One key: its value as it may be shown, and where it came from; both `None` when it is not
/// set (the default applies).
#[derive(Debug)]
pub struct KeyOrigin {
    pub key: String,
    pub value: Option<String>,
    pub source: Option<Source>,
}

/// What a masked password reads as (characters a URL's userinfo takes as they are).
const MASK: &str = "****";

/// A value as `--check-config` may print it: a key that names a secret is masked whole, a
/// URL keeps everything but its password.
fn shown(key: &str, value: &Value) -> String {
    if ["token", "secret", "password"]
        .iter()
        .any(|word| key.contains(word))
    {
        return "<redacted>".to_owned();
    }
    match value {
        Value::String(text) => Value::String(redact_url(text)).to_string(),
        other => other.to_string(),
    }
}

/// `text` with the password of a URL masked; anything else as it is.
fn redact_url(text: &str) -> String {
    match Url::parse(text) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some(MASK));
            url.to_string()
        }
        _ => text.to_owned(),
    }
}

impl Config {
    fn from_layered(bench_dir: &Path, layered: &Layered) -> Result<Self, ConfigError> {
        let frappe_version = frappe_version(bench_dir, layered)?;
        let legacy = !frappe_version.has_site_namespaces();
        let listen = match layered.string("socketio_uds")? {
            Some(path) => Listen::Unix(PathBuf::from(path)),
            None => Listen::Port(layered.port("socketio_port")?.unwrap_or(if legacy {
                LEGACY_SOCKETIO_PORT
            } else {
                DEFAULT_SOCKETIO_PORT
            })),
        };
        let redis_queue = if legacy {
            legacy_events_redis(layered)?
        } else {
            layered
                .typed("redis_queue", parse_redis_url)?
                .ok_or(ConfigError::MissingRedisQueue)?
        };
        let default_site = match legacy {
            true => current_site(bench_dir).or(layered.string("default_site")?),
            false => layered.string("default_site")?,
        };
        let callback_url = layered.typed("realtime_callback_url", parse_http_url)?;
        Ok(Self {
            bench_dir: bench_dir.to_path_buf(),
            listen,
            redis_queue,
            redis_cache: layered.string("redis_cache")?,
            default_site,
            developer_mode: layered.flag("developer_mode"),
            webserver_port: layered.port("webserver_port")?,
            webserver_host: layered.string("webserver_host")?,
            callback_url,
            allow_cors: layered
                .typed("allow_cors", AllowCors::from_value)?
                .unwrap_or_default(),
            callback_timeout: layered
                .seconds("realtime_callback_timeout")?
                .unwrap_or(DEFAULT_CALLBACK_TIMEOUT),
            limits: limits(layered)?,
            admin_token: layered.typed("realtime_admin_token", |value| match value.as_str() {
                Some(token) if token.len() >= 16 => Ok(Secret(token.to_owned())),
                _ => Err("must be a string of at least 16 characters".to_owned()),
            })?,
            callback_concurrency: layered
                .typed("realtime_callback_concurrency", |value| {
                    value
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|n| (1..=10_000).contains(n))
                        .ok_or_else(|| "must be a whole number from 1 to 10000".to_owned())
                })?
                .unwrap_or(DEFAULT_CALLBACK_CONCURRENCY),
            reconnect_window: layered
                .seconds("realtime_reconnect_window")?
                .unwrap_or(DEFAULT_RECONNECT_WINDOW),
            frappe_version,
            connection_caps: connection_caps(layered)?,
            user_info_cache_ttl: layered.seconds("realtime_user_info_cache_seconds")?,
            slow_client_timeout: layered
                .seconds("realtime_slow_client_timeout")?
                .unwrap_or(DEFAULT_SLOW_CLIENT_TIMEOUT),
            slow_client_max_bytes: layered
                .typed("realtime_slow_client_max_bytes", |value| {
                    value
                        .as_u64()
                        .filter(|n| *n >= 1024)
                        .ok_or_else(|| "must be a whole number of bytes, at least 1024".to_owned())
                })?
                .unwrap_or(DEFAULT_SLOW_CLIENT_MAX_BYTES),
            recovery: recovery(layered)?,
            recovery_store: layered
                .typed("realtime_recovery_store", |value| match value.as_str() {
                    Some("memory") => Ok(RecoveryStore::Memory),
                    Some("redis") => Ok(RecoveryStore::Redis),
                    _ => Err("must be \"memory\" or \"redis\"".to_owned()),
                })?
                .unwrap_or_default(),
            shared_state: layered
                .typed("realtime_shared_state", |value| match value.as_str() {
                    Some("off") => Ok(SharedState::Off),
                    Some("redis") => Ok(SharedState::Redis),
                    _ => Err("must be \"off\" or \"redis\"".to_owned()),
                })?
                .unwrap_or_default(),
            redis_sentinel: if legacy { None } else { sentinel(layered)? },
            last_state: last_state(layered)?,
        })
    }

    pub fn sites_dir(&self) -> PathBuf {
        self.bench_dir.join("sites")
    }
}

/// The files and the environment merged, each value with its origin.
fn layered(
    bench_dir: &Path,
    overrides: &Overrides,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Layered, ConfigError> {
    let mut layered = Layered::default();
    for file in [
        bench_dir.join("config.json"),
        bench_dir.join("sites").join("common_site_config.json"),
    ] {
        if let Some(object) = read_json_object(&file)? {
            layered.merge_truthy(object, &Source::File(file));
        }
    }
    for (var, key) in ENV_OVERRIDES {
        if let Some(value) = env(var).filter(|v| !v.is_empty()) {
            layered.set(key, Value::String(value), Source::Env(var));
        }
    }
    if let Some(major) = overrides.frappe_version {
        layered.set(
            "realtime_frappe_version",
            Value::from(major),
            Source::Flag("--frappe-version"),
        );
    }
    Ok(layered)
}

fn limits(layered: &Layered) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let positive = |value: &Value| {
        value
            .as_f64()
            .filter(|n| *n >= 1.0 && n.is_finite())
            .ok_or_else(|| "must be a number of at least 1".to_owned())
    };
    Ok(Limits {
        events_per_second: layered
            .typed("realtime_client_events_per_second", positive)?
            .unwrap_or(defaults.events_per_second),
        event_burst: layered
            .typed("realtime_client_event_burst", positive)?
            .unwrap_or(defaults.event_burst),
        max_rooms: layered
            .typed("realtime_max_rooms_per_socket", |value| {
                value
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| *n >= 4)
                    .ok_or_else(|| "must be a whole number of at least 4".to_owned())
            })?
            .unwrap_or(defaults.max_rooms),
    })
}

fn connection_caps(layered: &Layered) -> Result<Caps, ConfigError> {
    let cap = |key: &'static str| {
        layered.typed(key, |value| {
            value
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    "must be a whole number of at least 1 (leave it out for no cap)".to_owned()
                })
        })
    };
    Ok(Caps {
        per_site: cap("realtime_max_connections_per_site")?,
        per_ip: cap("realtime_max_connections_per_ip")?,
        per_user: cap("realtime_max_connections_per_user")?,
    })
}

/// `None` when the file does not exist (both files are optional, as in Node).
fn read_json_object(path: &Path) -> Result<Option<Map<String, Value>>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(object)) => Ok(Some(object)),
        Ok(_) => Err(ConfigError::NotAnObject {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(ConfigError::Json {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn parse_redis_url(value: &Value) -> Result<String, String> {
    let raw = value.as_str().ok_or("must be a string")?;
    match redis::Client::open(raw) {
        Ok(_) => Ok(raw.to_owned()),
        // The redis error kind never echoes the URL, so credentials stay out of the message.
        Err(e) => Err(format!("is not a usable Redis URL ({})", e.category())),
    }
}

fn parse_http_url(value: &Value) -> Result<Url, String> {
    let raw = value.as_str().ok_or("must be a string")?;
    match Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url),
        _ => Err("must be an http:// or https:// URL".into()),
    }
}

/// Frappe 13 and 14's Redis for events: `redis_socketio`, else `redis_async_broker_port` (a
/// URL, or a port on localhost as early Frappe 13 wrote it), else Frappe's own default.
fn legacy_events_redis(layered: &Layered) -> Result<String, ConfigError> {
    if let Some(url) = layered.typed("redis_socketio", parse_redis_url)? {
        return Ok(url);
    }
    let broker = layered.typed("redis_async_broker_port", |value| match value {
        Value::Number(port) => port
            .as_u64()
            .filter(|port| (1..=65535).contains(port))
            .map(|port| format!("redis://localhost:{port}"))
            .ok_or_else(|| "must be a port number or a redis:// URL".to_owned()),
        other => parse_redis_url(other),
    })?;
    Ok(broker.unwrap_or_else(|| LEGACY_EVENTS_REDIS.to_owned()))
}

/// `sites/currentsite.txt`, which Frappe 13 and 14 take as the default site over
/// `default_site` and `FRAPPE_SITE` (protocol §1.2).
fn current_site(bench_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(bench_dir.join("sites/currentsite.txt")).ok()?;
    Some(text.trim().to_owned()).filter(|site| !site.is_empty())
}

/// The Frappe protocol to speak: `realtime_frappe_version` if set, else the version of
/// `apps/frappe`, else the newest one (with a warning, since guessing can break auth).
fn frappe_version(bench_dir: &Path, layered: &Layered) -> Result<FrappeVersion, ConfigError> {
    let configured = layered.typed("realtime_frappe_version", |value| {
        let major = match value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.split('.').next().and_then(|m| m.trim().parse().ok()),
            _ => None,
        };
        match major.and_then(|m| u32::try_from(m).ok()) {
            Some(m @ 13..) => Ok(FrappeVersion::from_major(m)),
            _ => Err("must be 13, 14, 15 or 16".to_owned()),
        }
    })?;
    if let Some(version) = configured {
        return Ok(version);
    }
    let init = bench_dir.join("apps/frappe/frappe/__init__.py");
    match std::fs::read_to_string(&init)
        .ok()
        .and_then(|text| major_version(&text))
    {
        Some(major) => Ok(FrappeVersion::from_major(major)),
        None => {
            tracing::warn!(
                file = %init.display(),
                "cannot tell the Frappe version; speaking Frappe 16 (set realtime_frappe_version to change)"
            );
            Ok(FrappeVersion::V16)
        }
    }
}

/// The major number of `__version__ = "15.40.2"` in `frappe/__init__.py`.
fn major_version(init_py: &str) -> Option<u32> {
    init_py.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("__version__")?.trim_start();
        let quoted = rest.strip_prefix('=')?.trim().trim_matches(['"', '\'']);
        quoted.split('.').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bench(common: Value, legacy: Option<Value>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("sites")).expect("sites");
        std::fs::write(
            dir.path().join("sites/common_site_config.json"),
            common.to_string(),
        )
        .expect("write");
        if let Some(legacy) = legacy {
            std::fs::write(dir.path().join("config.json"), legacy.to_string()).expect("write");
        }
        dir
    }

    fn load(dir: &Path, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with_env(dir, &Overrides::default(), |var| env.get(var).cloned())
    }

    #[test]
    fn defaults_apply_when_keys_are_absent() {
        let dir = bench(json!({"redis_queue": "redis://127.0.0.1:11000"}), None);
        let config = load(dir.path(), &[]).expect("config");
        assert_eq!(config.listen, Listen::Port(9000));
        assert_eq!(config.callback_timeout, Duration::from_secs(10));
        assert!(!config.developer_mode);
        assert_eq!(config.default_site, None);
    }

    #[test]
    fn falsy_values_never_override_and_common_config_wins_over_legacy() {
        let dir = bench(
            json!({"redis_queue": "redis://q:1", "socketio_port": 0, "default_site": "",
                   "developer_mode": false}),
            Some(
                json!({"socketio_port": 9100, "default_site": "a.local", "redis_queue": "redis://old:2"}),
            ),
        );
        let config = load(dir.path(), &[]).expect("config");
        assert_eq!(config.listen, Listen::Port(9100));
        assert_eq!(config.default_site.as_deref(), Some("a.local"));
        assert_eq!(config.redis_queue, "redis://q:1");
    }

    #[test]
    fn environment_overrides_files() {
        let dir = bench(
            json!({"redis_queue": "redis://q:1", "socketio_port": 9000}),
            None,
        );
        let config = load(
            dir.path(),
            &[
                ("FRAPPE_SOCKETIO_PORT", "9555"),
                ("FRAPPE_REDIS_QUEUE", "unix:///run/redis.sock"),
                ("FRAPPE_SITE", "b.local"),
                ("FRAPPE_REDIS_CACHE", "redis://c:3"),
            ],
        )
        .expect("config");
        assert_eq!(config.listen, Listen::Port(9555));
        assert_eq!(config.redis_queue, "unix:///run/redis.sock");
        assert_eq!(config.default_site.as_deref(), Some("b.local"));
        assert_eq!(config.redis_cache.as_deref(), Some("redis://c:3"));
    }

    #[test]
    fn unix_socket_wins_over_port() {
        let dir = bench(json!({"redis_queue": "redis://q:1"}), None);
        let config = load(dir.path(), &[("FRAPPE_SOCKETIO_UDS", "/tmp/rt.sock")]).expect("config");
        assert_eq!(config.listen, Listen::Unix(PathBuf::from("/tmp/rt.sock")));
    }

    #[test]
    fn bad_values_name_the_file_and_key() {
        let dir = bench(
            json!({"redis_queue": "redis://q:1", "socketio_port": "ninety"}),
            None,
        );
        let message = load(dir.path(), &[]).expect_err("bad port").to_string();
        assert!(message.contains("common_site_config.json"), "{message}");
        assert!(message.contains("socketio_port"), "{message}");

        let message = load(dir.path(), &[("FRAPPE_SOCKETIO_PORT", "70000")])
            .expect_err("bad port")
            .to_string();
        assert!(message.contains("FRAPPE_SOCKETIO_PORT"), "{message}");
    }

    #[test]
    fn invalid_json_names_the_file() {
        let dir = bench(json!({}), None);
        std::fs::write(dir.path().join("sites/common_site_config.json"), "{oops").expect("w");
        let message = load(dir.path(), &[]).expect_err("bad json").to_string();
        assert!(message.contains("common_site_config.json"), "{message}");
        assert!(message.contains("not valid JSON"), "{message}");
    }

    #[test]
    fn missing_redis_queue_is_an_error() {
        let dir = bench(json!({}), None);
        let message = load(dir.path(), &[]).expect_err("no redis").to_string();
        assert!(message.contains("redis_queue"), "{message}");
    }

    #[test]
    fn bad_redis_url_does_not_echo_credentials() {
        let dir = bench(json!({"redis_queue": "http://user:hunter2@x"}), None);
        let message = load(dir.path(), &[]).expect_err("bad url").to_string();
        assert!(message.contains("redis_queue"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn frappe_version_comes_from_the_bench_or_the_override_key() {
        let dir = bench(json!({"redis_queue": "redis://q:1"}), None);
        let init = dir.path().join("apps/frappe/frappe");
        std::fs::create_dir_all(&init).expect("mkdir");
        std::fs::write(
            init.join("__init__.py"),
            "import os\n__version__ = \"15.62.1\"\n",
        )
        .expect("w");
        assert_eq!(
            load(dir.path(), &[]).expect("config").frappe_version,
            FrappeVersion::V15
        );
        std::fs::write(init.join("__init__.py"), "__version__ = '16.0.0-dev'\n").expect("w");
        assert_eq!(
            load(dir.path(), &[]).expect("config").frappe_version,
            FrappeVersion::V16
        );
        std::fs::write(
            dir.path().join("sites/common_site_config.json"),
            json!({"redis_queue": "redis://q:1", "realtime_frappe_version": 15}).to_string(),
        )
        .expect("w");
        assert_eq!(
            load(dir.path(), &[]).expect("config").frappe_version,
            FrappeVersion::V15
        );
    }

    #[test]
    fn frappe_14_reads_the_keys_of_its_era() {
        let dir = bench(
            json!({"redis_queue": "redis://queue:1", "redis_socketio": "redis://socketio:2",
                "realtime_frappe_version": 14, "default_site": "common.local"}),
            None,
        );
        let config = load(dir.path(), &[]).expect("config");
        assert_eq!(config.frappe_version, FrappeVersion::V14);
        assert!(!config.frappe_version.has_site_namespaces());
        assert_eq!(
            config.redis_queue, "redis://socketio:2",
            "events come from redis_socketio"
        );
        assert_eq!(
            config.listen,
            Listen::Port(3000),
            "Frappe 14's default port"
        );
        assert_eq!(config.default_site.as_deref(), Some("common.local"));
        // currentsite.txt wins over default_site on Frappe 13 and 14.
        std::fs::write(dir.path().join("sites/currentsite.txt"), "current.local\n").expect("w");
        let config = load(dir.path(), &[]).expect("config");
        assert_eq!(config.default_site.as_deref(), Some("current.local"));

        let dir = bench(
            json!({"realtime_frappe_version": "13", "redis_async_broker_port": 12311}),
            None,
        );
        let config = load(dir.path(), &[]).expect("a port means localhost");
        assert_eq!(config.frappe_version, FrappeVersion::V13);
        assert_eq!(config.redis_queue, "redis://localhost:12311");
        let dir = bench(json!({"realtime_frappe_version": 14}), None);
        assert_eq!(
            load(dir.path(), &[]).expect("Frappe's default").redis_queue,
            "redis://localhost:12311"
        );
        let dir = bench(json!({"realtime_frappe_version": 12}), None);
        let message = load(dir.path(), &[]).expect_err("too old").to_string();
        assert!(message.contains("must be 13, 14, 15 or 16"), "{message}");
    }

    #[test]
    fn allow_cors_is_read_from_the_common_config() {
        let dir = bench(
            json!({"redis_queue": "redis://q:1", "allow_cors": ["https://a.example"]}),
            None,
        );
        let config = load(dir.path(), &[]).expect("config");
        assert!(config.allow_cors.allows("https://a.example"));
        let dir = bench(json!({"redis_queue": "redis://q:1", "allow_cors": 5}), None);
        let message = load(dir.path(), &[]).expect_err("bad").to_string();
        assert!(message.contains("allow_cors"), "{message}");
    }

    #[test]
    fn the_admin_token_is_never_printed_and_compares_exactly() {
        let token = "an-admin-token-of-some-length";
        let dir = bench(
            json!({"redis_queue": "redis://q:1", "realtime_admin_token": token}),
            None,
        );
        let config = load(dir.path(), &[]).expect("config");
        assert!(!format!("{config:?}").contains(token));
        let secret = config.admin_token.expect("token");
        assert!(secret.matches(token));
        assert!(!secret.matches("an-admin-token-of-some-lengtH"));
        assert!(!secret.matches(""));
    }

    #[test]
    fn callback_url_must_be_http() {
        let dir = bench(
            json!({"redis_queue": "redis://q:1", "realtime_callback_url": "ftp://x"}),
            None,
        );
        let message = load(dir.path(), &[]).expect_err("bad url").to_string();
        assert!(message.contains("realtime_callback_url"), "{message}");
    }

    #[test]
    fn recovery_and_last_state_are_on_by_default_and_0_turns_them_off() {
        let dir = bench(json!({"redis_queue": "redis://q:1"}), None);
        let config = load(dir.path(), &[]).expect("config");
        let recovery = config.recovery.expect("on by default");
        assert_eq!(recovery.window, Duration::from_secs(120));
        assert_eq!(
            config.last_state.expect("on").max_age,
            Duration::from_secs(600)
        );
        let off = json!({"redis_queue": "redis://q:1", "realtime_recovery_seconds": 0,
            "realtime_last_state_seconds": 0});
        let config = load(bench(off, None).path(), &[]).expect("config");
        assert!(config.recovery.is_none() && config.last_state.is_none());
    }

    #[test]
    fn last_state_lists_and_recovery_bounds_are_checked() {
        let listed = json!({"redis_queue": "redis://q:1", "realtime_last_state_rooms": ["doc:"],
            "realtime_last_state_events": ["ai_progress"], "realtime_recovery_max_events": 5});
        let config = load(bench(listed, None).path(), &[]).expect("config");
        let last_state = config.last_state.expect("on");
        assert_eq!(
            (last_state.rooms, last_state.events),
            (vec!["doc:".to_owned()], vec!["ai_progress".to_owned()])
        );
        assert_eq!(config.recovery.expect("on").max_events, 5);
        for (key, value) in [
            ("realtime_last_state_rooms", json!("doc:")),
            ("realtime_last_state_events", json!([""])),
            ("realtime_recovery_max_bytes", json!(10)),
            ("realtime_recovery_seconds", json!(-1)),
        ] {
            let bad = json!({"redis_queue": "redis://q:1", key: value});
            let message = load(bench(bad, None).path(), &[])
                .expect_err("bad")
                .to_string();
            assert!(message.contains(key), "{message}");
        }
    }
}
