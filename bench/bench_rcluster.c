/*
 * bench_rcluster.c - what reading a request's item features costs on a
 * Redis Cluster (server/store/rcluster.c) against one Redis node, at the feature
 * store's shapes: N item keys of ~540 bytes (a MicroLens item value), read
 * by one client thread, request after request.
 *
 *   make bench-cluster           (starts a 3+3 cluster and a single node)
 *   bench_rcluster --single HOST:PORT --cluster HOST:PORT[,...] [--n 64]
 *                  [--rounds 20000] [--keys 5000]
 *
 * Modes, interleaved request by request so that other load on the machine
 * falls on all of them alike:
 *   single MGET       one MGET of the N keys on the single node (what
 *                     featstore_get_items sends today)
 *   single GETs       N pipelined GETs on the single node, through
 *                     rcluster_exec with a one-node map (the per-key
 *                     commands the cluster path needs, without the cluster)
 *   cluster masters   rcluster_exec over the real map: N GETs, one pipeline
 *                     per master, all three in flight at once
 *   cluster any       the same with RCLUSTER_READ_ANY (masters and replicas)
 *   store single      featstore_get_items on the single node: what a rank
 *                     request's item read costs (N bounded GETRANGEs, each
 *                     reply's type and the pipeline's end checked, values
 *                     decoded)
 *   store cluster     the same on the cluster (masters)
 * Prints the median, p90 and p99 per mode, in microseconds, and the ratios
 * of medians to single MGET.  Every answer is checked (value length; the
 * store's: every item found).  The values are one MicroLens-shaped item
 * (5 tags, 128 floats: 540 bytes).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "core/base/arena.h"
#include "proto/features.h"
#include "server/store/featstore.h"
#include "core/base/clock.h"
#include "server/store/rcluster.h"
#include "server/store/rconn.h"

#define VALUE_LEN 540
#define MAX_N 1024

typedef struct conn {
    char host[64];
    int port;
    rcluster_link link;
} conn;

static conn conns[64];
static int nconns;

static rcluster_link *get_link(void *ud, const char *host, int port, char *err, size_t errlen) {
    (void)ud;
    for (int i = 0; i < nconns; i++)
        if (conns[i].port == port && strcmp(conns[i].host, host) == 0) {
            if (!conns[i].link.conn) break;
            return &conns[i].link;
        }
    conn *c = NULL;
    for (int i = 0; i < nconns; i++)
        if (conns[i].port == port && strcmp(conns[i].host, host) == 0) c = &conns[i];
    if (!c) {
        if (nconns == 64) {
            snprintf(err, errlen, "too many nodes");
            return NULL;
        }
        c = &conns[nconns++];
        snprintf(c->host, sizeof c->host, "%s", host);
        c->port = port;
    }
    const rconn_params rp = {2000, NULL, NULL};
    c->link.readonly = 0;
    if (rconn_open(&rp, host, port, clock_now_ns() + 2000000000LL, &c->link.conn, err, errlen) < 0)
        return NULL;
    return &c->link;
}

static void link_failed(void *ud, rcluster_link *l, int status, const char *why) {
    (void)ud;
    fprintf(stderr, "bench_rcluster: connection given up (%d): %s\n", status, why);
    rconn_close(l->conn);
    l->conn = NULL;
}

static const rcluster_links links = {get_link, link_failed, NULL};

static int split_addr(const char *s, char *host, size_t hl, int *port) {
    const char *colon = strrchr(s, ':');
    if (!colon) return -1;
    snprintf(host, hl, "%.*s", (int)(colon - s), s);
    *port = atoi(colon + 1);
    return *port > 0 ? 0 : -1;
}

static rconn *connect_to(const char *host, int port, char *err, size_t errlen) {
    const rconn_params rp = {2000, NULL, NULL};
    rconn *c;
    return rconn_open(&rp, host, port, clock_now_ns() + 2000000000LL, &c, err, errlen) < 0 ? NULL
                                                                                            : c;
}

static rcluster_map *map_from(const char *host, int port, char *err, size_t errlen) {
    rconn *c = connect_to(host, port, err, errlen);
    if (!c) return NULL;
    const char *argv[] = {"CLUSTER", "SLOTS"};
    size_t lens[] = {7, 5};
    redisReply *r;
    rcluster_map *m = NULL;
    if (rconn_command(c, 2, argv, lens, RCONN_ARRAY, clock_now_ns() + 2000000000LL, &r, err,
                      errlen) ==
        CTR_OK) {
        rcluster_map_parse(r, host, &m, err, errlen);
        freeReplyObject(r);
    }
    rconn_close(c);
    return m;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct(int64_t *v, int n, double p) {
    int k = (int)(p / 100.0 * (n - 1) + 0.5);
    return (double)v[k] / 1000.0;
}

int main(int argc, char **argv) {
    const char *single = NULL, *cluster = NULL;
    int n = 64, rounds = 20000, nkeys = 5000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--single") && i + 1 < argc) single = argv[++i];
        else if (!strcmp(argv[i], "--cluster") && i + 1 < argc) cluster = argv[++i];
        else if (!strcmp(argv[i], "--n") && i + 1 < argc) n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--keys") && i + 1 < argc) nkeys = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s --single HOST:PORT --cluster HOST:PORT[,...] [--n N] "
                            "[--rounds R] [--keys K]\n", argv[0]);
            return 2;
        }
    }
    if (!single || !cluster || n < 1 || n > MAX_N || rounds < 10 || nkeys < n) {
        fprintf(stderr, "bench_rcluster: need --single and --cluster (see the top of the file)\n");
        return 2;
    }
    char shost[64], chost[64], err[256];
    int sport, cport;
    if (split_addr(single, shost, sizeof shost, &sport) < 0 ||
        split_addr(cluster, chost, sizeof chost, &cport) < 0) {
        fprintf(stderr, "bench_rcluster: addresses are HOST:PORT\n");
        return 2;
    }
    rcluster_map *cmap = map_from(chost, cport, err, sizeof err);
    char desc[128];
    snprintf(desc, sizeof desc, "%s:%d", shost, sport);
    if (!cmap) {
        fprintf(stderr, "bench_rcluster: CLUSTER SLOTS from %s: %s\n", cluster, err);
        return 1;
    }
    /* A one-node map for the single node: a CLUSTER SLOTS reply made by
     * hand (all slots, one master). */
    char resp[256];
    int rl = snprintf(resp, sizeof resp, "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$%zu\r\n%s\r\n:%d\r\n",
                      strlen(shost), shost, sport);
    redisReader *rd = redisReaderCreate();
    void *sr = NULL;
    redisReaderFeed(rd, resp, (size_t)rl);
    redisReaderGetReply(rd, &sr);
    redisReaderFree(rd);
    rcluster_map *smap = NULL;
    if (!sr || rcluster_map_parse(sr, NULL, &smap, err, sizeof err) < 0) {
        fprintf(stderr, "bench_rcluster: one-node map: %s\n", err);
        return 1;
    }
    freeReplyObject(sr);

    /* Keys and values. */
    char (*keys)[32] = malloc((size_t)nkeys * sizeof *keys);
    unsigned char value[VALUE_LEN];
    {
        const int32_t tags[5] = {1, 2, 3, 4, 5};
        float mm[128];
        for (int i = 0; i < 128; i++) mm[i] = (float)i / 128;
        size_t vlen = 0;
        if (features_item_encode(tags, 5, mm, 128, value, sizeof value, &vlen, err, sizeof err) < 0 ||
            vlen != VALUE_LEN) {
            fprintf(stderr, "bench_rcluster: item value: %s\n", err);
            return 1;
        }
    }
    arena a;
    arena_init(&a, 1 << 20);
    rcluster_reply *out = malloc((size_t)MAX_N * sizeof *out);
    const char *(*av)[3] = malloc((size_t)nkeys * sizeof *av);
    size_t (*al)[3] = malloc((size_t)nkeys * sizeof *al);
    rconn_cmd *cmds = malloc((size_t)nkeys * sizeof *cmds);
    for (int i = 0; i < nkeys; i++) {
        snprintf(keys[i], sizeof keys[i], "bench:i:%d", i + 1);
        av[i][0] = "SET";
        al[i][0] = 3;
        av[i][1] = keys[i];
        al[i][1] = strlen(keys[i]);
        av[i][2] = (const char *)value;
        al[i][2] = VALUE_LEN;
        cmds[i] = (rconn_cmd){3, av[i], al[i], RCONN_STATUS};
    }
    for (int i = 0; i < nkeys; i += 500) {
        int k = nkeys - i < 500 ? nkeys - i : 500;
        rcluster_reply *o = malloc((size_t)k * sizeof *o);
        for (int pass = 0; pass < 2; pass++) {
            arena_reset(&a);
            int rc = rcluster_exec(pass ? cmap : smap, &links, RCLUSTER_READ_MASTER, 0, k, cmds + i,
                                   clock_now_ns() + 5000000000LL, &a, o, NULL, err, sizeof err);
            rcluster_replies_free(o, k);
            if (rc < 0) {
                fprintf(stderr, "bench_rcluster: SET: %s\n", err);
                return 1;
            }
        }
        free(o);
    }
    for (int i = 0; i < nkeys; i++)
        av[i][0] = "GET", cmds[i].argc = 2, cmds[i].expect = RCONN_STRING | RCONN_NIL;

    /* The single node's own connection for MGET. */
    rconn *sc = connect_to(shost, sport, err, sizeof err);
    if (!sc) {
        fprintf(stderr, "bench_rcluster: %s: %s\n", single, err);
        return 1;
    }
    /* The feature store on each, reading the same keys as items. */
    featstore *fs[2];
    for (int k = 0; k < 2; k++) {
        featstore_params p;
        featstore_default_params(&p);
        if (k) p.cluster = cluster;
        else p.addr = single;
        p.prefix = "bench:";
        p.mm_dim = 128;
        p.connect_timeout_ms = p.command_timeout_ms = 1000;
        if (featstore_open(&p, &fs[k], err, sizeof err) < 0) {
            fprintf(stderr, "bench_rcluster: featstore: %s\n", err);
            return 1;
        }
    }
    int64_t *ids = malloc((size_t)n * sizeof *ids);
    featstore_item *items = malloc((size_t)n * sizeof *items);
    const char **margv = malloc((size_t)(n + 1) * sizeof *margv);
    size_t *mlen = malloc((size_t)(n + 1) * sizeof *mlen);
    margv[0] = "MGET";
    mlen[0] = 4;

    enum { MODES = 6 };
    static const char *names[MODES] = {"single MGET", "single GETs", "cluster masters",
                                       "cluster any", "store single", "store cluster"};
    int64_t *t[MODES];
    for (int m = 0; m < MODES; m++) t[m] = malloc((size_t)rounds * sizeof(int64_t));
    rconn_cmd *pick = malloc((size_t)n * sizeof *pick);
    unsigned seed = 1;
    int bad = 0, warm = rounds / 10;
    for (int r = -warm; r < rounds; r++) {
        for (int j = 0; j < n; j++) {
            int k = (int)(rand_r(&seed) % (unsigned)nkeys);
            pick[j] = cmds[k];
            ids[j] = k + 1;
            margv[j + 1] = keys[k];
            mlen[j + 1] = strlen(keys[k]);
        }
        for (int q = 0; q < MODES; q++) {
            int m = (q + (r < 0 ? 0 : r)) % MODES;   /* rotate the order */
            arena_reset(&a);
            int64_t t0 = clock_now_ns(), deadline = t0 + 1000000000LL;
            int rc;
            if (m == 0) {
                redisReply *rep;
                rc = rconn_command(sc, n + 1, margv, mlen, RCONN_ARRAY, deadline, &rep, err,
                                   sizeof err);
                if (rc == CTR_OK) {
                    for (size_t e = 0; e < rep->elements; e++)
                        bad += rep->element[e]->len != VALUE_LEN;
                    bad += rep->elements != (size_t)n;
                    freeReplyObject(rep);
                }
            } else if (m >= 4) {
                rc = featstore_get_items(fs[m - 4], ids, n, deadline, &a, items, err, sizeof err);
                for (int j = 0; j < n && rc == CTR_OK; j++) bad += !items[j].found;
            } else {
                rcluster_map *mp = m == 1 ? smap : cmap;
                rcluster_read rdm = m == 3 ? RCLUSTER_READ_ANY : RCLUSTER_READ_MASTER;
                rc = rcluster_exec(mp, &links, rdm, (unsigned)r, n, pick, deadline, &a, out, NULL,
                                   err, sizeof err);
                for (int j = 0; j < n && rc == CTR_OK; j++) bad += out[j].reply->len != VALUE_LEN;
                rcluster_replies_free(out, n);
            }
            int64_t dt = clock_now_ns() - t0;
            if (rc < 0) {
                fprintf(stderr, "bench_rcluster: %s: %s\n", names[m], err);
                return 1;
            }
            if (r >= 0) t[m][r] = dt;
        }
    }
    if (bad) {
        fprintf(stderr, "bench_rcluster: %d wrong answers\n", bad);
        return 1;
    }
    double loadavg[3] = {0};
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fscanf(la, "%lf %lf %lf", &loadavg[0], &loadavg[1], &loadavg[2]) != 3) loadavg[0] = -1;
        fclose(la);
    }
    printf("bench_rcluster: N = %d keys of %d bytes a request, %d requests per mode "
           "(interleaved), one client thread; %d keys stored; load average %.2f %.2f %.2f\n",
           n, VALUE_LEN, rounds, nkeys, loadavg[0], loadavg[1], loadavg[2]);
    int masters = 0;
    for (int s = 0; s < RCLUSTER_SLOTS; s++)
        masters += s == 0 || rcluster_map_master(cmap, s) != rcluster_map_master(cmap, s - 1);
    printf("  single node %s; cluster of %d nodes, %d slot ranges by master, from %s\n", desc,
           rcluster_map_nodes(cmap), masters, cluster);
    printf("  %-16s %9s %9s %9s %12s\n", "mode", "p50 us", "p90 us", "p99 us", "p50 / MGET");
    double base = 0;
    for (int m = 0; m < MODES; m++) {
        qsort(t[m], (size_t)rounds, sizeof(int64_t), cmp_i64);
        double p50 = pct(t[m], rounds, 50);
        if (m == 0) base = p50;
        printf("  %-16s %9.1f %9.1f %9.1f %11.2fx\n", names[m], p50, pct(t[m], rounds, 90),
               pct(t[m], rounds, 99), p50 / base);
    }
    /* Clean up the keys. */
    for (int i = 0; i < nkeys; i++) av[i][0] = "DEL", al[i][0] = 3, cmds[i].expect = RCONN_INTEGER;
    for (int i = 0; i < nkeys; i += 500) {
        int k = nkeys - i < 500 ? nkeys - i : 500;
        for (int pass = 0; pass < 2; pass++) {
            arena_reset(&a);
            rcluster_reply *o = malloc((size_t)k * sizeof *o);
            rcluster_exec(pass ? cmap : smap, &links, RCLUSTER_READ_MASTER, 0, k, cmds + i,
                          clock_now_ns() + 5000000000LL, &a, o, NULL, err, sizeof err);
            rcluster_replies_free(o, k);
            free(o);
        }
    }
    for (int m = 0; m < MODES; m++) free(t[m]);
    for (int i = 0; i < nconns; i++)
        rconn_close(conns[i].link.conn);
    rconn_close(sc);
    featstore_close(fs[0]);
    featstore_close(fs[1]);
    free(ids);
    free(items);
    free(pick);
    free(margv);
    free(mlen);
    free(cmds);
    free(av);
    free(al);
    free(keys);
    free(out);
    arena_free(&a);
    rcluster_map_free(cmap);
    rcluster_map_free(smap);
    return 0;
}
