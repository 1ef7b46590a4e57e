#!/usr/bin/python3
"""Appends to user histories through the Redis Functions library `ctr`
(deploy/redis/ctr.lua) on a real redis-server ($CTR_REDIS) and the real
Redis Cluster ($CTR_CLUSTER_SEEDS): values checked byte by byte against a
model of the format (proto/features.h, version 2) and of the trim rule;
two producers appending to one user at once lose no id; a version 1 value
becomes version 2 on its first append; every refusal leaves the value as
it was; item-change records count their generations.

Run by tests/integration/test_append.sh with CTR_REDIS, CTR_CLUSTER_SEEDS,
PYTHON."""
import os
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from fixture import Checks  # noqa: E402
from resp import Cluster, Conn, RedisError  # noqa: E402

check = Checks()
LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy", "redis",
                   "ctr.lua")


def v2(ids, max_seq):
    return struct.pack("<2sBBI", b"CU", 2, 0, max_seq) + struct.pack(f"<{len(ids)}i", *ids)


def v1(ids):
    return struct.pack("<2sBBI", b"CU", 1, 0, len(ids)) + struct.pack(f"<{len(ids)}i", *ids)


def decode(b):
    """(version, word, ids) of a user value."""
    m, ver, res, word = struct.unpack_from("<2sBBI", b)
    assert m == b"CU" and res == 0 and (len(b) - 8) % 4 == 0, b[:8]
    return ver, word, list(struct.unpack_from(f"<{(len(b) - 8) // 4}i", b, 8))


def trim_at(m):
    return m + max(1, m // 4)


class Model:
    """What the library must do to one user, as the format says."""

    def __init__(self, ids=(), max_seq=1000):
        self.ids, self.max_seq = list(ids), max_seq

    def append(self, new, max_seq=None):
        if max_seq is not None:
            self.max_seq = max_seq
        self.ids += list(new)
        if len(self.ids) > trim_at(self.max_seq):
            self.ids = self.ids[-self.max_seq:]
        return len(self.ids)

    def value(self):
        return v2(self.ids, self.max_seq)


def library_checks(call, name, key_prefix):
    """The library through call(*args) (one node, or a cluster routing by
    key).  name: where, for the messages."""
    k = lambda s: f"{key_prefix}{s}"   # noqa: E731

    # Appends in order; a new user gets max_seq 1000.
    call("DEL", k("u:1"))
    r = [call("FCALL", "ctr_append", 1, k("u:1"), *ids) for ids in ([17, 19], [23], [0, 5])]
    check(f"{name}: ctr_append replies the ids held", r == [2, 3, 5], str(r))
    check(f"{name}: the value is version 2, max_seq 1000, ids in order",
          call("GET", k("u:1")) == v2([17, 19, 23, 0, 5], 1000), str(call("GET", k("u:1"))))

    # Trimming, against the model, for a few max_seq; amortised: at most one
    # rewrite every max_seq / 4 appends shows as the length's saw-tooth.
    ok, detail = True, ""
    for m in (1, 3, 8, 50):
        call("DEL", k("u:t"))
        model = Model(max_seq=m)
        for step in range(3 * trim_at(m) + 7):
            ids = [step * 10 + j for j in range(1 + step % 3)]
            got = call("FCALL", "ctr_append_max", 1, k("u:t"), m, *ids)
            want = model.append(ids, m)
            val = call("GET", k("u:t"))
            if got != want or val != model.value() or len(model.ids) > trim_at(m):
                ok, detail = False, f"max_seq {m} step {step}: {got} vs {want}, {decode(val)}"
                break
    check(f"{name}: trimming keeps the newest max_seq (cut at max_seq + max(1, max_seq/4))",
          ok, detail)

    # Bulk, packed: several users in one call, each appended in order.
    call("DEL", k("u:p1"))
    r = call("FCALL", "ctr_append_packed", 1, k("u:p1"), 8, struct.pack("<3i", 4, 0, 9))
    check(f"{name}: ctr_append_packed appends packed ids", r == [3] and
          call("GET", k("u:p1")) == v2([4, 0, 9], 8), str(r))

    # A version 1 value (written before appends existed) becomes version 2.
    call("SET", k("u:old"), v1([4, 5, 6]))
    r = call("FCALL", "ctr_append", 1, k("u:old"), 7)
    check(f"{name}: a version 1 value appended to becomes version 2 with its ids",
          r == 4 and call("GET", k("u:old")) == v2([4, 5, 6, 7], 1000))
    call("SET", k("u:old2"), v1(list(range(1, 13))))
    r = call("FCALL", "ctr_append_max", 1, k("u:old2"), 10, 13)
    check(f"{name}: ... and is cut to max_seq when past it",
          r == 10 and call("GET", k("u:old2")) == v2(list(range(4, 14)), 10))

    # Refusals change nothing.
    call("SET", k("u:r"), v2([1, 2], 5))
    before = call("GET", k("u:r"))
    bad = [("ctr_append", 1, k("u:r"), 3, "x"), ("ctr_append", 1, k("u:r"), "-1"),
           ("ctr_append", 1, k("u:r"), "1e3"), ("ctr_append", 1, k("u:r"), "2147483648"),
           ("ctr_append", 1, k("u:r")), ("ctr_append", 0),
           ("ctr_append_max", 1, k("u:r"), 0, 1), ("ctr_append_max", 1, k("u:r"), "y", 1),
           ("ctr_append_packed", 1, k("u:r"), 5, b"\x01\x00\x00"),
           ("ctr_append_packed", 1, k("u:r"), 5, b"\x01\x00\x00\x80"),
           ("ctr_append_packed", 1, k("u:r"), 0, b"\x01\x00\x00\x00"),
           ("ctr_append_packed", 1, k("u:r"), 5)]
    errs = []
    for b in bad:
        try:
            call("FCALL", *b)
            errs.append(f"{b}: no error")
        except RedisError:
            pass
    check(f"{name}: bad arguments are refused, the value untouched",
          not errs and call("GET", k("u:r")) == before, "; ".join(errs))
    for val, what in ((b"hello", "a string that is not a user value"),
                      (b"CU\x03\x00\x01\x00\x00\x00", "version 3"),
                      (b"CU\x02\x00\x00\x00\x00\x00", "max_seq 0"),
                      (v1([1, 2])[:-2], "a cut version 1 value"),
                      (v2([1, 2], 5)[:-2], "a cut version 2 value")):
        call("SET", k("u:bad"), val)
        try:
            call("FCALL", "ctr_append", 1, k("u:bad"), 9)
            refused = False
        except RedisError:
            refused = True
        check(f"{name}: {what}: refused, untouched", refused and call("GET", k("u:bad")) == val)
    call("DEL", k("u:h"))
    call("HSET", k("u:h"), "a", "b")
    try:
        call("FCALL", "ctr_append", 1, k("u:h"), 9)
        refused = False
    except RedisError as e:
        refused = "WRONGTYPE" in str(e)
    check(f"{name}: a hash: WRONGTYPE", refused)

    # Item changes: generations 1, 2, ... on a capped stream.
    call("DEL", k("item-changes"))
    gens = [call("FCALL", "ctr_item_changes", 1, k("item-changes"), 1000, 0, *ids)
            for ids in ([1, 2], [3], [4, 5, 6])]
    entries = call("XRANGE", k("item-changes"), "-", "+")
    fields = [dict(zip(e[1][::2], e[1][1::2])) for e in entries]
    check(f"{name}: ctr_item_changes: generations 1, 2, 3, ids as given",
          gens == [1, 2, 3] and [f[b"gen"] for f in fields] == [b"1", b"2", b"3"] and
          fields[2][b"ids"] == b"4 5 6", str(fields))
    for _ in range(300):
        call("FCALL", "ctr_item_changes", 1, k("item-changes"), 100, 0, 7)
    n = call("XLEN", k("item-changes"))
    last = call("XREVRANGE", k("item-changes"), "+", "-", "COUNT", 1)
    check(f"{name}: the stream is capped near MAXLEN, generations go on",
          100 <= n < 250 and dict(zip(last[0][1][::2], last[0][1][1::2]))[b"gen"] == b"303",
          f"{n} entries")
    # A floor (the marker's generation) above the stream's: counted from it.
    call("DEL", k("item-changes"))
    g = call("FCALL", "ctr_item_changes", 1, k("item-changes"), 100, 41, 9)
    g2 = call("FCALL", "ctr_item_changes", 1, k("item-changes"), 100, 3, 9)
    check(f"{name}: ctr_item_changes counts on from FLOOR when it is higher",
          (g, g2) == (42, 43), str((g, g2)))
    check(f"{name}: ctr_version", call("FCALL_RO", "ctr_version", 0) == 1)


def producers(addr, key, n):
    """Two processes appending n ids each to one user at once, in batches
    of one to three ids; returns their ids."""
    code = r'''
import sys, time
sys.path.insert(0, sys.argv[1])
from resp import Conn
c = Conn.of(sys.argv[2])
key, base, n, start = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
while time.time() < start:   # both begin together
    time.sleep(0.001)
k = 0
while k < n:
    ids = [base + k + j for j in range(min(1 + k % 3, n - k))]
    c.call("FCALL", "ctr_append_max", 1, key, 100000, *ids)
    k += len(ids)
'''
    lib = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib")
    py = os.environ.get("PYTHON", "/usr/bin/python3")
    start = time.time() + 1.0
    procs = [subprocess.Popen([py, "-c", code, lib, addr, key, str(base), str(n), str(start)])
             for base in (1, 1000001)]
    rcs = [p.wait(120) for p in procs]
    return rcs, list(range(1, n + 1)), list(range(1000001, 1000001 + n))


def main():
    with open(LIB, "rb") as f:
        lib = f.read()
    addr = os.environ.get("CTR_REDIS")
    pid = os.getpid()
    if addr:
        c = Conn.of(addr)
        c.call("FUNCTION", "LOAD", "REPLACE", lib)
        library_checks(c.call, "one Redis", f"ta{pid}:")
        key = f"ta{pid}:u:both"
        rcs, a, b = producers(addr, key, 4000)
        _, _, ids = decode(c.call("GET", key))
        check("two producers at once: every id of both, each producer's in order",
              rcs == [0, 0] and sorted(ids) == sorted(a + b) and
              [i for i in ids if i < 1000001] == a and [i for i in ids if i >= 1000001] == b,
              f"{len(ids)} ids of {len(a) + len(b)}")
        check("... interleaved (the producers did run at once)",
              any(ids[i] < 1000001 <= ids[i + 1] for i in range(len(ids) - 1)) and
              any(ids[i] >= 1000001 > ids[i + 1] for i in range(len(ids) - 1)))
        c.close()
    seeds = os.environ.get("CTR_CLUSTER_SEEDS")
    if seeds:
        cl = Cluster(seeds)
        for m in cl.masters():
            cl.conn(m).call("FUNCTION", "LOAD", "REPLACE", lib)
        # Keys spread over the masters: the library runs on each.
        for tag in ("a", "b", "c"):
            library_checks(cl.call, f"Redis Cluster {{{tag}}}", f"{{{tag}{pid}}}:")
        cl.close()
    print(f"test_append: {check.passed} passed, {check.failed} failed")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
