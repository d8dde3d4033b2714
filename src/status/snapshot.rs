//! One snapshot of the running service, as the status page and `/status.json` show it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::admission::RefusedHandshake;
use crate::audience;
use crate::call_health::CallHealthReport;
use crate::client::ClientState;
use crate::metrics::unix_now_ms;
use crate::service::Service;
use crate::sessions::transport_label;
use crate::socketio::{Io, Socket};

/// How many rooms per site the page lists, the busiest first.
const BUSIEST_ROOMS: usize = 10;
/// How many users per site the page names (all are counted).
const USERS_NAMED: usize = 50;

/// One snapshot of the service, as `/status.json` serves it.
#[derive(Debug, Serialize)]
pub struct Status {
    pub generated_at_ms: u64,
    pub version: &'static str,
    pub frappe_version: String,
    /// Subscribed to Frappe's `events` channel on `redis_queue` right now.
    pub redis_subscribed: bool,
    pub frappe_calls: CallHealthReport,
    pub sites: Vec<SiteStatus>,
    /// The newest first.
    pub refused_handshakes: Vec<RefusedHandshake>,
    /// With `realtime_shared_state: "redis"`: this instance's name, and every live instance
    /// (this one too) as each last published itself; `None` otherwise.
    pub this_instance: Option<String>,
    pub instances: Option<Vec<InstanceSummary>>,
    /// With recovery shared across instances: this instance's part in the bench's log of
    /// events; `None` otherwise.
    pub bench_log: Option<BenchLogStatus>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct BenchLogStatus {
    /// This instance holds the lease and copies `events` into the log now.
    pub copier: bool,
}

/// What an instance serves, as it publishes it for the others every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSummary {
    /// Filled in by the heartbeat.
    #[serde(default)]
    pub instance: String,
    pub version: String,
    pub sites: Vec<SiteCount>,
}

/// One site's sockets and users on one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteCount {
    pub site: String,
    pub websocket: usize,
    pub polling: usize,
    pub users_online: usize,
    /// The first of them by name (as many as the page names).
    #[serde(default)]
    pub users: Vec<String>,
    pub guests: usize,
}

#[derive(Debug, Serialize)]
pub struct SiteStatus {
    pub site: String,
    /// Connected sockets by transport (`websocket`, `polling`).
    pub sockets: BTreeMap<&'static str, usize>,
    /// Distinct users with a socket, Guest apart.
    pub users_online: usize,
    /// The first of them by name.
    pub users: Vec<String>,
    pub guests: usize,
    pub busiest_rooms: Vec<RoomSize>,
}

#[derive(Debug, Serialize)]
pub struct RoomSize {
    /// As Frappe names it (without the site prefix of `/`).
    pub room: String,
    pub members: usize,
}

/// The service as it is now.
pub async fn snapshot(service: &Service) -> Status {
    let app = &service.app;
    let instances = match &service.instances {
        Some(instances) => Some(
            instances
                .summaries()
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read the other instances from Redis");
                    Vec::new()
                })
                .into_iter()
                .filter_map(|summary| serde_json::from_value(summary).ok())
                .collect(),
        ),
        None => None,
    };
    Status {
        this_instance: service.instances.as_ref().map(|i| i.name.clone()),
        instances,
        bench_log: service.bench_log.as_ref().map(|log| BenchLogStatus {
            copier: log.is_copier(),
        }),
        generated_at_ms: unix_now_ms(),
        version: env!("CARGO_PKG_VERSION"),
        frappe_version: app.settings().config.frappe_version.to_string(),
        redis_subscribed: service.subscription.is_up(),
        frappe_calls: app.frappe.health(),
        sites: app
            .sites
            .names()
            .into_iter()
            .map(|site| site_status(&service.io, site))
            .collect(),
        refused_handshakes: service.admission.recent_refusals(),
    }
}

/// What this instance serves, for the others (see [`crate::shared`]).
pub fn summary(service: &Service) -> serde_json::Value {
    let sites = service.app.sites.names().into_iter().map(|site| {
        let seen = Seen::of(&service.io, &site);
        SiteCount {
            websocket: seen.count("websocket"),
            polling: seen.count("polling"),
            users_online: seen.users.len(),
            users: seen.users.iter().take(USERS_NAMED).cloned().collect(),
            guests: seen.guests,
            site,
        }
    });
    let summary = InstanceSummary {
        instance: String::new(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        sites: sites.collect(),
    };
    serde_json::to_value(summary).unwrap_or_default()
}

/// A site's sockets, counted by transport, with their users.
struct Seen {
    sockets: Vec<Socket>,
    transports: BTreeMap<&'static str, usize>,
    users: BTreeSet<String>,
    guests: usize,
}

impl Seen {
    fn count(&self, transport: &str) -> usize {
        self.transports.get(transport).copied().unwrap_or(0)
    }

    fn of(io: &Io, site: &str) -> Self {
        let mut seen = Self {
            sockets: audience::site_sockets(io, site),
            transports: BTreeMap::from([("websocket", 0), ("polling", 0)]),
            users: BTreeSet::new(),
            guests: 0,
        };
        for socket in &seen.sockets {
            *seen
                .transports
                .entry(transport_label(socket.transport_type()))
                .or_default() += 1;
            match socket.state::<ClientState>() {
                Some(client) if client.session.is_guest() => seen.guests += 1,
                Some(client) => {
                    seen.users.insert(client.session.user.clone());
                }
                None => {}
            }
        }
        seen
    }
}

fn site_status(io: &Io, site: String) -> SiteStatus {
    let seen = Seen::of(io, &site);
    SiteStatus {
        busiest_rooms: busiest_rooms(io, &site, &seen.sockets),
        sockets: seen.transports,
        users_online: seen.users.len(),
        users: seen.users.into_iter().take(USERS_NAMED).collect(),
        guests: seen.guests,
        site,
    }
}

/// The site's rooms with the most sockets, counted over its own namespace and `/`.
fn busiest_rooms(io: &Io, site: &str, sockets: &[Socket]) -> Vec<RoomSize> {
    if sockets.is_empty() {
        return Vec::new();
    }
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
    for (namespace, prefix) in audience::room_of_site(io, site, "") {
        for (room, members) in namespace.room_sizes(|room| room.starts_with(&prefix)) {
            *sizes.entry(room[prefix.len()..].to_owned()).or_default() += members;
        }
    }
    let mut rooms: Vec<RoomSize> = sizes
        .into_iter()
        .map(|(room, members)| RoomSize { room, members })
        .collect();
    rooms.sort_by(|a, b| b.members.cmp(&a.members).then_with(|| a.room.cmp(&b.room)));
    rooms.truncate(BUSIEST_ROOMS);
    rooms
}
