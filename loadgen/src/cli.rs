//! Command-line options. Every phase's size and duration is a flag, and every default keeps
//! the phase bounded.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};

/// Most server instances one run starts: each is a process on the server core.
const MAX_INSTANCES: usize = 16;

use crate::clients::Backoff;

/// Measure a Frappe realtime (Socket.IO) service under load: idle memory per connection,
/// connect rate and latency, broadcast and user-room delivery rates and latencies at stepped
/// rates, reconnect storms, and a 1k → 20k scale run. Starts its own redis-server, a stand-in
/// for Frappe's web server and the server (pinned to its own core) in a throwaway bench.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// The server to measure: `ours` (the frappe-realtime binary next to this program, or
    /// --server-bin) or a shell command run in the bench directory. Placeholders: {bench}
    /// {port} {site} {redis} {web}; FRAPPE_BENCH_ROOT is set to the bench too.
    #[arg(long, visible_alias = "server-cmd", default_value = "ours")]
    pub server: String,
    /// Name of the first server in the report (default: "ours" or "server").
    #[arg(long)]
    pub label: Option<String>,
    /// A second server, measured after the first with the same phases; ratios are printed.
    /// Example: --compare 'node /path/to/apps/frappe/socketio.js'.
    #[arg(long)]
    pub compare: Option<String>,
    /// Name of the --compare server in the report.
    #[arg(long, default_value = "node")]
    pub compare_label: String,
    /// The frappe-realtime binary `ours` means.
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Server instances to run on the one bench and Redis (README "Several instances"), each
    /// on its own port (FRAPPE_SOCKETIO_PORT; `ours` also gets --upstream-server I/N), all on
    /// the server core. Clients go to them in turn. With more than one, the phases that
    /// restart the server under its clients (storm, storm-shared) are refused.
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Phases to run, in this order whatever order they are given in.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "connect,idle,broadcast,user,storm,storm-shared"
    )]
    pub phases: Vec<Phase>,
    /// Clients (websocket connections) for every phase but scale.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Connection attempts in flight at once while connecting the clients.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds one connection attempt may take before it counts as failed.
    #[arg(long, default_value_t = 20.0)]
    pub connect_timeout_secs: f64,
    /// Seconds the clients stay idle before the server's memory is read.
    #[arg(long, default_value_t = 3.0)]
    pub idle_secs: f64,
    /// Broadcast rates to step through (events/s to room `all`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,10,50,100,200,500,1000,2000,5000,10000"
    )]
    pub broadcast_rates: Vec<f64>,
    /// User-room rates to step through (events/s, each to one random user's room).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,100,1000,2000,5000,10000,20000,50000"
    )]
    pub user_rates: Vec<f64>,
    /// Seconds each rate step publishes for (longer when that would give fewer than
    /// --min-events events).
    #[arg(long, default_value_t = 2.0)]
    pub step_secs: f64,
    /// Fewest events a step publishes.
    #[arg(long, default_value_t = 5)]
    pub min_events: u64,
    /// Seconds after a step's last publication for its events to arrive.
    #[arg(long, default_value_t = 2.0)]
    pub grace_secs: f64,
    /// A step whose p99 latency exceeds this (ms) counts as lagging: stepping stops there.
    #[arg(long, default_value_t = 1000.0)]
    pub lag_ms: f64,
    /// Bytes of padding in each event's message.
    #[arg(long, default_value_t = 64)]
    pub pad_bytes: usize,
    /// Clients per sid in the storm-shared phase (tabs of one browser).
    #[arg(long, default_value_t = 4)]
    pub storm_tabs: usize,
    /// How the server is stopped for a reconnect storm: term (a restart by supervisor or
    /// systemd) or kill (a crash).
    #[arg(long, value_enum, default_value_t = StopSignal::Term)]
    pub storm_signal: StopSignal,
    /// Seconds a storm may take for every client to be back.
    #[arg(long, default_value_t = 120.0)]
    pub storm_timeout_secs: f64,
    /// First reconnection delay (ms); socket.io-client's reconnectionDelay.
    #[arg(long, default_value_t = 1000)]
    pub reconnect_delay_ms: u64,
    /// Longest reconnection delay (ms); socket.io-client's reconnectionDelayMax.
    #[arg(long, default_value_t = 5000)]
    pub reconnect_delay_max_ms: u64,
    /// Random share of each delay added or taken off; socket.io-client's randomizationFactor.
    #[arg(long, default_value_t = 0.5)]
    pub reconnect_jitter: f64,
    /// Failed retries after which a client gives up (0: never; Frappe's client: 3).
    #[arg(long, default_value_t = 0)]
    pub reconnect_attempts: u32,
    /// Connection counts of the scale phase (capped by the file descriptor limit).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,5000,10000,19500"
    )]
    pub scale_steps: Vec<usize>,
    /// Broadcast rate (events/s) measured at each scale step.
    #[arg(long, default_value_t = 10.0)]
    pub scale_rate: f64,
    /// Frappe version the bench and the web stand-in follow (15: sid as ?sid=; 16: cookie
    /// and socket secret).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(15..=16))]
    pub frappe_version: u32,
    /// The site (and namespace) name.
    #[arg(long, default_value = "loadgen.local")]
    pub site: String,
    /// Clients recover their sessions as socket.io-client ≥ 4.6 does: they ask for offsets
    /// (`{"recovery":true}` in the CONNECT payload), keep the session's pid and the last
    /// event's offset, and send both when they reconnect. Storms and the cut phase then count
    /// how many recovered.
    #[arg(long)]
    pub recover: bool,
    /// Events published to room `all` while the clients are away in the cut phase.
    #[arg(long, default_value_t = 10)]
    pub cut_events: u64,
    /// An extra key for the bench's `sites/common_site_config.json`, as KEY=JSON (a bare word
    /// is taken as a string), e.g. `realtime_recovery_store=redis`. Repeatable.
    #[arg(long = "site-config", value_name = "KEY=JSON", value_parser = config_entry)]
    pub site_config: Vec<(String, serde_json::Value)>,
    /// Send this `User-Agent` with every connection, e.g. `Mozilla/5.0` to be served as a
    /// browser (frappe-realtime then appends connection state recovery's offset to events).
    #[arg(long)]
    pub user_agent: Option<String>,
    /// Core the server runs on.
    #[arg(long, default_value_t = 0)]
    pub server_core: usize,
    /// Core the load generator, redis-server and the web stand-in run on.
    #[arg(long, default_value_t = 1)]
    pub load_core: usize,
    /// Do not pin anything to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Seconds the server may take to listen and subscribe to Redis.
    #[arg(long, default_value_t = 30.0)]
    pub ready_timeout_secs: f64,
    /// Keep each run's bench directory, with the logs of the server, redis-server and the
    /// web stand-in in logs/, and print where.
    #[arg(long)]
    pub keep_bench: bool,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Phase {
    /// Connect --clients clients, --concurrency at a time.
    Connect,
    /// Server memory per idle connection.
    Idle,
    /// Events to room `all` at stepped rates.
    Broadcast,
    /// Events to one random user's room at stepped rates.
    User,
    /// Drop every client's connection at once (a network blip, an nginx reload), publish
    /// --cut-events events to room `all` while they are away, and time until every client
    /// is back with them (it gets them only if it recovers: see --recover).
    Cut,
    /// Restart the server under --clients clients, one sid each.
    Storm,
    /// The same with --storm-tabs clients per sid.
    StormShared,
    /// Connections in --scale-steps steps: memory and CPU per delivery at each.
    Scale,
}

impl Phase {
    /// The name `--phases` takes.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned())
    }

    /// Whether it means something with several server instances. A storm restarts the
    /// server under its clients; with several, whether one restarts, all at once or one
    /// after another is a scenario of its own, which this tool does not model.
    fn supports_instances(self) -> bool {
        !matches!(self, Self::Storm | Self::StormShared)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StopSignal {
    Term,
    Kill,
}

impl StopSignal {
    pub fn number(self) -> libc::c_int {
        match self {
            Self::Term => libc::SIGTERM,
            Self::Kill => libc::SIGKILL,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Term => "SIGTERM",
            Self::Kill => "SIGKILL",
        }
    }
}

/// `KEY=JSON` → the key and its value; a value that is not JSON is a string.
fn config_entry(text: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=JSON"))?;
    if key.is_empty() {
        return Err(format!("{text:?} has no key"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| value.into());
    Ok((key.to_owned(), value))
}

fn secs(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0))
}

impl Args {
    /// Reject values that would make a phase unbounded or meaningless.
    pub fn validate(&mut self) -> Result<()> {
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        let finite_positive = |v: f64| v.is_finite() && v > 0.0;
        for (name, value) in [
            ("--step-secs", self.step_secs),
            ("--connect-timeout-secs", self.connect_timeout_secs),
            ("--storm-timeout-secs", self.storm_timeout_secs),
            ("--ready-timeout-secs", self.ready_timeout_secs),
            ("--scale-rate", self.scale_rate),
            ("--lag-ms", self.lag_ms),
        ] {
            if !finite_positive(value) || value > 86_400.0 * 1000.0 {
                bail!("{name} must be a positive number");
            }
        }
        for (name, value) in [
            ("--idle-secs", self.idle_secs),
            ("--grace-secs", self.grace_secs),
        ] {
            if !value.is_finite() || !(0.0..=3600.0).contains(&value) {
                bail!("{name} must be between 0 and 3600");
            }
        }
        if self
            .broadcast_rates
            .iter()
            .chain(&self.user_rates)
            .any(|r| !finite_positive(*r) || *r > 1_000_000.0)
        {
            bail!("rates must be positive and at most 1,000,000 events/s");
        }
        if !(0.0..=1.0).contains(&self.reconnect_jitter) {
            bail!("--reconnect-jitter must be between 0 and 1");
        }
        if self.site.is_empty() || self.site.contains(['/', ',', '"', '\\']) {
            bail!("--site must be a plain host name");
        }
        self.validate_instances()?;
        self.phases.sort();
        self.phases.dedup();
        self.scale_steps.sort_unstable();
        self.scale_steps.dedup();
        self.scale_steps.retain(|n| *n > 0);
        Ok(())
    }

    /// `--instances` within bounds, and only with phases that support several.
    fn validate_instances(&self) -> Result<()> {
        if !(1..=MAX_INSTANCES).contains(&self.instances) {
            bail!("--instances must be between 1 and {MAX_INSTANCES}");
        }
        if self.instances == 1 {
            return Ok(());
        }
        let refused: Vec<String> = self
            .phases
            .iter()
            .filter(|p| !p.supports_instances())
            .map(|p| p.name())
            .collect();
        if !refused.is_empty() {
            let supported: Vec<String> = Phase::value_variants()
                .iter()
                .filter(|p| p.supports_instances())
                .map(|p| p.name())
                .collect();
            bail!(
                "--instances {}: the {} phase(s) restart the server under its clients and run \
                 with one instance only (the default --phases has them); choose --phases from \
                 {}",
                self.instances,
                refused.join(", "),
                supported.join(",")
            );
        }
        Ok(())
    }

    pub fn has(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    pub fn connect_timeout(&self) -> Duration {
        secs(self.connect_timeout_secs)
    }

    pub fn idle(&self) -> Duration {
        secs(self.idle_secs)
    }

    pub fn step(&self) -> Duration {
        secs(self.step_secs)
    }

    pub fn grace(&self) -> Duration {
        secs(self.grace_secs)
    }

    pub fn storm_timeout(&self) -> Duration {
        secs(self.storm_timeout_secs)
    }

    pub fn ready_timeout(&self) -> Duration {
        secs(self.ready_timeout_secs)
    }

    pub fn backoff(&self) -> Backoff {
        Backoff {
            delay: Duration::from_millis(self.reconnect_delay_ms),
            max: Duration::from_millis(self.reconnect_delay_max_ms.max(self.reconnect_delay_ms)),
            jitter: self.reconnect_jitter,
            attempts: self.reconnect_attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_phases_are_ordered() {
        let mut args = Args::parse_from(["loadgen", "--phases", "storm,connect,connect"]);
        args.validate().expect("valid");
        assert_eq!(args.phases, [Phase::Connect, Phase::Storm]);
        assert_eq!(args.server, "ours");
        let mut bad = Args::parse_from(["loadgen", "--broadcast-rates", "1,0"]);
        assert!(bad.validate().is_err());
        let mut bad = Args::parse_from(["loadgen", "--clients", "0"]);
        assert!(bad.validate().is_err());
        let args = Args::parse_from(["loadgen", "--server-cmd", "node x.js {bench}"]);
        assert_eq!(args.server, "node x.js {bench}");
        let args = Args::parse_from([
            "loadgen",
            "--site-config",
            "realtime_recovery_store=redis",
            "--site-config",
            "realtime_recovery_seconds=30",
        ]);
        assert_eq!(
            args.site_config,
            [
                ("realtime_recovery_store".into(), "redis".into()),
                ("realtime_recovery_seconds".into(), 30.into())
            ]
        );
        assert!(Args::try_parse_from(["loadgen", "--site-config", "novalue"]).is_err());
    }

    #[test]
    fn several_instances_refuse_the_storms() {
        let mut args = Args::parse_from(["loadgen", "--instances", "2"]);
        let error = args
            .validate()
            .expect_err("the default phases have storms")
            .to_string();
        assert!(error.contains("storm, storm-shared"), "{error}");
        assert!(
            error.contains("connect,idle,broadcast,user,cut,scale"),
            "{error}"
        );
        let mut args = Args::parse_from([
            "loadgen",
            "--instances",
            "2",
            "--phases",
            "connect,idle,broadcast",
        ]);
        args.validate().expect("valid");
        let mut bad = Args::parse_from(["loadgen", "--instances", "0"]);
        assert!(bad.validate().is_err());
        let mut one = Args::parse_from(["loadgen", "--instances", "1"]);
        one.validate().expect("the storms run with one instance");
    }
}
