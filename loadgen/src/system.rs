//! What the load generator asks of Linux: a core of its own, enough file descriptors, and the
//! memory and CPU time of the processes it measures (from `/proc`).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

/// Set in the environment of the re-executed, pinned load generator.
const PINNED_ENV: &str = "LOADGEN_PINNED_CORE";

/// How the load generator ended up placed on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The load generator runs on `load_core` (with redis-server and the web stand-in, which
    /// inherit it) and the server is started on `server_core`.
    Pinned {
        server_core: usize,
        load_core: usize,
    },
    /// Everything shares every core (asked for, or impossible here).
    Unpinned { why: String },
}

/// Re-execute this program under `taskset -c <load_core>` unless that already happened, so
/// that the load generator and everything it starts (redis-server, the web stand-in)
/// stay off the server's core. Only returns when no re-exec happens.
pub fn pin_self(server_core: usize, load_core: usize, disabled: bool) -> Placement {
    if disabled {
        return Placement::Unpinned {
            why: "--no-pin".into(),
        };
    }
    if std::env::var_os(PINNED_ENV).is_some() {
        return Placement::Pinned {
            server_core,
            load_core,
        };
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores < 2 || server_core == load_core || server_core.max(load_core) >= cores {
        return Placement::Unpinned {
            why: format!(
                "{cores} core(s) available; cannot give the server core {server_core} and the load core {load_core}"
            ),
        };
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return Placement::Unpinned {
                why: format!("cannot find this program to re-run it pinned: {e}"),
            };
        }
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // exec only returns on failure (taskset missing, for instance).
    let error = Command::new("taskset")
        .arg("-c")
        .arg(load_core.to_string())
        .arg(exe)
        .args(args)
        .env(PINNED_ENV, load_core.to_string())
        .exec();
    Placement::Unpinned {
        why: format!("cannot run taskset: {error}"),
    }
}

/// Raise the soft open-files limit to the hard one (children inherit it: the server needs
/// one descriptor per client too). Returns the limit now in force.
pub fn raise_fd_limit() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(limit.rlim_cur)
}

/// The size of the ephemeral port range: the most connections one client address can open
/// to one server port.
pub fn ephemeral_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(low)), Some(Ok(high))) = (bounds.next(), bounds.next()) else {
        return None;
    };
    Some(high.saturating_sub(low) + 1)
}

/// Share (0–100) of the machine's CPU time spent busy over `window`, from /proc/stat. Taken
/// before a run starts anything: other work on a 2-core machine disturbs every figure.
pub fn machine_busy_percent(window: Duration) -> Option<f64> {
    let before = cpu_totals()?;
    std::thread::sleep(window);
    let after = cpu_totals()?;
    let total = after.0.saturating_sub(before.0);
    let idle = after.1.saturating_sub(before.1);
    (total > 0).then(|| (total - idle) as f64 / total as f64 * 100.0)
}

/// (all, idle + iowait) jiffies of the `cpu` line of /proc/stat.
fn cpu_totals() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(stat.lines().next()?, "cpu ")
}

/// (all, idle + iowait) jiffies of one core, for how busy it was between two readings.
pub fn core_times(core: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let prefix = format!("cpu{core} ");
    stat.lines().find_map(|line| parse_cpu_line(line, &prefix))
}

/// Percent busy between two [`core_times`] readings.
pub fn busy_between(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let total = after.0.checked_sub(before.0)?;
    let idle = after.1.checked_sub(before.1)?;
    (total > 0).then(|| total.saturating_sub(idle) as f64 / total as f64 * 100.0)
}

fn parse_cpu_line(line: &str, prefix: &str) -> Option<(u64, u64)> {
    let values: Vec<u64> = line
        .strip_prefix(prefix)?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

/// Memory and CPU time of a process and all its descendants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    pub cpu: Duration,
}

impl std::iter::Sum for Usage {
    /// The whole server's usage from its instances'.
    fn sum<I: Iterator<Item = Self>>(usages: I) -> Self {
        usages.fold(Self::default(), |all, one| Self {
            rss_kib: all.rss_kib + one.rss_kib,
            cpu: all.cpu + one.cpu,
        })
    }
}

/// Usage of `root` and every process below it: a server command may be a wrapper script
/// around the real server (as `sh -c` or a `run.sh` would be), and what it costs is the sum.
pub fn tree_usage(root: u32) -> Result<Usage> {
    let mut usage = process_usage(root)?;
    for pid in descendants(root) {
        // A child may exit between listing and reading; it then costs nothing.
        if let Ok(child) = process_usage(pid) {
            usage.rss_kib += child.rss_kib;
            usage.cpu += child.cpu;
        }
    }
    Ok(usage)
}

/// CPU time this process has used (every thread).
pub fn own_cpu() -> Duration {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| cpu_of_stat(&stat))
        .unwrap_or_default()
}

fn process_usage(pid: u32) -> Result<Usage> {
    let dir = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(dir.join("stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok(Usage {
        rss_kib: rss_of_status(&status).unwrap_or(0),
        cpu: cpu_of_stat(&stat).unwrap_or_default(),
    })
}

/// Every process whose chain of parents reaches `root`.
fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parent_of_stat(&stat)?))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// `VmRSS:   1234 kB` from /proc/<pid>/status.
fn rss_of_status(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The fields after the command name of /proc/<pid>/stat (the name may contain spaces).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    Some(after_name.split_whitespace().collect())
}

/// utime + stime (fields 14 and 15) of /proc/<pid>/stat.
fn cpu_of_stat(stat: &str) -> Option<Duration> {
    let fields = stat_fields(stat)?;
    // Field 3 (state) is the first after the name, so field n is at index n - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    let hz = clock_ticks_per_second();
    Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz,
    ))
}

/// The parent PID (field 4) of /proc/<pid>/stat.
fn parent_of_stat(stat: &str) -> Option<u32> {
    stat_fields(stat)?.get(1)?.parse().ok()
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|hz| *hz > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let status = "Name:\tnode\nVmPeak:\t  999 kB\nVmRSS:\t   51234 kB\nThreads: 7\n";
        assert_eq!(rss_of_status(status), Some(51234));
        let stat = "4242 (my (odd) name) S 17 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 1";
        assert_eq!(parent_of_stat(stat), Some(17));
        let hz = clock_ticks_per_second();
        assert_eq!(
            cpu_of_stat(stat),
            Some(Duration::from_nanos(300 * 1_000_000_000 / hz))
        );
    }

    #[test]
    fn the_cpu_line_of_proc_stat_parses() {
        let line = "cpu  100 5 50 800 40 1 4 0 0 0";
        assert_eq!(parse_cpu_line(line, "cpu "), Some((1000, 840)));
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4", "cpu "), None);
        assert_eq!(parse_cpu_line("cpu1 1 2 3 4", "cpu1 "), Some((10, 4)));
        assert_eq!(busy_between((1000, 840), (1100, 890)), Some(50.0));
        assert!(core_times(0).is_some());
    }

    #[test]
    fn this_process_is_measurable() {
        let usage = tree_usage(std::process::id()).expect("own usage");
        assert!(usage.rss_kib > 0);
        assert!(ephemeral_ports().is_some_and(|n| n > 1000));
    }
}
