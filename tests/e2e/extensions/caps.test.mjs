// Connection caps (docs/reliability.md): realtime_max_connections_per_user, _per_ip and
// _per_site refuse handshakes beyond the cap with a clear connect_error, count them, and give
// the place back when a socket leaves. The address is the peer's, or what a proxy on this
// machine appended last to X-Forwarded-For.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startStack, refusal, waitFor, connected, SITES, ALICE_SID, BOB_SID, CAROL_SID, DAVE_TOKEN,
} from "../../support/harness.mjs";

let stack;
before(async () => {
  stack = await startStack({
    common: {
      realtime_max_connections_per_user: 2,
      realtime_max_connections_per_ip: 3,
      realtime_max_connections_per_site: 6,
    },
  });
});
after(async () => { await stack?.stop(); });

const from = (ip) => ({ "x-forwarded-for": `10.9.9.9, ${ip}` });

const handshakes = (outcome) => stack.metric("frappe_realtime_handshakes_total", { outcome, site: SITES[0] });

test("each cap refuses the connection past it, and a departure frees a place", async () => {
  const alice = [];
  for (const ip of ["198.51.100.1", "198.51.100.2"]) {
    alice.push(await stack.connect({ sid: ALICE_SID, headers: from(ip) }));
  }
  assert.equal(await refusal(stack.socket({ sid: ALICE_SID, headers: from("198.51.100.3") })),
    "Too many connections for this user");

  // bob twice and carol once from one address fill its cap of 3.
  const shared = from("203.0.113.7");
  await stack.connect({ sid: BOB_SID, headers: shared });
  await stack.connect({ sid: BOB_SID, headers: shared });
  await stack.connect({ sid: CAROL_SID, headers: shared });
  assert.equal(await refusal(stack.socket({ sid: CAROL_SID, headers: shared })),
    "Too many connections for this address");

  // A sixth socket fills the site: it is full for anyone, from anywhere.
  await stack.connect({ sid: CAROL_SID, headers: from("192.0.2.50") });
  assert.equal(await refusal(stack.socket({ authorization: DAVE_TOKEN, headers: from("192.0.2.51") })),
    "Too many connections for this site");
  await stack.connect({ site: SITES[1], sid: CAROL_SID }); // other site: its own count

  assert.equal(await handshakes("too_many_connections_user"), 1);
  assert.equal(await handshakes("too_many_connections_ip"), 1);
  assert.equal(await handshakes("too_many_connections_site"), 1);

  alice[0].disconnect();
  await waitFor(async () => {
    const retry = stack.socket({ authorization: DAVE_TOKEN, headers: from("192.0.2.51") });
    return connected(retry, 3000).then(() => true, () => false);
  }, { timeoutMs: 5000, everyMs: 100, what: "the freed place to be taken" });
});

test("a refused client is not retried by socket.io-client and stays refused", async () => {
  const socket = stack.socket({ sid: ALICE_SID, headers: from("198.51.100.9") });
  assert.match(await refusal(socket), /^Too many connections for this (user|site)$/);
  assert.equal(socket.active, false);
});
