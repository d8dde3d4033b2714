use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use frappe_realtime::app_handlers::AppHandlers;
use frappe_realtime::config::{Config, Overrides};
use frappe_realtime::engine::UpstreamSlot;
use frappe_realtime::handlers::frappe_events;
use frappe_realtime::reload;
use frappe_realtime::server::Options;
use tracing_subscriber::EnvFilter;

/// Frappe's realtime (Socket.IO) service. Run it from the bench directory, as supervisor runs
/// `node apps/frappe/socketio.js`; it reads the bench's own configuration.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The bench directory (the one holding apps/ and sites/).
    #[arg(long, default_value = ".")]
    bench: PathBuf,
    /// Bind TCP on this address only (default: every interface, like Frappe's service).
    #[arg(long)]
    host: Option<IpAddr>,
    /// Speak this Frappe major version (13 to 16) instead of the one in apps/frappe.
    #[arg(long, value_parser = clap::value_parser!(u32).range(13..=16))]
    frappe_version: Option<u32>,
    /// Also serve /metrics, /health and /ready here: a port (bound on 127.0.0.1) or IP:PORT.
    #[arg(long, value_parser = parse_metrics_addr)]
    metrics_addr: Option<SocketAddr>,
    /// Record no metrics (for measuring their cost).
    #[arg(long)]
    no_metrics: bool,
    /// Log lines as human-readable text or as JSON objects.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Behind an nginx upstream with `hash $arg_sid` and several instances: this instance is
    /// server line I of N (from 1), e.g. `2/3`, so its long-polling sessions come back to it.
    /// Each instance listens on its own port (FRAPPE_SOCKETIO_PORT).
    #[arg(long, value_parser = parse_upstream_server, value_name = "I/N")]
    upstream_server: Option<UpstreamSlot>,
    /// Check the bench's configuration and the apps' handler files, print the effective
    /// configuration with where each key came from (secrets masked), and exit: 0 when all is
    /// well, 2 naming the file and key (or line) at fault. As `nginx -t`.
    #[arg(long)]
    check_config: bool,
}

/// The most `server` lines `--upstream-server` accepts.
const MAX_UPSTREAM_SERVERS: usize = 256;

/// `I/N`: server line I (from 1) of N.
fn parse_upstream_server(value: &str) -> Result<UpstreamSlot, String> {
    let (line, lines) = value
        .split_once('/')
        .ok_or("expected I/N, e.g. 2/3: server line I of N")?;
    let line: usize = line.trim().parse().map_err(|_| "I is not a number")?;
    let count: usize = lines.trim().parse().map_err(|_| "N is not a number")?;
    // A session id takes N draws on average: an upstream block has a handful of lines.
    if count > MAX_UPSTREAM_SERVERS {
        return Err(format!("N must be at most {MAX_UPSTREAM_SERVERS}"));
    }
    if line == 0 || line > count {
        return Err(format!("I must be between 1 and N ({count})"));
    }
    Ok(UpstreamSlot {
        index: line - 1,
        count,
    })
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: supervisor and systemd write stdout to log files.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let overrides = Overrides {
        frappe_version: cli.frappe_version,
    };
    // Absolute, so error messages and logs name files an operator can find.
    let bench = std::path::absolute(&cli.bench).unwrap_or(cli.bench);
    if cli.check_config {
        return check_config(&bench, &overrides);
    }
    raise_open_files_limit();
    let config = match Config::load(&bench, &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("frappe-realtime: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("frappe-realtime: a TLS provider was already installed");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("frappe-realtime: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = Options {
        host: cli.host,
        metrics_addr: cli.metrics_addr,
        no_metrics: cli.no_metrics,
        overrides,
        upstream_slot: cli.upstream_server,
    };
    let result = runtime.block_on(frappe_realtime::server::run(
        config,
        options,
        shutdown_signal(),
    ));
    // Leave the connections and their memory to the process's exit: dropping tens of thousands
    // of sessions one by one only delays the restart the clients are waiting for.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("frappe-realtime: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: what the service would run with, and where each value came from; 2 if
/// it would not start, or an app's handlers would be off.
fn check_config(bench: &std::path::Path, overrides: &Overrides) -> ExitCode {
    let explained = match Config::explain(bench, overrides) {
        Ok(explained) => explained,
        Err(e) => {
            eprintln!("frappe-realtime: invalid configuration: {e}");
            eprintln!("frappe-realtime: configuration check failed");
            return ExitCode::from(2);
        }
    };
    println!("# effective configuration of {}", bench.display());
    println!("{:#?}", explained.config.redacted());
    println!(
        "# keys read, where from (default: its value is above), and [restart] where a change \
         takes a restart rather than SIGHUP"
    );
    let width = explained
        .keys
        .iter()
        .map(|k| k.key.len())
        .max()
        .unwrap_or(0);
    for key in &explained.keys {
        let restart = if reload::needs_restart(&key.key) {
            "  [restart]"
        } else {
            ""
        };
        match (&key.value, &key.source) {
            (Some(value), Some(source)) => {
                println!("{:width$}  {value}  ({source}){restart}", key.key);
            }
            _ => println!("{:width$}  default{restart}", key.key),
        }
    }
    println!("# app handlers");
    let mut failed = false;
    for (app, outcome) in AppHandlers::check(bench, &frappe_events()) {
        match outcome {
            Ok(handlers) => println!("{app}: {handlers} handlers"),
            Err(problem) => {
                failed = true;
                eprintln!("frappe-realtime: {problem}");
            }
        }
    }
    if failed {
        eprintln!("frappe-realtime: configuration check failed");
        return ExitCode::from(2);
    }
    println!("frappe-realtime: configuration check is successful");
    ExitCode::SUCCESS
}

/// Every connection holds a file descriptor, and supervisord and systemd start services with a
/// soft limit far below the hard one (systemd: 1,024 soft, 524,288 hard): the service would
/// refuse clients past the first thousand or so. Raise the soft limit to the hard one, as nginx
/// (`worker_rlimit_nofile`) and the Go runtime do; the hard limit stays the operator's.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit (one per connection)"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// A bare port means loopback only: metrics are for the local Prometheus, not the world.
fn parse_metrics_addr(value: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    value
        .parse()
        .map_err(|_| format!("{value:?} is neither a port nor an IP:PORT address"))
}

/// SIGTERM (supervisor, systemd) or SIGINT (a terminal).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_metrics_port_binds_loopback() {
        assert_eq!(
            parse_metrics_addr("9101"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 9101)))
        );
        assert_eq!(
            parse_metrics_addr("0.0.0.0:9101"),
            Ok(SocketAddr::from(([0, 0, 0, 0], 9101)))
        );
        assert!(parse_metrics_addr("nine").is_err());
    }
}
