// SIGHUP reloads the bench's configuration where that is safe (README "Configuration"):
// live keys take effect for the next handshake, keys that need a restart are named in the
// log and keep their running value, and a broken file leaves the running configuration.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { startStack, waitFor, refusal, SITES, ALICE_SID } from "../../support/harness.mjs";

let stack;
before(async () => { stack = await startStack(); });
after(async () => { await stack?.stop(); });

const configFile = () => path.join(stack.bench, "sites/common_site_config.json");
const readConfig = () => JSON.parse(fs.readFileSync(configFile(), "utf8"));
const writeConfig = (config) => fs.writeFileSync(configFile(), JSON.stringify(config));

/** Send SIGHUP and wait until the server logged the outcome `marker` one more time. */
async function hangup(marker) {
  const count = () => stack.server.output.split(marker).length;
  const before = count();
  process.kill(stack.server.proc.pid, "SIGHUP");
  await waitFor(() => count() > before, { what: `"${marker}" in the log` });
}

// A client reaching us as 127.0.0.1 without X-Frappe-Site-Name resolves to default_site.
const localClient = () => stack.socket({ sid: ALICE_SID, siteHeader: false });

test("default_site set after start applies after SIGHUP, without a restart", async () => {
  assert.equal(await refusal(localClient()), "Invalid namespace");
  writeConfig({ ...readConfig(), default_site: SITES[0] });
  await hangup("configuration reloaded");
  await stack.connect({ sid: ALICE_SID, siteHeader: false });
  assert.equal(stack.server.proc.exitCode, null);
});

test("a changed port is named as needing a restart and the server stays on its port", async () => {
  writeConfig({ ...readConfig(), socketio_port: stack.port + 1 });
  await hangup("takes effect at the next restart");
  assert.match(stack.server.output, /next restart key="socketio_port"/);
  await stack.connect({ sid: ALICE_SID });
});

test("a move from Frappe 16 to 14 needs a restart: the site namespaces stay", async () => {
  writeConfig({ ...readConfig(), realtime_frappe_version: 14 });
  await hangup("takes effect at the next restart");
  assert.match(stack.server.output, /next restart key="realtime_frappe_version"/);
  await stack.connect({ sid: ALICE_SID }); // on /<site>, which Frappe 14 would not have
  const { realtime_frappe_version: _, ...rest } = readConfig();
  writeConfig(rest);
  await hangup("configuration reloaded");
});

test("a reloaded realtime_callback_timeout also sets the time a client has to send CONNECT", async () => {
  // Start-up default: 10 s for Frappe's answer, plus 5 s to send CONNECT. After the reload:
  // 1 s plus 5 s. A session that never sends CONNECT must be closed on the new clock.
  writeConfig({ ...readConfig(), realtime_callback_timeout: 1 });
  await hangup("configuration reloaded");
  const base = `http://127.0.0.1:${stack.port}/socket.io/?EIO=4&transport=polling`;
  const opened = Date.now();
  const handshake = await (await fetch(base)).text();
  const { sid } = JSON.parse(handshake.slice(1));
  // Nothing is queued before the first ping (25 s), so this poll returns when the session is
  // closed: with a CLOSE packet, or refused as unknown.
  const poll = await fetch(`${base}&sid=${sid}`, { signal: AbortSignal.timeout(20_000) });
  const body = await poll.text();
  const closedAfter = Date.now() - opened;
  assert.ok(poll.status === 400 || body.includes("1"), `closed (HTTP ${poll.status}: ${body})`);
  assert.ok(closedAfter >= 5_000 && closedAfter < 12_000,
    `closed ${closedAfter} ms after it opened: the 6 s of the reloaded timeout, not the 15 s of the start`);
});

test("a broken file leaves the running configuration in place", async () => {
  fs.writeFileSync(configFile(), "{ not json");
  await hangup("configuration not reloaded");
  assert.match(stack.server.output, /common_site_config\.json is not valid JSON/);
  await stack.connect({ sid: ALICE_SID, siteHeader: false }); // default_site still applies
});
