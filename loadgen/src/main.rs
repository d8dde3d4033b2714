//! `loadgen`: a load generator for Frappe realtime services — ours or Frappe's own Node
//! service — run on one machine over loopback, the server on one core and everything else on
//! another. See docs/loadgen.md.

mod bench;
mod cli;
mod clients;
mod engineio;
mod frappe;
mod identity;
mod phases;
mod ports;
mod procs;
mod publish;
mod recorder;
mod report;
mod stack;
mod system;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::cli::{Args, Phase};
use crate::procs::ServerCommand;
use crate::report::Report;
use crate::system::Placement;

/// File descriptors kept for everything but the clients (Redis, logs, /proc reads).
const FD_RESERVE: u64 = 200;
/// Ephemeral ports kept free for the server's calls to the web stand-in and for Redis.
const PORT_RESERVE: u64 = 1000;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(frappe::SUBCOMMAND) {
        return frappe::serve_main(&argv[2..]);
    }
    let mut args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("loadgen: {e}");
        return ExitCode::from(2);
    }
    // Re-executes under taskset unless already pinned; returns only when not re-executing.
    let placement = system::pin_self(args.server_core, args.load_core, args.no_pin);
    match run(&args, placement) {
        Ok(report) => {
            let failed = report.runs.iter().any(|r| r.error.is_some());
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, placement: Placement) -> Result<Report> {
    let fd_limit = system::raise_fd_limit()?;
    let max_clients = max_clients(fd_limit);
    let largest = if args.has(Phase::Scale) {
        args.clients.max(
            args.scale_steps
                .last()
                .copied()
                .unwrap_or(0)
                .min(max_clients),
        )
    } else {
        args.clients
    };
    if largest > max_clients {
        bail!(
            "{largest} clients need more than the {fd_limit} file descriptors (or the ephemeral \
             ports) this process may use; at most {max_clients} (raise `ulimit -n`)"
        );
    }
    let first = ServerCommand::parse(&args.server, args.server_bin.as_deref())?;
    let first_label = args.label.clone().unwrap_or_else(|| match first {
        ServerCommand::Ours(_) => "ours".into(),
        ServerCommand::Shell(_) => "server".into(),
    });
    let server_core = match &placement {
        Placement::Pinned { server_core, .. } => Some(*server_core),
        Placement::Unpinned { .. } => None,
    };
    let placement_text = match &placement {
        Placement::Pinned {
            server_core,
            load_core,
        } if args.instances > 1 => format!(
            "server's {} instances all pinned to core {server_core}, load generator to core \
             {load_core}",
            args.instances
        ),
        Placement::Pinned {
            server_core,
            load_core,
        } => format!("server pinned to core {server_core}, load generator to core {load_core}"),
        Placement::Unpinned { why } => format!("not pinned ({why})"),
    };
    eprintln!("loadgen: {placement_text}");
    let busy = system::machine_busy_percent(std::time::Duration::from_millis(500));
    if let Some(busy) = busy.filter(|b| *b > 10.0) {
        eprintln!(
            "loadgen: WARNING: the machine is {busy:.0}% busy before the run starts; other \
             work disturbs every figure"
        );
    }

    // One thread: the load generator has one core, and a single-threaded runtime spends it on
    // the clients rather than on moving tasks between threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let mut report = Report {
        placement: placement_text,
        fd_limit,
        machine_busy_pct: busy,
        ..Report::default()
    };
    runtime.block_on(async {
        let work = async {
            report.runs.push(
                phases::run_server(args, &first_label, first, server_core, max_clients).await,
            );
            if let Some(other) = &args.compare {
                let other = ServerCommand::parse(other, args.server_bin.as_deref())?;
                report.runs.push(
                    phases::run_server(args, &args.compare_label, other, server_core, max_clients)
                        .await,
                );
            }
            Ok::<_, anyhow::Error>(())
        };
        // The processes we start are in process groups of their own, so a Ctrl-C at the
        // terminal does not reach them: stop on it (or SIGTERM) by dropping the work, which
        // stops and reaps everything it started.
        tokio::select! {
            done = work => done,
            signal = interrupted() => bail!("stopped by {signal}; everything it started was stopped"),
        }
    })?;
    if let [first, second, ..] = report.runs.as_slice() {
        report.comparison = report::compare(first, second);
    }
    if let Some(first) = report.runs.first() {
        report.node_reference = report::node_reference(first);
    }
    print!("{}", report.render());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("serialising the report")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("loadgen: figures written to {}", path.display());
    }
    Ok(report)
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        // Without handlers the default action (exit) applies; never resolve.
        _ => std::future::pending().await,
    }
}

/// The most clients one run can hold: each costs a descriptor here and an ephemeral port.
fn max_clients(fd_limit: u64) -> usize {
    let by_fds = fd_limit.saturating_sub(FD_RESERVE);
    let by_ports =
        system::ephemeral_ports().map_or(u64::MAX, |ports| ports.saturating_sub(PORT_RESERVE));
    usize::try_from(by_fds.min(by_ports)).unwrap_or(usize::MAX)
}
