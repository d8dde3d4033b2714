// Observability (docs/metrics.md is the contract): the Prometheus series move as real traffic
// says they should, /health and /ready report the process and the Redis link, the exposition is
// valid for promtool, `--metrics-addr`, `--no-metrics`, `--log-format json`, and neither logs
// nor labels carry secrets or client-chosen strings.
//
// Pattern: scrape, act, wait (bounded) until the metric the action must move has moved, then
// assert the exact deltas of it and its neighbours. Counters are global per process, so every
// describe has its own stack and the tests in a file run one after another.
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import {
  startStack, Redis, addSite, freePort, waitFor, nextEvent, connected, refusal, SITES, ALICE,
  ALICE_SID, BOB, BOB_SID, DAVE_TOKEN, unique, DAVE,
} from "../../support/harness.mjs";

const [SITE, OTHER_SITE] = SITES;
const PROMTOOL = "/usr/bin/promtool";

// Series names (docs/metrics.md).
const M = {
  sockets: "frappe_realtime_sockets",
  sites: "frappe_realtime_sites",
  engineSessions: "frappe_realtime_engine_sessions_opened_total",
  handshakes: "frappe_realtime_handshakes_total",
  disconnects: "frappe_realtime_disconnects_total",
  reconnects: "frappe_realtime_reconnects_total",
  reconnectDelayCount: "frappe_realtime_reconnect_delay_seconds_count",
  reconnectDelaySum: "frappe_realtime_reconnect_delay_seconds_sum",
  frappeRequests: "frappe_realtime_frappe_requests_total",
  frappeDurationCount: "frappe_realtime_frappe_request_duration_seconds_count",
  frappeInFlight: "frappe_realtime_frappe_requests_in_flight",
  redisMessages: "frappe_realtime_redis_messages_received_total",
  routed: "frappe_realtime_events_routed_total",
  dropped: "frappe_realtime_events_dropped_total",
  packetsSent: "frappe_realtime_packets_sent_total",
  sentBytes: "frappe_realtime_sent_bytes_total",
  deliveryCount: "frappe_realtime_delivery_duration_seconds_count",
  redisConnected: "frappe_realtime_redis_connected",
  redisReconnects: "frappe_realtime_redis_reconnects_total",
  redisLastMessage: "frappe_realtime_redis_last_message_timestamp_seconds",
};

const HANDSHAKE_OUTCOMES = ["ok", "invalid_namespace", "invalid_origin", "missing_credentials",
  "no_authentication_method", "unauthorized", "auth_error", "timeout"];
const DROP_REASONS = ["not_json", "not_an_object", "no_event", "reserved_event", "bad_room",
  "room_without_namespace", "unknown_site", "no_listeners"];

// ---------------------------------------------------------------------------------------------
// Helpers: Prometheus text, scrapes, deltas
// ---------------------------------------------------------------------------------------------

/** `name{a="x",b="y"}` with labels sorted, the key of one sample. */
function sampleKey(name, labels = {}) {
  const pairs = Object.keys(labels).sort().map((k) => `${k}="${labels[k]}"`);
  return pairs.length ? `${name}{${pairs.join(",")}}` : name;
}

/** Parse the Prometheus text format into a Map of sampleKey → number (raw text as `.text`). */
function parseExposition(text) {
  const samples = new Map();
  for (const line of text.split("\n")) {
    if (line.trim() === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/.exec(line);
    assert.ok(m, `unparseable metrics line: ${line}`);
    const labels = {};
    for (const [, name, raw] of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[name] = raw.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    const key = sampleKey(m[1], labels);
    assert.ok(!samples.has(key), `duplicate sample ${key}`);
    const number = { "+Inf": Infinity, "-Inf": -Infinity }[m[3]] ?? Number(m[3]);
    samples.set(key, number);
  }
  samples.text = text;
  return samples;
}

/** GET /metrics (of a stack, or of a `http://host:port` base) and parse it. */
async function scrape(target) {
  const base = typeof target === "string" ? target : `http://127.0.0.1:${target.port}`;
  const response = await fetch(`${base}/metrics`);
  assert.equal(response.status, 200, "/metrics answers 200");
  return parseExposition(await response.text());
}

/** A sample's value; 0 when the series has not been created yet. */
function value(samples, name, labels = {}) {
  return samples.get(sampleKey(name, labels)) ?? 0;
}

function delta(before, after, name, labels = {}) {
  return value(after, name, labels) - value(before, name, labels);
}

/** Scrape until `check(samples)` holds (bounded); returns that scrape. */
async function scrapeUntil(target, check, { what = "the metrics", timeoutMs = 5000 } = {}) {
  let last;
  try {
    return await waitFor(async () => {
      last = await scrape(target);
      return check(last) ? last : null;
    }, { timeoutMs, everyMs: 50, what });
  } catch (err) {
    err.message += `\nlast scrape:\n${(last?.text ?? "").split("\n").filter((l) => l.startsWith("frappe_")).join("\n")}`;
    throw err;
  }
}

/** Scrape until `name{labels}` has grown by at least `by` since `before`. */
function scrapeUntilGrown(target, before, name, labels = {}, by = 1, timeoutMs = 5000) {
  return scrapeUntil(target, (s) => delta(before, s, name, labels) >= by,
    { what: `${sampleKey(name, labels)} to grow by ${by}`, timeoutMs });
}

/** Sum of every sample of `name` (any labels). */
function total(samples, name) {
  let sum = 0;
  for (const [key, v] of samples) if (key === name || key.startsWith(`${name}{`)) sum += v;
  return sum;
}

/**
 * The keys that occur twice in one object of a well-formed JSON text (`JSON.parse` silently
 * keeps the last), as paths like `.fields.message`.
 */
function duplicateKeys(text) {
  const repeated = [];
  let i = 0;
  const space = () => { while (/\s/.test(text[i] ?? "")) i += 1; };
  const string = () => {
    let j = i + 1;
    while (text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
    const parsed = JSON.parse(text.slice(i, j + 1));
    i = j + 1;
    return parsed;
  };
  const element = (where) => {
    space();
    if (text[i] === "{") {
      i += 1;
      const seen = new Set();
      space();
      if (text[i] === "}") { i += 1; return; }
      for (;;) {
        space();
        const key = string();
        if (seen.has(key)) repeated.push(`${where}.${key}`);
        seen.add(key);
        space();
        i += 1; // :
        element(`${where}.${key}`);
        space();
        if (text[i++] === "}") return;
      }
    }
    if (text[i] === "[") {
      i += 1;
      space();
      if (text[i] === "]") { i += 1; return; }
      for (;;) {
        element(`${where}[]`);
        space();
        if (text[i++] === "]") return;
      }
    }
    if (text[i] === '"') { string(); return; }
    while (i < text.length && !/[,}\]\s]/.test(text[i])) i += 1;
  };
  JSON.parse(text); // well-formed first
  element("");
  return repeated;
}

async function getJson(url) {
  const response = await fetch(url);
  return { status: response.status, body: await response.json() };
}

// ---------------------------------------------------------------------------------------------
// Helpers: stacks, users, logs
// ---------------------------------------------------------------------------------------------

/** A user no test has seen, with a session on every site of `stack`. */
function newUser(stack, sites = SITES) {
  const name = unique("user");
  const user = `${name}@example.com`;
  const sid = `sid-${name}`;
  for (const site of sites) stack.frappe.addSession(site, sid, user);
  return { user, sid };
}

/** Like harness `startStack`, with extra server arguments (after `--host 127.0.0.1`). */
function startStackWith({ version = 16, args = [], common = {} } = {}) {
  return startStack({ version, common, serverArgs: ["--host", "127.0.0.1", ...args] });
}

/** The server's text log without terminal colour codes, as lines. */
function logLines(stack) {
  // eslint-disable-next-line no-control-regex
  return stack.server.output.replace(/\x1b\[[0-9;]*m/g, "").split("\n");
}

/** Text-log lines `message … site=<site> user=<user> …`. */
function logged(stack, message, site, user) {
  return logLines(stack).filter((line) => {
    const words = line.split(/\s+/);
    return line.includes(` ${message} `) && words.includes(`site=${site}`) && words.includes(`user=${user}`);
  }).length;
}

/**
 * Connect and wait until the server has run its connect handler (its "client connected" log
 * line): the reconnect counter is recorded there, after the client already saw `connect`.
 */
async function connectSettled(stack, options, user) {
  const site = options.site ?? SITE;
  const seen = logged(stack, "client connected", site, user);
  const socket = await stack.connect(options);
  await waitFor(() => logged(stack, "client connected", site, user) > seen, { what: `the connect log of ${user}` });
  return socket;
}

/** Disconnect and wait until the server has handled it (its "client disconnected" log line). */
async function disconnectSettled(stack, socket, site, user) {
  const seen = logged(stack, "client disconnected", site, user);
  socket.disconnect();
  await waitFor(() => logged(stack, "client disconnected", site, user) > seen, { what: `the disconnect log of ${user}` });
}

// ---------------------------------------------------------------------------------------------
// 1. Connections
// ---------------------------------------------------------------------------------------------

describe("connections: sockets gauge, engine sessions, sites", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });

  test("frappe_realtime_sites is the number of sites (2)", async () => {
    const samples = await scrape(stack);
    assert.equal(value(samples, M.sites), 2);
    for (const site of SITES) {
      for (const transport of ["websocket", "polling"]) {
        assert.ok(samples.has(sampleKey(M.sockets, { site, transport })), `sockets{${site},${transport}} is exposed`);
      }
    }
  });

  for (const transport of ["websocket", "polling"]) {
    test(`a ${transport}-only client raises sockets{site,transport=${transport}} and its disconnect lowers it`, async () => {
      const labels = { site: SITE, transport };
      const other = transport === "websocket" ? "polling" : "websocket";
      const before = await scrape(stack);
      const socket = await stack.connect({ sid: ALICE_SID, transports: [transport] });
      const during = await scrapeUntilGrown(stack, before, M.sockets, labels);
      assert.equal(delta(before, during, M.sockets, labels), 1);
      assert.equal(delta(before, during, M.sockets, { site: SITE, transport: other }), 0);
      assert.equal(delta(before, during, M.sockets, { site: OTHER_SITE, transport }), 0);
      assert.equal(delta(before, during, M.engineSessions, { transport }), 1, "one engine.io session opened");
      assert.equal(delta(before, during, M.engineSessions, { transport: other }), 0);
      assert.equal(delta(before, during, M.handshakes, { site: SITE, outcome: "ok" }), 1);

      socket.disconnect();
      const afterwards = await scrapeUntil(stack, (s) => value(s, M.sockets, labels) === value(before, M.sockets, labels),
        { what: `sockets{${SITE},${transport}} back to its value before` });
      assert.equal(delta(before, afterwards, M.engineSessions, { transport }), 1, "a disconnect opens no session");
    });
  }

  test("sockets on both sites and transports are counted separately", async () => {
    const before = await scrape(stack);
    await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    await stack.connect({ sid: BOB_SID, transports: ["websocket"] });
    await stack.connect({ site: OTHER_SITE, sid: ALICE_SID, transports: ["polling"] });
    const during = await scrapeUntil(stack, (s) =>
      delta(before, s, M.sockets, { site: SITE, transport: "websocket" }) === 2
      && delta(before, s, M.sockets, { site: OTHER_SITE, transport: "polling" }) === 1,
    { what: "2 websocket sockets on site1 and 1 polling socket on site2" });
    assert.equal(delta(before, during, M.sockets, { site: SITE, transport: "polling" }), 0);
    assert.equal(delta(before, during, M.sockets, { site: OTHER_SITE, transport: "websocket" }), 0);
    assert.equal(value(during, M.sites), 2);
  });
});

// ---------------------------------------------------------------------------------------------
// 2. Handshakes by outcome (and labels stay bounded)
// ---------------------------------------------------------------------------------------------

describe("handshakes_total by outcome", () => {
  let stack;
  // realtime_callback_timeout 1 s, so the `timeout` outcome takes a second.
  before(async () => {
    stack = await startStack({ common: { realtime_callback_timeout: 1 } });
    await stack.connect({ sid: ALICE_SID }); // the server learns the socket secret
  });
  after(async () => { await stack?.stop(); });
  afterEach(() => { if (stack) stack.frappe.fault = null; });

  /** Run `act`; exactly handshakes{site, outcome} must grow by one, no other outcome of `site`. */
  async function expectOutcome(outcome, act, site = SITE) {
    const before = await scrape(stack);
    await act();
    const after = await scrapeUntilGrown(stack, before, M.handshakes, { site, outcome });
    for (const other of HANDSHAKE_OUTCOMES) {
      assert.equal(delta(before, after, M.handshakes, { site, outcome: other }), other === outcome ? 1 : 0,
        `handshakes{site=${site},outcome=${other}}`);
    }
    for (const other of HANDSHAKE_OUTCOMES) {
      const otherSite = site === SITE ? OTHER_SITE : SITE;
      assert.equal(delta(before, after, M.handshakes, { site: otherSite, outcome: other }), 0);
    }
    return { before, after };
  }

  test("ok", async () => {
    const { before, after } = await expectOutcome("ok", () => stack.connect({ sid: ALICE_SID }));
    assert.equal(delta(before, after, M.frappeRequests, { endpoint: "get_user_info", outcome: "ok" }), 1);
    await expectOutcome("ok", () => stack.connect({ site: OTHER_SITE, sid: BOB_SID }), OTHER_SITE);
  });

  test("invalid_namespace: X-Frappe-Site-Name names site2 on site1's namespace (labelled by the namespace)", async () => {
    await expectOutcome("invalid_namespace", async () => {
      assert.equal(await refusal(stack.socket({ site: OTHER_SITE, namespace: `/${SITE}`, sid: ALICE_SID })),
        "Invalid namespace");
    });
  });

  test("invalid_origin", async () => {
    await expectOutcome("invalid_origin", async () => {
      assert.equal(await refusal(stack.socket({ sid: ALICE_SID, origin: "http://evil.example" })), "Invalid origin");
    });
  });

  test("missing_credentials", async () => {
    await expectOutcome("missing_credentials", async () => {
      assert.match(await refusal(stack.socket({})), /^Missing cookie and authorization header/);
    });
  });

  test("no_authentication_method", async () => {
    await expectOutcome("no_authentication_method", async () => {
      assert.match(await refusal(stack.socket({ headers: { cookie: "theme=dark" } })), /^No authentication method/);
    });
  });

  test("unauthorized: Frappe 16 answers {} (twice, the retry after re-reading the secret)", async () => {
    stack.frappe.fault = { status: 200, body: '{"message": {}}' };
    const { before, after } = await expectOutcome("unauthorized", async () => {
      assert.match(await refusal(stack.socket({ sid: ALICE_SID })), /^Unauthorized/);
    });
    assert.equal(delta(before, after, M.frappeRequests, { endpoint: "get_user_info", outcome: "denied" }), 2);
    assert.equal(delta(before, after, M.frappeRequests, { endpoint: "get_user_info", outcome: "ok" }), 0);
  });

  test("unauthorized: an invalid Authorization token (Frappe answers 401)", async () => {
    await expectOutcome("unauthorized", async () => {
      assert.match(await refusal(stack.socket({ authorization: "token key-nobody:wrong" })), /^Unauthorized/);
    });
  });

  test("a 401 from get_user_info is counted under a documented outcome (`denied`)", async () => {
    // docs/metrics.md: get_user_info outcomes are ok/denied, auth_error, timeout.
    const before = await scrape(stack);
    assert.match(await refusal(stack.socket({ authorization: "token key-nobody:wrong" })), /^Unauthorized/);
    const after = await scrapeUntilGrown(stack, before, M.frappeDurationCount, { endpoint: "get_user_info" });
    const outcomes = [...after.keys()].filter((k) => k.startsWith(`${M.frappeRequests}{`) && k.includes('endpoint="get_user_info"'))
      .filter((k) => after.get(k) !== (before.get(k) ?? 0));
    assert.deepEqual(outcomes, [sampleKey(M.frappeRequests, { endpoint: "get_user_info", outcome: "denied" })],
      "the series that moved for a 401");
  });

  test("auth_error: Frappe answers HTTP 500", async () => {
    stack.frappe.fault = { status: 500, body: "Internal Server Error" };
    const { before, after } = await expectOutcome("auth_error", async () => {
      assert.match(await refusal(stack.socket({ sid: ALICE_SID })), /^Unauthorized/);
    });
    assert.equal(delta(before, after, M.frappeRequests, { endpoint: "get_user_info", outcome: "auth_error" }), 1);
  });

  test("timeout: Frappe slower than realtime_callback_timeout", async () => {
    // A fixed body keeps the late handler of the fake away from Redis.
    const late = { message: { user: ALICE, user_type: "System User", installed_apps: ["frappe"] } };
    stack.frappe.fault = { latencyMs: 2500, status: 200, body: JSON.stringify(late) };
    const { before, after } = await expectOutcome("timeout", async () => {
      assert.match(await refusal(stack.socket({ sid: ALICE_SID })), /^Unauthorized/);
    });
    assert.equal(delta(before, after, M.frappeRequests, { endpoint: "get_user_info", outcome: "timeout" }), 1);
  });

  test("labels are bounded: 50 handshakes to junk namespaces leave no trace in any series", async () => {
    const before = await scrape(stack);
    const refusals = [];
    for (let i = 0; i < 50; i += 1) {
      refusals.push(refusal(stack.socket({ site: `junk-${i}`, sid: ALICE_SID })));
    }
    for (const message of await Promise.all(refusals)) assert.equal(message, "Invalid namespace");
    const after = await scrape(stack);
    assert.ok(!after.text.includes("junk"), "a scrape line names a junk namespace");
    assert.equal(total(after, M.handshakes), total(before, M.handshakes),
      "a namespace that is not a site is refused before handshakes_total counts it");
    assert.equal(total(after, M.engineSessions) - total(before, M.engineSessions), 50, "their engine sessions did open");
    assert.equal(value(after, M.sites), 2);
  });
});

// ---------------------------------------------------------------------------------------------
// 3. Disconnects by reason
// ---------------------------------------------------------------------------------------------

describe("disconnects_total by reason", () => {
  let stack;
  const THIRD = "site3.local";
  let removedSocket; // connected to THIRD when its folder was removed
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });

  async function expectReason(reason, act, site = SITE) {
    const before = await scrape(stack);
    await act();
    const after = await scrapeUntilGrown(stack, before, M.disconnects, { site, reason }, 1, 10000);
    assert.equal(delta(before, after, M.disconnects, { site, reason }), 1);
    assert.equal(total(after, M.disconnects) - total(before, M.disconnects), 1, "no other disconnect counted");
    return { before, after };
  }

  test("client_disconnect: socket.disconnect()", async () => {
    const socket = await stack.connect({ sid: ALICE_SID });
    await expectReason("client_disconnect", () => socket.disconnect());
  });

  test("transport_close: the client's engine closes its websocket", async () => {
    const socket = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    await expectReason("transport_close", async () => {
      const gone = nextEvent(socket, "disconnect");
      socket.io.engine.close();
      await gone;
    });
  });

  test("site_removed: the site's folder disappears", async () => {
    addSite(stack.bench, THIRD);
    stack.frappe.addSite(THIRD);
    stack.frappe.addSession(THIRD, ALICE_SID, ALICE);
    await scrapeUntil(stack, (s) => value(s, M.sites) === 3, { what: "sites = 3 after adding a site", timeoutMs: 10000 });
    removedSocket = await stack.connect({ site: THIRD, sid: ALICE_SID, transports: ["websocket"] });
    removedSocket.reasons = [];
    removedSocket.on("disconnect", (reason) => removedSocket.reasons.push(reason));
    await scrapeUntil(stack, (s) => value(s, M.sockets, { site: THIRD, transport: "websocket" }) === 1,
      { what: `sockets{${THIRD},websocket} = 1` });
    const { after } = await expectReason("site_removed", () => {
      fs.rmSync(path.join(stack.bench, "sites", THIRD), { recursive: true });
    }, THIRD);
    assert.equal(value(after, M.disconnects, { site: SITE, reason: "site_removed" }), 0);
    await scrapeUntil(stack, (s) => value(s, M.sites) === 2, { what: "sites = 2 after removing the site" });
  });

  test("a removed site's clients are told they were disconnected", async () => {
    assert.ok(removedSocket, "the previous test connected a socket to the removed site");
    // The server counted (and logged) the disconnect: the client must see it too, or it keeps
    // a dead socket that receives nothing and never reconnects.
    await waitFor(() => removedSocket.reasons.length > 0, { what: "the client's disconnect event" })
      .catch((err) => { err.message += ` (client still connected: ${removedSocket.connected})`; throw err; });
    assert.deepEqual(removedSocket.reasons, ["io server disconnect"]);
  });

  test("a removed site's sockets gauge no longer reports its departed sockets", async () => {
    assert.ok(removedSocket, "an earlier test connected a socket to the removed site");
    // "Connected sockets (sampled when scraped)": nothing is connected to the removed site.
    const samples = await scrape(stack);
    assert.equal(value(samples, M.sockets, { site: THIRD, transport: "websocket" }), 0,
      `${sampleKey(M.sockets, { site: THIRD, transport: "websocket" })} after the site was removed`);
  });

  // `server_shutdown` is not tested: the process that would count it stops serving /metrics.
});

// ---------------------------------------------------------------------------------------------
// 4. Reconnects
// ---------------------------------------------------------------------------------------------

describe("reconnects_total and reconnect_delay_seconds", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });

  /** A fresh user connects, leaves and comes back to `site`: one genuine reconnect. */
  async function reconnectOnce(site = SITE) {
    const { user, sid } = newUser(stack);
    const first = await connectSettled(stack, { site, sid }, user);
    await disconnectSettled(stack, first, site, user);
    await stack.connect({ site, sid });
  }

  /**
   * Run `act` (connects that must not count), then one genuine reconnect on `site` as a
   * sentinel: once the sentinel is counted, anything `act` would have counted has been too.
   * Exactly one reconnect (and one delay) must have been recorded.
   */
  async function expectOnlyTheSentinel(act, site = SITE) {
    const before = await scrape(stack);
    await act();
    await reconnectOnce(site);
    const after = await scrapeUntilGrown(stack, before, M.reconnects, { site });
    assert.equal(delta(before, after, M.reconnects, { site }), 1, "only the sentinel reconnect counts");
    assert.equal(delta(before, after, M.reconnectDelayCount, { site }), 1);
    assert.equal(total(after, M.reconnects) - total(before, M.reconnects), 1);
  }

  test("connect, disconnect, connect again: one reconnect with its delay", async () => {
    const { user, sid } = newUser(stack);
    const first = await connectSettled(stack, { sid }, user);
    await disconnectSettled(stack, first, SITE, user);
    const before = await scrape(stack);
    const started = Date.now();
    await stack.connect({ sid });
    const after = await scrapeUntilGrown(stack, before, M.reconnects, { site: SITE });
    const gap = (Date.now() - started) / 1000;
    assert.equal(delta(before, after, M.reconnects, { site: SITE }), 1);
    assert.equal(delta(before, after, M.reconnectDelayCount, { site: SITE }), 1);
    const observed = delta(before, after, M.reconnectDelaySum, { site: SITE });
    assert.ok(observed > 0 && observed < 5 + gap, `reconnect delay observed ${observed} s`);
    assert.equal(delta(before, after, M.reconnects, { site: OTHER_SITE }), 0);
  });

  test("a user's first connect is not a reconnect", async () => {
    await expectOnlyTheSentinel(async () => {
      const { user, sid } = newUser(stack);
      await connectSettled(stack, { sid }, user);
    });
  });

  test("the same user on the other site is not a reconnect", async () => {
    await expectOnlyTheSentinel(async () => {
      const { user, sid } = newUser(stack);
      const first = await connectSettled(stack, { sid }, user);
      await disconnectSettled(stack, first, SITE, user);
      await connectSettled(stack, { site: OTHER_SITE, sid }, user);
    }, OTHER_SITE);
  });

  test("Guest reconnects are not counted", async () => {
    await expectOnlyTheSentinel(async () => {
      const sid = unique("sid-unknown"); // an unknown sid is Guest
      const first = await connectSettled(stack, { sid }, "Guest");
      await disconnectSettled(stack, first, SITE, "Guest");
      await connectSettled(stack, { sid }, "Guest");
    });
  });
});

// ---------------------------------------------------------------------------------------------
// 5. Calls to Frappe
// ---------------------------------------------------------------------------------------------

for (const version of [15, 16]) {
  describe(`Frappe ${version}: frappe_requests_total, durations, in flight`, () => {
    let stack;
    const docEndpoint = version === 16 ? "has_permission" : "can_subscribe_doc";
    const doctypeEndpoint = version === 16 ? "has_permission" : "can_subscribe_doctype";
    before(async () => {
      stack = await startStack({ version });
      (await stack.connect({ sid: ALICE_SID })).disconnect(); // v16: the server learns the socket secret
    });
    after(async () => { await stack?.stop(); });
    afterEach(() => { if (stack) stack.frappe.fault = null; });

    test("get_user_info outcome ok, once per connect, with a duration each", async () => {
      const labels = { endpoint: "get_user_info", outcome: "ok" };
      const before = await scrape(stack);
      await stack.connect({ sid: BOB_SID });
      await stack.connect({ site: OTHER_SITE, sid: ALICE_SID });
      const after = await scrapeUntilGrown(stack, before, M.frappeRequests, labels, 2);
      assert.equal(delta(before, after, M.frappeRequests, labels), 2);
      assert.equal(delta(before, after, M.frappeRequests, { endpoint: "get_user_info", outcome: "denied" }), 0);
      assert.equal(delta(before, after, M.frappeDurationCount, { endpoint: "get_user_info" }), 2);
      assert.equal(value(after, M.frappeInFlight, { endpoint: "get_user_info" }), 0);
    });

    test(`doc_subscribe calls ${docEndpoint}: outcome allowed, then denied`, async () => {
      const doc = unique("TD");
      stack.frappe.allow(SITE, ALICE, "ToDo", doc);
      const socket = await stack.connect({ sid: ALICE_SID });

      const before = await scrape(stack);
      socket.emit("doc_subscribe", "ToDo", doc);
      const allowed = await scrapeUntilGrown(stack, before, M.frappeRequests, { endpoint: docEndpoint, outcome: "allowed" });
      assert.equal(delta(before, allowed, M.frappeRequests, { endpoint: docEndpoint, outcome: "allowed" }), 1);
      assert.equal(delta(before, allowed, M.frappeRequests, { endpoint: docEndpoint, outcome: "denied" }), 0);
      assert.equal(delta(before, allowed, M.frappeDurationCount, { endpoint: docEndpoint }), 1);
      // The permission was acted on: the socket is in the document's room.
      await stack.publishUntilReceived(socket, `doc:ToDo/${doc}`);

      const mid = await scrape(stack);
      socket.emit("doc_subscribe", "ToDo", unique("forbidden"));
      const denied = await scrapeUntilGrown(stack, mid, M.frappeRequests, { endpoint: docEndpoint, outcome: "denied" });
      assert.equal(delta(mid, denied, M.frappeRequests, { endpoint: docEndpoint, outcome: "denied" }), 1);
      assert.equal(delta(mid, denied, M.frappeRequests, { endpoint: docEndpoint, outcome: "allowed" }), 0);
      assert.equal(delta(mid, denied, M.frappeDurationCount, { endpoint: docEndpoint }), 1);
      assert.equal(value(denied, M.frappeInFlight, { endpoint: docEndpoint }), 0);
    });

    test(`doctype_subscribe calls ${doctypeEndpoint}: outcome denied`, async () => {
      const socket = await stack.connect({ sid: ALICE_SID });
      const labels = { endpoint: doctypeEndpoint, outcome: "denied" };
      const before = await scrape(stack);
      socket.emit("doctype_subscribe", unique("Secret Doctype"));
      const after = await scrapeUntilGrown(stack, before, M.frappeRequests, labels);
      assert.equal(delta(before, after, M.frappeRequests, labels), 1);
      assert.equal(delta(before, after, M.frappeDurationCount, { endpoint: doctypeEndpoint }), 1);
    });

    test("requests_in_flight{get_user_info} is 1 during a slow call and 0 after", async () => {
      const reply = { message: { user: BOB, user_type: "System User", installed_apps: ["frappe"] } };
      stack.frappe.fault = { latencyMs: 1500, status: 200, body: JSON.stringify(reply) };
      const before = await scrape(stack);
      assert.equal(value(before, M.frappeInFlight, { endpoint: "get_user_info" }), 0);
      const socket = stack.socket({ sid: BOB_SID });
      const accepted = connected(socket);
      await scrapeUntil(stack, (s) => value(s, M.frappeInFlight, { endpoint: "get_user_info" }) === 1,
        { what: "get_user_info in flight = 1" });
      await accepted;
      const after = await scrape(stack);
      assert.equal(value(after, M.frappeInFlight, { endpoint: "get_user_info" }), 0);
      assert.equal(delta(before, after, M.frappeRequests, { endpoint: "get_user_info", outcome: "ok" }), 1);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// 6. Delivery
// ---------------------------------------------------------------------------------------------

describe("delivery: routed, sent, bytes, dropped", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });

  test("a publication to a room with 2 sockets", async () => {
    const { user, sid } = newUser(stack);
    const sockets = [
      await stack.connect({ sid, transports: ["websocket"] }),
      await stack.connect({ sid, transports: ["polling"] }),
    ];
    const marker = unique("marker");
    const payload = JSON.stringify({
      event: "metrics_probe", message: { marker, text: "héllo wörld ✓" }, namespace: SITE, room: `user:${user}`,
    });
    const bytes = Buffer.byteLength(payload);
    assert.notEqual(bytes, payload.length, "the payload has multi-byte characters");

    const before = await scrape(stack);
    await stack.redis.publish(payload);
    for (const socket of sockets) {
      await waitFor(() => socket.received.some((r) => r.event === "metrics_probe" && r.args[0]?.marker === marker),
        { what: "the publication on each socket" });
    }
    const after = await scrapeUntil(stack, (s) => delta(before, s, M.packetsSent, { site: SITE }) >= 2
      && delta(before, s, M.deliveryCount) >= 1, { what: "packets sent and the delivery duration recorded" });
    const now = Date.now() / 1000;
    assert.equal(delta(before, after, M.redisMessages), 1);
    assert.equal(delta(before, after, M.routed, { site: SITE }), 1);
    assert.equal(delta(before, after, M.routed, { site: OTHER_SITE }), 0);
    assert.equal(delta(before, after, M.packetsSent, { site: SITE }), 2);
    assert.equal(delta(before, after, M.sentBytes, { site: SITE }), 2 * bytes);
    assert.equal(delta(before, after, M.deliveryCount), 1);
    assert.equal(total(after, M.dropped) - total(before, M.dropped), 0);
    const last = value(after, M.redisLastMessage);
    assert.ok(Math.abs(now - last) < 5, `last message timestamp ${last} is within 5 s of now (${now})`);
  });

  test("a broadcast without a room counts once per site with sockets", async () => {
    await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    await stack.connect({ site: OTHER_SITE, sid: ALICE_SID, transports: ["websocket"] });
    const before = await scrape(stack);
    await stack.redis.publish({ event: "build_event", message: { success: true } });
    // Each site's routing is counted as it happens: wait for both, not for the first delivery.
    const after = await scrapeUntil(stack, (s) => delta(before, s, M.routed, { site: SITE }) >= 1
      && delta(before, s, M.routed, { site: OTHER_SITE }) >= 1, { what: "the broadcast routed to both sites" });
    assert.equal(delta(before, after, M.routed, { site: SITE }), 1);
    assert.equal(delta(before, after, M.routed, { site: OTHER_SITE }), 1);
    assert.equal(delta(before, after, M.redisMessages), 1);
  });

  /** Publish `body` raw; exactly dropped{reason} +1 and nothing routed or delivered. */
  async function expectDropped(reason, body) {
    const before = await scrape(stack);
    await stack.redis.client.publish("events", body);
    const after = await scrapeUntilGrown(stack, before, M.dropped, { reason });
    for (const other of DROP_REASONS) {
      assert.equal(delta(before, after, M.dropped, { reason: other }), other === reason ? 1 : 0, `dropped{reason=${other}}`);
    }
    assert.equal(delta(before, after, M.redisMessages), 1);
    assert.equal(total(after, M.routed) - total(before, M.routed), 0);
    assert.equal(total(after, M.packetsSent) - total(before, M.packetsSent), 0);
  }

  test("no_listeners: a room nobody is in", async () => {
    await expectDropped("no_listeners", JSON.stringify({
      event: "doc_update", message: {}, namespace: SITE, room: `doc:ToDo/${unique("nobody")}`,
    }));
  });

  test("unknown_site: a namespace this bench does not serve", async () => {
    await expectDropped("unknown_site", JSON.stringify({
      event: "msgprint", message: "x", namespace: "nosuch.local", room: "all",
    }));
  });

  for (const [reason, body] of [
    ["not_json", "not json"],
    ["not_an_object", "null"],
    ["no_event", JSON.stringify({ message: {}, namespace: SITE, room: "all" })],
    ["reserved_event", JSON.stringify({ event: "disconnect", message: {}, namespace: SITE, room: "all" })],
    ["bad_room", JSON.stringify({ event: "msgprint", message: {}, namespace: SITE, room: 5 })],
    ["room_without_namespace", JSON.stringify({ event: "msgprint", message: {}, room: "all" })],
  ]) {
    test(`malformed → ${reason}: ${body}`, async () => {
      await expectDropped(reason, body);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// 7. Redis link, /health, /ready
// ---------------------------------------------------------------------------------------------

describe("Redis: connected gauge, reconnects, /ready and /health", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });

  const base = () => `http://127.0.0.1:${stack.port}`;
  const READY = { status: "ready", redis: "subscribed", config: "loaded", sites: 2 };

  test("subscribed: redis_connected 1, /ready 200, /health 200", async () => {
    assert.equal(value(await scrape(stack), M.redisConnected), 1);
    assert.deepEqual(await getJson(`${base()}/ready`), { status: 200, body: READY });
    assert.deepEqual(await getJson(`${base()}/health`), { status: 200, body: { status: "ok" } });
  });

  test("Redis killed: redis_connected 0 and /ready 503; back on the same port: re-subscribed, reconnects +1", async () => {
    const socket = await stack.connect({ sid: ALICE_SID });
    const before = await scrape(stack);
    const { port } = stack.redis;
    await stack.redis.stop();

    const down = await scrapeUntil(stack, (s) => value(s, M.redisConnected) === 0,
      { what: "redis_connected = 0 after Redis died" });
    assert.equal(delta(before, down, M.redisReconnects), 0);
    const notReady = await getJson(`${base()}/ready`);
    assert.equal(notReady.status, 503);
    assert.equal(notReady.body.status, "not_ready");
    assert.equal(notReady.body.redis, "disconnected");
    assert.deepEqual(await getJson(`${base()}/health`), { status: 200, body: { status: "ok" } });

    stack.redis = await Redis.start({ port });
    const up = await scrapeUntil(stack, (s) => value(s, M.redisConnected) === 1,
      { what: "redis_connected = 1 after Redis came back", timeoutMs: 15000 });
    assert.equal(delta(before, up, M.redisReconnects), 1);
    assert.deepEqual(await getJson(`${base()}/ready`), { status: 200, body: READY });
    assert.deepEqual(await getJson(`${base()}/health`), { status: 200, body: { status: "ok" } });
    // And it delivers again.
    await stack.publishUntilReceived(socket, `user:${ALICE}`);
  });
});

// ---------------------------------------------------------------------------------------------
// 8. promtool
// ---------------------------------------------------------------------------------------------

/** Run `promtool check metrics` on `text`; resolves {code, output}. */
function promtoolCheck(text) {
  assert.ok(fs.existsSync(PROMTOOL), `promtool is required at ${PROMTOOL} (apt-get install prometheus) but is missing`);
  return new Promise((resolve, reject) => {
    const child = spawn(PROMTOOL, ["check", "metrics"], { stdio: ["pipe", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (chunk) => { output += chunk; });
    child.stderr.on("data", (chunk) => { output += chunk; });
    const timer = setTimeout(() => { child.kill("SIGKILL"); reject(new Error("promtool did not finish in 10 s")); }, 10000);
    child.on("error", (err) => { clearTimeout(timer); reject(err); });
    child.on("exit", (code) => { clearTimeout(timer); resolve({ code, output }); });
    child.stdin.end(text);
  });
}

describe("promtool check metrics", () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stack?.stop(); });

  test("a live scrape after traffic is valid exposition", async () => {
    // Traffic that creates every kind of series: gauges, counters, the three histograms.
    const doc = unique("TD");
    stack.frappe.allow(SITE, ALICE, "ToDo", doc);
    const alice = await connectSettled(stack, { sid: ALICE_SID }, ALICE);
    alice.emit("doc_subscribe", "ToDo", doc);
    await stack.publishUntilReceived(alice, `doc:ToDo/${doc}`);
    await disconnectSettled(stack, alice, SITE, ALICE);
    await stack.connect({ sid: ALICE_SID, transports: ["polling"] }); // a reconnect
    await refusal(stack.socket({ origin: "http://evil.example", sid: ALICE_SID }));
    await stack.redis.publish("not json");
    const samples = await scrapeUntil(stack, (s) => value(s, M.reconnectDelayCount, { site: SITE }) >= 1
      && value(s, M.dropped, { reason: "not_json" }) >= 1, { what: "the traffic recorded" });
    for (const histogram of [M.deliveryCount, M.frappeDurationCount, M.reconnectDelayCount]) {
      assert.ok(samples.text.includes(histogram), `${histogram} is in the scrape`);
    }
    const { code, output } = await promtoolCheck(samples.text);
    assert.equal(code, 0, `promtool check metrics failed:\n${output}`);
  });
});

// ---------------------------------------------------------------------------------------------
// 9. --metrics-addr and --no-metrics
// ---------------------------------------------------------------------------------------------

describe("--metrics-addr", () => {
  let stack;
  let metricsPort;
  before(async () => {
    metricsPort = await freePort();
    stack = await startStackWith({ args: ["--metrics-addr", `127.0.0.1:${metricsPort}`] });
  });
  after(async () => { await stack?.stop(); });

  test("/metrics, /health and /ready are served on the separate address too", async () => {
    const base = `http://127.0.0.1:${metricsPort}`;
    const before = await scrape(base);
    assert.equal(value(before, M.sites), 2);
    assert.equal(value(before, M.redisConnected), 1);
    assert.deepEqual(await getJson(`${base}/health`), { status: 200, body: { status: "ok" } });
    assert.deepEqual(await getJson(`${base}/ready`),
      { status: 200, body: { status: "ready", redis: "subscribed", config: "loaded", sites: 2 } });

    await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    const after = await scrapeUntilGrown(base, before, M.sockets, { site: SITE, transport: "websocket" });
    assert.equal(delta(before, after, M.handshakes, { site: SITE, outcome: "ok" }), 1);
    // The service port keeps serving them as well.
    assert.equal(value(await scrape(stack), M.sites), 2);
  });
});

describe("--no-metrics", () => {
  let stack;
  before(async () => { stack = await startStackWith({ args: ["--no-metrics"] }); });
  after(async () => { await stack?.stop(); });

  test("/metrics answers 404 while health, readiness and events work", async () => {
    const base = `http://127.0.0.1:${stack.port}`;
    const response = await fetch(`${base}/metrics`);
    assert.equal(response.status, 404);
    assert.doesNotMatch(await response.text(), /frappe_realtime_/);
    assert.deepEqual(await getJson(`${base}/health`), { status: 200, body: { status: "ok" } });
    assert.equal((await getJson(`${base}/ready`)).status, 200);
    const socket = await stack.connect({ sid: ALICE_SID });
    const got = nextEvent(socket, "msgprint");
    await stack.publish("msgprint", "still flowing", { room: `user:${ALICE}` });
    assert.deepEqual(await got, ["still flowing"]);
    assert.equal((await fetch(`${base}/metrics`)).status, 404);
  });
});

// ---------------------------------------------------------------------------------------------
// 10. Logs
// ---------------------------------------------------------------------------------------------

describe("--log-format json, and no secret in logs or labels", () => {
  let stack;
  const BASIC = `Basic ${Buffer.from("erin:pw-erin-secret").toString("base64")}`;
  const BEARER = "Bearer oauth-frank-secret-123";
  before(async () => {
    stack = await startStackWith({ args: ["--log-format", "json"] });
    stack.frappe.addToken(SITE, BASIC, "erin@example.com");
    stack.frappe.addToken(SITE, BEARER, "frank@example.com", "Website User");
  });
  after(async () => { await stack?.stop(); });

  /** Every line of the output, parsed (each must be one JSON object). */
  function jsonLines() {
    return stack.server.output.split("\n").filter((line) => line.trim() !== "").map((line) => {
      let parsed;
      assert.doesNotThrow(() => { parsed = JSON.parse(line); }, `not a JSON line: ${line}`);
      assert.equal(typeof parsed, "object");
      assert.ok(parsed !== null && !Array.isArray(parsed), `not a JSON object: ${line}`);
      return parsed;
    });
  }

  const withMessage = (message) => jsonLines().filter((l) => l.fields?.message === message);

  test("connect, refusal and disconnect lines are JSON objects with their fields", async () => {
    const socket = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    await waitFor(() => withMessage("client connected").some((l) => l.fields.user === ALICE),
      { what: "the connect line" });
    const connect = withMessage("client connected").find((l) => l.fields.user === ALICE);
    assert.equal(connect.fields.site, SITE);
    assert.equal(connect.fields.transport, "websocket");
    assert.equal(connect.level, "INFO");

    await refusal(stack.socket({ sid: ALICE_SID, origin: "http://evil.example" }));
    const refusedLine = () => jsonLines().find((l) => l.fields?.reason === "invalid_origin");
    const refused = await waitFor(refusedLine, { what: "the refusal line" });
    assert.equal(refused.fields.site, SITE);
    assert.ok(["polling", "websocket"].includes(refused.fields.transport));
    assert.ok(Object.values(refused.fields).includes("Invalid origin"), "the refusal's message is a field");

    socket.disconnect();
    await waitFor(() => withMessage("client disconnected").some((l) => l.fields.user === ALICE),
      { what: "the disconnect line" });
    const gone = withMessage("client disconnected").find((l) => l.fields.user === ALICE);
    assert.equal(gone.fields.site, SITE);
    assert.equal(gone.fields.reason, "client_disconnect");
    assert.equal(gone.fields.transport, "websocket");

    assert.ok(jsonLines().length >= 6, "start-up lines are JSON too");
  });

  test("every JSON line has unique keys (no field shadows another)", () => {
    const lines = stack.server.output.split("\n").filter((line) => line.trim() !== "");
    assert.ok(lines.some((line) => line.includes('"invalid_origin"')), "the previous test logged a refusal");
    const shadowed = lines.map((line) => ({ line, keys: duplicateKeys(line) })).filter((l) => l.keys.length > 0);
    assert.deepEqual(shadowed, [], "JSON objects with a repeated key (consumers keep only one of them)");
  });

  test("no sid, token, Basic/Bearer credential or socket secret in the log or in a metric", async () => {
    const users = [
      [{ sid: ALICE_SID }, ALICE],
      [{ sid: BOB_SID, transports: ["polling"] }, BOB],
      [{ authorization: DAVE_TOKEN }, DAVE],
      [{ authorization: BASIC }, "erin@example.com"],
      [{ authorization: BEARER }, "frank@example.com"],
    ];
    for (const [options, user] of users) {
      const socket = await stack.connect(options);
      socket.emit("doc_subscribe", "ToDo", "TD-secretcheck"); // a permission call carries the credential too
      socket.disconnect();
      await waitFor(() => withMessage("client disconnected").some((l) => l.fields.user === user),
        { what: `the disconnect line of ${user}` });
    }
    await refusal(stack.socket({ authorization: "token key-nobody:wrong-secret" }));
    const samples = await scrapeUntil(stack,
      (s) => value(s, M.frappeRequests, { endpoint: "has_permission", outcome: "denied" }) >= users.length,
      { what: "the permission calls recorded" });

    const secrets = [...stack.frappe.secretsIssued];
    const socketSecret = await stack.redis.client.get("socketio_auth_secret");
    assert.ok(socketSecret && secrets.includes(socketSecret), "the socket secret is among the secrets checked");
    for (const needle of [ALICE_SID, "secret-dave", BASIC.split(" ")[1], "oauth-frank-secret-123"]) {
      assert.ok(secrets.some((s) => s.includes(needle)), `${needle} is among the secrets checked`);
    }
    for (const secret of [...secrets, "wrong-secret"]) {
      assert.ok(!stack.server.output.includes(secret), `the server log contains ${secret}`);
      assert.ok(!samples.text.includes(secret), `a metric contains ${secret}`);
    }
    jsonLines(); // still one JSON object per line
  });
});
