#!/usr/bin/env node
// A non-browser Socket.IO client for a Frappe site's realtime service (frappe-realtime or
// Frappe's own Node service): logs in with a Frappe session id or an API token and prints every
// event it receives, one line each: `event <name> <JSON array of the arguments>`.
//
//   node examples/node-client/client.mjs --url http://127.0.0.1:9000 --site erp.example.com --token KEY:SECRET
//
// See examples/README.md for every flag. Exit status: 0 after --once EVENT or
// --exit-after-connect, or when stopped with Ctrl-C; 1 on a refused connection, a disconnect or
// the --timeout; 2 on bad usage. The credential is never printed.
import { parseArgs } from "node:util";
import { io } from "socket.io-client";

const USAGE = `usage: client.mjs --url URL [--site SITE] (--sid SID | --token KEY:SECRET)
                  [--namespace /SITE|/] [--origin URL] [--transports polling,websocket]
                  [--credential-in both|auth|headers] [--once EVENT] [--exit-after-connect]
                  [--timeout SECONDS]
  The credential may also come from the environment: FRAPPE_SID or FRAPPE_TOKEN.`;

function usage(problem) {
  console.error(`client: ${problem}\n${USAGE}`);
  process.exit(2);
}

function parseOptions() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: "string" },
        site: { type: "string" },
        sid: { type: "string" },
        token: { type: "string" },
        namespace: { type: "string", default: "/" },
        origin: { type: "string" },
        transports: { type: "string", default: "polling,websocket" },
        "credential-in": { type: "string", default: "both" },
        once: { type: "string" },
        "exit-after-connect": { type: "boolean", default: false },
        timeout: { type: "string", default: "30" },
        help: { type: "boolean", default: false },
      },
    }));
  } catch (err) {
    usage(err.message);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  // Flags win over the environment; the environment keeps the secret out of `ps` output.
  const sid = values.sid ?? (values.token ? undefined : process.env.FRAPPE_SID);
  const token = values.token ?? (values.sid ? undefined : process.env.FRAPPE_TOKEN);
  if (!values.url) usage("--url is required");
  if (!sid === !token) usage("give exactly one of --sid or --token (or FRAPPE_SID / FRAPPE_TOKEN)");
  if (token && !/^[^:\s]+:[^:\s]+$/.test(token)) usage("--token is API_KEY:API_SECRET");
  if (!values.namespace.startsWith("/")) usage("--namespace starts with / (e.g. / or /erp.example.com)");
  const transports = values.transports.split(",").map((t) => t.trim());
  if (transports.length === 0 || transports.some((t) => t !== "polling" && t !== "websocket")) {
    usage("--transports is a comma-separated list of polling and websocket");
  }
  if (!["both", "auth", "headers"].includes(values["credential-in"])) usage("--credential-in is both, auth or headers");
  const timeout = Number(values.timeout);
  if (!(timeout > 0)) usage("--timeout is a positive number of seconds");
  return {
    ...values, sid, token, transports, timeout,
    credentialIn: values["credential-in"], exitAfterConnect: values["exit-after-connect"],
  };
}

const options = parseOptions();

// The credential travels two ways, both by default:
// - in the Socket.IO CONNECT packet's auth payload ({sid} or {token}), which frappe-realtime
//   reads when the handshake carries no Cookie and no Authorization header; a browser cannot set
//   headers on a websocket, so this is the way that works on every transport and client;
// - as the headers a browser or Frappe's mobile clients send (`Cookie: sid=…` or
//   `Authorization: token KEY:SECRET`), which Frappe's own Node service needs (it ignores the
//   auth payload) and which frappe-realtime prefers when present.
const auth = {};
const headers = {}; // lower-case names, as Node's HTTP clients send them
if (options.credentialIn !== "headers") {
  if (options.sid) auth.sid = options.sid;
  else auth.token = options.token;
}
if (options.credentialIn !== "auth") {
  if (options.sid) headers.cookie = `sid=${options.sid}`;
  else headers.authorization = `token ${options.token}`;
}
// Which site this is. Without it the server picks one from the Host header (or default_site).
if (options.site) headers["x-frappe-site-name"] = options.site;
// Node sends no Origin unless told to; only Frappe's own Node service requires one.
if (options.origin) headers.origin = options.origin;

const url = new URL(options.namespace, options.url).href;
const socket = io(url, {
  transports: options.transports,
  extraHeaders: headers, // sent on every polling request and on the websocket upgrade
  auth,
  // A refused or lost connection ends the program with the reason instead of being retried
  // in silence; a long-running client would keep socket.io's reconnection on.
  reconnection: false,
  timeout: options.timeout * 1000,
});

let finished = false;
const deadline = setTimeout(() => {
  finish(1, socket.connected
    ? `client: timeout: no ${options.once} event within ${options.timeout} s`
    : `client: timeout: not connected within ${options.timeout} s`);
}, options.timeout * 1000);

function finish(code, message) {
  if (finished) return; // socket.disconnect() below emits "disconnect" at once
  finished = true;
  clearTimeout(deadline);
  if (message) (code === 0 ? console.log : console.error)(message);
  socket.disconnect();
  process.exit(code);
}

socket.on("connect", () => {
  const transport = socket.io.engine.transport.name;
  console.log(`client: connected to ${options.url} namespace ${options.namespace} (transport ${transport})`);
  socket.io.engine.once("upgrade", (t) => console.log(`client: transport upgraded to ${t.name}`));
  if (options.exitAfterConnect) finish(0);
  // Watching until Ctrl-C: the timeout bounded the connection only.
  if (!options.once) clearTimeout(deadline);
});

// A refusal by the server carries its reason in the message ("Unauthorized: …"); a transport
// failure ("xhr poll error", "websocket error") carries the cause in its description.
socket.on("connect_error", (err) => {
  const { description } = err;
  const cause = typeof description === "number" ? description > 0 && `HTTP status ${description}`
    : description?.message ?? description?.error?.message;
  finish(1, `client: connect_error: ${err.message}${cause ? ` (${cause})` : ""}`);
});

socket.on("disconnect", (reason) => finish(1, `client: disconnect: ${reason}`));

socket.onAny((event, ...args) => {
  console.log(`event ${event} ${JSON.stringify(args)}`);
  if (event === options.once) finish(0);
});

process.on("SIGINT", () => finish(0, "client: stopped"));
process.on("SIGTERM", () => finish(0, "client: stopped"));
