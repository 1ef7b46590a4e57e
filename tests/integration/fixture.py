"""Shared helpers of the integration tests (test_server.py, test_faults.py,
test_multimodel.py, test_prometheus.py; bench/e2e.py takes free_port and wait_for):
a throw-away redis-server, ctr-load, a ctr-server process with HTTP helpers,
and bounded waits.  Only loopback traffic."""
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

BUILD = os.environ.get("CTR_BUILD", "build/release")
GOLDEN = os.environ.get("CTR_GOLDEN", "build/golden")
PY = os.environ.get("PYTHON", "/usr/bin/python3")
SMALL = os.path.join(GOLDEN, "small")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for(fn, timeout=10.0, step=0.05):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if fn():
                return True
        except Exception:
            pass
        time.sleep(step)
    return False


class Redis:
    def __init__(self, tmp):
        self.port = free_port()
        self.tmp = tmp
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: self.cli("PING") == "PONG"), "redis did not start"

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                              text=True, timeout=10).stdout.strip()

    def calls(self, cmd):
        for line in self.cli("INFO", "commandstats").splitlines():
            if line.startswith(f"cmdstat_{cmd}:"):
                return int(line.split("calls=")[1].split(",")[0])
        return 0


def load(redis, prefix, golden=SMALL):
    """ctr-load of a golden configuration's items and users (default: the
    small QIN's) under prefix."""
    r = subprocess.run([f"{BUILD}/ctr-load", "--redis", f"127.0.0.1:{redis.port}", "--prefix",
                        prefix, "--items", f"{golden}/items.jsonl", "--users",
                        f"{golden}/users.jsonl", "--model", f"{golden}/model.safetensors"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# A rank request's default budget in the servers started here: a second
# (the default cap, max_deadline_ms), not the production 50 ms, so that a
# sanitizer build on a loaded machine answers in full; tests of deadlines
# set their own (a flag in `extra` comes later and wins, a request's
# deadline_ms beats it).
DEADLINE_MS = 1000


class Server:
    """A ctr-server on a free port.  model: a path, or a list of --model
    values ([NAME=]PATH); prefix None leaves --redis-prefix to extra (or a
    config file); env adds to the environment.  Redis timeouts of 200 ms
    and a deadline of DEADLINE_MS unless extra says otherwise."""

    def __init__(self, model, redis, prefix, extra=(), threads=3, env=None):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="ctr-server-", suffix=".log", delete=False)
        models = [model] if isinstance(model, str) else list(model)
        args = [a for m in models for a in ("--model", m)]
        if prefix is not None:
            args += ["--redis-prefix", prefix]
        e = None
        if env:
            e = dict(os.environ)
            e.update(env)
        self.proc = subprocess.Popen(
            [f"{BUILD}/ctr-server", *args, "--redis", f"127.0.0.1:{redis.port}",
             "--port", str(self.port), "--threads", str(threads),
             "--score-threads", "2", "--split", "candidates", "--split-min", "2",
             "--split-min-mflops", "0", "--max-candidates", "64",
             "--max-body-bytes", "65536", "--redis-timeout-ms", "200",
             "--redis-connect-timeout-ms", "200", "--deadline-ms", str(DEADLINE_MS), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=e)
        ok = wait_for(lambda: self.request("GET", "/healthz")[0] == 200, timeout=60)
        assert ok, "server did not come up: " + self.logtext()

    def logtext(self):
        with open(self.log.name) as f:
            return f.read()

    def request(self, method, path, body=None, ctype="application/json", headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = dict(headers or {})
        if body is not None:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            if isinstance(body, str):
                body = body.encode()
            if ctype:
                h["Content-Type"] = ctype
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, dict(r.getheaders()), data

    def rank(self, req):
        st, hdr, data = self.request("POST", "/v1/rank", req)
        try:
            return st, json.loads(data)
        except ValueError:
            return st, {"raw": data.decode(errors="replace")}

    def metric(self, name):
        """metric_sum of name in this server's /metrics."""
        st, _, data = self.request("GET", "/metrics")
        return metric_sum(data.decode(), name)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None


def metric_sum(text, name):
    """The sum of the samples of `name` in a /metrics answer; name may carry
    labels in braces (name{k="v",...}): then only samples with at least
    those labels, in any order, count."""
    base, _, want = name.partition("{")
    want = [w for w in want.rstrip("}").split(",") if w]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(base + " ") or line.startswith(base + "{"):
            labels = line[len(base):].rsplit(" ", 1)[0]
            if all(w in labels for w in want):
                total += float(line.rsplit(" ", 1)[1])
    return total


def promtool_check_metrics(srv):
    """A live /metrics answer through `promtool check metrics` (Prometheus's
    linter: names, units, suffixes, HELP, label syntax).  (ok, findings):
    ok when it exits 0 and reports nothing."""
    st, _, data = srv.request("GET", "/metrics")
    r = subprocess.run(["promtool", "check", "metrics"], input=data, capture_output=True,
                       timeout=60)
    said = (r.stdout + r.stderr).decode(errors="replace").strip()
    return st == 200 and r.returncode == 0 and not said, f"status {st}, exit {r.returncode}: {said}"


class Checks:
    """Named checks, printed as they go and counted: call it with a name, a
    condition and a detail shown on failure; .passed and .failed count."""

    def __init__(self):
        self.passed = self.failed = 0

    def __call__(self, name, cond, detail=""):
        if cond:
            self.passed += 1
            print(f"  ok   {name}")
        else:
            self.failed += 1
            print(f"  FAIL {name} {detail}")


def error_code(resp):
    try:
        return resp["error"]["code"]
    except (KeyError, TypeError):
        return None


