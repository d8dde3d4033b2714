//! Endpoints for operators: `/metrics` (Prometheus), `/health` (alive) and `/ready` (Redis
//! subscribed, configuration loaded). Served on the main listener, outside `/socket.io/` so
//! bench nginx never routes them, and optionally on a separate `--metrics-addr`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::app::App;
use crate::bridge::Subscription;
use crate::metrics::Metrics;
use crate::revoke::{self, Revocation};
use crate::socketio::Io;

pub struct Ops {
    pub app: Arc<App>,
    pub io: Io,
    /// `None` with `--no-metrics`.
    pub metrics: Option<Metrics>,
    pub subscription: Subscription,
}

pub fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/admin/disconnect", post(disconnect_user))
        .with_state(ops)
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    match &ops.metrics {
        Some(metrics) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics.render(&ops.io, &ops.app.sites, &ops.app.last_state),
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
    let subscribed = ops.subscription.is_up();
    let body = json!({
        "status": if subscribed { "ready" } else { "not_ready" },
        "redis": if subscribed { "subscribed" } else { "disconnected" },
        "config": "loaded",
        "sites": ops.app.sites.len(),
    });
    let status = if subscribed {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `POST /admin/disconnect?site=<site>&user=<user>`: revoke a user's sessions on a site.
/// Off (404) unless `realtime_admin_token` is set; the caller sends it as a Bearer token.
async fn disconnect_user(
    State(ops): State<Arc<Ops>>,
    headers: HeaderMap,
    Query(revocation): Query<Revocation>,
) -> (StatusCode, Json<serde_json::Value>) {
    let settings = ops.app.settings();
    let Some(token) = &settings.config.admin_token else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "the admin endpoint is off (set realtime_admin_token)"})),
        );
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if !presented.is_some_and(|candidate| token.matches(candidate)) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "a valid Bearer token is required"})),
        );
    }
    let disconnected =
        revoke::disconnect_user(&ops.io, &ops.app, &revocation.site, &revocation.user);
    (StatusCode::OK, Json(json!({"disconnected": disconnected})))
}
