//! The figures of a run, printed as tables and written as JSON, with the ratios between two
//! servers and against the published figures of Frappe's Node service.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::frappe::AuthCounts;
use crate::recorder::Percentiles;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub placement: String,
    pub fd_limit: u64,
    /// How busy the machine was (all cores, %) just before the run.
    pub machine_busy_pct: Option<f64>,
    pub runs: Vec<RunReport>,
    /// First run ÷ second run, when two servers were measured.
    pub comparison: Vec<Ratio>,
    /// First run against the Node figures of issue #7.
    pub node_reference: Vec<Reference>,
}

#[derive(Debug, Default, Serialize)]
pub struct RunReport {
    pub label: String,
    pub command: String,
    pub frappe_version: u32,
    pub clients: usize,
    /// The server's instances (one unless `--instances`), which the clients are spread over.
    pub instances: Vec<InstanceReport>,
    /// Summed over the instances.
    pub server_rss_baseline_kib: u64,
    pub connect: Option<ConnectReport>,
    pub idle: Option<IdleReport>,
    pub broadcast: Option<StepsReport>,
    pub user_room: Option<StepsReport>,
    pub cut: Option<CutReport>,
    pub storms: Vec<StormReport>,
    pub scale: Vec<ScaleStep>,
    /// Set when a phase failed; the phases after it did not run.
    pub error: Option<String>,
}

/// One instance of the server under test.
#[derive(Debug, Serialize)]
pub struct InstanceReport {
    /// From 1, as `--upstream-server I/N` counts.
    pub instance: usize,
    pub port: u16,
    /// Its RSS before any client.
    pub rss_baseline_kib: u64,
}

/// One instance's share of the connect phase.
#[derive(Debug, Serialize)]
pub struct InstanceConnect {
    pub instance: usize,
    pub connected: usize,
    pub server_cpu_ms: f64,
    pub server_cpu_us_per_handshake: f64,
}

/// One instance's memory with its clients idle.
#[derive(Debug, Serialize)]
pub struct InstanceIdle {
    pub instance: usize,
    pub connections: usize,
    pub rss_baseline_kib: u64,
    pub rss_kib: u64,
    pub kib_per_connection: f64,
    pub server_cpu_pct_idle: f64,
}

/// One instance's share of a rate step.
#[derive(Debug, Serialize)]
pub struct InstanceStep {
    pub instance: usize,
    /// Its clients connected when the step began.
    pub clients: usize,
    /// Deliveries of the step to its clients.
    pub delivered: u64,
    pub server_cpu_pct: f64,
    pub server_cpu_us_per_delivery: f64,
}

/// Failure counts by kind, with the last message of each kind.
pub type Failures = BTreeMap<String, (u64, String)>;

#[derive(Debug, Serialize)]
pub struct ConnectReport {
    pub clients: usize,
    /// Connection attempts in flight at once at most.
    pub concurrency: usize,
    pub connected: usize,
    pub failures: Failures,
    pub wall_ms: f64,
    pub per_s: f64,
    /// TCP connect + websocket upgrade + namespace CONNECT acknowledged.
    pub latency: Percentiles,
    pub auth: AuthCounts,
    pub server_cpu_ms: f64,
    pub server_cpu_us_per_handshake: f64,
    pub loadgen_cpu_pct: f64,
    pub per_instance: Vec<InstanceConnect>,
}

/// Memory and CPU summed over the instances: what the bench pays for its connections.
#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub connections: usize,
    pub idle_secs: f64,
    pub rss_baseline_kib: u64,
    pub rss_kib: u64,
    pub kib_per_connection: f64,
    pub server_cpu_pct_idle: f64,
    pub per_instance: Vec<InstanceIdle>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every event arrived, at the offered rate, within the lag bound.
    Ok,
    /// Some deliveries never arrived within the grace period.
    Loss,
    /// p99 above --lag-ms.
    Lag,
    /// Everything arrived, but slower than offered (a backlog built up).
    Behind,
    /// The publisher could not publish at the asked rate (the load generator's core is full).
    PublisherBound,
}

impl Verdict {
    pub fn is_ok(self) -> bool {
        self == Self::Ok
    }

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Loss => "LOSS",
            Self::Lag => "LAG",
            Self::Behind => "BEHIND",
            Self::PublisherBound => "PUB-BOUND",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StepReport {
    /// Events per second asked for.
    pub rate: f64,
    pub secs: f64,
    pub published: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Deliveries of earlier steps that arrived during this one.
    pub stale: u64,
    pub offered_per_s: f64,
    pub delivered_per_s: f64,
    pub latency: Percentiles,
    pub server_cpu_pct: f64,
    pub server_cpu_us_per_delivery: f64,
    pub loadgen_cpu_pct: f64,
    /// The load generator's own CPU per delivery (receiving, stamping, publishing; the web
    /// stand-in is another process): what its one core costs, and a floor under fan-out
    /// latencies, since it reads a broadcast's frames one client after another.
    pub loadgen_cpu_us_per_delivery: f64,
    /// redis-server's CPU over the step (`INFO cpu`; it shares the load core): fanning each
    /// publication out to its subscribers, one per server instance, plus whatever else the
    /// servers ask of it meanwhile.
    pub redis_cpu_pct: f64,
    pub redis_cpu_us_per_delivery: f64,
    pub redis_cpu_us_per_publication: f64,
    /// How busy the load core was as a whole (None when not pinned): near 100% the step
    /// measured the load generator's core, not the server.
    pub load_core_busy_pct: Option<f64>,
    /// Clients connected when the step began and when it was judged: the server may drop
    /// clients it cannot keep up with.
    pub clients_before: usize,
    pub clients_after: usize,
    /// Clients cut during the step that came back with their session (`--recover`).
    pub recovered: u64,
    pub verdict: Verdict,
    /// Server figures above are summed over the instances; here each one's.
    pub per_instance: Vec<InstanceStep>,
}

#[derive(Debug, Serialize)]
pub struct StepsReport {
    /// `broadcast` (room `all`) or `user` (one random user's room per event).
    pub kind: String,
    pub clients: usize,
    pub steps: Vec<StepReport>,
    /// Highest deliveries/s of a step with verdict ok.
    pub sustained_per_s: f64,
    /// Highest deliveries/s of any step.
    pub peak_per_s: f64,
}

impl StepsReport {
    pub fn new(kind: &str, clients: usize, steps: Vec<StepReport>) -> Self {
        let max = |ok_only: bool| {
            steps
                .iter()
                .filter(|s| !ok_only || s.verdict.is_ok())
                .map(|s| s.delivered_per_s)
                .fold(0.0, f64::max)
        };
        Self {
            kind: kind.to_owned(),
            clients,
            sustained_per_s: max(true),
            peak_per_s: max(false),
            steps,
        }
    }

    /// The step at `rate`, if it ran.
    pub fn at(&self, rate: f64) -> Option<&StepReport> {
        self.steps.iter().find(|s| (s.rate - rate).abs() < 1e-9)
    }
}

#[derive(Debug, Serialize)]
pub struct StormReport {
    /// `distinct` (one sid per client) or `shared` (several tabs per sid).
    pub variant: String,
    pub clients: usize,
    pub credentials: usize,
    pub signal: String,
    /// Time the old process took to exit after the signal.
    pub stop_ms: f64,
    /// From starting the new process until every client was back; None if some never were.
    pub all_back_ms: Option<f64>,
    /// From the signal until every client was back.
    pub all_back_from_signal_ms: Option<f64>,
    pub back: usize,
    /// Clients that recovered their session (`--recover`).
    pub recovered: u64,
    pub failures: Failures,
    pub auth: AuthCounts,
    pub calls_per_connection: f64,
    pub calls_per_credential: f64,
    /// CPU time of the restarted server until every client was back (or the time ran out).
    pub server_cpu_ms: f64,
    /// The load generator's CPU (clients and publisher; the web stand-in is another
    /// process) from the signal until every client was back.
    pub loadgen_cpu_pct: f64,
}

/// Every connection dropped at once with the server up, events published meanwhile.
#[derive(Debug, Serialize)]
pub struct CutReport {
    pub clients: usize,
    /// Whether the clients recovered their sessions (`--recover`).
    pub recover: bool,
    /// Events published to room `all` while the clients were away.
    pub events: u64,
    /// From the cut until every client was back; None if some never were.
    pub all_back_ms: Option<f64>,
    pub back: usize,
    pub recovered: u64,
    /// Deliveries of those events: expected (clients × events), received, missing.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Publish → receive, the time away included.
    pub latency: Percentiles,
    pub failures: Failures,
    pub auth: AuthCounts,
    /// Server CPU from the cut until every client was back and had its events.
    pub server_cpu_ms: f64,
    pub server_cpu_us_per_client: f64,
    pub loadgen_cpu_pct: f64,
}

#[derive(Debug, Serialize)]
pub struct ScaleStep {
    pub clients: usize,
    pub connected: usize,
    pub connect_per_s: f64,
    pub rss_kib: u64,
    pub kib_per_connection: f64,
    pub rate: f64,
    pub delivered_per_s: f64,
    pub lost: u64,
    pub latency: Percentiles,
    pub server_cpu_us_per_delivery: f64,
}

#[derive(Debug, Serialize)]
pub struct Ratio {
    pub metric: String,
    pub first: f64,
    pub second: f64,
    pub ratio: f64,
    pub better: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Reference {
    pub metric: String,
    pub measured: Option<f64>,
    pub measured_at: String,
    pub node: f64,
    pub node_at: String,
    /// measured ÷ node.
    pub ratio: Option<f64>,
    pub better: &'static str,
}

/// A plain text table with right-aligned numbers.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let columns = self.header.len();
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .chain(std::iter::once(&self.header[i]))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let line = |cells: &[String], out: &mut String| {
            let text: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 0 {
                        format!("{c:<w$}", w = widths[i])
                    } else {
                        format!("{c:>w$}", w = widths[i])
                    }
                })
                .collect();
            let _ = writeln!(out, "  {}", text.join("  ").trim_end());
        };
        line(&self.header, out);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&rule, out);
        for row in &self.rows {
            line(row, out);
        }
    }
}

/// 1234567.8 → "1,234,568".
pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "-".into();
    }
    let rounded = value.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0 { format!("-{out}") } else { out }
}

fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn num(value: f64) -> String {
    if value.abs() >= 1000.0 {
        thousands(value)
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn opt_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "never".into(), thousands)
}

fn failures(failures: &Failures) -> String {
    if failures.is_empty() {
        return "none".into();
    }
    failures
        .iter()
        .map(|(kind, (count, last))| format!("{kind} ×{count} (last: {last})"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl RunReport {
    /// `, on 2 instances (ports 40001, 40002)` when there are several.
    fn instances_text(&self) -> String {
        if self.instances.len() < 2 {
            return String::new();
        }
        let ports: Vec<String> = self.instances.iter().map(|i| i.port.to_string()).collect();
        format!(
            " on {} instances (ports {})",
            self.instances.len(),
            ports.join(", ")
        )
    }

    pub fn render(&self, out: &mut String) {
        let summed = if self.instances.len() > 1 {
            " (summed over the instances)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "\n=== {} — {} clients{}, Frappe {} bench ===\n  command: {}\n  server RSS before any client{summed}: {} KiB",
            self.label,
            thousands(self.clients as f64),
            self.instances_text(),
            self.frappe_version,
            self.command,
            thousands(self.server_rss_baseline_kib as f64)
        );
        if let Some(c) = &self.connect {
            let _ = writeln!(
                out,
                "\nconnect ({} attempts in flight at most)",
                c.concurrency
            );
            let mut t = Table::new(&[
                "clients",
                "connected",
                "wall ms",
                "connects/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "auth calls",
                "server µs/handshake",
                "loadgen cpu %",
            ]);
            t.row(vec![
                thousands(c.clients as f64),
                thousands(c.connected as f64),
                thousands(c.wall_ms),
                thousands(c.per_s),
                ms(c.latency.p50_ms),
                ms(c.latency.p99_ms),
                ms(c.latency.p999_ms),
                ms(c.latency.max_ms),
                thousands(c.auth.calls as f64),
                num(c.server_cpu_us_per_handshake),
                format!("{:.0}", c.loadgen_cpu_pct),
            ]);
            t.render(out);
            let _ = writeln!(out, "  failures: {}", failures(&c.failures));
            render_connect_instances(&c.per_instance, out);
        }
        if let Some(i) = &self.idle {
            let rss = if summed.is_empty() {
                ""
            } else {
                "; RSS summed over the instances"
            };
            let _ = writeln!(out, "\nidle memory (after {} s idle{rss})", i.idle_secs);
            let mut t = Table::new(&[
                "connections",
                "RSS before KiB",
                "RSS connected KiB",
                "KiB/connection",
                "server cpu % idle",
            ]);
            t.row(vec![
                thousands(i.connections as f64),
                thousands(i.rss_baseline_kib as f64),
                thousands(i.rss_kib as f64),
                format!("{:.1}", i.kib_per_connection),
                format!("{:.1}", i.server_cpu_pct_idle),
            ]);
            t.render(out);
            render_idle_instances(&i.per_instance, out);
        }
        for steps in [&self.broadcast, &self.user_room].into_iter().flatten() {
            render_steps(steps, out);
        }
        if let Some(c) = &self.cut {
            render_cut(c, out);
        }
        if !self.storms.is_empty() {
            let _ = writeln!(out, "\nreconnect storm");
            let mut t = Table::new(&[
                "variant",
                "clients",
                "sids",
                "signal",
                "stop ms",
                "all back ms",
                "from signal ms",
                "back",
                "recovered",
                "auth calls",
                "calls/conn",
                "calls/sid",
                "server cpu ms",
                "loadgen cpu %",
            ]);
            for s in &self.storms {
                t.row(vec![
                    s.variant.clone(),
                    thousands(s.clients as f64),
                    thousands(s.credentials as f64),
                    s.signal.clone(),
                    thousands(s.stop_ms),
                    opt_ms(s.all_back_ms),
                    opt_ms(s.all_back_from_signal_ms),
                    thousands(s.back as f64),
                    thousands(s.recovered as f64),
                    thousands(s.auth.calls as f64),
                    format!("{:.2}", s.calls_per_connection),
                    format!("{:.2}", s.calls_per_credential),
                    thousands(s.server_cpu_ms),
                    format!("{:.0}", s.loadgen_cpu_pct),
                ]);
            }
            t.render(out);
            for s in &self.storms {
                let _ = writeln!(
                    out,
                    "  {} failed attempts: {}",
                    s.variant,
                    failures(&s.failures)
                );
            }
        }
        if !self.scale.is_empty() {
            let _ = writeln!(out, "\nscale");
            let mut t = Table::new(&[
                "clients",
                "connected",
                "connects/s",
                "RSS KiB",
                "KiB/conn",
                "ev/s",
                "deliveries/s",
                "lost",
                "p50 ms",
                "p99 ms",
                "server µs/delivery",
            ]);
            for s in &self.scale {
                t.row(vec![
                    thousands(s.clients as f64),
                    thousands(s.connected as f64),
                    thousands(s.connect_per_s),
                    thousands(s.rss_kib as f64),
                    format!("{:.1}", s.kib_per_connection),
                    num(s.rate),
                    thousands(s.delivered_per_s),
                    thousands(s.lost as f64),
                    ms(s.latency.p50_ms),
                    ms(s.latency.p99_ms),
                    num(s.server_cpu_us_per_delivery),
                ]);
            }
            t.render(out);
        }
        if let Some(error) = &self.error {
            let _ = writeln!(out, "\n  RUN STOPPED: {error}");
        }
    }
}

/// Each instance's share of the connect phase, when there are several.
fn render_connect_instances(each: &[InstanceConnect], out: &mut String) {
    if each.len() < 2 {
        return;
    }
    let mut t = Table::new(&[
        "instance",
        "connected",
        "server cpu ms",
        "server µs/handshake",
    ]);
    for i in each {
        t.row(vec![
            i.instance.to_string(),
            thousands(i.connected as f64),
            thousands(i.server_cpu_ms),
            num(i.server_cpu_us_per_handshake),
        ]);
    }
    t.render(out);
}

/// Each instance's memory, when there are several.
fn render_idle_instances(each: &[InstanceIdle], out: &mut String) {
    if each.len() < 2 {
        return;
    }
    let mut t = Table::new(&[
        "instance",
        "connections",
        "RSS before KiB",
        "RSS connected KiB",
        "KiB/connection",
        "server cpu % idle",
    ]);
    for i in each {
        t.row(vec![
            i.instance.to_string(),
            thousands(i.connections as f64),
            thousands(i.rss_baseline_kib as f64),
            thousands(i.rss_kib as f64),
            format!("{:.1}", i.kib_per_connection),
            format!("{:.1}", i.server_cpu_pct_idle),
        ]);
    }
    t.render(out);
}

/// Each instance's clients, deliveries and CPU in every step, when there are several.
fn render_step_instances(steps: &StepsReport, out: &mut String) {
    if steps.steps.iter().all(|s| s.per_instance.len() < 2) {
        return;
    }
    let _ = writeln!(out, "  by instance (server figures above are their sums):");
    let mut t = Table::new(&[
        "ev/s",
        "instance",
        "clients",
        "delivered",
        "server cpu %",
        "server µs/delivery",
    ]);
    for s in &steps.steps {
        for i in &s.per_instance {
            t.row(vec![
                num(s.rate),
                i.instance.to_string(),
                thousands(i.clients as f64),
                thousands(i.delivered as f64),
                format!("{:.0}", i.server_cpu_pct),
                num(i.server_cpu_us_per_delivery),
            ]);
        }
    }
    t.render(out);
}

fn render_cut(c: &CutReport, out: &mut String) {
    let how = if c.recover {
        "recovering"
    } else {
        "not recovering"
    };
    let _ = writeln!(out, "\ntransport cut ({how} clients)");
    let mut t = Table::new(&[
        "clients",
        "events",
        "all back ms",
        "back",
        "recovered",
        "expected",
        "delivered",
        "lost",
        "p50 ms",
        "p99 ms",
        "auth calls",
        "server cpu ms",
        "server µs/client",
        "loadgen cpu %",
    ]);
    t.row(vec![
        thousands(c.clients as f64),
        thousands(c.events as f64),
        opt_ms(c.all_back_ms),
        thousands(c.back as f64),
        thousands(c.recovered as f64),
        thousands(c.expected as f64),
        thousands(c.delivered as f64),
        thousands(c.lost as f64),
        ms(c.latency.p50_ms),
        ms(c.latency.p99_ms),
        thousands(c.auth.calls as f64),
        thousands(c.server_cpu_ms),
        num(c.server_cpu_us_per_client),
        format!("{:.0}", c.loadgen_cpu_pct),
    ]);
    t.render(out);
    let _ = writeln!(out, "  failed attempts: {}", failures(&c.failures));
}

fn render_steps(steps: &StepsReport, out: &mut String) {
    let room = if steps.kind == "broadcast" {
        "room `all`, every client"
    } else {
        "room `user:<email>` of one random client per event"
    };
    let _ = writeln!(
        out,
        "\n{} to {} clients ({room})",
        steps.kind,
        thousands(steps.clients as f64)
    );
    let mut t = Table::new(&[
        "ev/s",
        "clients",
        "published",
        "delivered",
        "lost",
        "stale",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "server cpu %",
        "server µs/delivery",
        "loadgen cpu %",
        "loadgen µs/delivery",
        "redis µs/delivery",
        "redis µs/event",
        "load core %",
        "verdict",
    ]);
    for s in &steps.steps {
        t.row(vec![
            num(s.rate),
            thousands(s.clients_before as f64),
            thousands(s.published as f64),
            thousands(s.delivered as f64),
            thousands(s.lost as f64),
            thousands(s.stale as f64),
            thousands(s.delivered_per_s),
            ms(s.latency.p50_ms),
            ms(s.latency.p99_ms),
            ms(s.latency.p999_ms),
            ms(s.latency.max_ms),
            format!("{:.0}", s.server_cpu_pct),
            num(s.server_cpu_us_per_delivery),
            format!("{:.0}", s.loadgen_cpu_pct),
            num(s.loadgen_cpu_us_per_delivery),
            num(s.redis_cpu_us_per_delivery),
            num(s.redis_cpu_us_per_publication),
            s.load_core_busy_pct
                .map_or_else(|| "-".into(), |b| format!("{b:.0}")),
            s.verdict.label().into(),
        ]);
    }
    t.render(out);
    let _ = writeln!(
        out,
        "  sustained (highest ok step): {} deliveries/s; peak: {} deliveries/s",
        thousands(steps.sustained_per_s),
        thousands(steps.peak_per_s)
    );
    render_step_instances(steps, out);
    for s in steps
        .steps
        .iter()
        .filter(|s| s.clients_after < s.clients_before)
    {
        let _ = writeln!(
            out,
            "  note: {} clients were disconnected during the {} ev/s step",
            thousands((s.clients_before - s.clients_after) as f64),
            num(s.rate)
        );
    }
    for s in steps.steps.iter().filter(|s| s.recovered > 0) {
        let _ = writeln!(
            out,
            "  note: {} clients were cut and recovered their session during the {} ev/s step",
            thousands(s.recovered as f64),
            num(s.rate)
        );
    }
    if steps
        .steps
        .iter()
        .any(|s| s.loadgen_cpu_pct >= 90.0 || s.load_core_busy_pct.is_some_and(|b| b >= 90.0))
    {
        let _ = writeln!(
            out,
            "  note: the load core was ≥ 90% busy in some steps; their latencies include the \
             load generator's own queueing and their rates are a floor of the server's"
        );
    }
}

/// The headline figures of a run, with which direction is better.
fn headline(run: &RunReport) -> Vec<(String, Option<f64>, &'static str)> {
    let mut rows: Vec<(String, Option<f64>, &'static str)> = Vec::new();
    if let Some(i) = &run.idle {
        rows.push((
            "idle KiB/connection".into(),
            Some(i.kib_per_connection),
            "lower",
        ));
    }
    if let Some(c) = &run.connect {
        rows.push(("connects/s".into(), Some(c.per_s), "higher"));
        rows.push(("connect p99 ms".into(), Some(c.latency.p99_ms), "lower"));
        rows.push((
            "server µs/handshake".into(),
            Some(c.server_cpu_us_per_handshake),
            "lower",
        ));
    }
    for steps in [&run.broadcast, &run.user_room].into_iter().flatten() {
        rows.push((
            format!("{} sustained deliveries/s", steps.kind),
            Some(steps.sustained_per_s),
            "higher",
        ));
        rows.push((
            format!("{} peak deliveries/s", steps.kind),
            Some(steps.peak_per_s),
            "higher",
        ));
        for s in &steps.steps {
            rows.push((
                format!("{} p99 ms at {} ev/s", steps.kind, num(s.rate)),
                Some(s.latency.p99_ms),
                "lower",
            ));
        }
        // At the highest rate that kept up: low rates mostly measure the idle cost.
        if let Some(s) = steps.steps.iter().rfind(|s| s.verdict.is_ok()) {
            rows.push((
                format!("{} server µs/delivery at its highest ok rate", steps.kind),
                Some(s.server_cpu_us_per_delivery),
                "lower",
            ));
            rows.push((
                format!("{} redis µs/delivery at its highest ok rate", steps.kind),
                Some(s.redis_cpu_us_per_delivery),
                "lower",
            ));
        }
    }
    if let Some(c) = &run.cut {
        rows.push(("cut all back ms".into(), c.all_back_ms, "lower"));
        rows.push(("cut deliveries lost".into(), Some(c.lost as f64), "lower"));
        rows.push((
            "cut server µs/client".into(),
            Some(c.server_cpu_us_per_client),
            "lower",
        ));
    }
    for s in &run.storms {
        rows.push((
            format!("storm ({}) all back ms", s.variant),
            s.all_back_ms,
            "lower",
        ));
        rows.push((
            format!("storm ({}) auth calls/sid", s.variant),
            Some(s.calls_per_credential),
            "lower",
        ));
    }
    for s in &run.scale {
        rows.push((
            format!("scale {} KiB/connection", s.clients),
            Some(s.kib_per_connection),
            "lower",
        ));
        rows.push((
            format!("scale {} server µs/delivery", s.clients),
            Some(s.server_cpu_us_per_delivery),
            "lower",
        ));
    }
    rows
}

/// `first ÷ second` for every headline figure both runs have.
pub fn compare(first: &RunReport, second: &RunReport) -> Vec<Ratio> {
    let theirs: BTreeMap<String, Option<f64>> = headline(second)
        .into_iter()
        .map(|(metric, value, _)| (metric, value))
        .collect();
    headline(first)
        .into_iter()
        .filter_map(|(metric, value, better)| {
            let a = value?;
            let b = (*theirs.get(&metric)?)?;
            Some(Ratio {
                ratio: if b == 0.0 { f64::NAN } else { a / b },
                metric,
                first: a,
                second: b,
                better,
            })
        })
        .collect()
}

/// The Node service's figures from issue #7 (Node on one core).
pub fn node_reference(run: &RunReport) -> Vec<Reference> {
    let instances = match run.instances.len() {
        0 | 1 => String::new(),
        n => format!(" on {n} instances"),
    };
    let clients = |n: usize| format!("{} clients{instances}", thousands(n as f64));
    let mut rows = Vec::new();
    let idle = run.idle.as_ref();
    rows.push(Reference {
        metric: "idle KiB/connection".into(),
        measured: idle.map(|i| i.kib_per_connection),
        measured_at: idle.map_or_else(String::new, |i| clients(i.connections)),
        node: 15.0,
        node_at: "14–16 KiB".into(),
        ratio: idle.map(|i| i.kib_per_connection / 15.0),
        better: "lower",
    });
    let broadcast = run.broadcast.as_ref();
    rows.push(Reference {
        metric: "broadcast saturation deliveries/s".into(),
        measured: broadcast.map(|b| b.sustained_per_s),
        measured_at: broadcast.map_or_else(String::new, |b| clients(b.clients)),
        node: 80_000.0,
        node_at: "1,000 clients".into(),
        ratio: broadcast.map(|b| b.sustained_per_s / 80_000.0),
        better: "higher",
    });
    let at_one = broadcast.and_then(|b| b.at(1.0));
    rows.push(Reference {
        metric: "broadcast p99 ms at 1 ev/s".into(),
        measured: at_one.map(|s| s.latency.p99_ms),
        measured_at: broadcast.map_or_else(String::new, |b| clients(b.clients)),
        node: 190.0,
        node_at: "10,000 clients".into(),
        ratio: at_one.map(|s| s.latency.p99_ms / 190.0),
        better: "lower",
    });
    let storm = run.storms.iter().find(|s| s.variant == "distinct");
    rows.push(Reference {
        metric: "storm all back ms".into(),
        measured: storm.and_then(|s| s.all_back_ms),
        measured_at: storm.map_or_else(String::new, |s| clients(s.clients)),
        node: 32_000.0,
        node_at: "19,500 clients".into(),
        ratio: storm.and_then(|s| s.all_back_ms).map(|v| v / 32_000.0),
        better: "lower",
    });
    let shared = run.storms.iter().find(|s| s.variant == "shared").or(storm);
    rows.push(Reference {
        metric: "storm auth calls/connection".into(),
        measured: shared.map(|s| s.calls_per_connection),
        measured_at: shared.map_or_else(String::new, |s| {
            format!(
                "{}, {} sids",
                clients(s.clients),
                thousands(s.credentials as f64)
            )
        }),
        node: 1.0,
        node_at: "any".into(),
        ratio: shared.map(|s| s.calls_per_connection),
        better: "lower",
    });
    rows
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "loadgen: {}; file descriptor limit {}; machine {} busy before the run",
            self.placement,
            thousands(self.fd_limit as f64),
            self.machine_busy_pct
                .map_or_else(|| "?".into(), |b| format!("{b:.0}%"))
        );
        for run in &self.runs {
            run.render(&mut out);
        }
        if !self.comparison.is_empty()
            && let [first, second, ..] = self.runs.as_slice()
        {
            let _ = writeln!(out, "\n=== {} ÷ {} ===", first.label, second.label);
            let mut t = Table::new(&["metric", &first.label, &second.label, "ratio", "better"]);
            for r in &self.comparison {
                t.row(vec![
                    r.metric.clone(),
                    num(r.first),
                    num(r.second),
                    format!("{:.2}", r.ratio),
                    r.better.into(),
                ]);
            }
            t.render(&mut out);
        }
        if let Some(first) = self.runs.first() {
            let _ = writeln!(
                out,
                "\n=== {} against Node's figures (issue #7; Node on one core) ===",
                first.label
            );
            let mut t = Table::new(&[
                "metric",
                &first.label,
                "at",
                "Node",
                "at",
                "ratio",
                "better",
            ]);
            for r in &self.node_reference {
                t.row(vec![
                    r.metric.clone(),
                    r.measured.map_or_else(|| "-".into(), num),
                    r.measured_at.clone(),
                    num(r.node),
                    r.node_at.clone(),
                    r.ratio.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
                    r.better.into(),
                ]);
            }
            t.render(&mut out);
            let _ = writeln!(
                out,
                "  (a ratio means most where the client counts match: run --clients 1000 for the \
                 saturation row, --clients 10000 for the p99 row, --clients 19500 for the storm row)"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
        assert_eq!(ms(190.4), "190");
        assert_eq!(ms(1.234), "1.23");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["a", "bbb"]);
        t.row(vec!["long".into(), "1".into()]);
        let mut out = String::new();
        t.render(&mut out);
        assert_eq!(out, "  a     bbb\n  ----  ---\n  long    1\n");
    }

    #[test]
    fn ratios_pair_the_same_metric() {
        let run = |kib: f64| RunReport {
            idle: Some(IdleReport {
                connections: 10,
                idle_secs: 1.0,
                rss_baseline_kib: 0,
                rss_kib: 0,
                kib_per_connection: kib,
                server_cpu_pct_idle: 0.0,
                per_instance: Vec::new(),
            }),
            ..RunReport::default()
        };
        let ratios = compare(&run(5.0), &run(20.0));
        assert_eq!(ratios.len(), 1);
        assert!((ratios[0].ratio - 0.25).abs() < 1e-9);
        let reference = node_reference(&run(7.5));
        assert_eq!(reference[0].ratio, Some(0.5));
        assert_eq!(reference[1].measured, None);
    }
}
