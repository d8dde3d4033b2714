//! The processes a run starts — redis-server and the server under test — and nothing else.
//!
//! Each is started in a process group of its own, so a server command that is a wrapper
//! script (`sh -c`, a `run.sh`) is stopped with everything it started, and only that: signals
//! go to the group whose id is the PID of our own child. Whatever happens to the run, dropping
//! the handle kills and reaps the group.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A child process in its own process group, killed (with the group) when dropped.
pub struct Spawned {
    child: Child,
    what: String,
    reaped: bool,
}

impl Spawned {
    /// Start `command` as the leader of a new process group, its output appended to `log`.
    pub fn start(mut command: Command, what: impl Into<String>, log: &Path) -> Result<Self> {
        let what = what.into();
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file")?;
        // SAFETY: runs in the forked child before exec; prctl is async-signal-safe and
        // touches no memory of ours. If the load generator dies without running its
        // destructors (SIGKILL), the kernel then kills its direct children too.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Self {
            child,
            what,
            reaped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `signal` to the process group we created (and only to it).
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let group = libc::pid_t::try_from(self.child.id()).context("PID out of range")?;
        // SAFETY: kill has no memory preconditions; a negative PID addresses the process
        // group that `process_group(0)` made with our child as its leader.
        if unsafe { libc::kill(-group, signal) } != 0 {
            let error = std::io::Error::last_os_error();
            // ESRCH: every member already exited.
            if error.raw_os_error() != Some(libc::ESRCH) {
                return Err(error).with_context(|| format!("signalling {}", self.what));
            }
        }
        Ok(())
    }

    /// The exit status, if the process has exited (it is then reaped).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.reaped {
            return Ok(None);
        }
        let status = self
            .child
            .try_wait()
            .with_context(|| format!("waiting for {}", self.what))?;
        if status.is_some() {
            self.reaped = true;
        }
        Ok(status)
    }

    /// Send `signal`, wait up to `grace` for the leader to exit, then SIGKILL the group. The
    /// rest of the group is killed in any case, so no stray child keeps a port or memory.
    pub async fn stop(&mut self, signal: libc::c_int, grace: Duration) -> Result<()> {
        if self.reaped {
            return Ok(());
        }
        self.signal(signal)?;
        let deadline = Instant::now() + grace;
        while self.exited()?.is_none() {
            if Instant::now() >= deadline {
                self.signal(libc::SIGKILL)?;
                self.child
                    .wait()
                    .with_context(|| format!("waiting for {}", self.what))?;
                self.reaped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.signal(libc::SIGKILL)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        } else {
            // The leader is gone; make sure nothing it started lingers.
            let _ = self.signal(libc::SIGKILL);
        }
    }
}

/// `count` distinct free TCP ports on 127.0.0.1 (free when asked; the caller binds them soon
/// after). The probe sockets are held until all are picked: one closed at once could be
/// handed out again, and two servers told the same port would not both listen.
pub fn free_ports(count: usize) -> Result<Vec<u16>> {
    let probes = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a probe socket"))
        .collect::<Result<Vec<_>>>()?;
    probes
        .iter()
        .map(|probe| Ok(probe.local_addr().context("probe socket address")?.port()))
        .collect()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A redis-server of our own on loopback: no persistence, nothing else on it.
pub struct RedisServer {
    /// Held for its `Drop`, which stops redis-server.
    _process: Spawned,
    pub port: u16,
}

impl RedisServer {
    /// Start it on `port` (see [`free_port`]) and wait (at most 10 s) until it answers.
    /// Its working directory and log are in `dir`.
    pub async fn start(dir: &Path, port: u16) -> Result<Self> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(dir);
        let mut process = Spawned::start(command, "redis-server", &dir.join("redis.log"))
            .context("is redis-server installed? (apt-get install -y redis-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = process.exited()? {
                bail!(
                    "redis-server exited with {status}; see {}",
                    dir.join("redis.log").display()
                );
            }
            if redis_answers(port).await {
                return Ok(Self {
                    _process: process,
                    port,
                });
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer on port {port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

async fn redis_answers(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(Ok(mut conn)) = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return false;
    };
    let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
    pong.is_ok()
}

/// What to run as the server under test.
#[derive(Debug, Clone)]
pub enum ServerCommand {
    /// Our binary, bound to loopback only.
    Ours(PathBuf),
    /// A shell command template; see [`substitute`].
    Shell(String),
}

impl ServerCommand {
    /// `ours` means the frappe-realtime binary (`bin`, or the one next to this program);
    /// anything else is a shell command template.
    pub fn parse(spec: &str, bin: Option<&Path>) -> Result<Self> {
        if spec != "ours" {
            return Ok(Self::Shell(spec.to_owned()));
        }
        let path = match bin {
            Some(path) => path.to_path_buf(),
            None => std::env::current_exe()
                .context("locating this program")?
                .with_file_name("frappe-realtime"),
        };
        if !path.is_file() {
            bail!(
                "no server binary at {}: build it (cargo build --release -p frappe-realtime, \
                 or run scripts/loadgen) or pass --server-bin",
                path.display()
            );
        }
        Ok(Self::Ours(path))
    }

    /// How the report names it, run as `instances` instances.
    pub fn describe(&self, instances: usize) -> String {
        let command = match self {
            Self::Ours(path) if instances > 1 => format!(
                "{} --host 127.0.0.1 --upstream-server I/{instances}",
                path.display()
            ),
            Self::Ours(path) => format!("{} --host 127.0.0.1", path.display()),
            Self::Shell(template) => template.clone(),
        };
        if instances > 1 {
            format!("{command} (×{instances}, each with FRAPPE_SOCKETIO_PORT=<its port>)")
        } else {
            command
        }
    }
}

/// Replace each `{name}` of `vars` in `template` by its value. Other braces are left alone, so
/// shell syntax such as `${HOME}` or `{a,b}` passes through.
pub fn substitute(template: &str, vars: &[(&str, String)]) -> String {
    vars.iter()
        .fold(template.to_owned(), |text, (name, value)| {
            text.replace(&format!("{{{name}}}"), value)
        })
}

/// Which of a run's server instances one is: all share the bench and Redis, each listens on
/// its own port (README "Several instances").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    /// From 0.
    pub index: usize,
    pub count: usize,
    pub port: u16,
}

impl Instance {
    /// How messages name it: "the server" when it is the only one.
    pub fn name(&self) -> String {
        if self.count == 1 {
            "the server".into()
        } else {
            format!(
                "server instance {} of {} (port {})",
                self.index + 1,
                self.count,
                self.port
            )
        }
    }

    /// `logs/server.log`, or `logs/server-<i>.log` (from 1) when there are several.
    fn log_name(&self) -> String {
        if self.count == 1 {
            "server.log".into()
        } else {
            format!("server-{}.log", self.index + 1)
        }
    }
}

/// Where and how one server instance runs; it can be stopped and started again (the
/// reconnect storm) on the same port with the same bench.
pub struct Server {
    command: ServerCommand,
    bench: PathBuf,
    pub instance: Instance,
    vars: Vec<(&'static str, String)>,
    core: Option<usize>,
    log: PathBuf,
    process: Option<Spawned>,
}

impl Server {
    /// `vars` are the placeholders of a shell command: bench, site, redis, web (`port` is
    /// added: the instance's own).
    pub fn new(
        command: ServerCommand,
        bench: &Path,
        instance: Instance,
        mut vars: Vec<(&'static str, String)>,
        core: Option<usize>,
    ) -> Self {
        vars.push(("port", instance.port.to_string()));
        Self {
            command,
            bench: bench.to_path_buf(),
            instance,
            vars,
            core,
            log: bench.join("logs").join(instance.log_name()),
            process: None,
        }
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The command line: under taskset on the server core when pinned; ours with
    /// `--upstream-server I/N` when there are several, as a bench behind nginx runs them.
    fn argv(&self) -> Vec<String> {
        let mut argv: Vec<String> = Vec::new();
        if let Some(core) = self.core {
            argv.extend(["taskset".into(), "-c".into(), core.to_string()]);
        }
        match &self.command {
            ServerCommand::Ours(path) => {
                argv.push(path.display().to_string());
                argv.extend(["--host".into(), "127.0.0.1".into()]);
                let Instance { index, count, .. } = self.instance;
                if count > 1 {
                    argv.extend(["--upstream-server".into(), format!("{}/{count}", index + 1)]);
                }
            }
            ServerCommand::Shell(template) => {
                argv.extend(["sh".into(), "-c".into()]);
                argv.push(format!("exec {}", substitute(template, &self.vars)));
            }
        }
        argv
    }

    /// Start the server process (on the server core, in the bench directory).
    pub fn start(&mut self) -> Result<()> {
        if self.process.is_some() {
            bail!("{} is already running", self.instance.name());
        }
        let argv = self.argv();
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .current_dir(&self.bench)
            // Frappe's node_utils.js takes the bench from here before its own location, so
            // `node <any frappe>/socketio.js` reads this bench.
            .env("FRAPPE_BENCH_ROOT", &self.bench)
            // Every instance reads the same bench config; this is how each gets its own port
            // (for the first it is the config's `socketio_port` anyway).
            .env("FRAPPE_SOCKETIO_PORT", self.instance.port.to_string());
        self.process = Some(Spawned::start(command, self.instance.name(), &self.log)?);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Spawned::pid)
    }

    /// Wait until the server accepts TCP connections, failing early if it exits.
    pub async fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if accepts(self.instance.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on port {} within {timeout:?}; see {}",
                    self.instance.name(),
                    self.instance.port,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An error naming the log when the server process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(process) = self.process.as_mut() else {
            bail!("{} is not running", self.instance.name());
        };
        if let Some(status) = process.exited()? {
            self.process = None;
            bail!(
                "{} exited with {status}; its output is in {}:\n{}",
                self.instance.name(),
                self.log.display(),
                log_tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// Stop it with `signal` (SIGKILL after 10 s).
    pub async fn stop(&mut self, signal: libc::c_int) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.stop(signal, Duration::from_secs(10)).await?;
        }
        Ok(())
    }
}

/// Every instance of the server under test: started, stopped and checked together.
pub struct Servers {
    each: Vec<Server>,
}

impl Servers {
    pub fn new(each: Vec<Server>) -> Self {
        Self { each }
    }

    pub fn len(&self) -> usize {
        self.each.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Server> {
        self.each.iter()
    }

    pub fn start(&mut self) -> Result<()> {
        self.each.iter_mut().try_for_each(Server::start)
    }

    /// Stop every instance with `signal`, one after another (SIGKILL after 10 s each).
    pub async fn stop(&mut self, signal: libc::c_int) -> Result<()> {
        for server in &mut self.each {
            server.stop(signal).await?;
        }
        Ok(())
    }

    /// An error naming the first instance that has exited, and its log.
    pub fn check_alive(&mut self) -> Result<()> {
        self.each.iter_mut().try_for_each(Server::check_alive)
    }

    /// Wait until every instance accepts TCP connections (`timeout` in all).
    pub async fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for server in &mut self.each {
            let left = deadline.saturating_duration_since(Instant::now());
            server.wait_listening(left).await?;
        }
        Ok(())
    }

    /// The instances' logs, for error messages.
    pub fn logs(&self) -> String {
        self.each
            .iter()
            .map(|s| s.log().display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_shell_braces_kept() {
        let vars = [("bench", "/tmp/b".to_owned()), ("port", "9001".to_owned())];
        assert_eq!(
            substitute("run.sh {bench} --port {port} ${HOME} {x,y} {bench}", &vars),
            "run.sh /tmp/b --port 9001 ${HOME} {x,y} /tmp/b"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stopped_group_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new("sh");
        // A wrapper whose child ignores SIGTERM: stop must still get rid of both.
        command.args(["-c", "sh -c 'trap \"\" TERM; sleep 30' & wait"]);
        let mut spawned = Spawned::start(command, "test", &dir.path().join("log")).expect("start");
        let group = spawned.pid();
        tokio::time::sleep(Duration::from_millis(100)).await;
        spawned
            .stop(libc::SIGTERM, Duration::from_millis(300))
            .await
            .expect("stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            live_members(group),
            Vec::<u32>::new(),
            "the group outlived stop()"
        );
    }

    /// Members of process group `group` that are not zombies (an orphan is reaped by PID 1
    /// whenever it gets to it).
    fn live_members(group: u32) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| {
                let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
                let in_group = fields.get(2)?.parse::<u32>().ok()? == group;
                (in_group && fields.first() != Some(&"Z")).then_some(pid)
            })
            .collect()
    }
}
