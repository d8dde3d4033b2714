// `frappe-realtime --check-config` (README, "Configuration"): like `nginx -t`, it prints the
// effective configuration with where each key came from, secrets masked, and exits 0; or 2
// naming the file and key (or handler file and line) at fault. Nothing is started: no Redis,
// no listener. Each run is bounded by spawnSync's timeout.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { BINARY, makeBench } from "../../support/harness.mjs";

/** Run the check in `bench` with extra environment; its exit code and output. */
function check(bench, env = {}) {
  const run = spawnSync(BINARY, ["--check-config"], {
    cwd: bench, env: { ...process.env, ...env }, encoding: "utf8", timeout: 20000,
  });
  return { code: run.status, out: run.stdout, err: run.stderr };
}

test("a good bench: the effective configuration, each key's origin, secrets masked, exit 0", () => {
  const bench = makeBench({
    apps: ["helpdesk"],
    common: { redis_queue: "redis://:hunter2secret@127.0.0.1:11000", realtime_admin_token: "token-0123456789abcdef" },
  });
  try {
    const common = path.join(bench, "sites/common_site_config.json");
    const { code, out, err } = check(bench, { FRAPPE_SOCKETIO_PORT: "9123" });
    assert.equal(code, 0, err);
    assert.match(out, /listen: Port\(\s*9123,?\s*\)/);
    assert.match(out, /^socketio_port\s+"9123"\s+\(environment variable FRAPPE_SOCKETIO_PORT\)  \[restart\]$/m);
    assert.ok(out.includes(`redis_queue`) && out.includes(`(${common})`), out);
    assert.match(out, /^realtime_admin_token\s+<redacted>/m);
    assert.match(out, /^realtime_recovery_seconds\s+default  \[restart\]$/m, "unset keys are listed too");
    assert.match(out, /^realtime_callback_timeout\s+default$/m, "a key SIGHUP applies has no [restart]");
    assert.match(out, /^helpdesk \(the built-in handlers of helpdesk\): 6 handlers$/m);
    assert.match(out, /configuration check is successful/);
    for (const secret of ["hunter2secret", "token-0123456789abcdef"]) {
      assert.ok(!out.includes(secret) && !err.includes(secret), `${secret} printed`);
    }
  } finally {
    fs.rmSync(bench, { recursive: true, force: true });
  }
});

test("a bad value: exit 2, naming the file and the key", () => {
  const bench = makeBench({ common: { redis_queue: "redis://127.0.0.1:11000", realtime_callback_timeout: "soon" } });
  try {
    const { code, out, err } = check(bench);
    assert.equal(code, 2, out);
    const common = path.join(bench, "sites/common_site_config.json");
    assert.ok(err.includes(`${common}: key \`realtime_callback_timeout\``), err);
    assert.match(err, /configuration check failed/);
  } finally {
    fs.rmSync(bench, { recursive: true, force: true });
  }
});

test("a bad app handler file: exit 2, naming the file and the line", () => {
  const bench = makeBench({ apps: ["myapp"], common: { redis_queue: "redis://127.0.0.1:11000" } });
  try {
    const file = path.join(bench, "apps/myapp/realtime/handlers.json");
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, '{\n "app": "myapp",\n "handlers": [\n  {"event": "e", "join": "r:{nope}"}\n ]\n}\n');
    const { code, out, err } = check(bench);
    assert.equal(code, 2, out);
    assert.ok(err.includes(`${file}:4: handler of \`e\``), err);
  } finally {
    fs.rmSync(bench, { recursive: true, force: true });
  }
});
