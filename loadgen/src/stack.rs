//! Everything one server is measured with: a bench directory, redis-server, the web stand-in,
//! the server itself (`--instances` of it, on one bench and one Redis), a publisher, and the
//! state the clients share. Dropping it stops them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::{Bench, BenchConfig};
use crate::cli::Args;
use crate::clients::{Failures, Shared};
use crate::engineio::Target;
use crate::frappe::FrappeStandIn;
use crate::identity::Identities;
use crate::ports::SourcePorts;
use crate::procs::{Instance, RedisServer, Server, ServerCommand, Servers, free_ports};
use crate::publish::Publisher;
use crate::recorder::{Clock, Recorder};
use crate::system::{Usage, tree_usage};

/// Frappe 16's shared secret key in `redis_queue` (protocol §4.4).
const SECRET_KEY: &str = "socketio_auth_secret";

pub struct Stack {
    // Field order is drop order: the servers go before the Redis and web server they use,
    // and the bench directory last.
    pub servers: Servers,
    pub publisher: Publisher,
    pub frappe: FrappeStandIn,
    /// Held for its `Drop`, which stops redis-server.
    _redis: RedisServer,
    pub shared: Arc<Shared>,
    /// Held for its `Drop`, which removes the directory.
    _bench: Bench,
}

impl Stack {
    /// Lay out a bench, start redis-server, the web stand-in and the server's instances, and
    /// wait until every one listens and has subscribed to `events`.
    pub async fn start(
        args: &Args,
        command: ServerCommand,
        server_core: Option<usize>,
    ) -> Result<Self> {
        let identities = Identities::new();
        let secret = format!("{:032x}", fastrand::u128(..));
        let ports = free_ports(2 + args.instances)?;
        let (web_port, redis_port, instance_ports) = (ports[0], ports[1], &ports[2..]);
        let socketio_port = *instance_ports
            .first()
            .context("--instances must be at least 1")?;
        let redis_url = format!("redis://127.0.0.1:{redis_port}");
        let mut bench = Bench::create(&BenchConfig {
            site: &args.site,
            redis_url: &redis_url,
            socketio_port,
            webserver_port: web_port,
            frappe_version: args.frappe_version,
            extra: &args.site_config,
        })?;
        if args.keep_bench {
            bench.keep_on_drop();
        }
        let logs = bench.path().join("logs");
        let frappe =
            FrappeStandIn::start(&logs, web_port, args.frappe_version, &secret, &identities)
                .await?;
        let redis = RedisServer::start(&logs, redis_port).await?;
        let mut publisher = Publisher::connect(&redis.url(), &args.site, args.pad_bytes).await?;
        if args.frappe_version >= 16 {
            publisher.set(SECRET_KEY, &secret).await?;
        }
        let vars = vec![
            ("bench", bench.path().display().to_string()),
            ("site", args.site.clone()),
            ("redis", redis.url()),
            ("web", frappe.url()),
        ];
        let servers = Servers::new(
            instances(instance_ports)
                .map(|instance| {
                    let vars = vars.clone();
                    Server::new(command.clone(), bench.path(), instance, vars, server_core)
                })
                .collect(),
        );
        let target = Target {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, socketio_port)),
            site: args.site.clone(),
            origin: frappe.url(),
            source_ports: SourcePorts::below_ephemeral_range(),
            user_agent: args.user_agent.clone(),
        };
        let shared = Arc::new(Shared {
            // One target per instance, sharing the pool of source ports.
            targets: instance_ports
                .iter()
                .map(|port| Target {
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, *port)),
                    ..target.clone()
                })
                .collect(),
            identities,
            clock: Clock::new(),
            recorder: Recorder::new(args.instances),
            connect_timeout: args.connect_timeout(),
            backoff: args.backoff(),
            connected: AtomicUsize::new(0),
            reconnect: AtomicBool::new(false),
            reconnections: AtomicU64::new(0),
            recover: args.recover,
            recovered: AtomicU64::new(0),
            cut: tokio::sync::watch::Sender::new(0),
            failures: Failures::default(),
            other_events: AtomicU64::new(0),
        });
        let mut stack = Self {
            servers,
            publisher,
            frappe,
            _redis: redis,
            shared,
            _bench: bench,
        };
        stack.servers.start()?;
        stack.wait_ready(args.ready_timeout()).await?;
        Ok(stack)
    }

    /// Whether every instance is subscribed to `events`: each subscribes on its own (one
    /// that is not would leave its clients without events).
    pub async fn all_subscribed(&mut self) -> Result<bool> {
        Ok(self.publisher.subscribers().await? >= self.servers.len() as u64)
    }

    /// Wait until every instance listens and is subscribed to `events`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        self.servers.wait_listening(timeout).await?;
        loop {
            self.servers.check_alive()?;
            if self.all_subscribed().await? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not every server instance subscribed to the Redis channel `events` within \
                     {timeout:?}; see {}",
                    self.servers.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Memory and CPU time of each instance's process (and anything it started), in
    /// instance order; [`Usage`]s add up for the whole server.
    pub fn server_usage(&self) -> Result<Vec<Usage>> {
        self.servers
            .iter()
            .map(|server| {
                let pid = server
                    .pid()
                    .with_context(|| format!("{} is not running", server.instance.name()))?;
                tree_usage(pid)
            })
            .collect()
    }

    /// Stop every instance gracefully and start them again, for a fresh memory baseline.
    pub async fn restart_server(&mut self, timeout: Duration) -> Result<()> {
        self.servers.stop(libc::SIGTERM).await?;
        self.servers.start()?;
        self.wait_ready(timeout).await
    }

    /// Stop every instance (SIGTERM, as supervisor does); the rest stops when dropped.
    pub async fn shutdown(mut self) -> Result<()> {
        self.servers.stop(libc::SIGTERM).await
    }
}

/// Instance `i` of `ports.len()` listens on `ports[i]`.
fn instances(ports: &[u16]) -> impl Iterator<Item = Instance> + '_ {
    ports.iter().enumerate().map(|(index, port)| Instance {
        index,
        count: ports.len(),
        port: *port,
    })
}
