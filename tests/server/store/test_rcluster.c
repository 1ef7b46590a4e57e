/*
 * test_rcluster.c - server/store/rcluster.c: key slots against a bitwise CRC16
 * written here and against Redis's own CLUSTER KEYSLOT; slot maps from
 * CLUSTER SLOTS replies (made here as RESP text and parsed by hiredis's
 * reader, and from a real cluster); redirect parsing; grouping; and
 * rcluster_exec against the real cluster of $CTR_CLUSTER_SEEDS (which
 * tests/run.sh always provides: tests/integration/lib/redis_cluster.sh;
 * the test fails without it) and against fake nodes (fake_redis.h: a node
 * that answers only once every node has its pipeline, one that never
 * answers, one that hangs up, one that redirects forever, ones that send
 * replies out of step).
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

static int slot_of(const char *s) { return rcluster_keyslot(s, strlen(s)); }

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

/* --- Replies made from RESP text ------------------------------------------ */

static redisReply *resp(const char *text, size_t len) {
    redisReader *rd = redisReaderCreate();
    assert_non_null(rd);
    assert_int_equal(redisReaderFeed(rd, text, len), REDIS_OK);
    void *r = NULL;
    assert_int_equal(redisReaderGetReply(rd, &r), REDIS_OK);
    assert_non_null(r);
    redisReaderFree(rd);
    return r;
}

typedef struct sbuf {
    char s[16384];
    size_t n;
} sbuf;

__attribute__((format(printf, 2, 3)))
static void put(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b->s + b->n, sizeof b->s - b->n, fmt, ap);
    va_end(ap);
    assert_true(k >= 0 && (size_t)k < sizeof b->s - b->n);
    b->n += (size_t)k;
}

static void put_bulk(sbuf *b, const char *s) { put(b, "$%zu\r\n%s\r\n", strlen(s), s); }

/* A CLUSTER SLOTS reply from "lo-hi=node,node;lo-hi=node..." where a node is
 * host:port ("~:port" a nil host, ":port" an empty one, "?:port" unknown);
 * node ids are made from the port; a fourth element (the metadata Redis 7
 * adds) is given to every node. */
static redisReply *slots_reply(const char *desc) {
    sbuf b = {.n = 0};
    int entries = 1;
    for (const char *p = desc; *p; p++) entries += *p == ';';
    put(&b, "*%d\r\n", entries);
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", desc);
    char *save1 = NULL;
    for (char *e = strtok_r(copy, ";", &save1); e; e = strtok_r(NULL, ";", &save1)) {
        int lo, hi;
        char *eq = strchr(e, '=');
        assert_non_null(eq);
        assert_int_equal(sscanf(e, "%d-%d", &lo, &hi), 2);
        int nodes = 1;
        for (char *p = eq + 1; *p; p++) nodes += *p == ',';
        put(&b, "*%d\r\n:%d\r\n:%d\r\n", 2 + nodes, lo, hi);
        char *save2 = NULL;
        for (char *nd = strtok_r(eq + 1, ",", &save2); nd; nd = strtok_r(NULL, ",", &save2)) {
            char *colon = strrchr(nd, ':');
            assert_non_null(colon);
            *colon = '\0';
            int port = atoi(colon + 1);
            char id[41];
            snprintf(id, sizeof id, "%040d", port);
            put(&b, "*4\r\n");
            if (strcmp(nd, "~") == 0) put(&b, "$-1\r\n");
            else put_bulk(&b, nd);
            put(&b, ":%d\r\n", port);
            put_bulk(&b, id);
            put(&b, "*0\r\n");
        }
    }
    return resp(b.s, b.n);
}

static rcluster_map *map_of(const char *desc, const char *origin) {
    redisReply *r = slots_reply(desc);
    rcluster_map *m = NULL;
    int rc = rcluster_map_parse(r, origin, &m, err, sizeof err);
    freeReplyObject(r);
    if (rc != CTR_OK) fail_msg("rcluster_map_parse(%s): %s", desc, err);
    return m;
}

static int map_port(const rcluster_map *m, int i) {
    const rcluster_node *n = rcluster_map_node(m, i);
    assert_non_null(n);
    return n->port;
}

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

/* (hiredis's %b takes two arguments: no printf format check here.) */
static redisReply *node_cmd(int port, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(admin_of(port), fmt, ap);
    va_end(ap);
    if (!r) fail_msg("node %d: %s: %s", port, fmt, admin_of(port)->errstr);
    return r;
}

static void node_do(int port, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(admin_of(port), fmt, ap);
    va_end(ap);
    if (!r) fail_msg("node %d: %s: %s", port, fmt, admin_of(port)->errstr);
    if (r->type == REDIS_REPLY_ERROR) fail_msg("node %d: %s: %s", port, fmt, r->str);
    freeReplyObject(r);
}

/* The map, as rconn_command + rcluster_map_parse give it. */
static rcluster_map *real_map(void) {
    const rconn_params rp = {2000, NULL, NULL};
    rconn *c;
    if (rconn_open(&rp, node_host[0], node_port[0], ms_from_now(2000), &c, err, sizeof err) < 0)
        fail_msg("connect: %s", err);
    const char *argv[] = {"CLUSTER", "SLOTS"};
    size_t lens[] = {7, 5};
    redisReply *r;
    int rc = rconn_command(c, 2, argv, lens, RCONN_ARRAY, ms_from_now(2000), &r, err, sizeof err);
    if (rc != CTR_OK) fail_msg("CLUSTER SLOTS: %s", err);
    rcluster_map *m;
    rc = rcluster_map_parse(r, node_host[0], &m, err, sizeof err);
    if (rc != CTR_OK) fail_msg("parse: %s", err);
    freeReplyObject(r);
    rconn_close(c);
    return m;
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
        cmocka_unit_test(test_keyslot_known),
        cmocka_unit_test(test_keyslot_random),
        cmocka_unit_test(test_map_parse),
        cmocka_unit_test(test_map_parse_shapes),
        cmocka_unit_test(test_map_parse_refusals),
        cmocka_unit_test(test_map_route),
        cmocka_unit_test(test_map_moved),
        cmocka_unit_test(test_redirect_parse),
        cmocka_unit_test_setup_teardown(test_plan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_all_nodes_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_timeout_and_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_redirect_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_desync, setup, teardown),
        cmocka_unit_test(test_keyslot_matches_redis),
        cmocka_unit_test(test_real_map),
        cmocka_unit_test_setup_teardown(test_exec_real, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_replica_hangs_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_moved, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_ask_during_migration, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    cluster_close();
    return failed;
}
