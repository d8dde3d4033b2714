// Redis as benches deploy it beyond a plain URL (issue 20, item 6; the plain URL, unix://,
// and passwords are §1.3's tests in protocol/1-2-startup-and-server-options.test.mjs):
//
// - `rediss://` (TLS): a redis-server with a TLS port, its certificate signed by a throwaway
//   CA the server trusts through SSL_CERT_FILE (as an operator adds a CA to the system's
//   store). Events arrive over the TLS subscription and Frappe 16's socket secret is read
//   over it; a server that does not trust the CA is refused by it and says so without the URL's
//   password.
//
// Every wait is bounded; everything listens on loopback; processes are stopped by PID.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
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
