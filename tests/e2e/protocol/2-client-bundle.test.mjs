// The socket.io client bundle at /socket.io/socket.io.js and its siblings, served from the
// bench's apps/frappe/node_modules/socket.io-client as Node's socket.io serves its own
// (`serveClient`): bodies, content types, ETag and 304, 404 for a file the bench lacks, no way
// out of the dist folder, and Socket.IO itself still answering under /socket.io/.
//
// Every request has a time limit; everything runs on loopback.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { startStack, nextEvent, ALICE, ALICE_SID, userRoom } from "../../support/harness.mjs";

const VERSION = "4.8.1-bundle-test";
const FILES = {
  "socket.io.js": "/* socket.io.js, full */ window.io = function () {};\n",
  "socket.io.min.js": "window.io=function(){};/* min */\n",
  "socket.io.js.map": JSON.stringify({ version: 3, file: "socket.io.js", mappings: "" }),
};
/** In the dist folder, where a request joined onto the disk would land: must never be served. */
const DIST_SECRET = "DIST-SECRET-not-a-client-file";

let stack;
let packageDir;

before(async () => {
  stack = await startStack();
  packageDir = path.join(stack.bench, "apps/frappe/node_modules/socket.io-client");
  writeBundle();
});
after(async () => { await stack?.stop(); });

function writeBundle({ version = VERSION, files = FILES } = {}) {
  fs.mkdirSync(path.join(packageDir, "dist"), { recursive: true });
  fs.writeFileSync(path.join(packageDir, "package.json"), JSON.stringify({ name: "socket.io-client", version }));
  for (const [name, body] of Object.entries(files)) fs.writeFileSync(path.join(packageDir, "dist", name), body);
  fs.writeFileSync(path.join(packageDir, "dist/x"), DIST_SECRET);
}

/**
 * One request with the path exactly as given (no URL normalisation of `..`, unlike fetch), on
 * loopback, within 3 s. Resolves with status, headers and body.
 */
function request(pathname, { method = "GET", headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: stack.port, path: pathname, method, headers, timeout: 3000 },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => { body += chunk; });
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body }));
      });
    req.on("timeout", () => req.destroy(new Error(`no answer to ${method} ${pathname} within 3 s`)));
    req.on("error", reject);
    req.end();
  });
}

test("each client file is served from the bench, with Node's headers", async () => {
  for (const [name, body] of Object.entries(FILES)) {
    const res = await request(`/socket.io/${name}`);
    assert.equal(res.status, 200, name);
    assert.equal(res.body, body, name);
    const type = name.endsWith(".map") ? "application/json; charset=utf-8" : "application/javascript; charset=utf-8";
    assert.equal(res.headers["content-type"], type, name);
    assert.equal(res.headers.etag, `"${VERSION}"`, name);
    assert.equal(res.headers["cache-control"], "public, max-age=0", name);
  }
});

test("a query string does not change what is served; HEAD gets the headers only", async () => {
  const res = await request("/socket.io/socket.io.js?v=123");
  assert.equal(res.status, 200);
  assert.equal(res.body, FILES["socket.io.js"]);

  const head = await request("/socket.io/socket.io.min.js", { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal(head.body, "");
  assert.equal(head.headers.etag, `"${VERSION}"`);
  assert.equal(head.headers["content-type"], "application/javascript; charset=utf-8");
});

test("If-None-Match with the version's ETag gets 304 without a body; another one gets the file", async () => {
  for (const tag of [`"${VERSION}"`, `W/"${VERSION}"`]) {
    const res = await request("/socket.io/socket.io.js", { headers: { "if-none-match": tag } });
    assert.equal(res.status, 304, tag);
    assert.equal(res.body, "");
    assert.equal(res.headers.etag, `"${VERSION}"`);
  }
  const stale = await request("/socket.io/socket.io.js", { headers: { "if-none-match": '"4.7.0"' } });
  assert.equal(stale.status, 200);
  assert.equal(stale.body, FILES["socket.io.js"]);
});

test("the files are read per request: a bench update shows at once, with the new ETag", async () => {
  const updated = "/* updated by bench update */\n";
  try {
    writeBundle({ version: "4.9.0", files: { ...FILES, "socket.io.js": updated } });
    const res = await request("/socket.io/socket.io.js", { headers: { "if-none-match": `"${VERSION}"` } });
    assert.equal(res.status, 200, "the old ETag no longer matches");
    assert.equal(res.body, updated);
    assert.equal(res.headers.etag, '"4.9.0"');
  } finally {
    writeBundle();
  }
});

test("a client file the bench does not have gets 404, even for a matching ETag", async () => {
  for (const name of ["socket.io.esm.min.js", "socket.io.msgpack.min.js.map", "socket.io.min.js.map"]) {
    const res = await request(`/socket.io/${name}`, { headers: { "if-none-match": `"${VERSION}"` } });
    assert.equal(res.status, 404, name);
  }
  const dist = path.join(packageDir, "dist");
  const moved = `${dist}.away`;
  fs.renameSync(dist, moved);
  try {
    const res = await request("/socket.io/socket.io.js");
    assert.equal(res.status, 404, "no dist folder at all");
  } finally {
    fs.renameSync(moved, dist);
  }
});

test("unknown names and traversal attempts are never answered from disk", async () => {
  const common = fs.readFileSync(path.join(stack.bench, "sites/common_site_config.json"), "utf8");
  assert.match(common, /redis_queue/);
  for (const pathname of [
    "/socket.io/..%2f..%2fsites%2fcommon_site_config.json",
    "/socket.io/..%2F..%2F..%2F..%2F..%2Fsites%2Fcommon_site_config.json",
    "/socket.io/../../../../../sites/common_site_config.json",
    "/socket.io/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/sites/common_site_config.json",
    "/socket.io/socket.io.js/../x",
    "/socket.io/socket.io.js%2f..%2fx",
    "/socket.io/socket.io.js/",
    "/socket.io/x",
    "/socket.io/package.json",
    "/socket.io/dist/socket.io.js",
    "/socket.io/socket.io.foo.js",
    "/socket.io/SOCKET.IO.JS",
    "/socket.io.js",
  ]) {
    const res = await request(pathname);
    // Under /socket.io/ these go on to engine.io, which refuses them ("Transport unknown", 400,
    // as Node's engine.io does); elsewhere the service's 404.
    const expected = pathname.startsWith("/socket.io/") ? 400 : 404;
    assert.equal(res.status, expected, `${pathname}: status ${res.status} ${res.body.slice(0, 80)}`);
    assert.ok(!res.body.includes("redis_queue"), `${pathname} leaked common_site_config.json`);
    assert.ok(!res.body.includes(DIST_SECRET), `${pathname} leaked a file of the dist folder`);
    assert.ok(!res.body.includes("window.io"), `${pathname} was answered with the bundle`);
  }
});

test("Socket.IO still answers under /socket.io/: the polling open packet and a client connection", async () => {
  const open = await request("/socket.io/?EIO=4&transport=polling");
  assert.equal(open.status, 200);
  assert.match(open.body, /^0\{/, `an Engine.IO open packet (got ${open.body.slice(0, 80)})`);

  const socket = await stack.connect({ sid: ALICE_SID });
  const got = nextEvent(socket, "msgprint");
  await stack.publish("msgprint", "still here", { room: userRoom(ALICE) });
  assert.deepEqual(await got, ["still here"]);
});

test("CORS: a cross-origin request for the bundle gets the Origin echoed, as Node's cors middleware does", async () => {
  const origin = "http://example.test";
  const res = await request("/socket.io/socket.io.min.js", { headers: { origin } });
  assert.equal(res.status, 200);
  assert.equal(res.headers["access-control-allow-origin"], origin);
  assert.equal(res.headers["access-control-allow-credentials"], "true");
});
