//! Endpoints for operators: `/metrics` (Prometheus), `/health` (alive) and `/ready` (Redis
//! subscribed, configuration loaded). Served on the main listener, outside `/socket.io/` so
//! bench nginx never routes them, and optionally on a separate `--metrics-addr`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use socketioxide::SocketIo;
use socketioxide::adapter::LocalAdapter;

use crate::bridge::Subscription;
use crate::metrics::Metrics;

pub struct Ops {
    pub io: SocketIo<LocalAdapter>,
    /// `None` with `--no-metrics`.
    pub metrics: Option<Metrics>,
    pub subscription: Subscription,
}

pub fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(ops)
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    match &ops.metrics {
        Some(metrics) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics.render(&ops.io),
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
        "sites": ops.io.nsps().len(),
    });
    let status = if subscribed {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
