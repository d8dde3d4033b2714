// A TCP proxy in front of the server that a test can cut: `cut({hold: true})` destroys every
// connection through it (the client sees its transport close) and keeps new ones waiting until
// `release()`; `stall()` stops the server's bytes short of the client (a client that stopped
// reading, to the server). Loopback only.
import net from "node:net";

export class CutProxy {
  /** Listen on a free loopback port and forward every connection to `targetPort`. */
  static async start(targetPort) {
    const proxy = new CutProxy(targetPort);
    await new Promise((resolve) => proxy.server.listen(0, "127.0.0.1", resolve));
    proxy.port = proxy.server.address().port;
    return proxy;
  }

  constructor(targetPort) {
    this.targetPort = targetPort;
    this.pairs = new Set();
    this.held = false;
    this.waiting = [];
    this.server = net.createServer((client) => {
      client.on("error", () => {});
      if (this.held) this.waiting.push(client);
      else this.#forward(client);
    });
  }

  #forward(client) {
    if (client.destroyed) return;
    const upstream = net.connect(this.targetPort, "127.0.0.1");
    const pair = { client, upstream };
    this.pairs.add(pair);
    const drop = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    upstream.on("error", drop);
    client.on("error", drop);
    upstream.on("close", drop);
    client.on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Destroy every connection through the proxy; with `hold`, new ones wait for `release`. */
  cut({ hold = false } = {}) {
    this.held = hold;
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  /** Stop passing the server's bytes on through the current connections, which stay open:
   * the server's writes pile up as for a client that stopped reading. `cut` ends them. */
  stall() {
    for (const { client, upstream } of this.pairs) {
      upstream.unpipe(client);
      upstream.pause();
    }
  }

  /** Keep new connections waiting for `release`, leaving the current ones be. */
  hold() {
    this.held = true;
  }

  /** Forward the connections that waited, and every new one. */
  release() {
    this.held = false;
    const waiting = this.waiting;
    this.waiting = [];
    for (const client of waiting) this.#forward(client);
  }

  async close() {
    this.cut();
    for (const client of this.waiting) client.destroy();
    this.waiting = [];
    await new Promise((resolve) => this.server.close(resolve));
  }
}
