//! A stand-in for the Frappe site's web server: it answers
//! `/api/method/frappe.realtime.get_user_info` as protocol §4 says Frappe does, instantly, and
//! counts the calls and the distinct credentials they carry — the reconnect-storm figure.
//!
//! Frappe 15 gets the sid as `?sid=`; Frappe 16 as `Cookie: sid=` with `X-Frappe-Socket-Secret`,
//! answered `{"message": {}}` when the secret does not match (§4.4). The secret is in Redis
//! before the server starts, so the "first call creates the secret" race is not measured.
//!
//! It is a process of its own (this program, re-run with [`SUBCOMMAND`]), like the gunicorn it
//! stands for: its connections do not eat into the clients' file descriptors (Frappe's Node
//! service opens one connection per call, thousands at once in a storm), and it competes for
//! the load core as a separate process would. The run reads and resets its counts over HTTP.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::identity::Identities;
use crate::procs::{Spawned, accepts};

/// The first argument that makes this program the stand-in instead of the load generator.
pub const SUBCOMMAND: &str = "__frappe-stand-in";
const USER_INFO_PATH: &str = "/api/method/frappe.realtime.get_user_info";
/// Read and reset the counts (the load generator's own endpoint, not Frappe's).
const COUNTS_PATH: &str = "/__loadgen/counts";
/// The socket secret and the sid nonce travel in the environment, not on the command line.
const SECRET_ENV: &str = "LOADGEN_STAND_IN_SECRET";
const NONCE_ENV: &str = "LOADGEN_STAND_IN_NONCE";

/// `get_user_info` traffic since the counts were last taken.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthCounts {
    pub calls: u64,
    pub distinct_credentials: u64,
    /// Calls whose credential was not one of ours (answered as Guest).
    pub unknown: u64,
    /// Frappe 16 calls without the right socket secret (answered `{}`).
    pub bad_secret: u64,
}

/// The running stand-in, stopped when dropped.
pub struct FrappeStandIn {
    pub port: u16,
    /// Held for its `Drop`, which stops the process.
    _process: Spawned,
}

impl FrappeStandIn {
    /// Start it on `port` (see [`crate::procs::free_ports`]) for `identities`, logging into
    /// `log_dir`, and wait (at most 10 s) until it listens.
    pub async fn start(
        log_dir: &Path,
        port: u16,
        version: u32,
        secret: &str,
        identities: &Identities,
    ) -> Result<Self> {
        let mut command = Command::new(std::env::current_exe().context("locating this program")?);
        command
            .args([SUBCOMMAND, &port.to_string(), &version.to_string()])
            .env(SECRET_ENV, secret)
            .env(NONCE_ENV, identities.nonce());
        let log = log_dir.join("frappe-stand-in.log");
        let mut process = Spawned::start(command, "the web stand-in", &log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !accepts(port) {
            if let Some(status) = process.exited()? {
                bail!(
                    "the web stand-in exited with {status}; see {}",
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!("the web stand-in did not listen on port {port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            port,
            _process: process,
        })
    }

    /// The Origin clients send, which is where the server calls back.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The counts since the previous call, which start a new count.
    pub async fn take_counts(&self) -> Result<AuthCounts> {
        let body = http_get(self.port, COUNTS_PATH)
            .await
            .context("reading the web stand-in's counts")?;
        serde_json::from_slice(&body).context("the web stand-in's counts are not JSON")
    }
}

/// A plain HTTP/1.1 GET on loopback, bounded to 5 s; the body of a 200 answer.
async fn http_get(port: u16, path: &str) -> Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .context("no answer within 5 s")??;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let status = String::from_utf8_lossy(&answer[..split]);
    if !status.starts_with("HTTP/1.1 200") {
        bail!("answered {:?}", status.lines().next().unwrap_or_default());
    }
    Ok(answer[split + 4..].to_vec())
}

struct StandInState {
    version: u32,
    secret: String,
    identities: Identities,
    calls: AtomicU64,
    unknown: AtomicU64,
    bad_secret: AtomicU64,
    credentials: Mutex<HashSet<String>>,
}

impl StandInState {
    fn take_counts(&self) -> AuthCounts {
        let credentials = {
            let mut set = self
                .credentials
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::take(&mut *set).len()
        };
        AuthCounts {
            calls: self.calls.swap(0, Ordering::Relaxed),
            distinct_credentials: credentials as u64,
            unknown: self.unknown.swap(0, Ordering::Relaxed),
            bad_secret: self.bad_secret.swap(0, Ordering::Relaxed),
        }
    }
}

/// The stand-in process: `<program> __frappe-stand-in <port> <frappe major>`, the secret and
/// the sid nonce in the environment. Serves until killed.
pub fn serve_main(args: &[String]) -> ExitCode {
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen web stand-in: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &[String]) -> Result<()> {
    let [port, version] = args else {
        bail!("usage: {SUBCOMMAND} <port> <frappe major version>");
    };
    let port: u16 = port.parse().context("port")?;
    let version: u32 = version.parse().context("version")?;
    let secret = std::env::var(SECRET_ENV).with_context(|| format!("{SECRET_ENV} unset"))?;
    let nonce = std::env::var(NONCE_ENV).with_context(|| format!("{NONCE_ENV} unset"))?;
    let state = Arc::new(StandInState {
        version,
        secret,
        identities: Identities::with_nonce(nonce),
        calls: AtomicU64::new(0),
        unknown: AtomicU64::new(0),
        bad_secret: AtomicU64::new(0),
        credentials: Mutex::new(HashSet::new()),
    });
    let router = Router::new()
        .route(USER_INFO_PATH, get(get_user_info))
        .route(COUNTS_PATH, get(counts))
        .with_state(state);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        axum::serve(listener, router).await.context("serving")
    })
}

async fn counts(State(state): State<Arc<StandInState>>) -> Json<AuthCounts> {
    Json(state.take_counts())
}

/// The credential of a call as this Frappe version carries it: `Authorization` first (protocol
/// §4.1), then the sid from the query (15) or the cookie (16; the query is accepted too, as
/// Frappe does).
fn credential(query: &HashMap<String, String>, headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some(value.to_owned());
    }
    if let Some(sid) = query.get("sid") {
        return Some(sid.clone());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("sid=").map(str::to_owned))
}

async fn get_user_info(
    State(state): State<Arc<StandInState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    state.calls.fetch_add(1, Ordering::Relaxed);
    let credential = credential(&query, &headers);
    if let Some(credential) = &credential {
        state
            .credentials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(credential.clone());
    }
    if state.version >= 16 {
        let secret = headers
            .get("x-frappe-socket-secret")
            .and_then(|v| v.to_str().ok());
        if secret != Some(state.secret.as_str()) {
            state.bad_secret.fetch_add(1, Ordering::Relaxed);
            return Json(json!({"message": {}})).into_response();
        }
    }
    let user = credential
        .as_deref()
        .and_then(|c| state.identities.parse_sid(c));
    let (user, user_type) = match user {
        Some(k) => (Identities::user(k), "System User"),
        None => {
            // Frappe resolves an unknown or expired sid as Guest (protocol §4.5).
            state.unknown.fetch_add(1, Ordering::Relaxed);
            ("Guest".to_owned(), "Website User")
        }
    };
    let mut message = json!({"user": user, "user_type": user_type});
    if state.version >= 16 {
        message["installed_apps"] = json!(["frappe"]);
    }
    (StatusCode::OK, Json(json!({ "message": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_is_found_where_each_version_puts_it() {
        let mut headers = HeaderMap::new();
        let mut query = HashMap::new();
        assert_eq!(credential(&query, &headers), None);
        headers.insert(header::COOKIE, "a=1; sid=abc; b=2".parse().expect("header"));
        assert_eq!(credential(&query, &headers).as_deref(), Some("abc"));
        query.insert("sid".to_owned(), "q".to_owned());
        assert_eq!(credential(&query, &headers).as_deref(), Some("q"));
        headers.insert(header::AUTHORIZATION, "token k:s".parse().expect("header"));
        assert_eq!(credential(&query, &headers).as_deref(), Some("token k:s"));
    }
}
