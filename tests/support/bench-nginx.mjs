// Bench's real nginx in front of the server, for end-to-end tests: bench's own templates are
// rendered for a test bench by render_bench.py (the `location /socket.io` block as `bench setup
// nginx` writes it: X-Frappe-Site-Name, Origin rewritten to $scheme://$http_host, the upgrade
// headers), only the `listen` lines are moved to 127.0.0.1:<free port> (`[::]` ones are
// commented out), and nginx runs in the foreground with a temporary prefix, started and stopped
// by its own PID. Also the small process helpers the nginx and supervisor tests share.
//
// Every wait is bounded; everything listens on loopback.
import { execFile, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { freePort, waitFor } from "./harness.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const RENDER_BENCH = path.join(ROOT, "tests/support/render_bench.py");

/** The first of `candidates` that exists (a path) or is on PATH or in an sbin directory. */
export function findProgram(candidates) {
  for (const c of candidates) {
    if (c.includes("/")) {
      if (fs.existsSync(c)) return c;
      continue;
    }
    for (const dir of (process.env.PATH ?? "").split(":").concat(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"])) {
      const p = path.join(dir, c);
      try {
        fs.accessSync(p, fs.constants.X_OK);
        return p;
      } catch { /* next */ }
    }
  }
  return null;
}

export const NGINX = findProgram(["nginx"]);

/** Run a program to completion (killed after `timeoutMs`); never rejects. */
export function run(file, args, { timeoutMs = 30000, cwd } = {}) {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, cwd, killSignal: "SIGKILL" }, (error, stdout, stderr) => {
      resolve({ code: error ? (error.code ?? error.signal ?? 1) : 0, stdout, stderr, error });
    });
  });
}

export function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => { s.destroy(); resolve(true); });
    s.once("error", () => resolve(false));
  });
}

/** The PIDs of the direct children of `pid` (Linux), e.g. nginx's workers. */
function childPids(pid) {
  try {
    return fs.readdirSync(`/proc/${pid}/task`)
      .flatMap((task) => fs.readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").trim().split(/\s+/))
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/**
 * Stop a child process by its PID: `signal`, then SIGKILL after `graceMs` (its own children,
 * found by PID before that, too: a SIGKILLed nginx master leaves its workers behind). Bounded.
 */
export async function stopChild(proc, signal = "SIGTERM", graceMs = 8000) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  proc.kill(signal);
  const timer = setTimeout(() => {
    const children = childPids(proc.pid);
    proc.kill("SIGKILL");
    for (const child of children) {
      try { process.kill(child, "SIGKILL"); } catch { /* gone */ }
    }
  }, graceMs);
  await exited;
  clearTimeout(timer);
}

/** A child whose output is kept; `exited` resolves with its exit code. */
export function startChild(file, args, options = {}) {
  const proc = spawn(file, args, { stdio: ["ignore", "pipe", "pipe"], ...options });
  proc.output = "";
  proc.stdout.on("data", (c) => { proc.output += c; });
  proc.stderr.on("data", (c) => { proc.output += c; });
  proc.exited = new Promise((resolve) => proc.once("exit", (code, sig) => resolve(code ?? sig)));
  return proc;
}

/**
 * Render bench's templates for `bench` with render_bench.py into `out` (see its docstring):
 * nginx.conf, supervisor.conf, socketio-block.conf, … `nginxPort` sets the sites' nginx_port
 * (bench's port-based server block); leave it out for dns_multitenant benches. Returns
 * `{ dir, nginxConf }` (nginxConf: the text of the rendered nginx.conf). Bounded by `timeoutMs`
 * (the first run downloads bench's wheel into the git-ignored cache).
 */
export async function renderBench({ bench, benchName = path.basename(bench), sites, socketioPort, webserverPort,
  nginxPort, out, user = os.userInfo().username, realtimeBin, timeoutMs = 60000 }) {
  if (!fs.existsSync(RENDER_BENCH)) {
    throw new Error(`${RENDER_BENCH} is missing (it renders bench's real supervisor and nginx templates)`);
  }
  const r = await run("python3", [RENDER_BENCH, "--bench-dir", bench, "--bench-name", benchName,
    ...[sites].flat().flatMap((site) => ["--site", site]),
    "--socketio-port", String(socketioPort), "--webserver-port", String(webserverPort), "--out", out, "--user", user,
    ...(realtimeBin ? ["--realtime-bin", realtimeBin] : []), ...(nginxPort ? ["--nginx-port", String(nginxPort)] : [])],
  { timeoutMs, cwd: ROOT });
  if (r.code !== 0) throw new Error(`render_bench.py failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  return { dir: out, nginxConf: fs.readFileSync(path.join(out, "nginx.conf"), "utf8") };
}

/** `conf` (a rendered nginx.conf) with every `listen` moved to 127.0.0.1:`port`; `[::]` ones commented out. */
export function pinListen(conf, port) {
  let listens = 0;
  const text = conf.replace(/^([ \t]*)listen[ \t]+([^;]*);/gm, (_, indent, what) => {
    listens += 1;
    return what.startsWith("[")
      ? `${indent}# listen ${what}; (test: loopback only)`
      : `${indent}listen 127.0.0.1:${port};`;
  });
  return { text, listens };
}

/** The `listen` arguments of a config, in order (`["8080", "[::]:8080"]`). */
export function listenLines(conf) {
  return [...conf.matchAll(/^\s*listen\s+([^;]*);/gm)].map((m) => m[1]);
}

/**
 * A real nginx serving a rendered bench nginx.conf on 127.0.0.1:`port` (a free one unless
 * given). `dir` is its prefix (temp dirs, pid file, logs, `bench-nginx.conf` as included,
 * `nginx-main.conf`); a fresh temporary one, removed by stop(), unless given (then it is the
 * caller's and kept). Throws if nginx is not installed, refuses the config or does not listen
 * within `timeoutMs`.
 */
export class BenchNginx {
  static async start({ conf, port, dir, timeoutMs = 10000 }) {
    if (!NGINX) throw new Error("nginx is not installed (Debian: apt-get install -y nginx)");
    const nginx = new BenchNginx();
    nginx.port = port ?? (await freePort());
    nginx.dir = dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "bench-nginx-"));
    /** A directory stop() removes: the prefix when this made it. */
    nginx.removeOnStop = dir ? null : nginx.dir;
    try {
      await nginx.#start(conf, timeoutMs);
    } catch (err) {
      await nginx.stop().catch(() => {});
      throw err;
    }
    return nginx;
  }

  async #start(conf, timeoutMs) {
    const { text, listens } = pinListen(conf, this.port);
    this.listens = listens;
    if (listens < 1) throw new Error("the rendered nginx.conf has no listen line");
    for (const d of ["client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"]) fs.mkdirSync(path.join(this.dir, d), { recursive: true });
    this.conf = path.join(this.dir, "bench-nginx.conf");
    fs.writeFileSync(this.conf, text);
    this.mainConf = path.join(this.dir, "nginx-main.conf");
    this.errorLogFile = path.join(this.dir, "error.log");
    this.accessLogFile = path.join(this.dir, "access.log");
    fs.writeFileSync(this.mainConf, [
      "daemon off;",
      "master_process on;",
      "worker_processes 1;",
      // Workers run as this user so they can read a (0700) temp bench and write their temp dirs.
      ...(process.getuid?.() === 0 ? ["user root root;"] : []),
      `pid ${this.dir}/nginx.pid;`,
      `error_log ${this.errorLogFile} info;`,
      // A graceful stop does not wait for open websockets longer than this.
      "worker_shutdown_timeout 2s;",
      "events { worker_connections 512; }",
      "http {",
      "  types { text/html html; application/javascript js; application/json json; image/png png; }",
      "  default_type application/octet-stream;",
      `  access_log ${this.accessLogFile};`,
      `  client_body_temp_path ${this.dir}/client_body;`,
      `  proxy_temp_path ${this.dir}/proxy;`,
      `  fastcgi_temp_path ${this.dir}/fastcgi;`,
      `  uwsgi_temp_path ${this.dir}/uwsgi;`,
      `  scgi_temp_path ${this.dir}/scgi;`,
      `  include ${this.conf};`,
      "}",
      "",
    ].join("\n"));
    const args = ["-e", this.errorLogFile, "-p", this.dir, "-c", this.mainConf];
    const check = await run(NGINX, ["-t", ...args], { timeoutMs: 15000 });
    if (check.code !== 0) throw new Error(`nginx -t refused the config:\n${check.stderr}`);
    this.proc = startChild(NGINX, args);
    await waitFor(async () => {
      if (this.proc.exitCode !== null) throw new Error(`nginx exited:\n${this.proc.output}`);
      return canConnect(this.port);
    }, { timeoutMs, what: "nginx to listen" });
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  accessLog() {
    try { return fs.readFileSync(this.accessLogFile, "utf8"); } catch { return ""; }
  }

  errorLog() {
    try { return fs.readFileSync(this.errorLogFile, "utf8"); } catch { return ""; }
  }

  /** SIGQUIT (graceful), SIGKILL after `graceMs`; removes the prefix if this created it. */
  async stop({ graceMs = 5000 } = {}) {
    await stopChild(this.proc, "SIGQUIT", graceMs);
    if (this.removeOnStop) fs.rmSync(this.removeOnStop, { recursive: true, force: true });
  }
}

/**
 * Render bench's nginx.conf for `bench` (port-based server block for `site`, whose
 * `X-Frappe-Site-Name` is the site) and run it on a free loopback port. `socketioPort` is the
 * server's port; `webserverPort` is where nginx sends everything outside `/socket.io` (the
 * upstream need not listen). Resolves to a BenchNginx (`rendered` is the rendered text);
 * stop() removes everything it wrote.
 */
export async function startBenchNginx({ bench, site, socketioPort, webserverPort, timeoutMs = 60000 }) {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "bench-nginx-"));
  try {
    const { nginxConf } = await renderBench({ bench, sites: [site], socketioPort, webserverPort, nginxPort: port,
      out: path.join(dir, "rendered"), timeoutMs });
    const nginx = await BenchNginx.start({ conf: nginxConf, port, dir: path.join(dir, "nginx") });
    nginx.rendered = nginxConf;
    nginx.removeOnStop = dir;
    return nginx;
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
