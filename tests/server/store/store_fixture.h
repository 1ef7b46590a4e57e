/*
 * store_fixture.h - what the feature-store tests (tests/server/store/)
 * share, besides the message buffer and arena of tests/fixture.h: clocks,
 * this run's key prefix, plain blocking hiredis connections to set up and
 * inspect Redis ("admin" connections, never the code under test), the
 * nodes of the Redis Cluster of $CTR_CLUSTER_SEEDS, feature-store
 * parameters and items, and loopback sockets for fake servers.
 *
 * Header-only: each test binary includes it once, after <cmocka.h>.
 */
#ifndef CTR_TESTS_STORE_FIXTURE_H
#define CTR_TESTS_STORE_FIXTURE_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "core/base/clock.h"
#include "core/base/status.h"
#include "proto/features.h"
#include "server/store/featstore.h"

#include "tests/fixture.h"

#define UNUSED __attribute__((unused))

/* --- Clocks ----------------------------------------------------------------- */

static inline double now_ms(void) { return (double)clock_now_ns() / 1e6; }

static inline int64_t ms_from_now(int ms) { return clock_now_ns() + (int64_t)ms * 1000000; }

static inline void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* --- This run's keys ---------------------------------------------------- */

/* Every key a test binary writes starts with "<name>:<pid>:<time>:", so
 * runs sharing a Redis never see each other's data. */
static char prefix[64] UNUSED;

static inline void prefix_init(const char *name) {
    snprintf(prefix, sizeof prefix, "%s:%ld:%lld:", name, (long)getpid(), (long long)time(NULL));
}

/* --- Admin connections ------------------------------------------------------ */

/* A blocking connection with 2 s timeouts; NULL when it cannot connect. */
static inline redisContext *admin_connect(const char *host, int port) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    if (!c || c->err) {
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

/* The same to "host:port". */
static inline redisContext *admin_connect_addr(const char *addr) {
    const char *colon = strrchr(addr, ':');
    if (!colon) return NULL;
    char host[256];
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    return admin_connect(host, atoi(colon + 1));
}

/* A command's reply (the caller frees it); fails the test when there is
 * none.  (hiredis's %b takes two arguments: no printf format check.) */
static inline redisReply *admin_cmd(redisContext *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!r) fail_msg("admin %s: %s", fmt, c->errstr);
    return r;
}

/* A command that must succeed. */
static inline void admin_do(redisContext *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!r) fail_msg("admin %s: %s", fmt, c->errstr);
    if (r->type == REDIS_REPLY_ERROR) fail_msg("admin %s: %s", fmt, r->str);
    freeReplyObject(r);
}

/* calls=N of cmdstat_<cmd> in INFO commandstats (0 if never called). */
static inline long long admin_calls(redisContext *c, const char *cmd) {
    redisReply *r = admin_cmd(c, "INFO commandstats");
    char pat[64];
    snprintf(pat, sizeof pat, "cmdstat_%s:calls=", cmd);
    const char *p = r->str ? strstr(r->str, pat) : NULL;
    long long n = p ? atoll(p + strlen(pat)) : 0;
    freeReplyObject(r);
    return n;
}

/* Keys of this run on c (SCAN). */
static inline long admin_count_keys(redisContext *c) {
    long n = 0;
    unsigned long long cursor = 0;
    do {
        redisReply *r = admin_cmd(c, "SCAN %llu MATCH %s* COUNT 1000", cursor, prefix);
        assert_int_equal(r->type, REDIS_REPLY_ARRAY);
        cursor = strtoull(r->element[0]->str, NULL, 10);
        n += (long)r->element[1]->elements;
        freeReplyObject(r);
    } while (cursor);
    return n;
}

/* Deletes this run's keys on c (a replica refuses: fine).  Called after
 * the tests ran, so it never fails one. */
static inline void admin_delete_keys(redisContext *c) {
    unsigned long long cursor = 0;
    do {
        redisReply *r = redisCommand(c, "SCAN %llu MATCH %s* COUNT 1000", cursor, prefix);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            if (r) freeReplyObject(r);
            return;
        }
        cursor = strtoull(r->element[0]->str, NULL, 10);
        const redisReply *keys = r->element[1];
        for (size_t k = 0; k < keys->elements; k++) {
            redisReply *d = redisCommand(c, "DEL %b", keys->element[k]->str,
                                         keys->element[k]->len);
            if (d) freeReplyObject(d);
        }
        freeReplyObject(r);
    } while (cursor);
}

/* --- The one Redis of $CTR_REDIS ------------------------------------------- */

static char redis_addr[256] UNUSED;       /* host:port */
static char redis_host[256] UNUSED;
static int redis_port UNUSED;
static redisContext *admin UNUSED;        /* an admin connection to it */

/* Reads $CTR_REDIS, connects `admin` and sets this run's prefix (name:
 * the test binary's, for messages and keys).  0, or -1 with a message on
 * stderr (the binary then fails: tests/run.sh always provides one). */
static inline int redis_open(const char *name) {
    const char *env = getenv("CTR_REDIS");
    const char *colon = env ? strrchr(env, ':') : NULL;
    if (!colon) {
        fprintf(stderr, "%s: CTR_REDIS (host:port of a Redis to use) is not set; "
                        "tests/run.sh provides one\n", name);
        return -1;
    }
    snprintf(redis_addr, sizeof redis_addr, "%s", env);
    snprintf(redis_host, sizeof redis_host, "%.*s", (int)(colon - env), env);
    redis_port = atoi(colon + 1);
    if (!(admin = admin_connect(redis_host, redis_port))) {
        fprintf(stderr, "%s: cannot reach Redis at %s\n", name, env);
        return -1;
    }
    prefix_init(name);
    return 0;
}

/* Deletes this run's keys and closes `admin`. */
static inline void redis_close(void) {
    admin_delete_keys(admin);
    redisFree(admin);
    admin = NULL;
}

/* --- The Redis Cluster of $CTR_CLUSTER_SEEDS ------------------------------- */

#define CLUSTER_MAX_NODES 16

static int nnodes UNUSED;
static char node_host[CLUSTER_MAX_NODES][64] UNUSED;
static int node_port[CLUSTER_MAX_NODES] UNUSED;
static redisContext *node_admin[CLUSTER_MAX_NODES] UNUSED;

/* Reads $CTR_CLUSTER_SEEDS ("host:port,...") and connects an admin
 * connection to every node it names.  0, or -1 with a message on stderr
 * (the binary then fails: tests/run.sh always starts a cluster). */
static inline int cluster_open(const char *name) {
    const char *seeds = getenv("CTR_CLUSTER_SEEDS");
    if (!seeds || !*seeds) {
        fprintf(stderr, "%s: CTR_CLUSTER_SEEDS (host:port,... of a Redis Cluster's nodes) is "
                        "not set; tests/run.sh starts a cluster with "
                        "tests/integration/lib/redis_cluster.sh\n", name);
        return -1;
    }
    char list[1024];
    snprintf(list, sizeof list, "%s", seeds);
    char *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t && nnodes < CLUSTER_MAX_NODES;
         t = strtok_r(NULL, ",", &save)) {
        char *colon = strrchr(t, ':');
        if (!colon) return fprintf(stderr, "%s: seed \"%s\" is not host:port\n", name, t), -1;
        snprintf(node_host[nnodes], sizeof node_host[nnodes], "%.*s", (int)(colon - t), t);
        node_port[nnodes] = atoi(colon + 1);
        node_admin[nnodes] = admin_connect(node_host[nnodes], node_port[nnodes]);
        if (!node_admin[nnodes]) return fprintf(stderr, "%s: cannot reach %s\n", name, t), -1;
        nnodes++;
    }
    return 0;
}

/* Deletes this run's keys on every node and closes the connections. */
static inline void cluster_close(void) {
    for (int i = 0; i < nnodes; i++) {
        admin_delete_keys(node_admin[i]);
        redisFree(node_admin[i]);
    }
    nnodes = 0;
}

/* The admin connection of the node on port (fails the test if none). */
static inline redisContext *admin_of(int port) {
    for (int i = 0; i < nnodes; i++)
        if (node_port[i] == port) return node_admin[i];
    fail_msg("no node on port %d", port);
    return NULL;
}

/* 1 when the node answers ROLE with "master". */
static inline int node_is_master(redisContext *c) {
    redisReply *r = admin_cmd(c, "ROLE");
    int master = r->type == REDIS_REPLY_ARRAY && r->elements &&
                 strcmp(r->element[0]->str, "master") == 0;
    freeReplyObject(r);
    return master;
}

/* --- Feature-store values ----------------------------------------------------- */

#define MM 12
#define TAGS 5

/* Defaults with this run's prefix, the item shape above, short
 * histories (max_seq 4), and timeouts generous for sanitizer builds
 * (tests of deadlines set their own).  Set addr or cluster. */
static inline featstore_params fs_params(void) {
    featstore_params p;
    featstore_default_params(&p);
    p.prefix = prefix;
    p.max_tags = TAGS;
    p.mm_dim = MM;
    p.max_seq = 4;
    p.command_timeout_ms = 2000;
    p.connect_timeout_ms = 2000;
    return p;
}

static inline featstore *open_fs(const featstore_params *p) {
    featstore *fs;
    int rc = featstore_open(p, &fs, err, sizeof err);
    if (rc != CTR_OK) fail_msg("featstore_open: %d %s", rc, err);
    return fs;
}

/* An encoded item whose tags and floats derive from id. */
static inline size_t make_item(int64_t id, unsigned char *buf, size_t cap) {
    int32_t tags[TAGS];
    float mm[MM];
    for (int i = 0; i < TAGS; i++) tags[i] = (int32_t)(id % 1000 * 10 + i);
    for (int i = 0; i < MM; i++) mm[i] = (float)id + (float)i / 8;
    size_t len = 0;
    assert_int_equal(features_item_encode(tags, TAGS, mm, MM, buf, cap, &len, err, sizeof err),
                     CTR_OK);
    return len;
}

/* it is the item make_item(id) encodes. */
static inline void check_item(const featstore_item *it, int64_t id) {
    assert_int_equal(it->found, 1);
    assert_int_equal(it->status, CTR_OK);
    assert_int_equal(it->num_tags, TAGS);
    assert_int_equal(it->mm_dim, MM);
    for (int i = 0; i < TAGS; i++) assert_int_equal(it->tags[i], id % 1000 * 10 + i);
    for (int i = 0; i < MM; i++) assert_true(it->mm[i] == (float)id + (float)i / 8);
}

/* --- Loopback sockets ----------------------------------------------------------- */

/* A loopback TCP socket bound to a free port; listening if `listening`. */
static inline int loopback_socket(int listening, int backlog, int *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    *port = ntohs(sa.sin_port);
    if (listening) assert_int_equal(listen(fd, backlog), 0);
    return fd;
}

/* A listening loopback socket whose queue is full (four connects that
 * nobody accepts; backlog 0 still admits one or two), so the kernel
 * drops the next SYN: a connect to *port never completes.  Close the
 * returned socket and fill[0..4) afterwards. */
static inline int full_listen_queue(int *port, int fill[4]) {
    int lfd = loopback_socket(1, 0, port);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)*port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < 4; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&sa, sizeof sa);
    }
    sleep_ms(20);
    return lfd;
}

/* A loopback port where nothing listens (bound, then closed). */
static inline int dead_port(void) {
    int port;
    close(loopback_socket(0, 0, &port));
    return port;
}

#endif
