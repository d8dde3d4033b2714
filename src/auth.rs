//! Calls to the Frappe site that vouch for a client: `get_user_info` at handshake time and the
//! permission checks behind `doc_subscribe` and friends (protocol §4, §5.2).
//!
//! Frappe 13 to 15 and Frappe 16 differ in how the credential travels and which endpoints
//! exist; this module is the only place that knows. Every call is bounded by `realtime_callback_timeout`,
//! and no credential or secret ever appears in an error text or log line.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use http::header::{AUTHORIZATION, COOKIE};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;
use tokio::sync::{RwLock, Semaphore, SemaphorePermit};
use url::Url;

use ::metrics::{counter, gauge, histogram};

use crate::answer_cache::AnswerCache;
use crate::call_health::{CallHealth, CallHealthReport};
use crate::coalesce::SingleFlight;
use crate::config::{Config, FrappeVersion, is_truthy};
use crate::handshake::{Accepted, Credential};
use crate::metrics;
use crate::queue_redis::QueueRedis;

const METHOD_PREFIX: &str = "/api/method/frappe.realtime.";
/// The endpoint label of `get_user_info` calls in metrics.
const USER_INFO_ENDPOINT: &str = "get_user_info";
const SECRET_KEY: &str = "socketio_auth_secret";
const SECRET_HEADER: &str = "x-frappe-socket-secret";
/// How long connecting to the site may take, within the call's own timeout.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Why a client without the site's own `Origin` cannot be validated, and what the operator
/// can do.
const NO_CALLBACK_TARGET: &str = "the client sent no Origin of the site's own to call the site back at; \
    set realtime_callback_url (or webserver_host and webserver_port) in sites/common_site_config.json";

/// Why a handshake's credential was not accepted. `detail` is shown to the client after
/// `Unauthorized: ` and never contains the credential or the callback URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    pub kind: FailureKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The site answered and did not vouch for the credential.
    Denied,
    /// The site could not be asked or gave an unusable answer.
    Error,
    /// The site did not answer within `realtime_callback_timeout`.
    Timeout,
    /// The site cannot be called back: the client sent no `Origin` and no web server is
    /// configured.
    NoCallbackTarget,
}

impl FailureKind {
    /// The label of metrics and logs: `unauthorized`, `auth_error`, `timeout` or
    /// `no_callback_target`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Denied => "unauthorized",
            Self::Error => "auth_error",
            Self::Timeout => "timeout",
            Self::NoCallbackTarget => "no_callback_target",
        }
    }
}

impl AuthFailure {
    pub fn denied(detail: String) -> Self {
        Self {
            kind: FailureKind::Denied,
            detail,
        }
    }

    pub fn error(detail: String) -> Self {
        Self {
            kind: FailureKind::Error,
            detail,
        }
    }
}

/// Who a socket belongs to, as the site said at handshake time.
#[derive(Debug)]
pub struct Session {
    pub site: String,
    pub user: String,
    pub user_type: Option<String>,
    /// Frappe 16 only; kept for per-app handlers.
    pub installed_apps: Vec<String>,
    credential: Credential,
    callback_base: Url,
}

impl Session {
    pub fn is_system_user(&self) -> bool {
        self.user_type.as_deref() == Some("System User")
    }

    pub fn is_guest(&self) -> bool {
        self.user == "Guest"
    }
}

/// What a client asks to follow; each maps to one permission call.
#[derive(Debug, Clone)]
pub enum Subject<'a> {
    Doctype(&'a str),
    Doc(&'a str, &'a str),
}

/// Where callbacks go (protocol §4.3), decided once at startup.
#[derive(Debug, Clone)]
enum CallbackTarget {
    /// `realtime_callback_url`, or `webserver_host` + `webserver_port`.
    Fixed(Url),
    /// The handshake's Origin, with its port replaced in developer mode.
    Origin { developer_port: Option<u16> },
}

/// The client of the bench's sites. It lives as long as the process: a SIGHUP hands it the
/// reloaded values ([`FrappeClient::apply`]) and keeps its caches, its shared calls and its
/// bound on calls under way, so a reload neither forgets answers nor lets twice the calls
/// through.
pub struct FrappeClient {
    http: reqwest::Client,
    /// What a reload can change; each call takes one snapshot.
    reloadable: std::sync::RwLock<Arc<CallSettings>>,
    secret: SocketSecret,
    /// Bounds calls under way towards the site's web workers: a reconnect storm queues here
    /// instead of stampeding gunicorn.
    slots: Semaphore,
    /// The slots there are (`realtime_callback_concurrency`).
    concurrency: usize,
    /// Identical `get_user_info` calls under way, shared.
    user_info_calls: SingleFlight<UserInfoKey, Result<UserInfo, AuthFailure>>,
    /// Positive answers remembered for `realtime_user_info_cache_seconds`, if set.
    known_users: Option<AnswerCache<UserInfoKey, UserInfo>>,
    /// How the calls went, for the status page.
    health: CallHealth,
}

/// The configuration a call reads, replaced as a whole on reload.
struct CallSettings {
    version: FrappeVersion,
    target: CallbackTarget,
    /// `realtime_callback_timeout`: a call, waiting for its slot included, ends by then.
    timeout: std::time::Duration,
}

impl CallSettings {
    fn new(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            version: config.frappe_version,
            target: callback_target(config)?,
            timeout: config.callback_timeout,
        })
    }
}

/// What makes two `get_user_info` calls identical.
#[derive(Clone, PartialEq, Eq, Hash)]
struct UserInfoKey {
    site: String,
    url: Url,
    credential: Credential,
}

impl FrappeClient {
    /// The client for `config`. `realtime_callback_concurrency` and
    /// `realtime_user_info_cache_seconds` are read here only (see `config::RESTART_KEYS`).
    pub fn new(config: &Config, redis: QueueRedis) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // The whole call is bounded per request, by the timeout of the moment.
            .connect_timeout(CONNECT_TIMEOUT)
            // Below gunicorn's keep-alive, so a pooled connection is never reused as it closes.
            .pool_idle_timeout(std::time::Duration::from_secs(2))
            .no_proxy()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            reloadable: std::sync::RwLock::new(Arc::new(CallSettings::new(config)?)),
            secret: SocketSecret::new(redis),
            slots: Semaphore::new(config.callback_concurrency),
            concurrency: config.callback_concurrency,
            user_info_calls: SingleFlight::default(),
            known_users: config.user_info_cache_ttl.map(AnswerCache::new),
            health: CallHealth::default(),
        })
    }

    /// Take a reloaded configuration's Frappe version, callback target and timeout, for the
    /// calls that start from now on.
    pub fn apply(&self, config: &Config) -> anyhow::Result<()> {
        let settings = Arc::new(CallSettings::new(config)?);
        *self
            .reloadable
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = settings;
        Ok(())
    }

    fn observe(&self, endpoint: &'static str) -> CallObservation<'_> {
        gauge!(metrics::FRAPPE_REQUESTS_IN_FLIGHT, "endpoint" => endpoint).increment(1.0);
        CallObservation {
            endpoint,
            started: Instant::now(),
            health: &self.health,
        }
    }

    fn settings(&self) -> Arc<CallSettings> {
        self.reloadable
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How the calls to Frappe went since the start.
    pub fn health(&self) -> CallHealthReport {
        let in_flight = self.concurrency - self.slots.available_permits();
        let timeout = self.settings().timeout;
        let timeout_ms = metrics::millis(timeout);
        self.health.report(in_flight, self.concurrency, timeout_ms)
    }

    /// Ask the site who holds `accepted`'s credential.
    pub async fn get_user_info(&self, accepted: Accepted) -> Result<Session, AuthFailure> {
        let settings = self.settings();
        let site = accepted.site.as_str();
        let base = callback_base(&settings.target, accepted.callback_origin.as_deref())?;
        let url = base
            .join(&format!("{METHOD_PREFIX}{USER_INFO_ENDPOINT}"))
            .map_err(|e| AuthFailure::error(format!("bad callback URL: {e}")))?;
        let key = UserInfoKey {
            site: site.to_owned(),
            url,
            credential: accepted.credential,
        };
        let info = match self.remembered(&key) {
            Some(info) => info,
            None => {
                let info = self
                    .user_info_calls
                    .run(key.clone(), || self.ask_user_info(&key, &settings))
                    .await?;
                self.remember(&key, &info);
                info
            }
        };
        let user = info
            .user
            .ok_or_else(|| AuthFailure::denied("no user info returned".into()))?;
        Ok(Session {
            site: site.to_owned(),
            user,
            user_type: info.user_type,
            installed_apps: info.installed_apps,
            credential: key.credential,
            callback_base: base,
        })
    }

    fn remembered(&self, key: &UserInfoKey) -> Option<UserInfo> {
        let info = self.known_users.as_ref()?.get(key)?;
        counter!(metrics::USER_INFO_CACHE_HITS).increment(1);
        Some(info)
    }

    fn remember(&self, key: &UserInfoKey, info: &UserInfo) {
        // Guest answers are not remembered: any string is a Guest's sid, so remembering them
        // would let a client fill the cache with made-up credentials.
        if let Some(cache) = &self.known_users
            && info.user.as_deref().is_some_and(|user| user != "Guest")
        {
            cache.insert(key.clone(), info.clone());
        }
    }

    /// Forget the remembered answers naming `user` on `site`, so a revoked session cannot
    /// reconnect from the cache.
    pub fn forget_user(&self, site: &str, user: &str) {
        if let Some(cache) = &self.known_users {
            cache.forget(|key, info| key.site == site && info.user.as_deref() == Some(user));
        }
    }

    /// One `get_user_info` question, retried once on Frappe 16 when the answer is `{}`: the
    /// secret did not match, and may have just been created or rotated.
    async fn ask_user_info(
        &self,
        key: &UserInfoKey,
        settings: &CallSettings,
    ) -> Result<UserInfo, AuthFailure> {
        let info = self.fetch_user_info(key, settings).await?;
        if info.user.is_some() || settings.version != FrappeVersion::V16 {
            return Ok(info);
        }
        self.secret.refresh().await;
        self.fetch_user_info(key, settings).await
    }

    /// Wait for a free slot towards Frappe; waiting counts against the callback timeout.
    async fn slot(&self, timeout: std::time::Duration) -> Result<SemaphorePermit<'_>, AuthFailure> {
        match tokio::time::timeout(timeout, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(AuthFailure::error("the callback queue is closed".into())),
            Err(_) => Err(AuthFailure {
                kind: FailureKind::Timeout,
                detail: format!("no free slot to call Frappe within {timeout:?}"),
            }),
        }
    }

    /// Whether the site lets `session` follow `subject`. Denials are normal and silent; a
    /// failing call is logged and denies.
    pub async fn may_subscribe(&self, session: &Session, subject: Subject<'_>) -> bool {
        let settings = self.settings();
        let (endpoint, query) = permission_request(settings.version, &subject);
        let Ok(url) = session
            .callback_base
            .join(&format!("{METHOD_PREFIX}{endpoint}"))
        else {
            return false;
        };
        let call = self.observe(endpoint);
        let result = async {
            let request = self.http.get(url).query(&query);
            let (_slot, response) = self.send_as(session, request, &settings).await?;
            let status = response.status();
            if status == StatusCode::FORBIDDEN {
                return Ok(false);
            }
            if !status.is_success() {
                return Err(AuthFailure::error(format!("Frappe answered HTTP {status}")));
            }
            match settings.version {
                FrappeVersion::V13 | FrappeVersion::V14 | FrappeVersion::V15 => Ok(true),
                FrappeVersion::V16 => {
                    let body: Value = response.json().await.map_err(|e| failure(e, &settings))?;
                    Ok(body.get("message").is_some_and(is_truthy))
                }
            }
        }
        .await;
        match result {
            Ok(allowed) => {
                call.finish(if allowed { "allowed" } else { "denied" });
                allowed
            }
            Err(failure) => {
                call.finish(failure.kind.label());
                tracing::warn!(site = %session.site, user = %session.user, why = %failure.detail,
                    "permission check failed");
                false
            }
        }
    }

    /// Call an app's endpoint on the client's site with the client's credential, as Node's
    /// `socket.frappe_request` does for app handlers: `GET path?query`, or `POST` with a JSON
    /// body. The answer's JSON; any status but 2xx is an error. `label` names the call in the
    /// metrics (a bounded set: the kind of call, never the path).
    pub async fn call_app(
        &self,
        session: &Session,
        label: &'static str,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Value, AuthFailure> {
        let url = session
            .callback_base
            .join(path)
            .map_err(|_| AuthFailure::error(format!("{path:?} is not a path on the site")))?;
        let settings = self.settings();
        let call = self.observe(label);
        let request = match body {
            Some(body) => self.http.post(url).json(body),
            None => self.http.get(url),
        }
        .query(query);
        let result = async {
            let (_slot, response) = self.send_as(session, request, &settings).await?;
            let status = response.status();
            if !status.is_success() {
                return Err(AuthFailure::error(format!("Frappe answered HTTP {status}")));
            }
            response
                .json::<Value>()
                .await
                .map_err(|e| failure(e, &settings))
        }
        .await;
        call.finish(match &result {
            Ok(_) => "ok",
            Err(failure) => failure.kind.label(),
        });
        result
    }

    /// Send `request` to `session`'s site with its credential, in a slot towards Frappe that
    /// stays taken while the caller holds the returned permit (reading the body included).
    async fn send_as(
        &self,
        session: &Session,
        request: RequestBuilder,
        settings: &CallSettings,
    ) -> Result<(SemaphorePermit<'_>, reqwest::Response), AuthFailure> {
        let request = self
            .authenticate(request, &session.site, &session.credential, settings)
            .await;
        let slot = self.slot(settings.timeout).await?;
        let response = request
            .timeout(settings.timeout)
            .send()
            .await
            .map_err(|e| failure(e, settings))?;
        Ok((slot, response))
    }

    async fn fetch_user_info(
        &self,
        key: &UserInfoKey,
        settings: &CallSettings,
    ) -> Result<UserInfo, AuthFailure> {
        let call = self.observe(USER_INFO_ENDPOINT);
        let result = async {
            let _slot = self.slot(settings.timeout).await?;
            let request = self.http.get(key.url.clone());
            let request = self
                .authenticate(request, &key.site, &key.credential, settings)
                .await;
            let response = request
                .timeout(settings.timeout)
                .send()
                .await
                .map_err(|e| failure(e, settings))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(AuthFailure::denied(format!(
                    "Frappe answered HTTP {status}"
                )));
            }
            if !status.is_success() {
                return Err(AuthFailure::error(format!("Frappe answered HTTP {status}")));
            }
            let body: Value = response.json().await.map_err(|e| failure(e, settings))?;
            Ok(UserInfo::from_reply(&body))
        }
        .await;
        call.finish(match &result {
            Ok(info) if info.user.is_some() => "ok",
            Ok(_) => "denied",
            Err(failure) if failure.kind == FailureKind::Denied => "denied",
            Err(failure) => failure.kind.label(),
        });
        result
    }

    /// Attach the credential as this Frappe version expects it, the site name (so a fixed
    /// callback URL still reaches the right site) and, on Frappe 16, the socket secret.
    async fn authenticate(
        &self,
        request: RequestBuilder,
        site: &str,
        credential: &Credential,
        settings: &CallSettings,
    ) -> RequestBuilder {
        let mut request = request.header("x-frappe-site-name", site);
        request = match (credential, settings.version) {
            (Credential::Authorization(value), _) => {
                request.header(AUTHORIZATION, sensitive(value))
            }
            (
                Credential::Sid(sid),
                FrappeVersion::V13 | FrappeVersion::V14 | FrappeVersion::V15,
            ) => request.query(&[("sid", sid)]),
            (Credential::Sid(sid), FrappeVersion::V16) => {
                request.header(COOKIE, sensitive(&format!("sid={sid}")))
            }
        };
        if settings.version == FrappeVersion::V16
            && let Some(secret) = self.secret.current().await
        {
            request = request.header(SECRET_HEADER, sensitive(&secret));
        }
        request
    }
}

/// Where to call the site back for a client from `origin` (protocol §4.3).
fn callback_base(target: &CallbackTarget, origin: Option<&str>) -> Result<Url, AuthFailure> {
    match (target, origin) {
        (CallbackTarget::Fixed(url), _) => Ok(url.clone()),
        (CallbackTarget::Origin { developer_port }, Some(origin)) => {
            let mut url = Url::parse(origin)
                .map_err(|_| AuthFailure::error("the Origin header is not a URL".into()))?;
            if let Some(port) = developer_port {
                url.set_port(Some(*port))
                    .map_err(|()| AuthFailure::error("the Origin header has no host".into()))?;
            }
            Ok(url)
        }
        (CallbackTarget::Origin { .. }, None) => Err(AuthFailure {
            kind: FailureKind::NoCallbackTarget,
            detail: NO_CALLBACK_TARGET.to_owned(),
        }),
    }
}

/// A failure for the client and the log: the cause chain, never the URL (which can
/// carry `?sid=` on Frappe 15).
fn failure(error: reqwest::Error, settings: &CallSettings) -> AuthFailure {
    if error.is_timeout() {
        return AuthFailure {
            kind: FailureKind::Timeout,
            detail: format!("Frappe did not answer within {:?}", settings.timeout),
        };
    }
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    AuthFailure::error(text)
}

/// In-flight gauge, duration and outcome of one call to Frappe. The gauge goes back down
/// when this is dropped, whichever way the call ended.
struct CallObservation<'a> {
    endpoint: &'static str,
    started: Instant,
    health: &'a CallHealth,
}

impl CallObservation<'_> {
    fn finish(self, outcome: &'static str) {
        histogram!(metrics::FRAPPE_REQUEST_DURATION, "endpoint" => self.endpoint)
            .record(self.started.elapsed());
        counter!(metrics::FRAPPE_REQUESTS, "endpoint" => self.endpoint, "outcome" => outcome)
            .increment(1);
        self.health.record(self.endpoint, outcome);
    }
}

impl Drop for CallObservation<'_> {
    fn drop(&mut self) {
        gauge!(metrics::FRAPPE_REQUESTS_IN_FLIGHT, "endpoint" => self.endpoint).decrement(1.0);
    }
}

fn callback_target(config: &Config) -> anyhow::Result<CallbackTarget> {
    if let Some(url) = &config.callback_url {
        return Ok(CallbackTarget::Fixed(url.clone()));
    }
    if let (Some(host), Some(port)) = (&config.webserver_host, config.webserver_port) {
        let with_scheme = if host.contains("://") {
            host.clone()
        } else {
            format!("http://{host}")
        };
        let mut url = Url::parse(&with_scheme)
            .map_err(|e| anyhow::anyhow!("webserver_host {host:?} is not a host name: {e}"))?;
        if url.port().is_none() {
            url.set_port(Some(port))
                .map_err(|()| anyhow::anyhow!("webserver_host {host:?} has no host"))?;
        }
        return Ok(CallbackTarget::Fixed(url));
    }
    Ok(CallbackTarget::Origin {
        developer_port: config
            .developer_mode
            .then_some(config.webserver_port)
            .flatten(),
    })
}

/// The permission endpoint (after `/api/method/`) and its query for this Frappe version.
fn permission_request(
    version: FrappeVersion,
    subject: &Subject<'_>,
) -> (&'static str, Vec<(&'static str, String)>) {
    match (version, subject) {
        (
            FrappeVersion::V13 | FrappeVersion::V14 | FrappeVersion::V15,
            Subject::Doctype(doctype),
        ) => (
            "can_subscribe_doctype",
            vec![("doctype", doctype.to_string())],
        ),
        (
            FrappeVersion::V13 | FrappeVersion::V14 | FrappeVersion::V15,
            Subject::Doc(doctype, docname),
        ) => (
            "can_subscribe_doc",
            vec![
                ("doctype", doctype.to_string()),
                ("docname", docname.to_string()),
            ],
        ),
        (FrappeVersion::V16, Subject::Doctype(doctype)) => (
            "has_permission",
            vec![("doctype", doctype.to_string()), ("name", String::new())],
        ),
        (FrappeVersion::V16, Subject::Doc(doctype, docname)) => (
            "has_permission",
            vec![
                ("doctype", doctype.to_string()),
                ("name", docname.to_string()),
            ],
        ),
    }
}

fn sensitive(value: &str) -> HeaderValue {
    match HeaderValue::from_str(value) {
        Ok(mut header) => {
            header.set_sensitive(true);
            header
        }
        // Cannot happen for values that arrived as header values; an empty one is refused.
        Err(_) => HeaderValue::from_static(""),
    }
}

/// The parts of `{"message": {"user", "user_type", "installed_apps"}}` we use; absent or
/// mistyped fields read as missing.
#[derive(Debug, Default, Clone)]
struct UserInfo {
    user: Option<String>,
    user_type: Option<String>,
    installed_apps: Vec<String>,
}

impl UserInfo {
    fn from_reply(body: &Value) -> Self {
        let message = body.get("message");
        let text = |key: &str| {
            message
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let installed_apps = message
            .and_then(|m| m.get("installed_apps"))
            .and_then(Value::as_array)
            .map(|apps| {
                apps.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            user: text("user"),
            user_type: text("user_type"),
            installed_apps,
        }
    }
}

/// Frappe 16's shared secret (protocol §4.4), cached and re-read when the site stops accepting it.
struct SocketSecret {
    redis: QueueRedis,
    cached: RwLock<Option<Arc<str>>>,
}

impl SocketSecret {
    fn new(redis: QueueRedis) -> Self {
        Self {
            redis,
            cached: RwLock::new(None),
        }
    }

    async fn current(&self) -> Option<Arc<str>> {
        if let Some(secret) = self.cached.read().await.clone() {
            return Some(secret);
        }
        self.refresh().await
    }

    async fn refresh(&self) -> Option<Arc<str>> {
        let secret = match self.redis.get(SECRET_KEY).await {
            Ok(value) => value.filter(|s| !s.is_empty()).map(Arc::from),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the socket secret from redis_queue");
                None
            }
        };
        *self.cached.write().await = secret.clone();
        secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_info_reads_frappe_replies() {
        let info = UserInfo::from_reply(&json!({"message": {"user": "a@x.com",
            "user_type": "System User", "installed_apps": ["frappe", "erpnext"]}}));
        assert_eq!(info.user.as_deref(), Some("a@x.com"));
        assert_eq!(info.installed_apps, ["frappe", "erpnext"]);
        assert!(UserInfo::from_reply(&json!({"message": {}})).user.is_none());
        assert!(UserInfo::from_reply(&json!({"exc": "boom"})).user.is_none());
        assert!(UserInfo::from_reply(&json!(null)).user.is_none());
    }

    #[test]
    fn permission_endpoints_follow_the_version() {
        let (endpoint, query) = permission_request(FrappeVersion::V15, &Subject::Doc("ToDo", "1"));
        assert_eq!(endpoint, "can_subscribe_doc");
        assert_eq!(query[1], ("docname", "1".to_string()));
        let (endpoint, query) = permission_request(FrappeVersion::V16, &Subject::Doctype("ToDo"));
        assert_eq!(endpoint, "has_permission");
        assert_eq!(query[1], ("name", String::new()));
    }
}
