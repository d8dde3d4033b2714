//! frappe-realtime: a drop-in replacement for the Socket.IO service of a Frappe bench.
//!
//! Modules by responsibility, one line each below. Private unless `main.rs`, the tests or the
//! examples need them: the layers (`engine`, `socketio`), what the tests drive directly
//! (`config`, `handshake`, `handlers`, `bridge`, `sites`, `cors`, `app_handlers`), what
//! `--check-config` shows (`reload`) and the entry point (`server`). No module uses itself through others (`tests/architecture.rs`).

/// Whether a handshake becomes a socket: the checks, the site's word, the caps, the first
/// rooms; and the last refusals, for the status page.
mod admission;
/// A short-lived memory of Frappe's positive `get_user_info` answers (off unless configured).
mod answer_cache;
/// What every handler shares: the configuration snapshot and the Frappe and Redis clients.
mod app;
/// App handlers written as data (`realtime/handlers.json`): loading, checking, running.
pub mod app_handlers;
/// Where a site's sockets and rooms are: its own namespace, and `/` with prefixed rooms.
mod audience;
/// Calls to the site that vouch for a client: `get_user_info`, permissions, app calls.
mod auth;
/// Frappe → clients: the `events` subscriber and the routing of each publication.
pub mod bridge;
/// How the calls to Frappe went since the start, for the status page.
mod call_health;
/// Connection caps per site, per address and per user.
mod caps;
/// One socket's Frappe state: who it is, its rooms' naming, open documents, budgets.
mod client;
/// The Socket.IO browser client files under `/socket.io/`.
mod client_bundle;
/// Single-flight: concurrent identical calls to Frappe share one.
mod coalesce;
/// The bench's configuration, read as Frappe's Node service reads it, with provenance.
pub mod config;
/// Who is on the other end of a connection, for the per-address caps.
mod connection;
/// Which other browser origins may connect to a site (`allow_cors`).
pub mod cors;
/// Why a socket went away: one cause type, one label, for every disconnect.
mod disconnect;
/// Our Engine.IO server (v4 and v3): sessions, polling and websocket, upgrade, heartbeat.
pub mod engine;
/// Frappe's side of a namespace: the handshake, Frappe's client events, disconnects.
pub mod handlers;
/// The checks on a handshake before the site is asked (site, namespace, origin, credential).
pub mod handshake;
/// Last state on subscribe: the latest publication per room and event, for late joiners.
mod last_state;
/// Per-socket limits: client events per second, rooms per socket.
mod limits;
/// Prometheus metrics: the recorder, scrape-time series, and every metric's name.
mod metrics;
/// The running service as one value: its parts, its background tasks, its operations.
mod node;
/// Operators' endpoints: `/metrics`, `/health`, `/ready`, `/status`, `/admin/disconnect`.
mod ops;
/// Who-is-viewing presence, and the users in a room.
mod presence;
/// Commands on `redis_queue` besides the subscription (the socket secret, publishing).
mod queue_redis;
/// Which connects are reconnects, for the metrics.
mod reconnects;
/// Connection state recovery's Redis store: the log as a Stream, sessions as keys.
mod recovery_store;
/// What a SIGHUP changes, and the keys that need a restart, listed once.
pub mod reload;
/// Session revocation: disconnect every socket of a user on a site.
mod revoke;
/// Frappe's room names.
mod rooms;
/// Redis Sentinel for the subscriber: the master of `redis_queue`, asked at every reconnect.
mod sentinel;
/// The process around a node: listen, serve until a signal, shut down.
pub mod server;
/// The handle every part of the running service shares, and its operations.
mod service;
/// Engine.IO sessions as the service sees them: counted, slow consumers logged.
mod sessions;
/// Several instances on one bench: which are alive, what each serves, who views what, and
/// the bench's one log of events that recovery across them needs.
mod shared;
/// Keeps the sites and their namespaces equal to `sites/` on disk, watching it.
mod site_registry;
/// The bench's sites: which exist and what each allows.
pub mod sites;
/// Socket.IO protocol 5 and 4 over an Engine.IO session: namespaces, rooms, events, acks.
pub mod socketio;
/// The operators' status page: sockets, users, rooms, health, the last refusals.
mod status;
