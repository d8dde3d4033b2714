"""A sidecar for a stateful realtime handler, in Python.

frappe-realtime runs no app code. An app whose handler keeps state (a shared document, a
console bridge, a media relay) declares its events with a `queue` part (see handlers.json
here, and docs/app-handlers.md): the server checks them (permission, membership, rates),
joins the rooms, and puts each event on a Redis stream with who sent it. A sidecar in any
language reads that stream, keeps the state, and answers by publishing on Frappe's `events`
channel exactly as `frappe.publish_realtime` does; the server delivers that to the room.

This one keeps a whiteboard per document:

- `whiteboard_join(doctype, name)`: the server checked the permission and joined the socket to
  `doc:<doctype>/<name>`; the sidecar sends the strokes so far to the user's room
  (`whiteboard_state`, naming the socket it answers, as every tab of the user gets it).
- `whiteboard_draw(doctype, name, stroke)`: only from a socket in that room; the sidecar keeps
  the stroke and sends it to everyone on the document (`whiteboard_stroke`).

It reads with a consumer group, so several sidecars can share the stream and an entry is
acknowledged once handled.

    python sidecar.py --redis redis://127.0.0.1:6379 --stream whiteboard:erp.example.com

`--max-events N` stops after N entries (for tests); SIGTERM stops it between reads.
"""

import argparse
import json
import signal
import sys

import redis

GROUP = "whiteboard"
# What frappe.publish_realtime publishes on (redis_queue).
CHANNEL = "events"


def publish(client, site, room, event, message):
    """Publish as frappe.publish_realtime does: the site is the namespace."""
    body = {"event": event, "message": message, "namespace": site, "room": room}
    client.publish(CHANNEL, json.dumps(body))


class Whiteboards:
    """The state: strokes per document, in the order they were drawn."""

    def __init__(self):
        self.strokes = {}

    def handle(self, client, fields):
        site, user, event = fields["site"], fields["user"], fields["event"]
        args = json.loads(fields["args"])
        if len(args) < 2 or not all(isinstance(a, str) for a in args[:2]):
            return
        doctype, name = args[0], args[1]
        strokes = self.strokes.setdefault((site, doctype, name), [])
        if event == "whiteboard_join":
            state = {"doctype": doctype, "name": name, "strokes": strokes, "socket_id": fields["socket_id"]}
            publish(client, site, f"user:{user}", "whiteboard_state", state)
        elif event == "whiteboard_draw" and len(args) >= 3:
            stroke = {"by": user, "stroke": args[2]}
            strokes.append(stroke)
            publish(client, site, f"doc:{doctype}/{name}", "whiteboard_stroke",
                    {"doctype": doctype, "name": name, **stroke})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", required=True, help="redis_queue's URL")
    parser.add_argument("--stream", required=True, help="the stream the handlers queue on")
    parser.add_argument("--consumer", default="sidecar-1")
    parser.add_argument("--max-events", type=int, default=0, help="stop after this many (0: never)")
    options = parser.parse_args()

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    client = redis.Redis.from_url(options.redis, decode_responses=True)
    try:
        client.xgroup_create(options.stream, GROUP, id="$", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise
    print("ready", flush=True)
    boards = Whiteboards()
    handled = 0
    while not stopping and (options.max_events == 0 or handled < options.max_events):
        reply = client.xreadgroup(GROUP, options.consumer, {options.stream: ">"}, count=100, block=500)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                try:
                    boards.handle(client, fields)
                except (KeyError, ValueError) as error:
                    print(f"skipping entry {entry_id}: {error}", file=sys.stderr, flush=True)
                client.xack(options.stream, GROUP, entry_id)
                handled += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
