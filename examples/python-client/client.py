#!/usr/bin/env python3
"""A non-browser Socket.IO client for a Frappe site's realtime service (frappe-realtime or
Frappe's own Node service): logs in with a Frappe session id or an API token and prints every
event it receives, one line each: `event <name> <JSON array of the arguments>`.

    python client.py --url http://127.0.0.1:9000 --site erp.example.com --token KEY:SECRET

The same flags as examples/node-client/client.mjs; see examples/README.md. Exit status: 0 after
--once EVENT or --exit-after-connect, or when stopped with Ctrl-C; 1 on a refused connection, a
disconnect or the --timeout; 2 on bad usage. The credential is never printed.
"""
import argparse
import json
import os
import re
import signal
import sys
import threading

import socketio


def parse_options():
    parser = argparse.ArgumentParser(
        description="Print every realtime event a Frappe user receives.",
        epilog="The credential may also come from the environment: FRAPPE_SID or FRAPPE_TOKEN.")
    parser.add_argument("--url", required=True, help="the realtime service, e.g. http://127.0.0.1:9000")
    parser.add_argument("--site", help="sent as X-Frappe-Site-Name")
    parser.add_argument("--sid", help="a Frappe session id (the sid cookie)")
    parser.add_argument("--token", help="an API key and secret, KEY:SECRET")
    parser.add_argument("--namespace", default="/", help="/ (default) or /SITE")
    parser.add_argument("--origin", help="send this Origin header (none by default)")
    parser.add_argument("--transports", default="polling,websocket", help="polling, websocket or both")
    parser.add_argument("--credential-in", choices=["both", "auth", "headers"], default="both",
                        help="where the credential goes (default: both)")
    parser.add_argument("--once", metavar="EVENT", help="exit 0 after the first EVENT")
    parser.add_argument("--exit-after-connect", action="store_true", help="exit 0 once connected")
    parser.add_argument("--timeout", type=float, default=30,
                        help="seconds to connect (and, with --once, to get the event); default 30")
    options = parser.parse_args()

    # Flags win over the environment; the environment keeps the secret out of `ps` output.
    if options.sid is None and options.token is None:
        options.sid = os.environ.get("FRAPPE_SID") or None
        options.token = None if options.sid else os.environ.get("FRAPPE_TOKEN") or None
    if (options.sid is None) == (options.token is None):
        parser.error("give exactly one of --sid or --token (or FRAPPE_SID / FRAPPE_TOKEN)")
    if options.token is not None and not re.fullmatch(r"[^:\s]+:[^:\s]+", options.token):
        parser.error("--token is API_KEY:API_SECRET")
    if not options.namespace.startswith("/"):
        parser.error("--namespace starts with / (e.g. / or /erp.example.com)")
    options.transports = [t.strip() for t in options.transports.split(",")]
    if not options.transports or any(t not in ("polling", "websocket") for t in options.transports):
        parser.error("--transports is a comma-separated list of polling and websocket")
    if not options.timeout > 0:
        parser.error("--timeout is a positive number of seconds")
    return options


def main():
    options = parse_options()
    namespace = options.namespace

    # The credential travels two ways, both by default:
    # - in the Socket.IO CONNECT packet's auth payload ({sid} or {token}), which frappe-realtime
    #   reads when the handshake carries no Cookie and no Authorization header;
    # - as the headers a browser or Frappe's mobile clients send (Cookie: sid=... or
    #   Authorization: token KEY:SECRET), which Frappe's own Node service needs (it ignores the
    #   auth payload) and which frappe-realtime prefers when present.
    auth, headers = {}, {}
    if options.credential_in != "headers":
        auth = {"sid": options.sid} if options.sid else {"token": options.token}
    if options.credential_in != "auth":
        if options.sid:
            headers["Cookie"] = f"sid={options.sid}"
        else:
            headers["Authorization"] = f"token {options.token}"
    # Which site this is. Without it the server picks one from the Host header (or default_site).
    if options.site:
        headers["X-Frappe-Site-Name"] = options.site
    if options.origin:
        headers["Origin"] = options.origin

    sio = socketio.Client(
        # A refused or lost connection ends the program with the reason instead of being
        # retried in silence; a long-running client would keep reconnection on.
        reconnection=False,
        request_timeout=options.timeout,
        # websocket-client adds `Origin: http://<host>` to every websocket handshake unless told
        # not to; send an Origin only when --origin asks for one (it is then in `headers`).
        websocket_extra_options={"suppress_origin": True},
    )

    done = threading.Event()
    outcome = {}

    def finish(code, message=None):
        if not done.is_set():
            outcome.update(code=code, message=message)
            done.set()

    @sio.on("connect", namespace=namespace)
    def on_connect():
        print(f"client: connected to {options.url} namespace {namespace} (transport {sio.transport()})",
              flush=True)
        if options.exit_after_connect:
            finish(0)

    @sio.on("connect_error", namespace=namespace)
    def on_connect_error(data=None):
        # A refusal by the server is {"message": "Unauthorized: ..."}; a transport failure a string.
        message = data.get("message") if isinstance(data, dict) else data
        finish(1, f"client: connect_error: {message}")

    @sio.on("disconnect", namespace=namespace)
    def on_disconnect(reason=None):
        finish(1, f"client: disconnect: {reason}")

    @sio.on("*", namespace=namespace)
    def on_event(event, *args):
        print(f"event {event} {json.dumps(list(args), ensure_ascii=False, separators=(',', ':'))}",
              flush=True)
        if event == options.once:
            finish(0)

    def connect():
        try:
            sio.connect(options.url, headers=headers, auth=auth, transports=options.transports,
                        namespaces=[namespace], wait_timeout=options.timeout)
        except socketio.exceptions.ConnectionError as err:
            finish(1, f"client: connect_error: {err}")  # unless on_connect_error said it first

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: finish(0, "client: stopped"))

    # Connecting runs in the background so that the timeout bounds it, whatever it waits on.
    connector = threading.Thread(target=connect, daemon=True)
    connector.start()
    if not done.wait(options.timeout):
        if options.once or not sio.connected:
            what = f"no {options.once} event" if sio.connected else "not connected"
            finish(1, f"client: timeout: {what} within {options.timeout:g} s")
        else:
            done.wait()  # watching: until Ctrl-C or a disconnect

    if outcome["message"]:
        print(outcome["message"], file=sys.stdout if outcome["code"] == 0 else sys.stderr, flush=True)
    connector.join(timeout=1)  # a connect that has just succeeded: let it return, then close it
    if sio.connected:
        sio.disconnect()
    return outcome["code"]


if __name__ == "__main__":
    sys.exit(main())
