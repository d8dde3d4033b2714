// The operators' status page (README "Status page"): for a known state (sockets on two sites
// by transport, users, Guest, rooms, two refused handshakes), /status.json reports it exactly
// and headless Chromium (playwright-core) shows it on /status. The page never shows a
// credential. A screenshot goes to tests/artifacts/status-page.png.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { startStack, refusal, waitFor, ROOT, SITES, ALICE, ALICE_SID, BOB, BOB_SID } from "../../support/harness.mjs";
import { findProgram } from "../../support/bench-nginx.mjs";

const CHROMIUM = findProgram([process.env.CHROMIUM_PATH, "/usr/bin/chromium", "chromium", "chromium-browser"].filter(Boolean));
const [SITE1, SITE2] = SITES;

describe("the status page", () => {
  let stack;
  const statusUrl = () => `http://127.0.0.1:${stack.port}/status`;
  const statusJson = async () => (await fetch(`${statusUrl()}.json`)).json();

  before(async () => {
    stack = await startStack();
    // site1: alice on a websocket and bob long-polling; a Guest; site2: alice on a websocket.
    await stack.connect({ site: SITE1, sid: ALICE_SID, transports: ["websocket"] });
    await stack.connect({ site: SITE1, sid: BOB_SID, transports: ["polling"] });
    await stack.connect({ site: SITE1, sid: "sid-nobody-knows", transports: ["websocket"] }); // a Guest
    await stack.connect({ site: SITE2, sid: ALICE_SID, transports: ["websocket"] });
    // Two refusals: a page on another origin, then a client naming no site this bench has.
    assert.equal(await refusal(stack.socket({ site: SITE1, sid: ALICE_SID, origin: "https://evil.example" })),
      "Invalid origin");
    assert.equal(await refusal(stack.socket({ site: SITE1, sid: ALICE_SID, namespace: "/",
      headers: { "x-frappe-site-name": "nosuch.local" } })), "Invalid namespace");
  });
  after(async () => { await stack?.stop(); });

  test("/status.json reports the sockets, users, rooms and refusals as they are", async () => {
    const status = await waitFor(async () => {
      const s = await statusJson();
      return s.refused_handshakes.length === 2 && s;
    }, { what: "both refusals on the status" });
    assert.equal(status.redis_subscribed, true);
    const site1 = status.sites.find((s) => s.site === SITE1);
    assert.deepEqual(site1.sockets, { polling: 1, websocket: 2 });
    assert.equal(site1.users_online, 2);
    assert.deepEqual(site1.users, [ALICE, BOB]);
    assert.equal(site1.guests, 1);
    const website = site1.busiest_rooms.find((r) => r.room === "website");
    assert.equal(website.members, 3, JSON.stringify(site1.busiest_rooms));
    assert.equal(site1.busiest_rooms.find((r) => r.room === `user:${ALICE}`).members, 1);
    const site2 = status.sites.find((s) => s.site === SITE2);
    assert.deepEqual(site2.sockets, { polling: 0, websocket: 1 });
    assert.equal(site2.users_online, 1);

    const [newest, older] = status.refused_handshakes;
    assert.equal(newest.reason, "invalid_namespace");
    assert.equal(newest.message, "Invalid namespace");
    assert.equal(newest.namespace, "/");
    assert.equal(newest.site_name, "nosuch.local");
    assert.equal(older.reason, "invalid_origin");
    assert.equal(older.origin, "https://evil.example");
    assert.equal(older.site, SITE1);
    assert.ok(older.host?.startsWith("127.0.0.1:"), older.host);

    assert.ok(status.frappe_calls.outcomes.ok >= 4, JSON.stringify(status.frappe_calls));
    const text = JSON.stringify(status);
    assert.ok(!text.includes(ALICE_SID) && !text.includes(BOB_SID), "no credential on the status");
  });

  test("Chromium shows the same state on /status", { skip: !CHROMIUM && "chromium is not installed" }, async () => {
    const { chromium } = await import("playwright-core");
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      timeout: 20000,
      args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-proxy-server"],
    });
    try {
      const page = await browser.newPage({ viewport: { width: 1200, height: 640 } });
      page.setDefaultTimeout(15000);
      const response = await page.goto(statusUrl());
      assert.equal(response.status(), 200);
      assert.equal(await page.title(), "frappe-realtime status");
      const cells = async (selector) => page.locator(selector).allInnerTexts();
      const site1 = await cells(`tr[data-site="${SITE1}"] td`);
      assert.equal(site1[0], SITE1);
      assert.deepEqual(site1.slice(1, 3), ["2", "1"], "websocket and polling sockets");
      assert.match(site1[3], /^2: alice@example\.com, bob@example\.com$/);
      assert.equal(site1[4], "1", "guests");
      assert.match(site1[5], /website \(3\)/);
      const origin = await cells('tr[data-reason="invalid_origin"] td');
      assert.equal(origin[3], "invalid_origin");
      assert.equal(origin[4], "Invalid origin");
      assert.equal(origin[6], "https://evil.example");
      const namespace = await cells('tr[data-reason="invalid_namespace"] td');
      assert.equal(namespace[7], "nosuch.local");
      assert.match(await page.locator("#redis").innerText(), /subscribed to events/);
      assert.match(await page.locator("#totals").innerText(), /4 sockets · 3 users on 2 sites/);
      const html = await page.content();
      assert.ok(!html.includes(ALICE_SID), "no credential on the page");
      await page.screenshot({ path: path.join(ROOT, "tests/artifacts/status-page.png"), fullPage: true });
    } finally {
      await browser.close();
    }
  });
});
