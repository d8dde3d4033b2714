//! frappe-realtime: a drop-in replacement for the Socket.IO service of a Frappe bench.
//!
//! Modules by responsibility: [`config`] reads the bench, [`sites`] keeps one namespace per
//! site, [`handshake`] resolves the site and checks a handshake, [`auth`] asks Frappe who a
//! client is and what it may follow, [`handlers`] serves client events, [`rooms`] names rooms
//! and tracks who views a document, [`app_handlers`] runs installed apps' handlers written as
//! data, [`bridge`] delivers Frappe's Redis events, and [`server`] ties them together.

pub mod answer_cache;
pub mod app;
pub mod app_handlers;
pub mod audience;
pub mod auth;
pub mod bridge;
pub mod caps;
pub mod client;
pub mod client_bundle;
pub mod coalesce;
pub mod config;
pub mod connection;
pub mod cors;
/// Our Engine.IO server (v4 and v3): sessions, polling and websocket, upgrade, heartbeat.
pub mod engine;
pub mod handlers;
pub mod handshake;
pub mod last_state;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod queue_redis;
pub mod reconnects;
pub mod recovery_store;
pub mod revoke;
pub mod rooms;
pub mod server;
pub mod sessions;
pub mod sites;
/// Socket.IO protocol 5 and 4 over an Engine.IO session: namespaces, rooms, events, acks.
pub mod socketio;
