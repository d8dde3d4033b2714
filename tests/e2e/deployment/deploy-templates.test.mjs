// Bench's own deployment templates, rendered, and the swap scripts run against them.
//
// tests/support/render_bench.py renders frappe-bench 5.31.1's supervisor.conf, nginx.conf and
// node-socketio systemd unit (fetched from PyPI with pip on first use, cached in .cache/) for
// a throwaway bench. This file checks what frappe-realtime relies on in them (the socketio
// program block and its group, the nginx `location /socket.io` block), has nginx and
// supervisor parse them, round-trips supervisor/swap.sh and systemd/swap.sh on them, and runs
// the binary under supervisord from the rendered block.
//
// Every wait is bounded; everything listens on loopback; everything started is stopped.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { BINARY, freePort, waitFor, ROOT } from "../../support/harness.mjs";

const RENDER = path.join(ROOT, "tests/support/render_bench.py");
const SUPERVISOR_SWAP = path.join(ROOT, "supervisor/swap.sh");
const SYSTEMD_SWAP = path.join(ROOT, "systemd/swap.sh");
const PYTHON = process.env.PYTHON ?? "python3";
const NGINX = ["/usr/sbin/nginx", "nginx"].find((c) => !spawnSync(c, ["-v"], { timeout: 10000 }).error);

const BENCH = "rt-bench";
const SITE = "s1.localhost";
const USER = os.userInfo().username;

let tmp;
let benchDir;
let out;
let socketioPort;
let webserverPort;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

function run(cmd, args, { env = {}, timeout = 60000, cwd = ROOT } = {}) {
  const r = spawnSync(cmd, args, { cwd, env: { ...process.env, ...env }, encoding: "utf8", timeout });
  if (r.error) throw new Error(`${cmd} ${args.join(" ")}: ${r.error.message}`);
  return r;
}

function mustRun(cmd, args, opts) {
  const r = run(cmd, args, opts);
  assert.equal(r.status, 0, `${cmd} ${args.join(" ")} exited ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  return r;
}

function makeBench(dir, { common = {}, site = {}, version = "15.40.0" } = {}) {
  for (const d of ["sites/" + SITE, "apps/frappe/frappe", "logs", "config"]) fs.mkdirSync(path.join(dir, d), { recursive: true });
  fs.writeFileSync(path.join(dir, "sites/common_site_config.json"), JSON.stringify(common, null, 1));
  fs.writeFileSync(path.join(dir, "sites", SITE, "site_config.json"), JSON.stringify(site));
  fs.writeFileSync(path.join(dir, "apps/frappe/frappe/__init__.py"), `__version__ = "${version}"\n`);
  return dir;
}

function render(bench, outDir, extra = []) {
  mustRun(PYTHON, [RENDER, "--bench-dir", bench, "--bench-name", path.basename(bench), "--site", SITE,
    "--socketio-port", String(socketioPort), "--webserver-port", String(webserverPort),
    "--out", outDir, "--user", USER, ...extra], { timeout: 300000 });
}

/** supervisor-style ini: { "program:x": { key: value } }, first `=` splits. */
function parseIni(text) {
  const sections = {};
  let cur = null;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith(";") || line.startsWith("#")) continue;
    const m = /^\[(.+)\]$/.exec(line);
    if (m) {
      cur = sections[m[1]] = {};
      continue;
    }
    const eq = line.indexOf("=");
    if (cur && eq > 0) cur[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
  }
  return sections;
}

/** The `{ … }` body following the first match of `head` (brace-matched). */
function block(text, head) {
  const at = text.search(head);
  assert.ok(at >= 0, `no ${head} in:\n${text}`);
  const open = text.indexOf("{", at);
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    if (text[i] === "{") depth++;
    else if (text[i] === "}" && --depth === 0) return text.slice(open + 1, i);
  }
  throw new Error(`unbalanced braces after ${head}`);
}

/** Directives of an nginx block body (top level only), whitespace-normalised, without `;`. */
function directives(body) {
  return body
    .split(";")
    .map((d) => d.replace(/\s+/g, " ").trim())
    .filter(Boolean);
}

function nginxTest(serverConf, dir) {
  fs.mkdirSync(dir, { recursive: true });
  const main = path.join(dir, "nginx.conf");
  const temps = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    .map((t) => `  ${t}_temp_path ${path.join(dir, t)};`)
    .join("\n");
  fs.writeFileSync(main, `pid ${path.join(dir, "nginx.pid")};
error_log ${path.join(dir, "error.log")};
events {}
http {
  access_log ${path.join(dir, "access.log")};
${temps}
  include ${serverConf};
}
`);
  return run(NGINX, ["-t", "-q", "-p", dir, "-e", path.join(dir, "error.log"), "-c", main]);
}

function get(port, urlPath, timeoutMs = 2000) {
  return new Promise((resolve) => {
    const req = http.get({ host: "127.0.0.1", port, path: urlPath, timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(null));
  });
}

/** Python that can import supervisor (the one in supervisord's shebang), or null. */
function supervisorPython() {
  const which = run("sh", ["-c", "command -v supervisord"]);
  const candidates = [];
  if (which.status === 0) {
    const first = fs.readFileSync(which.stdout.trim(), "utf8").split("\n")[0];
    const m = /^#!\s*(\S+)(?:\s+(\S+))?/.exec(first);
    if (m) candidates.push(m[1].endsWith("/env") && m[2] ? m[2] : m[1]);
  }
  candidates.push("/usr/bin/python3", PYTHON);
  return candidates.find((py) => run(py, ["-c", "import supervisor.options"]).status === 0) ?? null;
}

// ---------------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------------

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "deploy-templates-"));
  socketioPort = await freePort();
  webserverPort = await freePort();
  const deadRedis = await freePort(); // nothing listens: the service keeps serving and retries
  benchDir = makeBench(path.join(tmp, BENCH), {
    common: { socketio_port: socketioPort, webserver_port: webserverPort, redis_queue: `redis://127.0.0.1:${deadRedis}` },
  });
  out = path.join(tmp, "out");
  render(benchDir, out, ["--realtime-bin", `${BINARY} --host 127.0.0.1`]);
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Rendered files
// ---------------------------------------------------------------------------------------------

test("render_bench.py writes the four files of its contract", () => {
  for (const f of ["supervisor.conf", "nginx.conf", `${BENCH}-node-socketio.service`, "socketio-block.conf"]) {
    const p = path.join(out, f);
    assert.ok(fs.existsSync(p) && fs.statSync(p).size > 0, `${f} missing or empty`);
  }
});

test("render_bench.py fails clearly on a missing bench directory", () => {
  const r = run(PYTHON, [RENDER, "--bench-dir", path.join(tmp, "nope"), "--bench-name", "x", "--site", SITE,
    "--socketio-port", "1", "--webserver-port", "2", "--out", path.join(tmp, "nope-out")]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /render_bench: error: --bench-dir .*nope: not a directory/);
});

test("supervisor.conf: the node-socketio program runs in the bench dir, logs to its two files, in <bench>-web", () => {
  const ini = parseIni(fs.readFileSync(path.join(out, "supervisor.conf"), "utf8"));
  const prog = ini[`program:${BENCH}-node-socketio`];
  assert.ok(prog, `no [program:${BENCH}-node-socketio] in ${Object.keys(ini).join(", ")}`);
  assert.equal(prog.directory, benchDir);
  assert.equal(prog.stdout_logfile, `${benchDir}/logs/node-socketio.log`);
  assert.equal(prog.stderr_logfile, `${benchDir}/logs/node-socketio.error.log`);
  assert.equal(prog.user, USER);
  assert.equal(prog.autorestart, "true");
  assert.match(prog.command, /\bsocketio\b/, "bench's own command is left in the whole file");
  const group = ini[`group:${BENCH}-web`];
  assert.ok(group, `no [group:${BENCH}-web]`);
  assert.deepEqual(group.programs.split(",").map((s) => s.trim()).sort(), [`${BENCH}-frappe-web`, `${BENCH}-node-socketio`]);
});

test("socketio-block.conf is the rendered block with only command= swapped", () => {
  const whole = fs.readFileSync(path.join(out, "supervisor.conf"), "utf8").split("\n");
  const start = whole.indexOf(`[program:${BENCH}-node-socketio]`);
  assert.ok(start >= 0);
  let end = start + 1;
  while (end < whole.length && whole[end].trim() && !whole[end].startsWith("[")) end++;
  const expected = whole.slice(start, end).map((l) => (l.startsWith("command=") ? `command=${BINARY} --host 127.0.0.1` : l));
  assert.equal(fs.readFileSync(path.join(out, "socketio-block.conf"), "utf8"), expected.join("\n") + "\n");
});

test("nginx.conf: /socket.io goes to the <bench>-socketio-server upstream with the headers frappe-realtime relies on", () => {
  const conf = fs.readFileSync(path.join(out, "nginx.conf"), "utf8");
  assert.deepEqual(directives(block(conf, new RegExp(`upstream ${BENCH}-socketio-server\\s*\\{`))),
    [`server 127.0.0.1:${socketioPort} fail_timeout=0`]);
  const loc = directives(block(conf, /location \/socket\.io\s*\{/));
  assert.deepEqual(loc, [
    "proxy_http_version 1.1",
    "proxy_set_header Upgrade $http_upgrade",
    'proxy_set_header Connection "upgrade"',
    `proxy_set_header X-Frappe-Site-Name ${SITE}`,
    "proxy_set_header Origin $scheme://$http_host",
    "proxy_set_header Host $host",
    `proxy_pass http://${BENCH}-socketio-server`,
  ]);
});

test("nginx -t accepts the rendered nginx.conf", { skip: !NGINX && "nginx is not installed" }, () => {
  const r = nginxTest(path.join(out, "nginx.conf"), path.join(tmp, "nginx"));
  assert.equal(r.status, 0, `nginx -t failed:\n${r.stderr}`);
  // The check has teeth: an unknown upstream in proxy_pass is refused.
  const bad = path.join(tmp, "nginx-bad.conf");
  fs.writeFileSync(bad, fs.readFileSync(path.join(out, "nginx.conf"), "utf8")
    .replace(`proxy_pass http://${BENCH}-socketio-server;`, "proxy_pass http://no-such-upstream;"));
  assert.notEqual(nginxTest(bad, path.join(tmp, "nginx-bad")).status, 0);
});

test("nginx.conf with dns_multitenant and a custom domain: X-Frappe-Site-Name is the domain→site map", { skip: !NGINX && "nginx is not installed" }, () => {
  const dnsBench = makeBench(path.join(tmp, "dns-bench"), {
    common: { dns_multitenant: true, socketio_port: socketioPort },
    site: { domains: ["erp.example.com"] },
  });
  const dnsOut = path.join(tmp, "dns-out");
  render(dnsBench, dnsOut);
  const conf = fs.readFileSync(path.join(dnsOut, "nginx.conf"), "utf8");
  const map = /map \$host (\$site_name_[a-z]+) \{([^}]*)\}/.exec(conf);
  assert.ok(map, `no domain map in:\n${conf}`);
  assert.ok(directives(map[2]).includes(`erp.example.com ${SITE}`), map[2]);
  const loc = directives(block(conf, /location \/socket\.io\s*\{/));
  assert.ok(loc.includes(`proxy_set_header X-Frappe-Site-Name ${map[1]}`), loc.join("\n"));
  assert.ok(loc.includes("proxy_set_header Origin $scheme://$http_host"));
  const r = nginxTest(path.join(dnsOut, "nginx.conf"), path.join(tmp, "nginx-dns"));
  assert.equal(r.status, 0, `nginx -t failed:\n${r.stderr}`);
});

test("systemd unit: bench's node-socketio service runs in the bench dir and logs to its two files", () => {
  const unit = fs.readFileSync(path.join(out, `${BENCH}-node-socketio.service`), "utf8");
  const lines = unit.split("\n").map((l) => l.trim());
  assert.ok(lines.includes(`WorkingDirectory=${benchDir}`), unit);
  assert.ok(lines.includes(`StandardOutput=file:${benchDir}/logs/node-socketio.log`), unit);
  assert.ok(lines.includes(`StandardError=file:${benchDir}/logs/node-socketio.error.log`), unit);
  assert.ok(lines.includes(`PartOf=${BENCH}-web.target`), unit);
  assert.equal(lines.filter((l) => l.startsWith("ExecStart=")).length, 1, unit);
});

// ---------------------------------------------------------------------------------------------
// supervisor/swap.sh
// ---------------------------------------------------------------------------------------------

/** A bench with the rendered supervisor.conf and the test bench's configuration (swap.sh runs
 * the binary's --check-config on it before it changes anything). */
function swapBench(name) {
  const dir = path.join(tmp, name);
  fs.mkdirSync(path.join(dir, "config"), { recursive: true });
  fs.copyFileSync(path.join(out, "supervisor.conf"), path.join(dir, "config/supervisor.conf"));
  for (const part of ["sites", "apps"]) {
    fs.cpSync(path.join(benchDir, part), path.join(dir, part), { recursive: true });
  }
  return dir;
}

test("supervisor/swap.sh: apply changes only command=, is idempotent, and rollback restores the file byte for byte", () => {
  const dir = swapBench("swap-roundtrip");
  const conf = path.join(dir, "config/supervisor.conf");
  const original = fs.readFileSync(conf);

  const a = mustRun(SUPERVISOR_SWAP, ["apply", dir, BINARY]);
  assert.match(a.stdout, /supervisorctl reread && sudo supervisorctl update/);
  const applied = fs.readFileSync(conf, "utf8");
  const before = original.toString().split("\n");
  const afterLines = applied.split("\n");
  assert.equal(afterLines.length, before.length);
  const changed = before.map((l, i) => [l, afterLines[i]]).filter(([x, y]) => x !== y);
  assert.equal(changed.length, 1, `changed lines: ${JSON.stringify(changed)}`);
  assert.match(changed[0][0], /^command=.*socketio/);
  assert.equal(changed[0][1], `command=${BINARY}`);
  assert.equal(parseIni(applied)[`program:${BENCH}-node-socketio`].command, BINARY);
  assert.deepEqual(fs.readFileSync(`${conf}.node-socketio.bak`), original, "backup is the original file");

  const again = mustRun(SUPERVISOR_SWAP, ["apply", dir, BINARY]);
  assert.match(again.stdout, /nothing to do/);
  assert.equal(fs.readFileSync(conf, "utf8"), applied, "apply twice = apply once");

  mustRun(SUPERVISOR_SWAP, ["rollback", dir]);
  assert.deepEqual(fs.readFileSync(conf), original, "rollback restores the file byte for byte");
  const again2 = mustRun(SUPERVISOR_SWAP, ["rollback", dir]);
  assert.match(again2.stdout, /nothing to do/);
  assert.deepEqual(fs.readFileSync(conf), original);
});

test("supervisor/swap.sh: default binary; re-apply after `bench setup supervisor` rewrote the file", () => {
  const dir = swapBench("swap-regenerated");
  const conf = path.join(dir, "config/supervisor.conf");
  const original = fs.readFileSync(conf);
  mustRun(SUPERVISOR_SWAP, ["apply", dir]);
  assert.equal(parseIni(fs.readFileSync(conf, "utf8"))[`program:${BENCH}-node-socketio`].command, "/usr/local/bin/frappe-realtime");
  // Switching binaries keeps the Node command in the backup.
  mustRun(SUPERVISOR_SWAP, ["apply", dir, BINARY]);
  assert.deepEqual(fs.readFileSync(`${conf}.node-socketio.bak`), original);
  // bench rewrites the file (here: with one more worker setting); apply takes a fresh backup.
  const regenerated = original.toString().replace("startretries=10", "startretries=11");
  fs.writeFileSync(conf, regenerated);
  mustRun(SUPERVISOR_SWAP, ["apply", dir, BINARY]);
  assert.equal(fs.readFileSync(`${conf}.node-socketio.bak`, "utf8"), regenerated);
  mustRun(SUPERVISOR_SWAP, ["rollback", dir]);
  assert.equal(fs.readFileSync(conf, "utf8"), regenerated);
});

test("supervisor/swap.sh: clear errors for a missing file, a missing block, and no backup", () => {
  const missing = path.join(tmp, "swap-missing");
  fs.mkdirSync(missing);
  let r = run(SUPERVISOR_SWAP, ["apply", missing]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /config\/supervisor\.conf not found/);

  const noBlock = swapBench("swap-no-block");
  const conf = path.join(noBlock, "config/supervisor.conf");
  const text = fs.readFileSync(conf, "utf8").replace(`[program:${BENCH}-node-socketio]`, `[program:${BENCH}-something-else]`);
  fs.writeFileSync(conf, text);
  r = run(SUPERVISOR_SWAP, ["apply", noBlock]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /has no \[program:<bench>-node-socketio\] block/);
  assert.equal(fs.readFileSync(conf, "utf8"), text, "a failed apply leaves the file alone");
  assert.ok(!fs.existsSync(`${conf}.node-socketio.bak`));

  r = run(SUPERVISOR_SWAP, ["rollback", swapBench("swap-no-backup")]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /no backup .*nothing to roll back/);

  r = run(SUPERVISOR_SWAP, ["frobnicate", noBlock]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /usage:/);
});

test("supervisor/swap.sh: a bench the binary's --check-config rejects is not swapped", () => {
  const dir = swapBench("swap-bad-config");
  const common = path.join(dir, "sites/common_site_config.json");
  fs.writeFileSync(common, JSON.stringify({ ...JSON.parse(fs.readFileSync(common, "utf8")), socketio_port: "abc" }));
  const conf = path.join(dir, "config/supervisor.conf");
  const before = fs.readFileSync(conf);
  const r = run(SUPERVISOR_SWAP, ["apply", dir, BINARY]);
  assert.equal(r.status, 1);
  assert.ok(r.stderr.includes(`${common}: key \`socketio_port\``), r.stderr);
  assert.match(r.stderr, /--check-config` failed .*nothing changed/);
  assert.deepEqual(fs.readFileSync(conf), before);
  assert.ok(!fs.existsSync(`${conf}.node-socketio.bak`));
});

test("supervisor parses the swapped file: the socketio program runs frappe-realtime in the bench dir, in <bench>-web", (t) => {
  const py = supervisorPython();
  if (!py) return t.skip("supervisor (python3 -m supervisor) is not installed");
  const dir = swapBench("swap-parsed");
  mustRun(SUPERVISOR_SWAP, ["apply", dir, BINARY]);
  const main = path.join(tmp, "supervisord-parse.conf");
  fs.writeFileSync(main, `[supervisord]
logfile=${path.join(tmp, "supervisord-parse.log")}
pidfile=${path.join(tmp, "supervisord-parse.pid")}
[include]
files=${path.join(dir, "config/supervisor.conf")}
`);
  // supervisor's own config loader (what `supervisord -c` runs before starting anything).
  const script = `
import json, sys
from supervisor.options import ServerOptions
o = ServerOptions()
o.realize(args=["-c", sys.argv[1]])
print(json.dumps({g.name: {p.name: {"command": p.command, "directory": p.directory,
  "stdout": p.stdout_logfile, "stderr": p.stderr_logfile} for p in g.process_configs}
  for g in o.process_group_configs}))
`;
  const r = mustRun(py, ["-c", script, main]);
  const groups = JSON.parse(r.stdout.trim().split("\n").pop());
  const prog = groups[`${BENCH}-web`]?.[`${BENCH}-node-socketio`];
  assert.ok(prog, `no ${BENCH}-node-socketio in group ${BENCH}-web: ${r.stdout}`);
  assert.deepEqual(prog, {
    command: BINARY,
    directory: benchDir,
    stdout: `${benchDir}/logs/node-socketio.log`,
    stderr: `${benchDir}/logs/node-socketio.error.log`,
  });
});

test("supervisord runs frappe-realtime from the rendered block: it finds the bench through directory=", async (t) => {
  const which = run("sh", ["-c", "command -v supervisord"]);
  if (which.status !== 0) return t.skip("supervisord is not installed");
  const svDir = path.join(tmp, "supervisord-run");
  fs.mkdirSync(svDir);
  const main = path.join(svDir, "supervisord.conf");
  fs.writeFileSync(main, `[supervisord]
nodaemon=true
logfile=${path.join(svDir, "supervisord.log")}
pidfile=${path.join(svDir, "supervisord.pid")}
childlogdir=${svDir}
[include]
files=${path.join(out, "socketio-block.conf")}
`);
  const proc = spawn(which.stdout.trim(), ["-n", "-c", main], { cwd: tmp, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  proc.stdout.on("data", (d) => (output += d));
  proc.stderr.on("data", (d) => (output += d));
  const exited = new Promise((resolve) => proc.on("exit", resolve));
  try {
    await waitFor(async () => (await get(socketioPort, "/health")) === 200, {
      timeoutMs: 15000, everyMs: 100, what: `frappe-realtime under supervisord on 127.0.0.1:${socketioPort}/health`,
    }).catch((e) => {
      const log = (f) => (fs.existsSync(f) ? fs.readFileSync(f, "utf8") : "(none)");
      throw new Error(`${e.message}\nsupervisord:\n${output}\n${log(path.join(svDir, "supervisord.log"))}\n` +
        `node-socketio.error.log:\n${log(path.join(benchDir, "logs/node-socketio.error.log"))}`);
    });
    // No Redis answers, so not ready: the bench's redis_queue was read from directory=.
    assert.equal(await get(socketioPort, "/ready"), 503);
    const log = await waitFor(() => {
      const f = path.join(benchDir, "logs/node-socketio.log");
      const text = fs.existsSync(f) ? fs.readFileSync(f, "utf8") : "";
      return text.includes(SITE) && text;
    }, { timeoutMs: 5000, what: "the site in logs/node-socketio.log" });
    assert.match(log, new RegExp(`serving site.*${SITE.replace(".", "\\.")}`));
  } finally {
    proc.kill("SIGTERM");
    let timer;
    const code = await Promise.race([exited, new Promise((r) => (timer = setTimeout(() => r("timeout"), 10000)))]);
    clearTimeout(timer);
    if (code === "timeout") {
      proc.kill("SIGKILL");
      await exited;
    }
  }
  // supervisord stopped its child too.
  await waitFor(async () => (await get(socketioPort, "/health", 500)) === null, {
    timeoutMs: 10000, everyMs: 100, what: "frappe-realtime to stop with supervisord",
  });
});

// ---------------------------------------------------------------------------------------------
// systemd/swap.sh
// ---------------------------------------------------------------------------------------------

/** systemd-analyze, if it can verify a trivial unit here; else null. */
function systemdAnalyze(dir) {
  const probe = path.join(dir, "probe");
  fs.mkdirSync(probe, { recursive: true });
  fs.writeFileSync(path.join(probe, "rt-probe.service"), "[Service]\nExecStart=/bin/true\n");
  const r = spawnSync("systemd-analyze", ["verify", path.join(probe, "rt-probe.service")],
    { env: { ...process.env, SYSTEMD_UNIT_PATH: `${probe}:` }, encoding: "utf8", timeout: 20000 });
  return !r.error && r.status === 0 ? "systemd-analyze" : null;
}

function verifyUnit(unitDir, unitName) {
  return spawnSync("systemd-analyze", ["verify", path.join(unitDir, unitName)],
    { env: { ...process.env, SYSTEMD_UNIT_PATH: `${unitDir}:` }, encoding: "utf8", timeout: 20000 });
}

test("systemd/swap.sh: a drop-in resets ExecStart= to the binary; idempotent; rollback removes it", (t) => {
  const unitName = `${BENCH}-node-socketio.service`;
  const unitDir = path.join(tmp, "systemd");
  fs.mkdirSync(unitDir);
  fs.copyFileSync(path.join(out, unitName), path.join(unitDir, unitName));
  const env = { SYSTEMD_DIR: unitDir };
  const dropin = path.join(unitDir, `${unitName}.d`, "frappe-realtime.conf");

  const a = mustRun(SYSTEMD_SWAP, ["apply", benchDir, BINARY], { env });
  assert.match(a.stdout, new RegExp(`systemctl daemon-reload && sudo systemctl restart ${unitName}`));
  const text = fs.readFileSync(dropin, "utf8");
  const lines = text.split("\n").filter((l) => l && !l.startsWith("#"));
  assert.deepEqual(lines, ["[Service]", "ExecStart=", `ExecStart=${BINARY}`]);

  assert.match(mustRun(SYSTEMD_SWAP, ["apply", benchDir, BINARY], { env }).stdout, /nothing to do/);
  assert.equal(fs.readFileSync(dropin, "utf8"), text);
  assert.equal(fs.readFileSync(path.join(unitDir, unitName), "utf8"),
    fs.readFileSync(path.join(out, unitName), "utf8"), "bench's unit is untouched");

  const analyze = systemdAnalyze(tmp);
  if (analyze) {
    const ok = verifyUnit(unitDir, unitName);
    assert.equal(ok.status, 0, `systemd-analyze verify with the drop-in:\n${ok.stderr}`);
    // It reads the drop-in: without the reset line systemd refuses two ExecStart= lines.
    const noReset = path.join(tmp, "systemd-noreset");
    fs.mkdirSync(path.join(noReset, `${unitName}.d`), { recursive: true });
    fs.copyFileSync(path.join(unitDir, unitName), path.join(noReset, unitName));
    fs.writeFileSync(path.join(noReset, `${unitName}.d`, "x.conf"), `[Service]\nExecStart=${BINARY}\n`);
    assert.notEqual(verifyUnit(noReset, unitName).status, 0);
  } else {
    t.diagnostic("systemd-analyze unavailable: drop-in not verified by systemd");
  }

  mustRun(SYSTEMD_SWAP, ["rollback", benchDir], { env });
  assert.ok(!fs.existsSync(path.dirname(dropin)), "drop-in directory removed");
  assert.match(mustRun(SYSTEMD_SWAP, ["rollback", benchDir], { env }).stdout, /nothing to do/);
  assert.deepEqual(fs.readdirSync(unitDir), [unitName]);

  const r = run(SYSTEMD_SWAP, ["apply", benchDir, BINARY], { env: { SYSTEMD_DIR: path.join(tmp, "no-units") } });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, new RegExp(`${unitName} not found`));
  const rel = run(SYSTEMD_SWAP, ["apply", benchDir, "frappe-realtime"], { env });
  assert.notEqual(rel.status, 0);
  assert.match(rel.stderr, /must be an absolute path/);
});
