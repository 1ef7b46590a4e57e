/*
 * test_rcluster.c - server/store/rcluster.c, rcluster_exec: single-key
 * commands routed by the slot map, pipelined per node with every node in
 * flight at once, MOVED and ASK followed, replicas and the reroute to the
 * master, the deadline; against the real cluster of $CTR_CLUSTER_SEEDS
 * (which tests/run.sh always provides: tests/integration/lib/
 * redis_cluster.sh; the test fails without it) and against fake nodes
 * (fake_redis.h: a node that answers only once every node has its
 * pipeline, one that never answers, one that hangs up, one that redirects
 * forever, ones that send replies out of step).
 *
 * Keys written start with a prefix of this run's own and are deleted at
 * the end.  The ASK / MOVED test migrates one slot between two masters and
 * moves it back, waiting until every node agrees again.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "core/base/arena.h"
#include "core/base/status.h"
#include "server/store/rcluster.h"
#include "server/store/rconn.h"

#include "tests/server/store/store_fixture.h"
#include "tests/server/store/fake_redis.h"
#include "tests/server/store/rcluster_fixture.h"

/* --- The caller's connections (a simple table, as a backend would keep) ---- */

typedef struct conn {
    char host[64];
    int port;
    rcluster_link link;
    int gets, failures, last_status;   /* last_status: of the last failed()
                                          call or refused connect */
    rconn_error last_kind;      /* of the last failed() call */
    int deny;                   /* get() answers NULL */
} conn;

static conn conns[32];
static int nconns;

static conn *conn_find(const char *host, int port) {
    for (int i = 0; i < nconns; i++)
        if (conns[i].port == port && strcmp(conns[i].host, host) == 0) return &conns[i];
    assert_true(nconns < (int)(sizeof conns / sizeof *conns));
    conn *c = &conns[nconns++];
    memset(c, 0, sizeof *c);
    snprintf(c->host, sizeof c->host, "%s", host);
    c->port = port;
    return c;
}

static rcluster_link *links_get(void *ud, const char *host, int port, char *e, size_t elen) {
    (void)ud;
    conn *c = conn_find(host, port);
    c->gets++;
    if (c->deny) {
        snprintf(e, elen, "denied by the test");
        return NULL;
    }
    if (!c->link.conn) {
        const rconn_params rp = {2000, NULL, NULL};
        c->link.readonly = 0;
        if (rconn_open(&rp, host, port, ms_from_now(2000), &c->link.conn, e, elen) < 0) {
            c->last_status = CTR_EBACKEND;
            return NULL;
        }
    }
    return &c->link;
}

static void links_failed(void *ud, rcluster_link *l, int status, const char *why) {
    (void)ud;
    (void)why;
    conn *c = (conn *)((char *)l - offsetof(conn, link));
    c->failures++;
    c->last_status = status;
    c->last_kind = rconn_error_of(l->conn);
    rconn_close(l->conn);
    l->conn = NULL;
    l->readonly = 0;
}

static const rcluster_links links = {links_get, links_failed, NULL};

static void conns_reset(void) {
    for (int i = 0; i < nconns; i++) rconn_close(conns[i].link.conn);
    nconns = 0;
}

/* GET key commands for keys[0..n). */
typedef struct cmdset {
    const char *argv[512][3];
    size_t lens[512][3];
    rconn_cmd cmd[512];
    char keys[512][128];
} cmdset;

static cmdset CS;

static rconn_cmd *gets(int n, const char *fmt) {
    assert_true(n <= 512);
    for (int i = 0; i < n; i++) {
        snprintf(CS.keys[i], sizeof CS.keys[i], fmt, prefix, i);
        CS.argv[i][0] = "GET";
        CS.lens[i][0] = 3;
        CS.argv[i][1] = CS.keys[i];
        CS.lens[i][1] = strlen(CS.keys[i]);
        CS.cmd[i] = (rconn_cmd){2, CS.argv[i], CS.lens[i], RCONN_STRING | RCONN_NIL};
    }
    return CS.cmd;
}

/* Three fakes, slots split evenly between them. */
static rcluster_map *map_of_fakes(fake *f, int nf) {
    char desc[512];
    size_t k = 0;
    for (int i = 0; i < nf; i++) {
        int lo = i * 16384 / nf, hi = (i + 1) * 16384 / nf - 1;
        k += (size_t)snprintf(desc + k, sizeof desc - k, "%s%d-%d=127.0.0.1:%d", i ? ";" : "", lo,
                              hi, f[i].port);
    }
    return map_of(desc, NULL);
}

static void test_exec_all_nodes_in_flight(void **state) {
    (void)state;
    /* Each fake answers only once all three have their whole pipeline: a
     * client that waited for one node's answers before writing to the next
     * would time out here. */
    enum { N = 90 };
    fake f[3];
    atomic_int ready = 0;
    rconn_cmd *cmds = gets(N, "%sfl:%d");
    for (int i = 0; i < 3; i++) fake_start(&f[i], FAKE_BARRIER, "$1\r\nv\r\n");
    rcluster_map *m = map_of_fakes(f, 3);
    rcluster_plan p;
    const char *kp[N];
    size_t kl[N];
    for (int i = 0; i < N; i++) {
        kp[i] = cmds[i].argv[1];
        kl[i] = cmds[i].argvlen[1];
    }
    assert_int_equal(rcluster_plan_make(m, N, kp, kl, RCLUSTER_READ_MASTER, 0, &A, &p, err,
                                        sizeof err), CTR_OK);
    assert_int_equal(p.ngroups, 3);
    for (int g = 0; g < 3; g++) {
        fake *fg = NULL;
        for (int i = 0; i < 3; i++)
            if (f[i].port == map_port(m, p.group_node[g])) fg = &f[i];
        assert_non_null(fg);
        fake_set_barrier(fg, p.group_start[g + 1] - p.group_start[g], &ready, 3);
    }
    rcluster_reply out[N];
    rcluster_exec_stats st;
    int rc = rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, N, cmds, ms_from_now(3000), &A,
                           out, &st, err, sizeof err);
    if (rc != CTR_OK) fail_msg("exec: %s", err);
    assert_int_equal(st.nodes, 3);
    assert_int_equal(st.rounds, 1);
    assert_int_equal(st.stale, 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(out[i].status, CTR_OK);
        assert_int_equal(out[i].reply->type, REDIS_REPLY_STRING);
        assert_int_equal(map_port(m, out[i].node), map_port(m, p.node[i]));
    }
    rcluster_replies_free(out, N);
    for (int i = 0; i < N; i++) assert_null(out[i].reply);
    /* One connection per node, reused by a second exec. */
    for (int i = 0; i < 3; i++) {
        atomic_store(&f[i].commands, 0);
        atomic_store(&f[i].counted, 0);
    }
    ready = 0;
    rc = rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, N, cmds, ms_from_now(3000), &A, out,
                       &st, err, sizeof err);
    assert_int_equal(rc, CTR_OK);
    rcluster_replies_free(out, N);
    for (int i = 0; i < nconns; i++) assert_int_equal(conns[i].failures, 0);
    for (int i = 0; i < 3; i++) fake_stop(&f[i]);
    conns_reset();
    rcluster_map_free(m);
}

static void test_exec_timeout_and_refused(void **state) {
    (void)state;
    enum { N = 60 };
    fake silent, good;
    fake_start(&silent, FAKE_SILENT, NULL);
    fake_start(&good, FAKE_REPLY, "$2\r\nok\r\n");
    int dead = dead_port();
    char desc[256];
    snprintf(desc, sizeof desc, "0-5460=127.0.0.1:%d;5461-10922=127.0.0.1:%d;10923-16383=127.0.0.1:%d",
             silent.port, good.port, dead);
    rcluster_map *m = map_of(desc, NULL);
    rconn_cmd *cmds = gets(N, "%sto:%d");
    rcluster_reply out[N];
    rcluster_exec_stats st;
    int64_t t0 = clock_now_ns();
    int rc = rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, N, cmds, t0 + 100 * 1000000LL, &A,
                           out, &st, err, sizeof err);
    double ms = (double)(clock_now_ns() - t0) / 1e6;
    assert_true(rc == CTR_ETIMEOUT || rc == CTR_EBACKEND);
    assert_true(err[0] != '\0');
    int timeouts = 0, refused = 0, ok = 0;
    for (int i = 0; i < N; i++) {
        int s = slot_of(CS.keys[i]);
        if (s <= 5460) {
            assert_int_equal(out[i].status, CTR_ETIMEOUT);
            timeouts++;
        } else if (s <= 10922) {
            assert_int_equal(out[i].status, CTR_OK);
            assert_memory_equal(out[i].reply->str, "ok", 2);
            ok++;
        } else {
            assert_int_equal(out[i].status, CTR_EBACKEND);
            assert_null(out[i].reply);
            refused++;
        }
    }
    assert_true(timeouts && ok && refused);
    /* The deadline held: at least 100 ms (the silent node), and not much
     * more (a generous bound: the machine may be busy). */
    assert_true(ms >= 99.0);
    assert_true(ms < 1500.0);
    assert_int_equal(st.failed_nodes, 2);
    assert_int_equal(st.stale, 1);
    assert_int_equal(conn_find("127.0.0.1", silent.port)->failures, 1);
    assert_int_equal(conn_find("127.0.0.1", silent.port)->last_status, CTR_ETIMEOUT);
    assert_int_equal(conn_find("127.0.0.1", dead)->last_status, CTR_EBACKEND);
    assert_int_equal(conn_find("127.0.0.1", good.port)->failures, 0);
    rcluster_replies_free(out, N);
    fake_stop(&silent);
    fake_stop(&good);
    conns_reset();
    rcluster_map_free(m);
}

static void test_exec_redirect_limits(void **state) {
    (void)state;
    /* ASK is followed once: a second ASK fails the command. */
    fake f;
    fake_start(&f, FAKE_REPLY, "");
    fake_set_reply(&f, "-ASK 1 127.0.0.1:%d\r\n", f.port);
    char desc[64];
    snprintf(desc, sizeof desc, "0-16383=127.0.0.1:%d", f.port);
    rcluster_map *m = map_of(desc, NULL);
    rconn_cmd *cmds = gets(1, "%sask:%d");
    rcluster_reply out[3];
    rcluster_exec_stats st;
    assert_int_equal(rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, 1, cmds, ms_from_now(2000),
                                   &A, out, &st, err, sizeof err), CTR_EBACKEND);
    assert_int_equal(st.asked, 1);
    assert_int_equal(st.rounds, 2);
    assert_non_null(strstr(err, "again after ASK"));
    /* The fake saw GET, then ASKING + GET. */
    assert_int_equal(atomic_load(&f.commands), 3);
    /* The connection stayed in step (ASKING's +OK consumed). */
    assert_int_equal(conn_find("127.0.0.1", f.port)->failures, 0);

    /* MOVED forever: given up after RCLUSTER_MAX_ROUNDS. */
    fake_set_reply(&f, "-MOVED 1 :%d\r\n", f.port);   /* ":port": same host */
    assert_int_equal(rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, 1, cmds, ms_from_now(2000),
                                   &A, out, &st, err, sizeof err), CTR_EBACKEND);
    assert_int_equal(st.moved, RCLUSTER_MAX_ROUNDS);
    assert_int_equal(st.rounds, RCLUSTER_MAX_ROUNDS);
    assert_int_equal(st.stale, 1);
    assert_non_null(strstr(err, "rounds"));
    assert_int_equal(rcluster_map_nodes(m), 1);   /* ":port" was the same node */

    /* Other error replies are answers. */
    fake_set_reply(&f, "-CLUSTERDOWN The cluster is down\r\n");
    assert_int_equal(rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, 1, cmds, ms_from_now(2000),
                                   &A, out, &st, err, sizeof err), CTR_OK);
    assert_int_equal(out[0].reply->type, REDIS_REPLY_ERROR);
    rcluster_replies_free(out, 1);
    fake_stop(&f);
    conns_reset();
    rcluster_map_free(m);

    /* Unserved slots and bad arguments. */
    m = map_of("0-0=127.0.0.1:1", NULL);
    cmds = gets(3, "%sunserved:%d");
    assert_int_equal(rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, 3, cmds, ms_from_now(100),
                                   &A, out, &st, err, sizeof err), CTR_EBACKEND);
    assert_non_null(strstr(err, "no node serves slot"));
    assert_int_equal(st.stale, 1);
    assert_int_equal(nconns, 0);   /* nothing was tried */
    rconn_cmd nokey = {1, cmds[0].argv, cmds[0].argvlen, RCONN_ANY};
    assert_int_equal(rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, 1, &nokey, ms_from_now(100),
                                   &A, out, &st, err, sizeof err), CTR_EINVAL);
    assert_int_equal(rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, -1, cmds, ms_from_now(100),
                                   &A, out, &st, err, sizeof err), CTR_EINVAL);
    assert_int_equal(rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, 0, cmds, ms_from_now(100),
                                   &A, out, NULL, err, sizeof err), CTR_OK);
    conns_reset();
    rcluster_map_free(m);
}

/* A node that sends one reply too many, or one of the wrong type: its
 * commands fail, the answers already read from it included (they may be
 * other commands'), and its link is given up out of step; the other
 * node's answers stand. */
static void test_exec_desync(void **state) {
    (void)state;
    enum { N = 40 };
    fake f[2];
    for (int i = 0; i < 2; i++) fake_start(&f[i], FAKE_STORE, NULL);
    rcluster_map *m = map_of_fakes(f, 2);
    rconn_cmd *cmds = gets(N, "%sds:%d");
    for (int i = 0; i < N; i++) {
        char v[16];
        snprintf(v, sizeof v, "v%d", i);
        fake_store_set(&f[slot_of(CS.keys[i]) < 8192 ? 0 : 1], CS.keys[i], v, strlen(v));
    }
    rcluster_reply out[N];
    rcluster_exec_stats st;
    for (int round = 0; round < 2; round++) {
        if (round == 0) fake_inject(&f[0], "$2\r\nv0\r\n", 8, 0);
        else fake_replace(&f[1], ":1\r\n");
        int bad = round == 0 ? 0 : 1;
        int rc = rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, N, cmds, ms_from_now(2000), &A,
                               out, &st, err, sizeof err);
        assert_int_equal(rc, CTR_EBACKEND);
        assert_non_null(strstr(err, "out of step"));
        int failed = 0;
        for (int i = 0; i < N; i++) {
            int on_bad = (slot_of(CS.keys[i]) < 8192 ? 0 : 1) == bad;
            if (on_bad) {
                assert_int_equal(out[i].status, CTR_EBACKEND);
                assert_null(out[i].reply);
                failed++;
            } else {
                char v[16];
                snprintf(v, sizeof v, "v%d", i);
                assert_int_equal(out[i].status, CTR_OK);
                assert_string_equal(out[i].reply->str, v);
            }
        }
        assert_true(failed > 0 && failed < N);
        conn *c = conn_find("127.0.0.1", f[bad].port);
        assert_int_equal(c->failures, 1);
        assert_int_equal(c->last_status, CTR_EBACKEND);
        assert_int_equal(c->last_kind, RCONN_DESYNC);
        assert_int_equal(conn_find("127.0.0.1", f[1 - bad].port)->failures, round);
        assert_int_equal(st.stale, 1);
        rcluster_replies_free(out, N);
    }
    /* Both in step again (new connections). */
    assert_int_equal(rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, N, cmds, ms_from_now(2000),
                                   &A, out, &st, err, sizeof err), CTR_OK);
    rcluster_replies_free(out, N);
    for (int i = 0; i < 2; i++) fake_stop(&f[i]);
    conns_reset();
    rcluster_map_free(m);
}

/* --- Against the real cluster --------------------------------------------- */

static void set_keys(rcluster_map *m, int n, const char *fmt, const char *valfmt) {
    static const char *argv[512][3];
    static size_t lens[512][3];
    static char keys[512][128], vals[512][64];
    rconn_cmd cmd[512];
    for (int i = 0; i < n; i++) {
        snprintf(keys[i], sizeof keys[i], fmt, prefix, i);
        snprintf(vals[i], sizeof vals[i], valfmt, i);
        argv[i][0] = "SET";
        lens[i][0] = 3;
        argv[i][1] = keys[i];
        lens[i][1] = strlen(keys[i]);
        argv[i][2] = vals[i];
        lens[i][2] = strlen(vals[i]);
        cmd[i] = (rconn_cmd){3, argv[i], lens[i], RCONN_STATUS};
    }
    rcluster_reply out[512];
    rcluster_exec_stats st;
    int rc = rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, n, cmd, ms_from_now(3000), &A, out,
                           &st, err, sizeof err);
    if (rc != CTR_OK) fail_msg("SET: %s", err);
    for (int i = 0; i < n; i++) {
        assert_int_equal(out[i].reply->type, REDIS_REPLY_STATUS);
        assert_int_equal(out[i].node, rcluster_map_master(m, slot_of(keys[i])));
    }
    assert_int_equal(st.nodes, 3);
    rcluster_replies_free(out, n);
}

/* GETs keys fmt 0..n-1 with `read`; 1 when every value is "v<i>". */
static int values_read(rcluster_map *m, int n, const char *fmt, rcluster_read read, unsigned salt,
                       rcluster_reply *out, rcluster_exec_stats *st) {
    rconn_cmd *cmds = gets(n, fmt);
    int rc = rcluster_exec(m, &links, read, salt, n, cmds, ms_from_now(3000), &A, out, st, err,
                           sizeof err);
    if (rc != CTR_OK) fail_msg("GET: %s", err);
    int all = 1;
    for (int i = 0; i < n; i++) {
        char want[32];
        snprintf(want, sizeof want, "v%d", i);
        if (out[i].reply->type != REDIS_REPLY_STRING || strcmp(out[i].reply->str, want) != 0)
            all = 0;
    }
    return all;
}

static void test_exec_real(void **state) {
    (void)state;
    enum { N = 200 };
    rcluster_map *m = real_map();
    set_keys(m, N, "%sreal:%d", "v%d");
    rcluster_reply out[N];
    rcluster_exec_stats st;

    /* Masters: every value, in the caller's order, from the slot's master;
     * one round, three nodes, nothing stale. */
    assert_true(values_read(m, N, "%sreal:%d", RCLUSTER_READ_MASTER, 0, out, &st));
    for (int i = 0; i < N; i++)
        assert_int_equal(out[i].node, rcluster_map_master(m, slot_of(CS.keys[i])));
    assert_int_equal(st.nodes, 3);
    assert_int_equal(st.rounds, 1);
    assert_int_equal(st.moved + st.asked + st.stale + st.failed_nodes, 0);
    rcluster_replies_free(out, N);

    /* Replicas: READONLY sent once per connection; answers from the
     * replicas (replication is asynchronous: retry for a moment). */
    int ok = 0;
    for (int t = 0; t < 100 && !ok; t++) {
        ok = values_read(m, N, "%sreal:%d", RCLUSTER_READ_REPLICA, 0, out, &st);
        if (!ok) {
            rcluster_replies_free(out, N);
            sleep_ms(20);
        }
    }
    assert_true(ok);
    for (int i = 0; i < N; i++) {
        int reps[2];
        assert_int_equal(rcluster_map_replicas(m, slot_of(CS.keys[i]), reps, 2), 1);
        assert_int_equal(out[i].node, reps[0]);
    }
    assert_int_equal(st.moved, 0);
    rcluster_replies_free(out, N);
    int readonly_links = 0;
    for (int i = 0; i < nconns; i++) readonly_links += conns[i].link.readonly;
    assert_int_equal(readonly_links, 3);

    /* ANY, salt 1: the replica (index 1 of master, replica). */
    assert_true(values_read(m, N, "%sreal:%d", RCLUSTER_READ_ANY, 1, out, &st));
    for (int i = 0; i < N; i++)
        assert_int_not_equal(out[i].node, rcluster_map_master(m, slot_of(CS.keys[i])));
    rcluster_replies_free(out, N);

    /* Replicas unavailable: the reads go to the masters in the same call. */
    for (int i = 0; i < nconns; i++) conns[i].deny = conns[i].link.readonly;
    assert_true(values_read(m, N, "%sreal:%d", RCLUSTER_READ_REPLICA, 0, out, &st));
    assert_int_equal(st.rerouted, N);
    assert_int_equal(st.failed_nodes, 3);
    assert_int_equal(st.stale, 1);
    for (int i = 0; i < N; i++)
        assert_int_equal(out[i].node, rcluster_map_master(m, slot_of(CS.keys[i])));
    rcluster_replies_free(out, N);
    conns_reset();
    rcluster_map_free(m);
}

static void test_exec_replica_hangs_up(void **state) {
    (void)state;
    /* A replica that closes the connection when asked: its reads go to the
     * (real) master within the same call. */
    enum { N = 40 };
    rcluster_map *real = real_map();
    set_keys(real, N, "%shang:%d", "v%d");
    fake h;
    fake_start(&h, FAKE_HANGUP, NULL);
    char desc[512];
    size_t k = 0;
    int prev = -1;
    for (int s = 0; s < RCLUSTER_SLOTS; s++) {
        int mst = rcluster_map_master(real, s);
        if (mst == prev) continue;
        int e = s;
        while (e + 1 < RCLUSTER_SLOTS && rcluster_map_master(real, e + 1) == mst) e++;
        k += (size_t)snprintf(desc + k, sizeof desc - k, "%s%d-%d=127.0.0.1:%d,127.0.0.1:%d",
                              k ? ";" : "", s, e, map_port(real, mst), h.port);
        prev = mst;
    }
    rcluster_map *m = map_of(desc, NULL);
    rcluster_reply out[N];
    rcluster_exec_stats st;
    assert_true(values_read(m, N, "%shang:%d", RCLUSTER_READ_REPLICA, 0, out, &st));
    assert_int_equal(st.rerouted, N);
    assert_int_equal(st.rounds, 2);
    assert_true(atomic_load(&h.commands) >= 1);
    assert_int_equal(conn_find("127.0.0.1", h.port)->failures, 1);
    for (int i = 0; i < N; i++)
        assert_int_equal(map_port(m, out[i].node), map_port(real, rcluster_map_master(real, slot_of(CS.keys[i]))));
    rcluster_replies_free(out, N);
    fake_stop(&h);
    conns_reset();
    rcluster_map_free(m);
    rcluster_map_free(real);
}

static void test_exec_moved(void **state) {
    (void)state;
    /* A map that sends every slot to one master: the others' keys come
     * back MOVED; they are followed and the map learns. */
    enum { N = 120 };
    rcluster_map *real = real_map();
    set_keys(real, N, "%smoved:%d", "v%d");
    int m0 = rcluster_map_master(real, 0);
    char desc[128];
    snprintf(desc, sizeof desc, "0-16383=%s:%d", rcluster_map_node(real, m0)->host,
             map_port(real, m0));
    rcluster_map *m = map_of(desc, NULL);
    rcluster_reply out[N];
    rcluster_exec_stats st;
    assert_true(values_read(m, N, "%smoved:%d", RCLUSTER_READ_MASTER, 0, out, &st));
    int elsewhere = 0;
    for (int i = 0; i < N; i++) {
        int s = slot_of(CS.keys[i]);
        elsewhere += rcluster_map_master(real, s) != m0;
        assert_int_equal(map_port(m, out[i].node), map_port(real, rcluster_map_master(real, s)));
        assert_int_equal(map_port(m, rcluster_map_master(m, s)), map_port(real, rcluster_map_master(real, s)));
    }
    assert_true(elsewhere > 0);
    assert_int_equal(st.moved, elsewhere);
    assert_int_equal(st.rounds, 2);
    assert_int_equal(st.stale, 1);
    assert_int_equal(st.nodes, 3);
    rcluster_replies_free(out, N);
    /* Learnt: the same keys again need no redirect. */
    assert_true(values_read(m, N, "%smoved:%d", RCLUSTER_READ_MASTER, 0, out, &st));
    assert_int_equal(st.moved, 0);
    assert_int_equal(st.rounds, 1);
    rcluster_replies_free(out, N);
    conns_reset();
    rcluster_map_free(m);
    rcluster_map_free(real);
}

/* Sets slot s's owner to the node of id `id` on every master. */
static void setslot_node(rcluster_map *m, int s, const char *id) {
    for (int i = 0; i < rcluster_map_nodes(m); i++) {
        int port = map_port(m, i);
        int is_master = 0;
        for (int t = 0; t < RCLUSTER_SLOTS; t++)
            if (rcluster_map_master(m, t) == i) { is_master = 1; break; }
        if (is_master) node_do(port, "CLUSTER SETSLOT %d NODE %s", s, id);
    }
}

/* Moves slot s from master a to master b with its keys (as redis-cli
 * --cluster reshard does): IMPORTING, MIGRATING, MIGRATE, NODE. */
static void migrate_keys(int from, int to, int s) {
    for (;;) {
        redisReply *r = node_cmd(from, "CLUSTER GETKEYSINSLOT %d 100", s);
        size_t n = r->elements;
        for (size_t i = 0; i < n; i++)
            node_do(from, "MIGRATE 127.0.0.1 %d %b 0 5000", to, r->element[i]->str,
                    r->element[i]->len);
        freeReplyObject(r);
        if (!n) break;
    }
}

static int nodes_agree(int s, int port) {
    for (int i = 0; i < nnodes; i++) {
        redisReply *r = node_cmd(node_port[i], "CLUSTER SLOTS");
        int owner = -1;
        for (size_t k = 0; k < r->elements; k++) {
            redisReply *e = r->element[k];
            if (e->element[0]->integer <= s && s <= e->element[1]->integer)
                owner = (int)e->element[2]->element[1]->integer;
        }
        freeReplyObject(r);
        if (owner != port) return 0;
    }
    return 1;
}

static void test_exec_ask_during_migration(void **state) {
    (void)state;
    rcluster_map *m = real_map();
    /* Two keys sharing a slot by their hash tag. */
    static const char *argv[2][3];
    static size_t lens[2][3];
    char keys[2][128];
    rconn_cmd cmd[2];
    for (int i = 0; i < 2; i++) {
        snprintf(keys[i], sizeof keys[i], "%s{ask}%c", prefix, 'a' + i);
        argv[i][0] = "SET";
        lens[i][0] = 3;
        argv[i][1] = keys[i];
        lens[i][1] = strlen(keys[i]);
        argv[i][2] = i ? "vb" : "va";
        lens[i][2] = 2;
        cmd[i] = (rconn_cmd){3, argv[i], lens[i], RCONN_STATUS};
    }
    int s = slot_of(keys[0]);
    assert_int_equal(slot_of(keys[1]), s);
    rcluster_reply out[2];
    rcluster_exec_stats st;
    assert_int_equal(rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, 2, cmd, ms_from_now(2000),
                                   &A, out, &st, err, sizeof err), CTR_OK);
    rcluster_replies_free(out, 2);
    int ai = rcluster_map_master(m, s), bi = rcluster_map_master(m, (s + 8192) % RCLUSTER_SLOTS);
    assert_int_not_equal(ai, bi);
    int a = map_port(m, ai), b = map_port(m, bi);
    const char *aid = rcluster_map_node(m, ai)->id, *bid = rcluster_map_node(m, bi)->id;

    /* Migration half done: key a on B, key b still on A. */
    node_do(b, "CLUSTER SETSLOT %d IMPORTING %s", s, aid);
    node_do(a, "CLUSTER SETSLOT %d MIGRATING %s", s, bid);
    node_do(a, "MIGRATE 127.0.0.1 %d %s 0 5000", b, keys[0]);
    for (int i = 0; i < 2; i++) argv[i][0] = "GET", lens[i][0] = 3;
    for (int i = 0; i < 2; i++) cmd[i].argc = 2, cmd[i].expect = RCONN_STRING | RCONN_NIL;
    assert_int_equal(rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, 2, cmd, ms_from_now(2000),
                                   &A, out, &st, err, sizeof err), CTR_OK);
    assert_string_equal(out[0].reply->str, "va");
    assert_string_equal(out[1].reply->str, "vb");
    assert_int_equal(out[0].node, bi);   /* asked B */
    assert_int_equal(out[1].node, ai);
    assert_int_equal(st.asked, 1);
    assert_int_equal(st.moved, 0);
    assert_int_equal(st.rounds, 2);
    assert_int_equal(rcluster_map_master(m, s), ai);   /* ASK changes no owner */
    rcluster_replies_free(out, 2);

    /* Migration finished: the old owner answers MOVED, the map learns. */
    migrate_keys(a, b, s);
    node_do(b, "CLUSTER SETSLOT %d NODE %s", s, bid);
    node_do(a, "CLUSTER SETSLOT %d NODE %s", s, bid);
    setslot_node(m, s, bid);
    assert_int_equal(rcluster_exec(m, &links, RCLUSTER_READ_MASTER, 0, 2, cmd, ms_from_now(2000),
                                   &A, out, &st, err, sizeof err), CTR_OK);
    assert_string_equal(out[0].reply->str, "va");
    assert_string_equal(out[1].reply->str, "vb");
    assert_int_equal(st.moved, 2);
    assert_int_equal(st.asked, 0);
    assert_int_equal(rcluster_map_master(m, s), bi);
    rcluster_replies_free(out, 2);

    /* Back to how it was, and wait until every node agrees. */
    node_do(a, "CLUSTER SETSLOT %d IMPORTING %s", s, bid);
    node_do(b, "CLUSTER SETSLOT %d MIGRATING %s", s, aid);
    migrate_keys(b, a, s);
    node_do(a, "CLUSTER SETSLOT %d NODE %s", s, aid);
    node_do(b, "CLUSTER SETSLOT %d NODE %s", s, aid);
    setslot_node(m, s, aid);
    int agreed = 0;
    for (int t = 0; t < 200 && !(agreed = nodes_agree(s, a)); t++) sleep_ms(50);
    assert_true(agreed);
    conns_reset();
    rcluster_map_free(m);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);   /* rconn.h: writes to closed sockets */
    if (cluster_open("test_rcluster") < 0) return 1;
    prefix_init("test_rcluster");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exec_all_nodes_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_timeout_and_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_redirect_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_desync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_real, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_replica_hangs_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_moved, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_ask_during_migration, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cluster_close();
    return failed;
}
