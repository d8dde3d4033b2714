//! A stand-in for the Frappe site's web server: it answers
//! `/api/method/frappe.realtime.get_user_info` as spec §4 says Frappe does, instantly, and
//! counts the calls and the distinct credentials they carry — the reconnect-storm figure.
//!
//! Frappe 15 gets the sid as `?sid=`; Frappe 16 as `Cookie: sid=` with `X-Frappe-Socket-Secret`,
//! answered `{"message": {}}` when the secret does not match (§4.4). The secret is in Redis
//! before the server starts, so the "first call creates the secret" race is not measured.
//!
//! It runs on a thread and runtime of its own, like the separate gunicorn process it stands
//! for, so a storm's handshakes compete with the clients for the core as they would in life.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;

use crate::identity::Identities;

const USER_INFO_PATH: &str = "/api/method/frappe.realtime.get_user_info";

/// `get_user_info` traffic since the last [`FrappeStandIn::take_counts`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct AuthCounts {
    pub calls: u64,
    pub distinct_credentials: u64,
    /// Calls whose credential was not one of ours (answered as Guest).
    pub unknown: u64,
    /// Frappe 16 calls without the right socket secret (answered `{}`).
    pub bad_secret: u64,
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

pub struct FrappeStandIn {
    pub port: u16,
    state: Arc<StandInState>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FrappeStandIn {
    /// Listen on a free loopback port and answer for `identities`.
    pub fn start(version: u32, secret: String, identities: Identities) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding the web stand-in on 127.0.0.1")?;
        listener
            .set_nonblocking(true)
            .context("making the web stand-in's socket non-blocking")?;
        let port = listener
            .local_addr()
            .context("web stand-in address")?
            .port();
        let state = Arc::new(StandInState {
            version,
            secret,
            identities,
            calls: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            bad_secret: AtomicU64::new(0),
            credentials: Mutex::new(HashSet::new()),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the web stand-in's runtime")?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let router = Router::new()
            .route(USER_INFO_PATH, get(get_user_info))
            .with_state(state.clone());
        let thread = std::thread::Builder::new()
            .name("frappe-stand-in".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            eprintln!("loadgen: web stand-in cannot listen: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        served = axum::serve(listener, router) => {
                            if let Err(e) = served {
                                eprintln!("loadgen: web stand-in stopped: {e}");
                            }
                        }
                        _ = stop => {}
                    }
                });
            })
            .context("starting the web stand-in's thread")?;
        Ok(Self {
            port,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The Origin clients send, which is where the server calls back.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The counts since the previous call, which start a new count.
    pub fn take_counts(&self) -> AuthCounts {
        let credentials = {
            let mut set = self
                .state
                .credentials
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::take(&mut *set).len()
        };
        AuthCounts {
            calls: self.state.calls.swap(0, Ordering::Relaxed),
            distinct_credentials: credentials as u64,
            unknown: self.state.unknown.swap(0, Ordering::Relaxed),
            bad_secret: self.state.bad_secret.swap(0, Ordering::Relaxed),
        }
    }
}

impl Drop for FrappeStandIn {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The credential of a call as this Frappe version carries it: `Authorization` first (spec
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
            // Frappe resolves an unknown or expired sid as Guest (spec §4.5).
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
