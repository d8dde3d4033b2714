// The identities, names and texts the end-to-end tests share, defined once here and exported
// by harness.mjs. `startStack` gives every site of a stack's fake Frappe these users with these
// credentials, so a test names a user or a credential through these constants, never by
// repeating the string.

/** The sites of a harness bench. */
export const SITES = ["site1.local", "site2.local"];

/** A System User (so in `all`), with a cookie session on every site. */
export const ALICE = "alice@example.com";
export const ALICE_SID = "sid-alice";

/** A second System User with a cookie session, for "another user" on the same site. */
export const BOB = "bob@example.com";
export const BOB_SID = "sid-bob";

/** A Website User (not in `all`), with a cookie session. */
export const CAROL = "carol@example.com";
export const CAROL_SID = "sid-carol";

/** A System User who only has an API key: `token <key>:<secret>` in Authorization. */
export const DAVE = "dave@example.com";
export const DAVE_API_KEY = "key-dave:secret-dave";
export const DAVE_TOKEN = `token ${DAVE_API_KEY}`;

/** Who an unknown or expired sid is to Frappe (docs/protocol.md §4.5). */
export const GUEST = "Guest";

/** A user's own room, as Frappe 15 and later name it (docs/protocol.md §5.4). */
export const userRoom = (user) => `user:${user}`;

/** The method every handshake is checked with (docs/protocol.md §4.2), and its path. */
export const USER_INFO = "frappe.realtime.get_user_info";
export const USER_INFO_PATH = `/api/method/${USER_INFO}`;

/** Refusals the tests expect word for word (`connect_error` messages). */
export const REFUSAL = {
  // Frappe 15 and 16's texts (docs/protocol.md §3.3).
  namespace: "Invalid namespace",
  origin: "Invalid origin",
  missing: "Missing cookie and authorization header. Either one needed for authentication.",
  noMethod: "No authentication method used. Use cookie or authorization header.",
  // Ours: a client this server would have to call the site back for, with nowhere to call.
  noCallbackTarget: "Unauthorized: the client sent no Origin of the site's own to call the site back at; "
    + "set realtime_callback_url (or webserver_host and webserver_port) in sites/common_site_config.json",
};

let counter = 0;
/** A name no other test in the file uses (events, markers, documents, credentials). */
export function unique(prefix) {
  counter += 1;
  return `${prefix}-${counter}-${Math.random().toString(36).slice(2, 10)}`;
}
