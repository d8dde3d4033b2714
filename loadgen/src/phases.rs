//! The measurements, run against one server in a fixed order: connect, idle memory,
//! broadcast steps, user-room steps, a transport cut, reconnect storms, scale. Each is bounded in time and
//! count; a failing one stops the run and the report keeps what was measured before it.
//!
//! The server may be several instances (`--instances`): memory and CPU are then their sums,
//! with each instance's share beside them, and deliveries are counted by the instance whose
//! clients got them.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cli::{Args, Phase};
use crate::clients::Pool;
use crate::identity::Identities;
use crate::procs::ServerCommand;
use crate::report::{
    ConnectReport, CutReport, IdleReport, InstanceConnect, InstanceIdle, InstanceReport,
    InstanceStep, RunReport, ScaleStep, StepReport, StepsReport, StormReport, Verdict,
};
use crate::stack::Stack;
use crate::system::{self, Usage, own_cpu};

/// Most events published in one Redis round trip.
const MAX_BATCH: u64 = 1000;
/// How long deliveries must have stopped before a step starts.
const QUIET: Duration = Duration::from_millis(250);
/// Longest wait for the previous step's stragglers.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Run every selected phase against `command`; errors end up in the report.
pub async fn run_server(
    args: &Args,
    label: &str,
    command: ServerCommand,
    server_core: Option<usize>,
    max_clients: usize,
) -> RunReport {
    let mut report = RunReport {
        label: label.to_owned(),
        command: command.describe(args.instances),
        frappe_version: args.frappe_version,
        clients: args.clients,
        ..RunReport::default()
    };
    eprintln!("loadgen: measuring {label}: {}", report.command);
    if let Err(error) = run_phases(args, command, server_core, max_clients, &mut report).await {
        eprintln!("loadgen: {label}: {error:#}");
        report.error = Some(format!("{error:#}"));
    }
    report
}

async fn run_phases(
    args: &Args,
    command: ServerCommand,
    server_core: Option<usize>,
    max_clients: usize,
    report: &mut RunReport,
) -> Result<()> {
    let mut stack = Stack::start(args, command, server_core).await?;
    let baseline = stack.server_usage()?;
    report.server_rss_baseline_kib = baseline.iter().map(|u| u.rss_kib).sum();
    report.instances = stack
        .servers
        .iter()
        .zip(&baseline)
        .map(|(server, usage)| InstanceReport {
            instance: server.instance.index + 1,
            port: server.instance.port,
            rss_baseline_kib: usage.rss_kib,
        })
        .collect();
    let mut runner = Runner {
        args,
        stack: &mut stack,
        load_core: server_core.map(|_| args.load_core),
    };

    let needs_clients = [
        Phase::Connect,
        Phase::Idle,
        Phase::Broadcast,
        Phase::User,
        Phase::Cut,
        Phase::Storm,
    ]
    .iter()
    .any(|p| args.has(*p));
    let mut pool = Pool::new(runner.stack.shared.clone(), 1);
    if needs_clients {
        progress("connect", args.clients);
        let connect = runner.connect(&mut pool, args.clients).await?;
        if connect.connected == 0 {
            report.connect = Some(connect);
            bail!("no client could connect");
        }
        if args.has(Phase::Connect) {
            report.connect = Some(connect);
        }
    }
    if args.has(Phase::Idle) {
        progress("idle", pool.alive());
        report.idle = Some(runner.idle(&pool, &baseline).await?);
    }
    if args.has(Phase::Broadcast) {
        progress("broadcast", pool.alive());
        report.broadcast = Some(
            runner
                .steps(&pool, Fanout::Broadcast, &args.broadcast_rates)
                .await?,
        );
    }
    if args.has(Phase::User) {
        progress("user", pool.alive());
        report.user_room = Some(runner.steps(&pool, Fanout::User, &args.user_rates).await?);
    }
    if args.has(Phase::Cut) {
        progress("cut", pool.alive());
        report.cut = Some(runner.cut(&pool).await?);
    }
    if args.has(Phase::Storm) {
        progress("storm", pool.alive());
        report.storms.push(runner.storm(&pool, "distinct").await?);
    }
    pool.close();
    if args.has(Phase::StormShared) {
        // Let the server see the previous clients go before the next ones come.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut shared = Pool::new(runner.stack.shared.clone(), args.storm_tabs);
        progress("storm-shared: connect", args.clients);
        let connect = runner.connect(&mut shared, args.clients).await?;
        if connect.connected == 0 {
            bail!("no client could connect for the shared-sid storm");
        }
        progress("storm-shared", shared.alive());
        report.storms.push(runner.storm(&shared, "shared").await?);
        shared.close();
    }
    if args.has(Phase::Scale) {
        report.scale = runner.scale(max_clients).await?;
    }
    stack.shutdown().await
}

fn progress(phase: &str, clients: usize) {
    eprintln!("loadgen:   {phase} ({clients} clients)");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fanout {
    /// Every event to room `all` (every client is a System User).
    Broadcast,
    /// Every event to `user:<email>` of one random connected client.
    User,
}

struct Runner<'a> {
    args: &'a Args,
    stack: &'a mut Stack,
    /// The load generator's core, when pinned.
    load_core: Option<usize>,
}

/// CPU time of the server (each instance) and of this process, and the wall clock, at one
/// moment.
struct CpuMark {
    server: Vec<Duration>,
    own: Duration,
    load_core: Option<(u64, u64)>,
    at: Instant,
}

impl CpuMark {
    fn take(stack: &Stack, load_core: Option<usize>) -> Result<Self> {
        Ok(Self {
            server: stack.server_usage()?.iter().map(|u| u.cpu).collect(),
            own: own_cpu(),
            load_core: load_core.and_then(system::core_times),
            at: Instant::now(),
        })
    }

    /// CPU used by the server and by this process, how busy the load core was (everything
    /// on it: clients, publisher, redis-server, the web stand-in, anything else), and the
    /// wall time, since this mark.
    fn since(&self, stack: &Stack, load_core: Option<usize>) -> Result<Spent> {
        let now = Self::take(stack, load_core)?;
        let server_each: Vec<Duration> = now
            .server
            .iter()
            .zip(&self.server)
            .map(|(after, before)| after.saturating_sub(*before))
            .collect();
        Ok(Spent {
            server: server_each.iter().sum(),
            server_each,
            own: now.own.saturating_sub(self.own),
            load_core_busy: self
                .load_core
                .zip(now.load_core)
                .and_then(|(before, after)| system::busy_between(before, after)),
            wall: now.at - self.at,
        })
    }
}

struct Spent {
    /// All instances together.
    server: Duration,
    /// Each instance, in instance order.
    server_each: Vec<Duration>,
    own: Duration,
    load_core_busy: Option<f64>,
    wall: Duration,
}

impl Spent {
    fn own_percent(&self) -> f64 {
        percent(self.own, self.wall)
    }
}

fn percent(part: Duration, whole: Duration) -> f64 {
    if whole.is_zero() {
        0.0
    } else {
        part.as_secs_f64() / whole.as_secs_f64() * 100.0
    }
}

fn per_second(count: f64, wall: Duration) -> f64 {
    if wall.is_zero() {
        0.0
    } else {
        count / wall.as_secs_f64()
    }
}

fn micros_each(total: Duration, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        total.as_secs_f64() * 1e6 / count as f64
    }
}

impl Runner<'_> {
    /// A generous bound on connecting `n` clients: every batch of `--concurrency` may take a
    /// whole connect timeout, but never more than 10 minutes.
    fn connect_deadline(&self, n: usize) -> Instant {
        let batches = n.div_ceil(self.args.concurrency.max(1)) as u32;
        let bound = (self.args.connect_timeout() * batches.max(1))
            .min(Duration::from_secs(600))
            .max(self.args.connect_timeout() + Duration::from_secs(5));
        Instant::now() + bound
    }

    async fn connect(&mut self, pool: &mut Pool, n: usize) -> Result<ConnectReport> {
        self.stack.frappe.take_counts().await?;
        let mark = CpuMark::take(self.stack, self.load_core)?;
        let outcome = pool
            .grow(n, self.args.concurrency, self.connect_deadline(n))
            .await;
        let spent = mark.since(self.stack, self.load_core)?;
        self.stack.servers.check_alive()?;
        let per_instance = pool
            .alive_by_instance()
            .into_iter()
            .zip(&spent.server_each)
            .enumerate()
            .map(|(i, (connected, cpu))| InstanceConnect {
                instance: i + 1,
                connected,
                server_cpu_ms: cpu.as_secs_f64() * 1000.0,
                server_cpu_us_per_handshake: micros_each(*cpu, connected as u64),
            })
            .collect();
        Ok(ConnectReport {
            clients: outcome.attempted,
            concurrency: self.args.concurrency,
            connected: outcome.connected,
            failures: outcome.failures,
            wall_ms: outcome.wall.as_secs_f64() * 1000.0,
            per_s: per_second(outcome.connected as f64, outcome.wall),
            latency: outcome.latency,
            auth: self.stack.frappe.take_counts().await?,
            server_cpu_ms: spent.server.as_secs_f64() * 1000.0,
            server_cpu_us_per_handshake: micros_each(spent.server, outcome.connected as u64),
            loadgen_cpu_pct: spent.own_percent(),
            per_instance,
        })
    }

    /// Memory per idle connection: the instances' RSS summed (what the bench pays), less
    /// their sum before any client, over every connection; and each instance's own.
    async fn idle(&mut self, pool: &Pool, baseline: &[Usage]) -> Result<IdleReport> {
        let mark = CpuMark::take(self.stack, self.load_core)?;
        tokio::time::sleep(self.args.idle()).await;
        let usage = self.stack.server_usage()?;
        let spent = mark.since(self.stack, self.load_core)?;
        let connections = pool.alive_by_instance();
        let per_instance: Vec<InstanceIdle> = connections
            .iter()
            .zip(usage.iter().zip(baseline))
            .zip(&spent.server_each)
            .enumerate()
            .map(|(i, ((connections, (now, before)), cpu))| InstanceIdle {
                instance: i + 1,
                connections: *connections,
                rss_baseline_kib: before.rss_kib,
                rss_kib: now.rss_kib,
                kib_per_connection: kib_per_connection(before.rss_kib, now.rss_kib, *connections),
                server_cpu_pct_idle: percent(*cpu, spent.wall),
            })
            .collect();
        let total = |usages: &[Usage]| usages.iter().copied().sum::<Usage>().rss_kib;
        let connections = connections.iter().sum();
        Ok(IdleReport {
            connections,
            idle_secs: self.args.idle_secs,
            rss_baseline_kib: total(baseline),
            rss_kib: total(&usage),
            kib_per_connection: kib_per_connection(total(baseline), total(&usage), connections),
            server_cpu_pct_idle: percent(spent.server, spent.wall),
            per_instance,
        })
    }

    async fn steps(&mut self, pool: &Pool, fanout: Fanout, rates: &[f64]) -> Result<StepsReport> {
        let clients = pool.alive();
        let mut steps = Vec::new();
        for &rate in rates {
            let step = self.step(pool, fanout, rate).await?;
            eprintln!(
                "loadgen:     {rate} ev/s: {:.0} deliveries/s, p99 {:.1} ms, {:?}",
                step.delivered_per_s, step.latency.p99_ms, step.verdict
            );
            let saturated = !step.verdict.is_ok();
            steps.push(step);
            if saturated {
                break;
            }
        }
        let kind = match fanout {
            Fanout::Broadcast => "broadcast",
            Fanout::User => "user",
        };
        Ok(StepsReport::new(kind, clients, steps))
    }

    /// Wait until deliveries have stopped for a moment (bounded), so a backlog of the
    /// previous step does not load this one.
    async fn drain(&self) {
        let limit = Instant::now() + DRAIN_LIMIT;
        let recorder = &self.stack.shared.recorder;
        loop {
            let before = recorder.seen();
            tokio::time::sleep(QUIET).await;
            if recorder.seen() == before || Instant::now() > limit {
                return;
            }
        }
    }

    /// Publish at `rate` for the step's duration, wait for stragglers, and judge the step.
    async fn step(&mut self, pool: &Pool, fanout: Fanout, rate: f64) -> Result<StepReport> {
        self.drain().await;
        self.stack.servers.check_alive()?;
        if !self.stack.all_subscribed().await? {
            // Redis drops a subscriber whose output buffer overflows; the server re-subscribes.
            self.stack.wait_ready(self.args.ready_timeout()).await?;
        }
        let args = self.args;
        let duration = args
            .step()
            .max(Duration::from_secs_f64(args.min_events as f64 / rate));
        let planned = (rate * duration.as_secs_f64()).ceil().max(1.0) as u64;
        let shared = self.stack.shared.clone();
        let step_id = next_step_id();
        shared.recorder.begin(step_id);
        let clients_before = shared.connected.load(Ordering::Relaxed);
        let clients_by_instance = pool.alive_by_instance();
        let recovered_before = shared.recovered.load(Ordering::Relaxed);
        let redis_before = self.stack.publisher.redis_cpu().await?;
        let mark = CpuMark::take(self.stack, self.load_core)?;
        let start = Instant::now();
        let start_ns = shared.clock.now_ns();
        let give_up = start + duration.mul_f64(1.5) + Duration::from_secs(1);
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published = 0u64;
        let mut expected = 0u64;
        let mut rooms: Vec<String> = Vec::new();
        while published < planned && Instant::now() < give_up {
            let due = ((start.elapsed().as_secs_f64() * rate).floor() as u64 + 1).min(planned);
            let batch = due.saturating_sub(published).min(MAX_BATCH);
            if batch == 0 {
                ticker.tick().await;
                continue;
            }
            rooms.clear();
            for _ in 0..batch {
                match fanout {
                    Fanout::Broadcast => {
                        rooms.push("all".to_owned());
                        // The counter, not a walk over 20k clients per event. A recovering
                        // client cut meanwhile is owed the event all the same.
                        expected += if shared.recover {
                            clients_before
                        } else {
                            shared.connected.load(Ordering::Relaxed)
                        } as u64;
                    }
                    Fanout::User => {
                        let user = pool.random_alive_user().context("no client is connected")?;
                        rooms.push(Identities::user_room(user));
                        expected += pool.tabs_of(user) as u64;
                    }
                }
            }
            published += self
                .stack
                .publisher
                .publish(step_id, rooms.iter().map(String::as_str), &shared.clock)
                .await?;
        }
        tokio::time::sleep_until((start + duration).into()).await;
        let grace_end = Instant::now() + args.grace();
        while shared.recorder.delivered() < expected && Instant::now() < grace_end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let window = shared.recorder.end();
        let spent = mark.since(self.stack, self.load_core)?;
        let redis = self
            .stack
            .publisher
            .redis_cpu()
            .await?
            .saturating_sub(redis_before);
        let span_ns = window
            .last_ns
            .map_or(0, |last| last.saturating_sub(start_ns))
            .max(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        let span = Duration::from_nanos(span_ns);
        let delivered_per_s = per_second(window.delivered as f64, span);
        let offered_per_s = per_second(expected as f64, duration);
        let verdict = if window.delivered < expected {
            Verdict::Loss
        } else if window.latency.p99_ms > args.lag_ms {
            Verdict::Lag
        } else if published < planned {
            Verdict::PublisherBound
        } else if delivered_per_s < 0.9 * offered_per_s {
            Verdict::Behind
        } else {
            Verdict::Ok
        };
        Ok(StepReport {
            rate,
            secs: duration.as_secs_f64(),
            published,
            expected,
            delivered: window.delivered,
            lost: expected.saturating_sub(window.delivered),
            stale: window.stale,
            offered_per_s,
            delivered_per_s,
            latency: window.latency,
            server_cpu_pct: percent(spent.server, spent.wall),
            server_cpu_us_per_delivery: micros_each(spent.server, window.delivered),
            loadgen_cpu_pct: spent.own_percent(),
            loadgen_cpu_us_per_delivery: micros_each(spent.own, window.delivered),
            redis_cpu_pct: percent(redis, spent.wall),
            redis_cpu_us_per_delivery: micros_each(redis, window.delivered),
            redis_cpu_us_per_publication: micros_each(redis, published),
            load_core_busy_pct: spent.load_core_busy,
            clients_before,
            clients_after: shared.connected.load(Ordering::Relaxed),
            recovered: shared.recovered.load(Ordering::Relaxed) - recovered_before,
            verdict,
            per_instance: instance_steps(
                &clients_by_instance,
                &window.delivered_by_instance,
                &spent,
            ),
        })
    }

    /// Stop the server under the pool's clients, start it again at once, and time how long
    /// until every client that was connected is connected again.
    async fn storm(&mut self, pool: &Pool, variant: &str) -> Result<StormReport> {
        let args = self.args;
        let shared = self.stack.shared.clone();
        let clients = pool.alive();
        let credentials = pool.credentials();
        shared.failures.take();
        shared.recovered.store(0, Ordering::Relaxed);
        shared.reconnect.store(true, Ordering::Relaxed);
        let own_before = own_cpu();
        let signalled = Instant::now();
        let result = async {
            self.stack.servers.stop(args.storm_signal.number()).await?;
            let stopped = Instant::now();
            self.stack.frappe.take_counts().await?;
            self.stack.servers.start()?;
            let back_at = self
                .all_back(clients, stopped + args.storm_timeout())
                .await?;
            Ok::<_, anyhow::Error>((stopped, back_at))
        }
        .await;
        shared.reconnect.store(false, Ordering::Relaxed);
        let (stopped, back_at) = result?;
        let loadgen_cpu_pct = percent(own_cpu().saturating_sub(own_before), signalled.elapsed());
        let auth = self.stack.frappe.take_counts().await?;
        let server_cpu = self.stack.server_usage()?.into_iter().sum::<Usage>().cpu;
        let back = pool.alive();
        self.stack.wait_ready(args.ready_timeout()).await?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Ok(StormReport {
            variant: variant.to_owned(),
            clients,
            credentials,
            signal: args.storm_signal.name().to_owned(),
            stop_ms: ms(stopped - signalled),
            all_back_ms: back_at.map(|at| ms(at - stopped)),
            all_back_from_signal_ms: back_at.map(|at| ms(at - signalled)),
            back,
            recovered: shared.recovered.load(Ordering::Relaxed),
            failures: shared.failures.take(),
            calls_per_connection: auth.calls as f64 / clients.max(1) as f64,
            calls_per_credential: auth.calls as f64 / credentials.max(1) as f64,
            auth,
            server_cpu_ms: ms(server_cpu),
            loadgen_cpu_pct,
        })
    }

    /// Wait until `clients` clients are connected again: when they were, or `None` if some
    /// were still away at `deadline`. Fails if the server died meanwhile.
    async fn all_back(&mut self, clients: usize, deadline: Instant) -> Result<Option<Instant>> {
        loop {
            if self.stack.shared.connected.load(Ordering::Relaxed) >= clients {
                return Ok(Some(Instant::now()));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            self.stack.servers.check_alive()?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Drop every client's connection at once with the server up, publish `--cut-events`
    /// events to room `all` while they are away, and time until every client is back; then
    /// wait (a grace period at most) for the events to reach them, which only a recovering
    /// client gets.
    async fn cut(&mut self, pool: &Pool) -> Result<CutReport> {
        let args = self.args;
        self.drain().await;
        self.stack.servers.check_alive()?;
        let shared = self.stack.shared.clone();
        let clients = pool.alive();
        shared.failures.take();
        shared.recovered.store(0, Ordering::Relaxed);
        self.stack.frappe.take_counts().await?;
        let step_id = next_step_id();
        shared.recorder.begin(step_id);
        let mark = CpuMark::take(self.stack, self.load_core)?;
        shared.reconnect.store(true, Ordering::Relaxed);
        let cut_at = Instant::now();
        shared.cut.send_modify(|generation| *generation += 1);
        let result = async {
            // The clients drop their connections at once; their first retry comes half a
            // reconnection delay later at the earliest.
            let gone_by = cut_at + Duration::from_secs(5);
            while shared.connected.load(Ordering::Relaxed) > 0 && Instant::now() < gone_by {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let rooms = std::iter::repeat_n("all", usize::try_from(args.cut_events)?);
            let events = self
                .stack
                .publisher
                .publish(step_id, rooms, &shared.clock)
                .await?;
            let back_at = self
                .all_back(clients, cut_at + args.storm_timeout())
                .await?;
            let expected = events * clients as u64;
            let grace_end = Instant::now() + args.grace();
            while shared.recorder.delivered() < expected && Instant::now() < grace_end {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, anyhow::Error>((events, back_at))
        }
        .await;
        shared.reconnect.store(false, Ordering::Relaxed);
        let (events, back_at) = result?;
        let spent = mark.since(self.stack, self.load_core)?;
        let window = shared.recorder.end();
        let expected = events * clients as u64;
        Ok(CutReport {
            clients,
            recover: args.recover,
            events,
            all_back_ms: back_at.map(|at| (at - cut_at).as_secs_f64() * 1000.0),
            back: pool.alive(),
            recovered: shared.recovered.load(Ordering::Relaxed),
            expected,
            delivered: window.delivered,
            lost: expected.saturating_sub(window.delivered),
            latency: window.latency,
            failures: shared.failures.take(),
            auth: self.stack.frappe.take_counts().await?,
            server_cpu_ms: spent.server.as_secs_f64() * 1000.0,
            server_cpu_us_per_client: micros_each(spent.server, clients as u64),
            loadgen_cpu_pct: spent.own_percent(),
        })
    }

    /// A fresh server, then connections in steps: memory per connection and CPU per delivery
    /// of a fixed broadcast rate at each.
    async fn scale(&mut self, max_clients: usize) -> Result<Vec<ScaleStep>> {
        let args = self.args;
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.stack.restart_server(args.ready_timeout()).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let baseline = self
            .stack
            .server_usage()?
            .into_iter()
            .sum::<Usage>()
            .rss_kib;
        let mut pool = Pool::new(self.stack.shared.clone(), 1);
        let mut rows = Vec::new();
        let mut targets: Vec<usize> = args
            .scale_steps
            .iter()
            .map(|n| (*n).min(max_clients))
            .collect();
        targets.dedup();
        for n in targets {
            progress("scale", n);
            let outcome = pool
                .grow(n, args.concurrency, self.connect_deadline(n))
                .await;
            self.stack.servers.check_alive()?;
            tokio::time::sleep(args.idle()).await;
            let rss = self
                .stack
                .server_usage()?
                .into_iter()
                .sum::<Usage>()
                .rss_kib;
            let connected = pool.alive();
            let step = self.step(&pool, Fanout::Broadcast, args.scale_rate).await?;
            rows.push(ScaleStep {
                clients: n,
                connected,
                connect_per_s: per_second(outcome.connected as f64, outcome.wall),
                rss_kib: rss,
                kib_per_connection: kib_per_connection(baseline, rss, connected),
                rate: args.scale_rate,
                delivered_per_s: step.delivered_per_s,
                lost: step.lost,
                latency: step.latency,
                server_cpu_us_per_delivery: step.server_cpu_us_per_delivery,
            });
            if connected < n {
                eprintln!(
                    "loadgen:   scale stops at {n}: only {connected} connected ({:?})",
                    outcome.failures
                );
                break;
            }
        }
        pool.close();
        Ok(rows)
    }
}

/// Each instance's clients, deliveries and CPU over one step.
fn instance_steps(clients: &[usize], delivered: &[u64], spent: &Spent) -> Vec<InstanceStep> {
    clients
        .iter()
        .zip(delivered)
        .zip(&spent.server_each)
        .enumerate()
        .map(|(i, ((clients, delivered), cpu))| InstanceStep {
            instance: i + 1,
            clients: *clients,
            delivered: *delivered,
            server_cpu_pct: percent(*cpu, spent.wall),
            server_cpu_us_per_delivery: micros_each(*cpu, *delivered),
        })
        .collect()
}

/// RSS grown since the baseline, per connection (0 connections count as 1).
fn kib_per_connection(baseline_kib: u64, rss_kib: u64, connections: usize) -> f64 {
    rss_kib.saturating_sub(baseline_kib) as f64 / connections.max(1) as f64
}

/// Step ids are unique within the process, so a straggler from any earlier step (or run)
/// is never counted as current.
fn next_step_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
