#!/usr/bin/env python3
"""A tiny local webhook receiver for the passwd-guard example: prints every notification
palisade POSTs (one JSON object per line on stdout) and answers 200, so the example works
offline. Duplicates (a resend after an outage or a restart) carry the same Idempotency-Key and
are marked as such.

    python3 examples/passwd-guard/receiver.py [--port 8089] [--bind 127.0.0.1]
"""
import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

seen = set()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        key = self.headers.get("Idempotency-Key")
        try:
            payload = json.loads(body)
        except ValueError:
            self.send_response(400)
            self.end_headers()
            return
        record = {"path": self.path, "idempotency_key": key, "duplicate": key in seen, "body": payload}
        if key:
            seen.add(key)
        print(json.dumps(record), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, fmt, *args):  # keep stdout for notifications only
        sys.stderr.write("[receiver] " + (fmt % args) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--bind", default="127.0.0.1")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    sys.stderr.write(f"[receiver] listening on http://{args.bind}:{args.port}/\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
