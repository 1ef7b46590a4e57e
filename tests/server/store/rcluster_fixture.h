/*
 * rcluster_fixture.h - what the two tests of Redis Cluster routing share
 * (test_rcluster_map.c, test_rcluster.c): CLUSTER SLOTS replies made from
 * a short description, maps from them, commands to the nodes of the real
 * cluster of $CTR_CLUSTER_SEEDS (store_fixture.h connects them), and that
 * cluster's map.  Header-only: each test binary includes it once, after
 * store_fixture.h.
 */
#ifndef CTR_TESTS_RCLUSTER_FIXTURE_H
#define CTR_TESTS_RCLUSTER_FIXTURE_H

#include "server/store/rcluster.h"
#include "server/store/rconn.h"

static inline int slot_of(const char *s) { return rcluster_keyslot(s, strlen(s)); }

/* --- Replies made from RESP text ------------------------------------------ */

static inline redisReply *resp(const char *text, size_t len) {
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
static inline void put(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b->s + b->n, sizeof b->s - b->n, fmt, ap);
    va_end(ap);
    assert_true(k >= 0 && (size_t)k < sizeof b->s - b->n);
    b->n += (size_t)k;
}

static inline void put_bulk(sbuf *b, const char *s) { put(b, "$%zu\r\n%s\r\n", strlen(s), s); }

/* A CLUSTER SLOTS reply from "lo-hi=node,node;lo-hi=node..." where a node is
 * host:port ("~:port" a nil host, ":port" an empty one, "?:port" unknown);
 * node ids are made from the port; a fourth element (the metadata Redis 7
 * adds) is given to every node. */
static inline redisReply *slots_reply(const char *desc) {
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

static inline rcluster_map *map_of(const char *desc, const char *origin) {
    redisReply *r = slots_reply(desc);
    rcluster_map *m = NULL;
    int rc = rcluster_map_parse(r, origin, &m, err, sizeof err);
    freeReplyObject(r);
    if (rc != CTR_OK) fail_msg("rcluster_map_parse(%s): %s", desc, err);
    return m;
}

static inline int map_port(const rcluster_map *m, int i) {
    const rcluster_node *n = rcluster_map_node(m, i);
    assert_non_null(n);
    return n->port;
}

/* --- The real cluster ------------------------------------------------------- */

/* (hiredis's %b takes two arguments: no printf format check here.) */
static inline redisReply *node_cmd(int port, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(admin_of(port), fmt, ap);
    va_end(ap);
    if (!r) fail_msg("node %d: %s: %s", port, fmt, admin_of(port)->errstr);
    return r;
}

static inline void node_do(int port, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(admin_of(port), fmt, ap);
    va_end(ap);
    if (!r) fail_msg("node %d: %s: %s", port, fmt, admin_of(port)->errstr);
    if (r->type == REDIS_REPLY_ERROR) fail_msg("node %d: %s: %s", port, fmt, r->str);
    freeReplyObject(r);
}

/* The map, as rconn_command + rcluster_map_parse give it. */
static inline rcluster_map *real_map(void) {
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

#endif
