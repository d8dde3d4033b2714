// Redis as benches deploy it beyond a plain URL (issue 20, item 6; the plain URL, unix://,
// and passwords are §1.3's tests in protocol/1-2-startup-and-server-options.test.mjs):
//
// - `rediss://` (TLS): a redis-server with a TLS port, its certificate signed by a throwaway
//   CA the server trusts through SSL_CERT_FILE (as an operator adds a CA to the system's
//   store). Events arrive over the TLS subscription and Frappe 16's socket secret is read
//   over it; a server that does not trust the CA is refused by it and says so without the URL's
//   password.
// - Redis Sentinel for the subscriber (below).
//
// Every wait is bounded; everything listens on loopback; processes are stopped by PID.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  Redis, Server, Stack, freePort, makeBench, nextEvent, waitFor, SITES, ALICE, ALICE_SID, userRoom,
} from "../../support/harness.mjs";
import { FakeFrappe } from "../../support/fake-frappe.mjs";

const PASSWORD = "tls-pa55word-xyzzy";

/** A CA and a certificate for 127.0.0.1 signed by it, in `dir`. */
function makeCertificates(dir) {
  const run = (...args) => execFileSync("openssl", args, { cwd: dir, stdio: "ignore", timeout: 30000 });
  run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
    "-subj", "/CN=frappe-realtime test CA");
  run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1");
  fs.writeFileSync(path.join(dir, "san.cnf"), "subjectAltName=IP:127.0.0.1\n");
  run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
    "-out", "server.pem", "-days", "2", "-extfile", "san.cnf");
  return { ca: path.join(dir, "ca.pem"), cert: path.join(dir, "server.pem"), key: path.join(dir, "server.key") };
}

describe("rediss:// (TLS)", () => {
  let dir;
  let redis;
  let tlsPort;
  const stacks = [];

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "redis-tls-"));
    const certs = makeCertificates(dir);
    tlsPort = await freePort();
    // A plain port beside the TLS one, for the test's publisher and the fake Frappe.
    const port = await freePort();
    redis = await Redis.start({
      port,
      args: ["--requirepass", PASSWORD, "--tls-port", String(tlsPort), "--tls-cert-file", certs.cert,
        "--tls-key-file", certs.key, "--tls-ca-cert-file", certs.ca, "--tls-auth-clients", "no"],
      clientOptions: { url: `redis://127.0.0.1:${port}`, password: PASSWORD },
    });
    redis.certs = certs;
  });
  after(async () => {
    for (const stack of stacks) {
      for (const socket of stack.sockets) socket.disconnect();
      await stack.server.stop();
      await stack.frappe.close();
      fs.rmSync(stack.bench, { recursive: true, force: true });
    }
    await redis?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Frappe 16 (it reads the socket secret from redis_queue) with redis_queue over TLS. */
  async function tlsStack(env) {
    const frappe = await new FakeFrappe({ version: 16, redisUrl: `redis://:${PASSWORD}@127.0.0.1:${redis.port}` }).listen();
    for (const site of SITES) {
      frappe.addSite(site);
      frappe.addSession(site, ALICE_SID, ALICE);
    }
    const port = await freePort();
    const redisQueue = `rediss://:${PASSWORD}@127.0.0.1:${tlsPort}`;
    const bench = makeBench({ version: 16, common: { socketio_port: port, redis_queue: redisQueue } });
    const server = await Server.start({ bench, port, env });
    const stack = new Stack({ redis, frappe, bench, server, port });
    stacks.push(stack);
    return stack;
  }

  test("events arrive over a TLS subscription, and the socket secret is read over TLS", async () => {
    const stack = await tlsStack({ SSL_CERT_FILE: redis.certs.ca });
    await stack.waitSubscribed();
    // Frappe 16 vouches for a client only with the socket secret the server read from Redis.
    const socket = await stack.connect({ sid: ALICE_SID });
    const got = nextEvent(socket, "msgprint");
    await stack.publish("msgprint", { over: "tls" }, { room: userRoom(ALICE) });
    assert.deepEqual(await got, [{ over: "tls" }]);
    assert.ok(!stack.server.output.includes(PASSWORD), "the password appears in the log");
  });

  test("a server that does not trust the certificate is refused, and says why", async () => {
    const before = await redis.subscribers();
    const stack = await tlsStack({ SSL_CERT_FILE: path.join(dir, "server.csr") }); // no CA in it
    await waitFor(() => /cannot subscribe to Redis/.test(stack.server.output),
      { timeoutMs: 10000, what: "the subscription error in the log" });
    assert.equal(await redis.subscribers(), before, "no subscription without a trusted certificate");
    assert.ok(!stack.server.output.includes(PASSWORD), "the password appears in the log");
  });
});

// Redis Sentinel, as Frappe's publisher reads it (protocol §1.3): `redis_queue_sentinel_enabled`,
// `redis_queue_sentinels` and `redis_queue_master_service`. The bench's `redis_queue` points at
// a port where nothing listens, so events can only come through the master the sentinel names.
// After `SENTINEL FAILOVER` and the old master's stop, the subscription finds the new master.
describe("Redis Sentinel for the subscriber", () => {
  let dir;
  let master;
  let replica;
  let sentinel;
  let stack;

  /** `redis-cli` against `port`; its output, trimmed. */
  const cli = (port, ...args) => execFileSync("redis-cli", ["-p", String(port), ...args],
    { encoding: "utf8", timeout: 5000 }).trim();
  const sentinelMaster = () => cli(sentinel.port, "SENTINEL", "get-master-addr-by-name", "mymaster").split("\n")[1];

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "redis-sentinel-"));
    master = await Redis.start();
    replica = await Redis.start({ args: ["--replicaof", "127.0.0.1", String(master.port)] });
    await waitFor(() => /master_link_status:up/.test(cli(replica.port, "INFO", "replication")),
      { timeoutMs: 10000, what: "the replica to sync" });
    const port = await freePort();
    const conf = path.join(dir, "sentinel.conf");
    fs.writeFileSync(conf, [`port ${port}`, "bind 127.0.0.1", `sentinel monitor mymaster 127.0.0.1 ${master.port} 1`,
      "sentinel down-after-milliseconds mymaster 1000", "sentinel failover-timeout mymaster 10000", ""].join("\n"));
    const proc = spawn("redis-server", [conf, "--sentinel"], { stdio: "ignore" });
    sentinel = { port, proc, exited: new Promise((resolve) => proc.once("exit", resolve)) };
    await waitFor(() => { try { return sentinelMaster() === String(master.port); } catch { return false; } },
      { timeoutMs: 10000, what: "the sentinel to monitor the master" });

    const frappe = await new FakeFrappe({ version: 15, redisUrl: master.url }).listen();
    frappe.addSite(SITES[0]);
    frappe.addSession(SITES[0], ALICE_SID, ALICE);
    const serverPort = await freePort();
    const bench = makeBench({ version: 15, common: {
      socketio_port: serverPort,
      redis_queue: `redis://127.0.0.1:${await freePort()}`, // nothing listens there
      redis_queue_sentinel_enabled: 1,
      redis_queue_sentinels: [`127.0.0.1:${port}`],
      redis_queue_master_service: "mymaster",
    } });
    const server = await Server.start({ bench, port: serverPort });
    stack = new Stack({ redis: master, frappe, bench, server, port: serverPort });
    await stack.waitSubscribed();
  });
  after(async () => {
    for (const socket of stack?.sockets ?? []) socket.disconnect();
    await stack?.server.stop();
    await stack?.frappe.close();
    if (stack) fs.rmSync(stack.bench, { recursive: true, force: true });
    if (sentinel && sentinel.proc.exitCode === null) {
      sentinel.proc.kill("SIGTERM");
      await sentinel.exited;
    }
    await master?.stop();
    await replica?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test("events come through the master the sentinel names, and follow a failover", async () => {
    const socket = await stack.connect({ sid: ALICE_SID });
    const before = nextEvent(socket, "msgprint");
    await stack.publish("msgprint", { on: "first master" }, { room: userRoom(ALICE) });
    assert.deepEqual(await before, [{ on: "first master" }]);

    cli(sentinel.port, "SENTINEL", "FAILOVER", "mymaster");
    await waitFor(() => sentinelMaster() === String(replica.port), { timeoutMs: 15000, what: "the failover" });
    await master.stop();
    await waitFor(() => replica.subscribers().then((n) => n >= 1).catch(() => false),
      { timeoutMs: 10000, what: "the subscription on the new master" });
    const after = nextEvent(socket, "msgprint");
    await replica.publish({ event: "msgprint", message: { on: "new master" }, namespace: SITES[0], room: userRoom(ALICE) });
    assert.deepEqual(await after, [{ on: "new master" }]);
  });
});
