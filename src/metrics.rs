//! Prometheus metrics: the recorder, the series that are computed when scraped, and the
//! names every other module records under (see docs/metrics.md for the catalogue).
//!
//! Recording goes through the `metrics` macros, which cost an atomic add when a recorder is
//! installed and nothing when it is not (`--no-metrics`). Labels are bounded: `site` comes
//! from the folders under `sites/`, never from a client; users, sids and rooms are never labels.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::audience;
use crate::last_state::LastState;
use crate::sites::SiteTable;
use crate::socketio::{Io, TransportType};

pub const SOCKETS: &str = "frappe_realtime_sockets";
pub const SITES: &str = "frappe_realtime_sites";
pub const ENGINE_SESSIONS_OPENED: &str = "frappe_realtime_engine_sessions_opened_total";
pub const HANDSHAKES: &str = "frappe_realtime_handshakes_total";
pub const DISCONNECTS: &str = "frappe_realtime_disconnects_total";
pub const RECONNECTS: &str = "frappe_realtime_reconnects_total";
pub const RECONNECT_DELAY: &str = "frappe_realtime_reconnect_delay_seconds";
pub const FRAPPE_REQUESTS: &str = "frappe_realtime_frappe_requests_total";
pub const FRAPPE_REQUEST_DURATION: &str = "frappe_realtime_frappe_request_duration_seconds";
pub const FRAPPE_REQUESTS_IN_FLIGHT: &str = "frappe_realtime_frappe_requests_in_flight";
pub const CLIENT_EVENTS_DROPPED: &str = "frappe_realtime_client_events_dropped_total";
pub const REDIS_MESSAGES: &str = "frappe_realtime_redis_messages_received_total";
pub const EVENTS_ROUTED: &str = "frappe_realtime_events_routed_total";
pub const EVENTS_DROPPED: &str = "frappe_realtime_events_dropped_total";
pub const PACKETS_SENT: &str = "frappe_realtime_packets_sent_total";
pub const SENT_BYTES: &str = "frappe_realtime_sent_bytes_total";
pub const SEND_DROPPED: &str = "frappe_realtime_socket_send_dropped_total";
pub const DELIVERY_DURATION: &str = "frappe_realtime_delivery_duration_seconds";
pub const REDIS_CONNECTED: &str = "frappe_realtime_redis_connected";
pub const REDIS_RECONNECTS: &str = "frappe_realtime_redis_reconnects_total";
pub const REDIS_LAST_MESSAGE: &str = "frappe_realtime_redis_last_message_timestamp_seconds";
pub const USER_INFO_CACHE_HITS: &str = "frappe_realtime_user_info_cache_hits_total";
pub const SLOW_CONSUMERS: &str = "frappe_realtime_slow_consumers_disconnected_total";
pub const RECOVERIES: &str = "frappe_realtime_recoveries_total";
pub const EVENTS_REPLAYED: &str = "frappe_realtime_recovery_events_replayed_total";
pub const RECOVERY_LOG_EVENTS: &str = "frappe_realtime_recovery_log_events";
pub const RECOVERY_LOG_BYTES: &str = "frappe_realtime_recovery_log_bytes";
pub const RECOVERY_SESSIONS_KEPT: &str = "frappe_realtime_recovery_sessions_kept";
pub const RECOVERY_STORE_LOST: &str = "frappe_realtime_recovery_store_writes_lost_total";
pub const PRESENCE_WRITES_LOST: &str = "frappe_realtime_presence_writes_lost_total";
pub const LAST_STATE_ENTRIES: &str = "frappe_realtime_last_state_entries";
pub const LAST_STATE_BYTES: &str = "frappe_realtime_last_state_bytes";
pub const APP_HANDLER_FILES_REJECTED: &str = "frappe_realtime_app_handler_files_rejected_total";
pub const APP_EVENTS: &str = "frappe_realtime_app_events_total";
pub const CLIENT_EVENTS_QUEUED: &str = "frappe_realtime_client_events_queued_total";
pub const UPTIME: &str = "frappe_realtime_uptime_seconds";
pub const BUILD_INFO: &str = "frappe_realtime_build_info";

/// Histogram buckets, so series aggregate across instances (the exporter would otherwise
/// render summaries).
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
const RECONNECT_BUCKETS: [f64; 9] = [0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0];
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The installed recorder and what is sampled at scrape time.
pub struct Metrics {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    started: Instant,
}

impl Metrics {
    /// Install the process-wide recorder and start its upkeep (histogram maintenance).
    pub fn install() -> anyhow::Result<Self> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &LATENCY_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(RECONNECT_DELAY.into()), &RECONNECT_BUCKETS)?
            .install_recorder()
            .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        let process = metrics_process::Collector::default();
        process.describe();
        describe();
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "git_sha" => env!("FRAPPE_REALTIME_GIT_SHA"))
            .set(1.0);
        Ok(Self {
            handle,
            process,
            started: Instant::now(),
        })
    }

    /// The Prometheus text exposition, with scrape-time gauges refreshed first.
    pub fn render(&self, io: &Io, sites: &SiteTable, last_state: &LastState) -> String {
        self.process.collect();
        gauge!(UPTIME).set(self.started.elapsed().as_secs_f64());
        sample_sockets(io, sites);
        sample_recovery(io, sites);
        let (entries, bytes) = last_state.size();
        gauge!(LAST_STATE_ENTRIES).set(entries as f64);
        gauge!(LAST_STATE_BYTES).set(bytes as f64);
        self.handle.render()
    }
}

/// Socket counts per site and transport, in both namespaces. O(sockets), so done per scrape,
/// not per event.
fn sample_sockets(io: &Io, sites: &SiteTable) {
    let names = sites.names();
    gauge!(SITES).set(names.len() as f64);
    for site in names {
        let (mut polling, mut websocket) = (0u32, 0u32);
        for socket in audience::site_sockets(io, &site) {
            match socket.transport_type() {
                TransportType::Polling => polling += 1,
                TransportType::Websocket => websocket += 1,
            }
        }
        gauge!(SOCKETS, "site" => site.clone(), "transport" => "polling").set(polling);
        gauge!(SOCKETS, "site" => site, "transport" => "websocket").set(websocket);
    }
}

/// What connection state recovery holds, per site namespace; the root namespace's (shared by
/// the sites its clients name) under site `/`.
fn sample_recovery(io: &Io, sites: &SiteTable) {
    let namespaces = sites
        .names()
        .into_iter()
        .map(|site| (format!("/{site}"), site));
    let root = (audience::ROOT.to_owned(), audience::ROOT.to_owned());
    for (path, site) in namespaces.chain([root]) {
        let Some(stats) = io.namespace(&path).and_then(|ns| ns.recovery_stats()) else {
            continue;
        };
        gauge!(RECOVERY_LOG_EVENTS, "site" => site.clone()).set(stats.log_events as f64);
        gauge!(RECOVERY_LOG_BYTES, "site" => site.clone()).set(stats.log_bytes as f64);
        gauge!(RECOVERY_SESSIONS_KEPT, "site" => site).set(stats.kept_sessions as f64);
    }
}

/// A removed site has no sockets: zero its gauges, which scrapes no longer refresh.
pub fn forget_site(site: &str) {
    for transport in ["polling", "websocket"] {
        gauge!(SOCKETS, "site" => site.to_owned(), "transport" => transport).set(0.0);
    }
    for name in [
        RECOVERY_LOG_EVENTS,
        RECOVERY_LOG_BYTES,
        RECOVERY_SESSIONS_KEPT,
    ] {
        gauge!(name, "site" => site.to_owned()).set(0.0);
    }
}

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Now, in milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

/// `duration` in whole milliseconds (Redis expiries, reports), saturating.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn describe() {
    describe_gauge!(SOCKETS, "Connected sockets by site and transport");
    describe_gauge!(SITES, "Sites served (one namespace each)");
    describe_counter!(
        ENGINE_SESSIONS_OPENED,
        "Engine.IO sessions opened, by initial transport"
    );
    describe_counter!(HANDSHAKES, "Namespace handshakes by site and outcome");
    describe_counter!(DISCONNECTS, "Socket disconnects by site and reason");
    describe_counter!(
        RECONNECTS,
        "Connects of a user who disconnected from the same site within the reconnect window"
    );
    describe_histogram!(
        RECONNECT_DELAY,
        metrics::Unit::Seconds,
        "Time from a user's disconnect to their reconnect"
    );
    describe_counter!(FRAPPE_REQUESTS, "Calls to Frappe by endpoint and outcome");
    describe_histogram!(
        FRAPPE_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Duration of calls to Frappe by endpoint"
    );
    describe_gauge!(FRAPPE_REQUESTS_IN_FLIGHT, "Calls to Frappe under way");
    describe_counter!(
        CLIENT_EVENTS_DROPPED,
        "Client events or subscriptions ignored by a per-socket limit, by reason"
    );
    describe_counter!(
        REDIS_MESSAGES,
        "Messages received on the Redis events channel"
    );
    describe_counter!(EVENTS_ROUTED, "Publications routed to a site namespace");
    describe_counter!(EVENTS_DROPPED, "Publications dropped, by reason");
    describe_counter!(PACKETS_SENT, "Event packets queued to sockets, by site");
    describe_counter!(
        SENT_BYTES,
        metrics::Unit::Bytes,
        "Bytes of publications queued to sockets (Redis message size times recipients)"
    );
    describe_counter!(
        SEND_DROPPED,
        "Packets not queued because a socket's send queue was full"
    );
    describe_counter!(
        SLOW_CONSUMERS,
        "Websocket connections cut because the client stopped taking bytes"
    );
    describe_counter!(
        USER_INFO_CACHE_HITS,
        "Handshakes answered from remembered get_user_info answers"
    );
    describe_histogram!(
        DELIVERY_DURATION,
        metrics::Unit::Seconds,
        "Time from receiving a publication on Redis to queueing it for every recipient"
    );
    describe_gauge!(REDIS_CONNECTED, "1 while subscribed to the events channel");
    describe_counter!(
        REDIS_RECONNECTS,
        "Re-subscriptions after the Redis link was lost"
    );
    describe_gauge!(
        REDIS_LAST_MESSAGE,
        "Unix time of the last message received on the events channel"
    );
    describe_counter!(
        RECOVERIES,
        "Connects that named a kept session (connection state recovery), by outcome"
    );
    describe_counter!(
        APP_HANDLER_FILES_REJECTED,
        "App handler files that did not load (the app's handlers are off), by app"
    );
    describe_counter!(
        APP_EVENTS,
        "Client events handled by an app's handlers, by app"
    );
    describe_counter!(
        CLIENT_EVENTS_QUEUED,
        "Client events an app declared for its backend's Redis stream, by outcome"
    );
    describe_counter!(
        EVENTS_REPLAYED,
        "Publications replayed to sockets that recovered their session"
    );
    describe_gauge!(RECOVERY_LOG_EVENTS, "Publications held for replay, by site");
    describe_gauge!(
        RECOVERY_LOG_BYTES,
        metrics::Unit::Bytes,
        "Encoded size of the publications held for replay, by site"
    );
    describe_gauge!(
        RECOVERY_SESSIONS_KEPT,
        "Sessions of cut sockets kept for recovery, by site"
    );
    describe_counter!(
        RECOVERY_STORE_LOST,
        "Writes to the Redis recovery store that were lost, by reason (queue_full, redis_error)"
    );
    describe_counter!(
        PRESENCE_WRITES_LOST,
        "Presence changes that did not reach the Redis presence store (a full queue, a Redis error)"
    );
    describe_gauge!(
        LAST_STATE_ENTRIES,
        "Publications kept for late subscribers (last state on subscribe)"
    );
    describe_gauge!(
        LAST_STATE_BYTES,
        metrics::Unit::Bytes,
        "Their size as published on Redis"
    );
    describe_gauge!(
        UPTIME,
        metrics::Unit::Seconds,
        "Seconds since the service started"
    );
    describe_gauge!(BUILD_INFO, "Build information; always 1");
}
