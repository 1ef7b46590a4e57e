/*
 * test_rcluster_map.c - server/store/rcluster_map.c: key slots against a
 * bitwise CRC16 written here and against Redis's own CLUSTER KEYSLOT; slot
 * maps from CLUSTER SLOTS replies (made here as RESP text and parsed by
 * hiredis's reader, and from the real cluster of $CTR_CLUSTER_SEEDS, which
 * tests/run.sh always provides: tests/integration/lib/redis_cluster.sh;
 * the test fails without it); routes, MOVED, redirect parsing; grouping.
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
#include "tests/server/store/rcluster_fixture.h"

/* --- Key slots ------------------------------------------------------------ */

/* CRC16-XMODEM bit by bit, straight from its definition. */
static unsigned crc16_bitwise(const unsigned char *p, size_t len) {
    unsigned crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (unsigned)p[i] << 8;
        for (int b = 0; b < 8; b++) crc = crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1;
        crc &= 0xffff;
    }
    return crc;
}

static void test_keyslot_known(void **state) {
    (void)state;
    /* The CRC16 check value of "123456789" is 0x31c3. */
    assert_int_equal(crc16_bitwise((const unsigned char *)"123456789", 9), 0x31c3);
    assert_int_equal(slot_of("123456789"), 0x31c3 & 16383);
    assert_int_equal(slot_of(""), 0);
    /* Hash tags: the first '{' and the first '}' after it, if not empty. */
    assert_int_equal(slot_of("{user1000}.following"), slot_of("user1000"));
    assert_int_equal(slot_of("{user1000}.followers"), slot_of("user1000"));
    assert_int_equal(slot_of("ctr:u:{42}"), slot_of("42"));
    assert_int_equal(slot_of("foo{}{bar}"),
                     (int)(crc16_bitwise((const unsigned char *)"foo{}{bar}", 10) & 16383));
    assert_int_equal(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    assert_int_equal(slot_of("foo{bar}{zap}"), slot_of("bar"));
    assert_int_equal(slot_of("{a"), (int)(crc16_bitwise((const unsigned char *)"{a", 2) & 16383));
    assert_int_equal(slot_of("}a{"), (int)(crc16_bitwise((const unsigned char *)"}a{", 3) & 16383));
    /* Bytes after a NUL count: lengths, not C strings. */
    assert_int_not_equal(rcluster_keyslot("a\0b", 3), rcluster_keyslot("a\0c", 3));
}

static void test_keyslot_random(void **state) {
    (void)state;
    unsigned seed = 12345;
    unsigned char key[64];
    for (int t = 0; t < 20000; t++) {
        size_t len = (size_t)(rand_r(&seed) % 40);
        for (size_t i = 0; i < len; i++) key[i] = (unsigned char)rand_r(&seed);
        /* No braces, so the whole key hashes. */
        for (size_t i = 0; i < len; i++)
            if (key[i] == '{') key[i] = 'x';
        assert_int_equal(rcluster_keyslot((const char *)key, len),
                         (int)(crc16_bitwise(key, len) & 16383));
    }
}

static void test_keyslot_matches_redis(void **state) {
    (void)state;
    unsigned seed = 777;
    int checked = 0;
    for (int t = 0; t < 600; t++) {
        char key[48];
        size_t len;
        if (t < 200) {
            len = (size_t)snprintf(key, sizeof key, "ctr:i:%d", t * 977);
        } else if (t < 300) {
            len = (size_t)snprintf(key, sizeof key, "ctr:u:u%d", t);
        } else {
            /* Random bytes with braces sprinkled in: hash tags, empty
             * tags, unmatched braces. */
            len = (size_t)(rand_r(&seed) % 24);
            const char alphabet[] = "ab{}{}:0\xff\x01";
            for (size_t i = 0; i < len; i++)
                key[i] = alphabet[rand_r(&seed) % (sizeof alphabet - 1)];
        }
        redisReply *r = node_cmd(node_port[0], "CLUSTER KEYSLOT %b", key, len);
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        assert_int_equal(rcluster_keyslot(key, len), (int)r->integer);
        freeReplyObject(r);
        checked++;
    }
    assert_int_equal(checked, 600);
}

/* --- Slot map ------------------------------------------------------------- */

static void test_map_parse(void **state) {
    (void)state;
    rcluster_map *m = map_of("0-5460=10.0.0.1:7000,10.0.0.2:7003;"
                             "5461-10922=10.0.0.1:7001,10.0.0.2:7004,10.0.0.3:7006;"
                             "10923-16383=10.0.0.1:7002",
                             "10.0.0.1");
    assert_int_equal(rcluster_map_nodes(m), 6);
    assert_int_equal(rcluster_map_covered(m), 16384);
    assert_int_equal(map_port(m, rcluster_map_master(m, 0)), 7000);
    assert_int_equal(map_port(m, rcluster_map_master(m, 5460)), 7000);
    assert_int_equal(map_port(m, rcluster_map_master(m, 5461)), 7001);
    assert_int_equal(map_port(m, rcluster_map_master(m, 16383)), 7002);
    assert_int_equal(rcluster_map_master(m, -1), -1);
    assert_int_equal(rcluster_map_master(m, 16384), -1);
    int reps[4];
    assert_int_equal(rcluster_map_replicas(m, 100, reps, 4), 1);
    assert_int_equal(map_port(m, reps[0]), 7003);
    assert_int_equal(rcluster_map_replicas(m, 6000, reps, 1), 2);   /* more than max */
    assert_int_equal(map_port(m, reps[0]), 7004);
    assert_int_equal(rcluster_map_replicas(m, 6000, reps, 4), 2);
    assert_int_equal(map_port(m, reps[1]), 7006);
    assert_int_equal(rcluster_map_replicas(m, 12000, reps, 4), 0);
    const rcluster_node *n = rcluster_map_node(m, rcluster_map_find(m, "10.0.0.2", 7004));
    assert_non_null(n);
    assert_string_equal(n->host, "10.0.0.2");
    assert_string_equal(n->id, "0000000000000000000000000000000000007004");
    assert_int_equal(rcluster_map_find(m, "10.0.0.2", 7000), -1);
    assert_null(rcluster_map_node(m, 6));
    assert_null(rcluster_map_node(m, -1));
    rcluster_map_free(m);
    rcluster_map_free(NULL);
}

static void test_map_parse_shapes(void **state) {
    (void)state;
    /* A master with several ranges is one shard (one node, same replicas). */
    rcluster_map *m = map_of("0-99=h:1,h:2;200-299=h:1,h:2;100-199=h:3", NULL);
    assert_int_equal(rcluster_map_nodes(m), 3);
    assert_int_equal(rcluster_map_master(m, 50), rcluster_map_master(m, 250));
    assert_int_equal(map_port(m, rcluster_map_master(m, 150)), 3);
    assert_int_equal(rcluster_map_covered(m), 300);
    assert_int_equal(rcluster_map_master(m, 300), -1);     /* not covered */
    assert_int_equal(rcluster_map_route(m, 300, RCLUSTER_READ_ANY, 1), -1);
    rcluster_map_free(m);

    /* Nil and empty hosts are the origin's; "?" is left out, and a master
     * left out leaves its slots unserved. */
    m = map_of("0-9=~:7000,:7001;10-19=?:7002,h:7003;20-29=h:7004,?:7005", "192.0.2.7");
    assert_int_equal(rcluster_map_nodes(m), 4);
    assert_int_equal(rcluster_map_find(m, "192.0.2.7", 7000), rcluster_map_master(m, 0));
    int reps[2];
    assert_int_equal(rcluster_map_replicas(m, 0, reps, 2), 1);
    assert_int_equal(reps[0], rcluster_map_find(m, "192.0.2.7", 7001));
    assert_int_equal(rcluster_map_master(m, 10), -1);
    assert_int_equal(rcluster_map_replicas(m, 25, reps, 2), 0);
    assert_int_equal(rcluster_map_covered(m), 20);
    rcluster_map_free(m);

    /* ... and without an origin a nil host is an error. */
    redisReply *r = slots_reply("0-9=~:7000");
    rcluster_map *bad = NULL;
    assert_int_equal(rcluster_map_parse(r, NULL, &bad, err, sizeof err), CTR_EFORMAT);
    assert_null(bad);
    assert_non_null(strstr(err, "origin"));
    freeReplyObject(r);

    /* An empty reply: a cluster with no slots assigned. */
    r = resp("*0\r\n", 4);
    assert_int_equal(rcluster_map_parse(r, NULL, &m, err, sizeof err), CTR_OK);
    assert_int_equal(rcluster_map_covered(m), 0);
    assert_int_equal(rcluster_map_nodes(m), 0);
    rcluster_map_free(m);
    freeReplyObject(r);
}

static void expect_refused(const char *text, const char *needle) {
    redisReply *r = resp(text, strlen(text));
    rcluster_map *m = (rcluster_map *)1;
    err[0] = '\0';
    int rc = rcluster_map_parse(r, "h", &m, err, sizeof err);
    freeReplyObject(r);
    if (rc != CTR_EFORMAT) fail_msg("accepted %s", text);
    assert_null(m);
    if (!strstr(err, needle)) fail_msg("message \"%s\" lacks \"%s\"", err, needle);
}

static void test_map_parse_refusals(void **state) {
    (void)state;
    rcluster_map *m = (rcluster_map *)1;
    assert_int_equal(rcluster_map_parse(NULL, "h", &m, err, sizeof err), CTR_EFORMAT);
    assert_null(m);
    expect_refused("-ERR This instance has cluster support disabled\r\n", "cluster support disabled");
    expect_refused("+OK\r\n", "not an array");
    expect_refused("*1\r\n:5\r\n", "entry 0");
    expect_refused("*1\r\n*2\r\n:0\r\n:5\r\n", "entry 0");   /* no master */
    expect_refused("*1\r\n*3\r\n:5\r\n:1\r\n*2\r\n$1\r\nh\r\n:7000\r\n", "bad slot range");
    expect_refused("*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:7000\r\n", "bad slot range");
    expect_refused("*1\r\n*3\r\n:-1\r\n:3\r\n*2\r\n$1\r\nh\r\n:7000\r\n", "bad slot range");
    expect_refused("*1\r\n*3\r\n:0\r\n:3\r\n*2\r\n$1\r\nh\r\n:0\r\n", "port");
    expect_refused("*1\r\n*3\r\n:0\r\n:3\r\n*2\r\n$1\r\nh\r\n:65536\r\n", "port");
    expect_refused("*1\r\n*3\r\n:0\r\n:3\r\n*2\r\n$1\r\nh\r\n$4\r\n7000\r\n", "port");
    expect_refused("*1\r\n*3\r\n:0\r\n:3\r\n*2\r\n:1\r\n:7000\r\n", "host");
    expect_refused("*1\r\n*3\r\n:0\r\n:3\r\n$1\r\nh\r\n", "node");
    expect_refused("*2\r\n*3\r\n:0\r\n:3\r\n*2\r\n$1\r\nh\r\n:7000\r\n"
                   "*3\r\n:3\r\n:9\r\n*2\r\n$1\r\ng\r\n:7000\r\n", "slot 3 given twice");
    char longhost[200];
    int k = snprintf(longhost, sizeof longhost, "*1\r\n*3\r\n:0\r\n:3\r\n*2\r\n$%d\r\n%0*d\r\n:1\r\n",
                     RCLUSTER_HOST_MAX, RCLUSTER_HOST_MAX, 0);
    assert_true(k > 0 && k < (int)sizeof longhost);
    expect_refused(longhost, "longer");
}

static void test_map_route(void **state) {
    (void)state;
    rcluster_map *m = map_of("0-99=h:1,h:11,h:21;100-199=h:2", NULL);
    int m1 = rcluster_map_find(m, "h", 1), r11 = rcluster_map_find(m, "h", 11),
        r21 = rcluster_map_find(m, "h", 21), m2 = rcluster_map_find(m, "h", 2);
    for (unsigned salt = 0; salt < 6; salt++) {
        assert_int_equal(rcluster_map_route(m, 5, RCLUSTER_READ_MASTER, salt), m1);
        assert_int_equal(rcluster_map_route(m, 5, RCLUSTER_READ_REPLICA, salt),
                         salt % 2 ? r21 : r11);
        int any[3] = {m1, r11, r21};
        assert_int_equal(rcluster_map_route(m, 5, RCLUSTER_READ_ANY, salt), any[salt % 3]);
        /* No replica: the master, whatever the mode. */
        assert_int_equal(rcluster_map_route(m, 150, RCLUSTER_READ_REPLICA, salt), m2);
        assert_int_equal(rcluster_map_route(m, 150, RCLUSTER_READ_ANY, salt), m2);
    }
    rcluster_map_free(m);
}

static void test_map_moved(void **state) {
    (void)state;
    rcluster_map *m = map_of("0-99=h:1,h:11;100-199=h:2", NULL);
    const rcluster_node *first = rcluster_map_node(m, 0);
    int m2 = rcluster_map_find(m, "h", 2);
    /* To a known master: the slot joins its shard. */
    assert_int_equal(rcluster_map_moved(m, 7, "h", 2), m2);
    assert_int_equal(rcluster_map_master(m, 7), m2);
    assert_int_equal(rcluster_map_master(m, 8), rcluster_map_find(m, "h", 1));
    int reps[2];
    assert_int_equal(rcluster_map_replicas(m, 7, reps, 2), 0);
    /* To a node the map has never seen: added, without replicas. */
    int nn = rcluster_map_nodes(m);
    int x = rcluster_map_moved(m, 150, "10.1.1.1", 6000);
    assert_int_equal(x, nn);
    assert_int_equal(rcluster_map_nodes(m), nn + 1);
    assert_string_equal(rcluster_map_node(m, x)->id, "");
    assert_int_equal(rcluster_map_master(m, 150), x);
    assert_int_equal(rcluster_map_master(m, 151), m2);
    /* To a replica (promoted): a shard of its own. */
    int r11 = rcluster_map_find(m, "h", 11);
    assert_int_equal(rcluster_map_moved(m, 9, "h", 11), r11);
    assert_int_equal(rcluster_map_route(m, 9, RCLUSTER_READ_REPLICA, 0), r11);
    /* Existing nodes never move. */
    for (int i = 0; i < 40; i++) {
        char host[32];
        snprintf(host, sizeof host, "10.2.0.%d", i);
        assert_true(rcluster_map_moved(m, i, host, 7000) >= 0);
    }
    assert_ptr_equal(rcluster_map_node(m, 0), first);
    assert_int_equal(rcluster_map_covered(m), 200);
    /* Bad arguments. */
    assert_int_equal(rcluster_map_moved(m, 16384, "h", 1), CTR_EINVAL);
    assert_int_equal(rcluster_map_moved(m, -1, "h", 1), CTR_EINVAL);
    assert_int_equal(rcluster_map_moved(m, 1, "", 1), CTR_EINVAL);
    assert_int_equal(rcluster_map_moved(m, 1, "h", 0), CTR_EINVAL);
    assert_int_equal(rcluster_map_moved(m, 1, "h", 65536), CTR_EINVAL);
    rcluster_map_free(m);
}

static void test_real_map(void **state) {
    (void)state;
    rcluster_map *m = real_map();
    assert_int_equal(rcluster_map_covered(m), 16384);
    assert_int_equal(rcluster_map_nodes(m), nnodes);
    /* Every node of the map is one of the harness's, with its id; three
     * masters, each with one replica. */
    int masters = 0;
    for (int i = 0; i < rcluster_map_nodes(m); i++) {
        const rcluster_node *n = rcluster_map_node(m, i);
        assert_non_null(admin_of(n->port));
        assert_int_equal((int)strlen(n->id), 40);
        redisReply *r = node_cmd(n->port, "CLUSTER MYID");
        assert_string_equal(r->str, n->id);
        freeReplyObject(r);
    }
    for (int s = 0; s < RCLUSTER_SLOTS; s++) {
        int reps[4];
        assert_int_equal(rcluster_map_replicas(m, s, reps, 4), 1);
        if (s == 0 || rcluster_map_master(m, s) != rcluster_map_master(m, s - 1)) masters++;
    }
    assert_int_equal(masters, 3);
    /* Each node agrees it owns (or replicates) what the map says: a GET on
     * the master, or on the replica after READONLY, is no redirect. */
    for (int t = 0; t < 50; t++) {
        char key[32];
        snprintf(key, sizeof key, "probe:%d", t * 31);
        int s = slot_of(key);
        redisReply *r = node_cmd(map_port(m, rcluster_map_master(m, s)), "GET %s", key);
        assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
        freeReplyObject(r);
    }
    rcluster_map_free(m);
}

/* --- Redirections --------------------------------------------------------- */

static int redir(const char *s, rcluster_redirect *rd) {
    memset(rd, 0x5a, sizeof *rd);
    return rcluster_redirect_parse(s, strlen(s), rd);
}

static void test_redirect_parse(void **state) {
    (void)state;
    rcluster_redirect rd;
    assert_int_equal(redir("MOVED 3999 127.0.0.1:6381", &rd), CTR_OK);
    assert_int_equal(rd.kind, RCLUSTER_MOVED);
    assert_int_equal(rd.slot, 3999);
    assert_string_equal(rd.host, "127.0.0.1");
    assert_int_equal(rd.port, 6381);
    assert_int_equal(redir("ASK 0 10.0.0.5:7000", &rd), CTR_OK);
    assert_int_equal(rd.kind, RCLUSTER_ASK);
    assert_int_equal(rd.slot, 0);
    assert_string_equal(rd.host, "10.0.0.5");
    assert_int_equal(redir("MOVED 16383 ::1:7000", &rd), CTR_OK);
    assert_string_equal(rd.host, "::1");
    assert_int_equal(rd.port, 7000);
    assert_int_equal(redir("MOVED 1 [2001:db8::2]:7000", &rd), CTR_OK);
    assert_string_equal(rd.host, "2001:db8::2");
    assert_int_equal(redir("ASK 12 redis-2.example:65535", &rd), CTR_OK);
    assert_string_equal(rd.host, "redis-2.example");
    assert_int_equal(rd.port, 65535);
    assert_int_equal(redir("MOVED 12 :7001", &rd), CTR_OK);   /* unknown endpoint */
    assert_string_equal(rd.host, "");
    assert_int_equal(rd.port, 7001);

    const char *not_redirects[] = {"WRONGTYPE Operation against a key", "CLUSTERDOWN The cluster is down",
                                   "TRYAGAIN Multiple keys request", "MOVEDX 1 h:1", "ASKING",
                                   "moved 1 h:1", "", "LOADING Redis is loading"};
    for (size_t i = 0; i < sizeof not_redirects / sizeof *not_redirects; i++)
        assert_int_equal(redir(not_redirects[i], &rd), CTR_ENOTFOUND);
    const char *malformed[] = {"MOVED 16384 h:1", "MOVED  h:1", "MOVED x h:1", "MOVED 1",
                               "MOVED 1 ", "MOVED 1 h", "MOVED 1 h:", "MOVED 1 h:0",
                               "MOVED 1 h:65536", "MOVED 1 h:12a", "ASK 1234567 h:1",
                               "MOVED 1 [::1:7000", "MOVED 1h:1", "ASK -1 h:1"};
    for (size_t i = 0; i < sizeof malformed / sizeof *malformed; i++)
        if (redir(malformed[i], &rd) != CTR_EFORMAT) fail_msg("accepted \"%s\"", malformed[i]);
    char longhost[200];
    snprintf(longhost, sizeof longhost, "MOVED 1 %0*d:7000", RCLUSTER_HOST_MAX, 0);
    assert_int_equal(redir(longhost, &rd), CTR_EFORMAT);
    /* Lengths, not C strings: the text ends at len, and a NUL inside the
     * host is no host. */
    assert_int_equal(rcluster_redirect_parse("MOVED 5 h:71", 11, &rd), CTR_OK);
    assert_int_equal(rd.port, 7);
    assert_int_equal(rcluster_redirect_parse("MOVED 5 h\0x:7", 13, &rd), CTR_EFORMAT);
}

/* --- Grouping ------------------------------------------------------------- */

static void test_plan(void **state) {
    (void)state;
    /* Slots of these keys: chosen below from the map's ranges. */
    rcluster_map *m = map_of("0-5460=h:1,h:11;5461-10922=h:2,h:12;10923-16383=h:3,h:13", NULL);
    enum { N = 300 };
    char keys[N][24];
    const char *kp[N];
    size_t kl[N];
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof keys[i], "ctr:i:%d", i * 7 + 1);
        kp[i] = keys[i];
        kl[i] = strlen(keys[i]);
    }
    for (int mode = RCLUSTER_READ_MASTER; mode <= RCLUSTER_READ_ANY; mode++) {
        rcluster_plan p;
        assert_int_equal(rcluster_plan_make(m, N, kp, kl, (rcluster_read)mode, 1, &A, &p, err,
                                            sizeof err), CTR_OK);
        assert_int_equal(p.n, N);
        int seen[N] = {0};
        int total = 0;
        int first_of_prev = -1;
        for (int g = 0; g < p.ngroups; g++) {
            assert_true(p.group_start[g] < p.group_start[g + 1]);
            int node = p.group_node[g];
            /* Groups in the order of their first key; keys ascending. */
            assert_true(p.order[p.group_start[g]] > first_of_prev);
            first_of_prev = p.order[p.group_start[g]];
            for (int k = p.group_start[g]; k < p.group_start[g + 1]; k++) {
                int i = p.order[k];
                assert_true(i >= 0 && i < N);
                assert_int_equal(seen[i]++, 0);
                if (k > p.group_start[g]) assert_true(i > p.order[k - 1]);
                assert_int_equal(p.node[i], node);
                int s = slot_of(keys[i]);
                assert_int_equal(p.slot[i], s);
                /* The node is the one the slot's range names. */
                int want = s <= 5460 ? 1 : s <= 10922 ? 2 : 3;
                if (mode != RCLUSTER_READ_MASTER) want += 10;   /* salt 1: the replica */
                assert_int_equal(map_port(m, node), want);
            }
            total += p.group_start[g + 1] - p.group_start[g];
        }
        assert_int_equal(total, N);
        assert_int_equal(p.ngroups, 3);
        assert_int_equal(p.group_start[p.ngroups], N);
    }
    rcluster_map_free(m);

    /* Unserved keys: the last group, node -1. */
    m = map_of("0-8191=h:1", NULL);
    rcluster_plan p;
    assert_int_equal(rcluster_plan_make(m, N, kp, kl, RCLUSTER_READ_MASTER, 0, &A, &p, err,
                                        sizeof err), CTR_OK);
    assert_int_equal(p.ngroups, 2);
    assert_int_equal(p.group_node[1], -1);
    for (int k = p.group_start[1]; k < p.group_start[2]; k++) {
        assert_true(p.slot[p.order[k]] > 8191);
        assert_int_equal(p.node[p.order[k]], -1);
    }
    for (int k = 0; k < p.group_start[1]; k++) assert_true(p.slot[p.order[k]] <= 8191);
    /* No keys. */
    assert_int_equal(rcluster_plan_make(m, 0, kp, kl, RCLUSTER_READ_MASTER, 0, &A, &p, err,
                                        sizeof err), CTR_OK);
    assert_int_equal(p.ngroups, 0);
    assert_int_equal(rcluster_plan_make(m, -1, kp, kl, RCLUSTER_READ_MASTER, 0, &A, &p, err,
                                        sizeof err), CTR_EINVAL);
    rcluster_map_free(m);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);   /* rconn.h: writes to closed sockets */
    if (cluster_open("test_rcluster_map") < 0) return 1;
    prefix_init("test_rcluster_map");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keyslot_known),
        cmocka_unit_test(test_keyslot_random),
        cmocka_unit_test(test_keyslot_matches_redis),
        cmocka_unit_test(test_map_parse),
        cmocka_unit_test(test_map_parse_shapes),
        cmocka_unit_test(test_map_parse_refusals),
        cmocka_unit_test(test_map_route),
        cmocka_unit_test(test_map_moved),
        cmocka_unit_test(test_real_map),
        cmocka_unit_test(test_redirect_parse),
        cmocka_unit_test_setup_teardown(test_plan, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cluster_close();
    return failed;
}
