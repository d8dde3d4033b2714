// Benchmark: prints figures, asserts nothing. Starts redis-server, the fake Frappe and the
// release binary on loopback, then measures
//   - handshakes/s: N clients connecting at once (each costs one get_user_info call),
//   - deliveries/s: M events published to `all`, each delivered to every client, and the
//     server's CPU time per delivery (the clients, in one Node process, bound the rate),
//   - server RSS idle and per connection.
// Usage: scripts/bench [clients=500] [events=200] [transport=websocket|polling] [metrics=on|off]
// Every loop is bounded in count and time; everything started here is stopped by its PID.
import { startStack, waitFor } from "../tests/support/harness.mjs";

const clients = Number(process.argv[2] ?? 500);
const events = Number(process.argv[3] ?? 200);
const transport = process.argv[4] ?? "websocket";
const metrics = process.argv[5] ?? "on";
const TIME_LIMIT_MS = 120_000;

const serverArgs = ["--host", "127.0.0.1", ...(metrics === "off" ? ["--no-metrics"] : [])];
const stack = await startStack({ version: 16, serverArgs });
try {
  const idleRss = stack.server.rssKiB();

  const cpuBeforeConnect = stack.server.cpuMs();
  let started = performance.now();
  const sockets = [];
  for (let i = 0; i < clients; i++) sockets.push(stack.socket({ sid: "sid-alice", transports: [transport] }));
  let connectedCount = 0;
  await Promise.all(sockets.map((s) => new Promise((resolve, reject) => {
    s.once("connect", () => { connectedCount += 1; resolve(); });
    s.once("connect_error", reject);
  })));
  const connectMs = performance.now() - started;
  const connectCpuMs = stack.server.cpuMs() - cpuBeforeConnect;
  const connectedRss = stack.server.rssKiB();

  let receivedTotal = 0;
  for (const s of sockets) s.on("tick", () => { receivedTotal += 1; });
  const expected = clients * events;
  const payload = { doctype: "ToDo", name: "TODO-0001", user: "alice@example.com", modified: "2026-11-23 12:00:00.000000" };
  const cpuBefore = stack.server.cpuMs();
  started = performance.now();
  for (let i = 0; i < events; i++) await stack.publish("tick", { ...payload, i }, { room: "all" });
  await waitFor(() => receivedTotal >= expected, { timeoutMs: TIME_LIMIT_MS, everyMs: 5, what: "every delivery" });
  const deliverMs = performance.now() - started;
  const serverCpuMs = stack.server.cpuMs() - cpuBefore;

  const figures = {
    transport,
    metrics,
    clients: connectedCount,
    events,
    handshakes_per_s: Math.round(clients / (connectMs / 1000)),
    connect_all_ms: Math.round(connectMs),
    server_cpu_us_per_handshake: Math.round((connectCpuMs * 1000) / clients),
    frappe_user_info_calls: stack.frappe.callsTo("get_user_info").length,
    deliveries: receivedTotal,
    deliveries_per_s: Math.round(expected / (deliverMs / 1000)),
    deliver_all_ms: Math.round(deliverMs),
    server_cpu_ms_delivering: Math.round(serverCpuMs),
    server_cpu_us_per_delivery: +((serverCpuMs * 1000) / expected).toFixed(2),
    rss_idle_mib: +(idleRss / 1024).toFixed(1),
    rss_connected_mib: +(connectedRss / 1024).toFixed(1),
    rss_per_connection_kib: +((connectedRss - idleRss) / clients).toFixed(1),
  };
  console.log(JSON.stringify(figures, null, 1));
} finally {
  await stack.stop();
}
