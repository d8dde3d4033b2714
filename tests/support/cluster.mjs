// Several frappe-realtime instances on one bench and one Redis, as a large bench runs them
// (README "Several instances"): the same binary and bench configuration, each on its own port
// (FRAPPE_SOCKETIO_PORT) with `--upstream-server I/N`, all subscribed to Frappe's `events`.
// Optionally behind bench's real nginx with the upstream block of nginx/socketio-upstream.conf.
//
// Every wait is bounded; everything listens on loopback; each process is stopped by its PID.
import fs from "node:fs";
import path from "node:path";
import { Server, Stack, freePort, startStack, waitFor, ROOT, SITES } from "./harness.mjs";
import { BenchNginx, renderBench } from "./bench-nginx.mjs";

export const UPSTREAM_TEMPLATE = path.join(ROOT, "nginx/socketio-upstream.conf");

export class Cluster {
  /**
   * `count` instances; `instances[i]` is a Stack on instance i (they share Redis, the fake
   * Frappe and the bench), so `instances[i].socket()` connects to that instance and any of
   * them publishes.
   */
  static async start({ count = 3, version = 16, sites = SITES, common = {} } = {}) {
    const cluster = new Cluster();
    const args = (i) => ["--host", "127.0.0.1", "--upstream-server", `${i + 1}/${count}`];
    const first = await startStack({ version, sites, common, serverArgs: args(0) });
    cluster.instances = [first];
    try {
      for (let i = 1; i < count; i += 1) {
        const port = await freePort();
        const server = await Server.start({ bench: first.bench, port, args: args(i),
          env: { FRAPPE_SOCKETIO_PORT: String(port) } });
        cluster.instances.push(new Stack({ ...first, server, port }));
      }
      await waitFor(() => first.redis.subscribers().then((n) => n >= count).catch(() => false),
        { timeoutMs: 10000, what: `${count} instances subscribed to events` });
    } catch (err) {
      await cluster.stop().catch(() => {});
      throw err;
    }
    return cluster;
  }

  get ports() {
    return this.instances.map((stack) => stack.port);
  }

  /**
   * Bench's rendered nginx.conf for `site`, its upstream block replaced by the shipped
   * template's with these instances' ports, sticky by `hash $arg_sid` (`sticky: "sid"`) or
   * by `ip_hash` (`sticky: "address"`), on a free loopback port.
   */
  async startNginx({ site, sticky, dir }) {
    const first = this.instances[0];
    const port = await freePort();
    const benchName = path.basename(first.bench);
    const { nginxConf } = await renderBench({ bench: first.bench, benchName, sites: [site],
      socketioPort: first.port, webserverPort: first.frappe.port, nginxPort: port, out: path.join(dir, "rendered") });
    const upstream = upstreamBlock({ benchName, ports: this.ports, sticky });
    const ours = nginxConf.replace(new RegExp(`upstream ${benchName}-socketio-server \\{[^}]*\\}`), upstream);
    if (ours === nginxConf) throw new Error("the rendered nginx.conf has no socketio upstream block");
    this.nginx = await BenchNginx.start({ conf: ours, port, dir: path.join(dir, "nginx") });
    return this.nginx;
  }

  async stop() {
    const errors = [];
    await this.nginx?.stop().catch((err) => errors.push(err));
    for (const stack of this.instances.slice(1)) {
      for (const socket of stack.sockets) socket.disconnect();
      await stack.server.stop().catch((err) => errors.push(err));
      const leaked = [...stack.frappe.secretsIssued].filter((secret) => stack.server.output.includes(secret));
      if (leaked.length > 0) errors.push(new Error(`an instance's log contains secrets: ${leaked.join(", ")}`));
    }
    await this.instances[0]?.stop().catch((err) => errors.push(err));
    if (errors.length > 0) throw errors[0];
  }
}

/** nginx/socketio-upstream.conf's block with `benchName`, `ports` and the `sticky` mode. */
export function upstreamBlock({ benchName, ports, sticky }) {
  const template = fs.readFileSync(UPSTREAM_TEMPLATE, "utf8");
  const block = /^upstream [^{]+\{[^}]*\}/m.exec(template)[0];
  const servers = ports.map((port) => `    server 127.0.0.1:${port} fail_timeout=0;`).join("\n");
  let text = block
    .replace("upstream frappe-bench-socketio-server", `upstream ${benchName}-socketio-server`)
    .replace(/(    server 127\.0\.0\.1:\d+ fail_timeout=0;\n?)+/, `${servers}\n`);
  if (sticky === "address") {
    text = text.replace("\n    hash $arg_sid;", "\n    # hash $arg_sid;").replace("# ip_hash;", "ip_hash;");
  } else if (sticky !== "sid") {
    throw new Error(`sticky is "sid" or "address", not ${sticky}`);
  }
  return text;
}
