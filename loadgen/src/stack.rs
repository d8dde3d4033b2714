//! Everything one server is measured with: a bench directory, redis-server, the web stand-in,
//! the server itself, a publisher, and the state the clients share. Dropping it stops them.

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
use crate::procs::{RedisServer, Server, ServerCommand, free_port};
use crate::publish::Publisher;
use crate::recorder::{Clock, Recorder};
use crate::system::{Usage, tree_usage};

/// Frappe 16's shared secret key in `redis_queue` (protocol §4.4).
const SECRET_KEY: &str = "socketio_auth_secret";

pub struct Stack {
    // Field order is drop order: the server goes before the Redis and web server it uses,
    // and the bench directory last.
    pub server: Server,
    pub publisher: Publisher,
    pub frappe: FrappeStandIn,
    /// Held for its `Drop`, which stops redis-server.
    _redis: RedisServer,
    pub shared: Arc<Shared>,
    /// Held for its `Drop`, which removes the directory.
    _bench: Bench,
}

impl Stack {
    /// Lay out a bench, start redis-server, the web stand-in and the server, and wait until
    /// the server listens and has subscribed to `events`.
    pub async fn start(
        args: &Args,
        command: ServerCommand,
        server_core: Option<usize>,
    ) -> Result<Self> {
        let identities = Identities::new();
        let secret = format!("{:032x}", fastrand::u128(..));
        let web_port = free_port()?;
        let redis_port = free_port()?;
        let socketio_port = free_port()?;
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
            ("port", socketio_port.to_string()),
            ("site", args.site.clone()),
            ("redis", redis.url()),
            ("web", frappe.url()),
        ];
        let server = Server::new(command, bench.path(), socketio_port, vars, server_core);
        let shared = Arc::new(Shared {
            target: Target {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, socketio_port)),
                site: args.site.clone(),
                origin: frappe.url(),
                source_ports: SourcePorts::below_ephemeral_range(),
                user_agent: args.user_agent.clone(),
            },
            identities,
            clock: Clock::new(),
            recorder: Recorder::new(),
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
            server,
            publisher,
            frappe,
            _redis: redis,
            shared,
            _bench: bench,
        };
        stack.server.start()?;
        stack.wait_ready(args.ready_timeout()).await?;
        Ok(stack)
    }

    /// Wait until the server listens and is subscribed to `events`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        self.server.wait_listening(timeout).await?;
        loop {
            self.server.check_alive()?;
            if self.publisher.subscribers().await? >= 1 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the server did not subscribe to the Redis channel `events` within {timeout:?}; see {}",
                    self.server.log().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Memory and CPU time of the server process (and anything it started).
    pub fn server_usage(&self) -> Result<Usage> {
        let pid = self.server.pid().context("the server is not running")?;
        tree_usage(pid)
    }

    /// Stop the server gracefully and start it again, for a fresh memory baseline.
    pub async fn restart_server(&mut self, timeout: Duration) -> Result<()> {
        self.server.stop(libc::SIGTERM).await?;
        self.server.start()?;
        self.wait_ready(timeout).await
    }

    /// Stop the server (SIGTERM, as supervisor does); the rest stops when dropped.
    pub async fn shutdown(mut self) -> Result<()> {
        self.server.stop(libc::SIGTERM).await
    }
}
