// Client→backend events (docs/app-handlers.md, "queue" and "forward"): only events an app or
// the operator declared reach the backend, on a Redis stream a worker or an agent reads (with
// site, user, socket id and an id of the server's), or over HTTP to a whitelisted method with
// the sender's credential; rate- and size-limited per socket; the answer comes back through
// the acknowledgement or a later publish_realtime to the user's room.
//
// The two flows users build today, end to end with socket.io-client: an IDE chat that sends
// a message and answers a backend's question, and an agent UI that cancels a running request
// and sends feedback while the worker streams task_progress. The worker is this test, reading
// the stream with node-redis and publishing as frappe.publish_realtime does. Every wait is
// bounded.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { startStack, waitFor, nextEvent, SITES, ALICE, ALICE_SID } from "../../support/harness.mjs";

const [SITE, OTHER_SITE] = SITES;

const HANDLERS = {
  ide_chat: {
    app: "ide_chat",
    handlers: [
      { event: "chat_message", queue: { stream: "ide_chat:{site}" } },
      { event: "user_response", queue: { stream: "ide_chat:{site}", max_bytes: 1024, per_second: 1, burst: 3 } },
      { event: "chat_message_http", forward: { call: "ide_chat.api.send_message", reply: true } },
    ],
  },
  agent: {
    app: "agent",
    handlers: [
      { event: "cancel", queue: { stream: "agent:{site}" } },
      { event: "feedback", queue: { stream: "agent:{site}" } },
    ],
  },
};

/** Every entry of stream `key` after entry id `after`: [{id, fields}]. */
async function readStream(stack, key, after = "0") {
  const reply = await stack.redis.client.xRead({ key, id: after }, { COUNT: 1000 });
  return (reply?.[0]?.messages ?? []).map((m) => ({ id: m.id, fields: m.message }));
}

describe("client events declared for the backend", () => {
  let stack;
  before(async () => {
    stack = await startStack({
      apps: Object.keys(HANDLERS),
      installedApps: (site) => (site === SITE ? Object.keys(HANDLERS) : []),
      // The operator's directory: the apps themselves ship no file.
      beforeStart: (bench) => {
        const dir = path.join(bench, "config/realtime/handlers");
        fs.mkdirSync(dir, { recursive: true });
        for (const [app, file] of Object.entries(HANDLERS)) {
          fs.writeFileSync(path.join(dir, `${app}.json`), JSON.stringify(file));
        }
      },
    });
  });
  after(async () => { await stack?.stop(); });

  test("an IDE chat: the message and the answer to a question reach the stream; the reply comes on the user room",
    async () => {
      const stream = `ide_chat:${SITE}`;
      const chat = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
      const ack = await chat.timeout(5000).emitWithAck("chat_message", { conversation: "C1", text: "Why is this slow?" });
      assert.equal(typeof ack.id, "string");
      const [entry] = (await readStream(stack, stream)).filter((e) => e.fields.id === ack.id);
      assert.deepEqual(entry.fields.site, SITE);
      assert.equal(entry.fields.user, ALICE);
      assert.equal(entry.fields.socket_id, chat.id);
      assert.equal(entry.fields.app, "ide_chat");
      assert.equal(entry.fields.event, "chat_message");
      assert.deepEqual(JSON.parse(entry.fields.args), [{ conversation: "C1", text: "Why is this slow?" }]);

      // The backend answers on the user's room, naming the message, and asks a question.
      const reply = nextEvent(chat, "chat_reply");
      await stack.publish("chat_reply", { in_reply_to: ack.id, text: "An N+1 query." }, { room: `user:${ALICE}` });
      assert.deepEqual((await reply)[0], { in_reply_to: ack.id, text: "An N+1 query." });
      const question = nextEvent(chat, "agent_question");
      await stack.publish("agent_question", { question_id: "Q1", text: "Apply the fix?" }, { room: `user:${ALICE}` });
      const [{ question_id }] = await question;
      const answered = await chat.timeout(5000).emitWithAck("user_response", question_id, "yes");
      const [response] = (await readStream(stack, stream, entry.id)).filter((e) => e.fields.id === answered.id);
      assert.equal(response.fields.event, "user_response");
      assert.deepEqual(JSON.parse(response.fields.args), ["Q1", "yes"]);
      chat.disconnect();
    });

  test("an agent UI: cancel and feedback reach the worker, and its task_progress stops after the cancel", async () => {
    const stream = `agent:${SITE}`;
    const ui = await stack.connect({ sid: ALICE_SID, transports: ["websocket"] });
    const request = `req-${Math.random().toString(36).slice(2, 8)}`;
    ui.emit("task_subscribe", request);
    await stack.publishUntilReceived(ui, `task_progress:${request}`, { event: "task_progress" });

    // The worker: progress every 20 ms until it reads a cancel for its request (bounded).
    const seen = [];
    let published = 0;
    const worker = (async () => {
      let last = (await readStream(stack, stream)).at(-1)?.id ?? "0";
      for (let step = 0; step < 500; step += 1) {
        await stack.publish("task_progress", { task_id: request, progress: step }, { room: `task_progress:${request}` });
        published += 1;
        const entries = await readStream(stack, stream, last);
        if (entries.length) last = entries.at(-1).id;
        seen.push(...entries.map((e) => e.fields));
        if (seen.some((f) => f.event === "cancel" && JSON.parse(f.args)[0]?.request_id === request)) return "cancelled";
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      return "never cancelled";
    })();
    await waitFor(() => ui.received.filter((r) => r.event === "task_progress").length >= 5,
      { what: "some progress" });
    const feedback = await ui.timeout(5000).emitWithAck("feedback", { request_id: request, rating: -1, note: "wrong file" });
    const cancel = await ui.timeout(5000).emitWithAck("cancel", { request_id: request });
    assert.equal(await worker, "cancelled");

    const ids = seen.map((f) => f.id);
    assert.ok(ids.includes(feedback.id) && ids.includes(cancel.id), "the worker saw both, by the server's ids");
    for (const fields of seen) {
      assert.equal(fields.user, ALICE);
      assert.equal(fields.socket_id, ui.id);
    }
    // Everything the worker published arrived, and nothing came after the cancel.
    await stack.flush(ui, { userRoom: `user:${ALICE}` });
    const progress = ui.received.filter((r) => r.event === "task_progress" && r.args[0]?.task_id === request);
    assert.equal(progress.length, published, "every progress the worker published, and no more");
    ui.disconnect();
  });

  test("an event goes over HTTP to a whitelisted method with the sender's credential, the answer in the ack", async () => {
    stack.frappe.route("/api/method/ide_chat.api.send_message", (call) =>
      ({ body: { message: { accepted: true, echo: call.body, user: call.user } } }));
    const chat = await stack.connect({ sid: ALICE_SID });
    const answer = await chat.timeout(5000).emitWithAck("chat_message_http", { text: "hi" });
    assert.deepEqual(answer, { accepted: true, echo: { text: "hi" }, user: ALICE });
    chat.disconnect();
  });

  test("per-socket limits: beyond the burst and over the size, refused in the ack, counted, and not queued", async () => {
    const stream = `ide_chat:${SITE}`;
    const before = (await readStream(stack, stream)).length;
    const chat = await stack.connect({ sid: ALICE_SID });
    const acks = await Promise.all(Array.from({ length: 6 }, (_, i) =>
      chat.timeout(5000).emitWithAck("user_response", `Q${i}`, "ok")));
    const accepted = acks.filter((a) => a.id);
    // Burst 3, then 1/s: all six arrive within well under a second on any machine that runs
    // this suite, so at most one more gets through.
    assert.ok(accepted.length >= 3 && accepted.length <= 4, `burst 3 at 1/s: ${JSON.stringify(acks)}`);
    assert.equal(acks.filter((a) => a.error === "rate_limited").length, 6 - accepted.length);
    // The size is checked first: an empty bucket does not hide it.
    const big = await chat.timeout(5000).emitWithAck("user_response", "Q9", "x".repeat(2000));
    assert.deepEqual(big, { error: "too_large" });
    assert.equal((await readStream(stack, stream)).length, before + accepted.length);
    assert.ok(await stack.metric("frappe_realtime_client_events_queued_total",
      { site: SITE, app: "ide_chat", outcome: "rate_limited" }) >= 2);
    assert.equal(await stack.metric("frappe_realtime_client_events_queued_total",
      { site: SITE, app: "ide_chat", outcome: "too_large" }), 1);
    chat.disconnect();
  });

  test("on a site without the app, a declared event reaches no stream", async () => {
    const stream = `ide_chat:${OTHER_SITE}`;
    const chat = await stack.connect({ sid: ALICE_SID, site: OTHER_SITE });
    await assert.rejects(chat.timeout(1000).emitWithAck("chat_message", { text: "hi" }));
    await stack.flush(chat, { site: OTHER_SITE, userRoom: `user:${ALICE}` });
    assert.deepEqual(await readStream(stack, stream), []);
    chat.disconnect();
  });
});
