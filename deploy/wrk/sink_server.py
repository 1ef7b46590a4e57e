#!/usr/bin/python3
# sink_server.py - a tiny HTTP/1.1 server on 127.0.0.1 for checking
# deploy/wrk/rank.lua without the service: it accepts POSTs, checks that the
# body is a ranking request ({"user_id", "candidates": [...]}) with
# Content-Type application/json, answers 200 (or 500 on every Nth request
# with --fail-every N, to see wrk count errors, and 400 for a bad body), and
# on exit (Ctrl-C or SIGTERM) prints how many requests, distinct bodies and
# distinct users it saw.
#
#   /usr/bin/python3 deploy/wrk/sink_server.py --port 18080 [--fail-every N]

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
stats = {"requests": 0, "bad": 0, "failed": 0}
bodies, users = set(), set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as wrk expects
    disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms
    fail_every = 0

    def log_message(self, *a):
        pass

    def reply(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ok = self.headers.get("Content-Type", "").startswith("application/json")
        try:
            req = json.loads(body)
            ok = ok and isinstance(req.get("candidates"), list) \
                and "user_id" in req
        except ValueError:
            ok = False
        with lock:
            stats["requests"] += 1
            n = stats["requests"]
            if ok:
                bodies.add(hash(body))
                users.add(json.dumps(req["user_id"]))
            else:
                stats["bad"] += 1
            fail = ok and self.fail_every and n % self.fail_every == 0
            if fail:
                stats["failed"] += 1
        if not ok:
            self.reply(400, {"error": "not a ranking request"})
        elif fail:
            self.reply(500, {"error": "planted failure"})
        else:
            self.reply(200, {"scores": [0.5] * len(req["candidates"])})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # wrk closing its connections at the end is not news


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--fail-every", type=int, default=0)
    args = ap.parse_args()
    Handler.fail_every = args.fail_every
    srv = Server(("127.0.0.1", args.port), Handler)

    def stop(*_):
        threading.Thread(target=srv.shutdown).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"sink_server: listening on 127.0.0.1:{args.port}", flush=True)
    srv.serve_forever()
    print(f"sink_server: {stats['requests']} requests, {len(bodies)} distinct "
          f"bodies, {len(users)} distinct users, {stats['bad']} bad, "
          f"{stats['failed']} answered 500", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
