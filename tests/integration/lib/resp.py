"""A minimal Redis client for the integration tests (RESP2 over TCP, binary
safe, pipelined), where redis-cli cannot send or show raw bytes: user values
written byte by byte, replies read back exactly, thousands of commands in
one round trip.  Redis Cluster: Cluster.call follows MOVED.  Only
loopback; every socket has a timeout."""
import socket


class RedisError(Exception):
    pass


class Conn:
    def __init__(self, host, port, timeout=30):
        self.addr = f"{host}:{port}"
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.f = self.sock.makefile("rb")

    @classmethod
    def of(cls, addr, timeout=30):
        host, port = addr.rsplit(":", 1)
        return cls(host, int(port), timeout)

    def close(self):
        self.f.close()
        self.sock.close()

    @staticmethod
    def encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def read(self):
        """One reply; an error reply is returned as a RedisError (not
        raised), so pipelines keep going."""
        line = self.f.readline()
        if not line:
            raise ConnectionError(f"Redis {self.addr} closed the connection")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RedisError(rest.decode(errors="replace"))
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ConnectionError(f"Redis {self.addr}: unexpected reply {line[:40]!r}")

    def pipeline(self, cmds):
        self.sock.sendall(b"".join(self.encode(c) for c in cmds))
        return [self.read() for _ in cmds]

    def call(self, *args):
        r = self.pipeline([args])[0]
        if isinstance(r, RedisError):
            raise r
        return r


class Cluster:
    """Commands to a Redis Cluster by its seeds, following MOVED (a
    connection per node, kept)."""

    def __init__(self, seeds):
        self.seeds = seeds.split(",") if isinstance(seeds, str) else list(seeds)
        self.conns = {}

    def conn(self, addr):
        if addr not in self.conns:
            self.conns[addr] = Conn.of(addr)
        return self.conns[addr]

    def call(self, *args, addr=None):
        addr = addr or self.seeds[0]
        for _ in range(5):
            r = self.conn(addr).pipeline([args])[0]
            if isinstance(r, RedisError) and str(r).startswith("MOVED "):
                addr = str(r).split()[-1]
                continue
            if isinstance(r, RedisError):
                raise r
            return r
        raise RedisError(f"{args[0]}: too many redirects")

    def masters(self):
        """Client addresses of the masters (CLUSTER NODES)."""
        text = self.call("CLUSTER", "NODES").decode()
        out = []
        for line in text.splitlines():
            f = line.split()
            if "master" in f[2] and "fail" not in f[2]:
                out.append(f[1].split("@")[0])
        return out

    def close(self):
        for c in self.conns.values():
            c.close()
