// A small stand-in for a Frappe web server: it answers the endpoints the realtime service
// calls exactly as docs/protocol.md (§4, §5.2) says Frappe does, for
// Frappe 13 to 16, with sessions, API tokens, a permission table, and fault injection.
import http from "node:http";
import crypto from "node:crypto";
import { createClient } from "redis";

const SECRET_KEY = "socketio_auth_secret";

export class FakeFrappe {
  /** @param {{version?: 13|14|15|16, redisUrl: string}} options */
  constructor({ version = 16, redisUrl }) {
    this.version = version;
    this.redisUrl = redisUrl;
    this.sites = new Map();
    /** Every request received: {path, site, query, headers} (for assertions). */
    this.calls = [];
    /** Fault injection for every endpoint: {latencyMs, status, body} (body: raw text). */
    this.fault = null;
    /** Delay before every normal answer, in ms. */
    this.latencyMs = 0;
    this.server = http.createServer((req, res) => this.#handle(req, res));
    this.secretsIssued = new Set();
    /** Requests being answered right now, and the most there ever were at once. */
    this.concurrent = 0;
    this.peakConcurrent = 0;
    /** An app's endpoints (see `route`), by path. */
    this.routes = new Map();
  }

  /**
   * Answer `path` (`/api/method/<app method>` or any other) as an app would: `answer` gets
   * the call (path, site, query, headers, the resolved `user`, the JSON `body` of a POST)
   * and returns `{status, body}` (status 200 when omitted).
   */
  route(path, answer) {
    this.routes.set(path, answer);
  }

  /** Listen on 127.0.0.1 (a free port unless `port` is given). */
  async listen(port = 0) {
    this.redis = createClient({ url: this.redisUrl });
    this.redis.on("error", () => {});
    await this.redis.connect();
    await new Promise((resolve, reject) => {
      this.server.once("error", reject); // e.g. EADDRINUSE: say so instead of waiting forever
      this.server.listen(port, "127.0.0.1", () => {
        this.server.off("error", reject);
        resolve();
      });
    });
    this.port = this.server.address().port;
    this.url = `http://127.0.0.1:${this.port}`;
    return this;
  }

  async close() {
    this.server.closeAllConnections?.();
    await new Promise((resolve) => this.server.close(resolve));
    // quit() waits for Redis to answer, which never happens while it is down (a test that
    // stopped it): bounded, then the connection is dropped.
    const quit = this.redis?.quit().catch(() => {});
    await Promise.race([quit, new Promise((resolve) => setTimeout(resolve, 2000).unref())]);
    await this.redis?.disconnect().catch(() => {});
  }

  addSite(name, { installedApps = ["frappe"] } = {}) {
    this.sites.set(name, { installedApps, sessions: new Map(), tokens: new Map(), allowed: new Set() });
    return this;
  }

  /** A browser login: the `sid` cookie of `user`. */
  addSession(site, sid, user, userType = "System User") {
    this.#site(site).sessions.set(sid, { user, userType });
    this.secretsIssued.add(sid);
  }

  /** A logout: `sid` stops being a session (Frappe then answers Guest). */
  removeSession(site, sid) {
    this.#site(site).sessions.delete(sid);
  }

  /** An API credential: the whole Authorization header value (`token k:s`, `Basic …`, `Bearer …`). */
  addToken(site, authorization, user, userType = "System User") {
    this.#site(site).tokens.set(authorization, { user, userType });
    this.secretsIssued.add(authorization.split(" ").pop());
  }

  /** Let `user` read a doctype (docname omitted) or one document. */
  allow(site, user, doctype, docname = "") {
    this.#site(site).allowed.add(`${user}\u0000${doctype}\u0000${docname}`);
  }

  callsTo(endpoint) {
    return this.calls.filter((c) => c.path.endsWith(endpoint));
  }

  #site(name) {
    const site = this.sites.get(name);
    if (!site) throw new Error(`fake Frappe has no site ${name}`);
    return site;
  }

  async #handle(req, res) {
    this.concurrent += 1;
    this.peakConcurrent = Math.max(this.peakConcurrent, this.concurrent);
    res.once("close", () => { this.concurrent -= 1; });
    const url = new URL(req.url, "http://x");
    const siteName = hostname(req.headers["x-frappe-site-name"] ?? req.headers.host ?? "");
    const call = { path: url.pathname, site: siteName, query: Object.fromEntries(url.searchParams), headers: req.headers };
    this.calls.push(call);
    if (this.latencyMs) await new Promise((r) => setTimeout(r, this.latencyMs));
    const fault = this.fault;
    if (fault?.latencyMs) await new Promise((r) => setTimeout(r, fault.latencyMs));
    if (fault?.status || fault?.body !== undefined) {
      res.writeHead(fault.status ?? 200, { "content-type": "text/html" });
      return res.end(fault.body ?? "");
    }
    const site = this.sites.get(siteName);
    if (!site) return reply(res, 404, { exc_type: "SiteNotFound" });
    const method = url.pathname.replace("/api/method/", "");
    const who = this.#resolveUser(site, req, url);
    if (who === "invalid-token") return reply(res, 401, { exc_type: "AuthenticationError" });
    const route = this.routes.get(url.pathname);
    if (route) {
      const text = await readBody(req);
      call.user = who.user;
      call.body = text ? JSON.parse(text) : undefined;
      const { status = 200, body } = await route(call);
      return reply(res, status, body);
    }
    switch (method) {
      case "frappe.realtime.get_user_info":
        return this.#getUserInfo(res, site, who, req);
      case "frappe.realtime.can_subscribe_doc":
        if (this.version > 15) break; // Frappe 13 to 15
        return permission(res, site, who, url.searchParams.get("doctype"), url.searchParams.get("docname"));
      case "frappe.realtime.can_subscribe_doctype":
        if (this.version > 15) break; // Frappe 13 to 15
        return permission(res, site, who, url.searchParams.get("doctype"), "");
      case "frappe.realtime.has_permission":
        if (this.version !== 16) break;
        return permission(res, site, who, url.searchParams.get("doctype"), url.searchParams.get("name") ?? "");
    }
    return reply(res, 404, { exc_type: "DoesNotExistError" });
  }

  // Frappe validates an Authorization header when present (401 if bad); otherwise it takes
  // `sid` from the form/query (v15 sends it there) or the cookie; an unknown sid is Guest.
  #resolveUser(site, req, url) {
    const authorization = req.headers.authorization;
    if (authorization) return site.tokens.get(authorization) ?? "invalid-token";
    const sid = url.searchParams.get("sid") ?? cookieValue(req.headers.cookie, "sid");
    return site.sessions.get(sid) ?? { user: "Guest", userType: "Website User" };
  }

  async #getUserInfo(res, site, who, req) {
    if (this.version === 16) {
      let secret = await this.redis.get(SECRET_KEY);
      if (!secret) {
        secret = crypto.randomBytes(16).toString("hex");
        await this.redis.set(SECRET_KEY, secret);
      }
      this.secretsIssued.add(secret);
      if (req.headers["x-frappe-socket-secret"] !== secret) return reply(res, 200, { message: {} });
      return reply(res, 200, { message: { user: who.user, user_type: who.userType, installed_apps: site.installedApps } });
    }
    return reply(res, 200, { message: { user: who.user, user_type: who.userType } });
  }
}

function permission(res, site, who, doctype, docname) {
  if (site.allowed.has(`${who.user}\u0000${doctype}\u0000${docname ?? ""}`)) {
    return reply(res, 200, { message: true });
  }
  return reply(res, 403, { exc_type: "PermissionError", _server_messages: "[\"Not permitted\"]" });
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let text = "";
    req.setEncoding("utf8");
    req.on("data", (chunk) => { text += chunk; });
    req.on("end", () => resolve(text));
    req.on("error", reject);
  });
}

function reply(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

function hostname(value) {
  const withoutScheme = value.includes("://") ? value.split("://")[1] : value;
  return withoutScheme.split("/")[0].split(":")[0];
}

function cookieValue(header, name) {
  for (const pair of (header ?? "").split(";")) {
    const [key, ...rest] = pair.trim().split("=");
    if (key === name) return rest.join("=");
  }
  return undefined;
}
