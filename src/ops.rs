//! Endpoints for operators: `/metrics` (Prometheus), `/health` (alive), `/ready` (Redis
//! subscribed, configuration loaded), `/status` and `/status.json` (see [`crate::status`]) and
//! `/admin/disconnect`. Served on the main listener, outside `/socket.io/` so bench nginx
//! never routes them, and optionally on a separate `--metrics-addr`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Query;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::connection::Peer;
use crate::metrics::Metrics;
use crate::revoke::Revocation;
use crate::service::Service;
use crate::status;

pub struct Ops {
    pub service: Service,
    /// `None` with `--no-metrics`.
    pub metrics: Option<Metrics>,
}

pub fn router(ops: Arc<Ops>) -> Router {
    let status = Router::new()
        .route("/status", get(status_page))
        .route("/status.json", get(status_json))
        .route_layer(middleware::from_fn_with_state(
            ops.clone(),
            only_for_status_callers,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/admin/disconnect", post(disconnect_user))
        .merge(status)
        .with_state(ops)
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    match &ops.metrics {
        Some(metrics) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics.render(
                &ops.service.io,
                &ops.service.app.sites,
                &ops.service.app.last_state,
            ),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are off (--no-metrics)\n").into_response(),
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when subscribed to Frappe's events: before that, clients can connect but would
/// receive nothing. (The configuration is loaded before anything listens.)
async fn ready(State(ops): State<Arc<Ops>>) -> (StatusCode, Json<serde_json::Value>) {
    let subscribed = ops.service.subscription.is_up();
    let body = json!({
        "status": if subscribed { "ready" } else { "not_ready" },
        "redis": if subscribed { "subscribed" } else { "disconnected" },
        "config": "loaded",
        "sites": ops.service.app.sites.len(),
    });
    let status = if subscribed {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// The status page (see [`only_for_status_callers`]).
async fn status_page(State(ops): State<Arc<Ops>>) -> Response {
    let page = status::render(&status::snapshot(&ops.service).await);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

async fn status_json(State(ops): State<Arc<Ops>>) -> Response {
    Json(status::snapshot(&ops.service).await).into_response()
}

/// The status page names users and shows clients' headers: it is for this machine (a
/// loopback peer, or the bench's Unix socket) or a caller presenting `realtime_admin_token`.
/// Bench's nginx routes only `/socket.io` here, so nothing outside reaches it through nginx.
async fn only_for_status_callers(
    State(ops): State<Arc<Ops>>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|info| info.0);
    if is_local(peer) || presents_admin_token(&ops, request.headers()) {
        next.run(request).await
    } else {
        status_refused()
    }
}

/// Whether a request comes from this machine: a loopback peer, or the bench's Unix socket
/// (only this machine's users reach it). A connection that says nothing is not.
fn is_local(peer: Option<Peer>) -> bool {
    match peer {
        Some(Peer { ip: Some(ip) }) => ip.is_loopback(),
        Some(Peer { ip: None }) => true,
        None => false,
    }
}

fn presents_admin_token(ops: &Ops, headers: &HeaderMap) -> bool {
    let settings = ops.service.app.settings();
    let Some(token) = &settings.config.admin_token else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|candidate| token.matches(candidate))
}

fn status_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the status page is served to loopback callers, or with \
         Authorization: Bearer <realtime_admin_token>\n",
    )
        .into_response()
}

/// `POST /admin/disconnect?site=<site>&user=<user>`: revoke a user's sessions on a site, on
/// every instance. `disconnected` counts this instance's sockets.
/// Off (404) unless `realtime_admin_token` is set; the caller sends it as a Bearer token.
async fn disconnect_user(
    State(ops): State<Arc<Ops>>,
    headers: HeaderMap,
    Query(revocation): Query<Revocation>,
) -> (StatusCode, Json<serde_json::Value>) {
    if ops.service.app.settings().config.admin_token.is_none() {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "the admin endpoint is off (set realtime_admin_token)"})),
        );
    }
    if !presents_admin_token(&ops, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "a valid Bearer token is required"})),
        );
    }
    let (disconnected, instances_told) = ops
        .service
        .disconnect_user(&revocation.site, &revocation.user)
        .await;
    let body = json!({"disconnected": disconnected, "instances_told": instances_told});
    (StatusCode::OK, Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_is_local() {
        let peer = |ip: &str| {
            Some(Peer {
                ip: ip.parse().ok(),
            })
        };
        assert!(is_local(peer("127.0.0.1")) && is_local(peer("::1")));
        assert!(is_local(peer("unix")), "the Unix socket");
        assert!(!is_local(peer("192.0.2.7")) && !is_local(peer("2001:db8::1")));
        assert!(!is_local(None));
    }
}
