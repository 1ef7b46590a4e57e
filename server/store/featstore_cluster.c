/*
 * featstore_cluster.c - the feature store's backend for a Redis Cluster
 * (featstore_backend.h; featstore.h, "Redis Cluster"): featstore.c builds
 * the commands and decodes the replies, this file routes them with
 * rcluster.h over one connection (rconn.h) per node.
 *
 * Workload: as featstore_single.c, per worker: a history read (three commands on
 * one key, so one node) and a few hundred item reads spread over every
 * master, each call under a deadline of a few milliseconds; ctr-load's
 * batches of a few hundred SETs.  A cluster has a handful of nodes, so
 * nodes are found by a linear search, and a call's per-node state lives in
 * the node itself (one thread per featstore).
 *
 * Failure model.  A node can die (its master is failed over by the cluster
 * after cluster-node-timeout), hang, refuse (LOADING), or give its slots
 * away (resharding: MOVED, ASK).  Each node has its own breaker, so a dead
 * master costs one failed connect per breaker period while the calls keep
 * reading the other nodes' keys; a call that saw a node fail, a MOVED, an
 * unserved slot or a CLUSTERDOWN marks the map stale, and the next call
 * (cluster_refresh_ms later at most) reads CLUSTER SLOTS again from a node
 * that answers, which is how a promoted replica is found.  CLUSTERDOWN and
 * TRYAGAIN answers fail their keys but not the node's breaker: the node is
 * healthy, the cluster's state is what is wrong, and an open breaker would
 * only delay reading it once the cluster recovers.
 */
#include "featstore_backend.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "core/base/clock.h"
#include "core/base/log.h"
#include "server/store/rcluster.h"

/* One node the featstore has been sent to (from the map, a seed or a
 * redirect), with its connection and breaker, and this call's view. */
typedef struct featstore_cluster featstore_cluster;

typedef struct fc_node {
    featstore_cluster *fc;
    char host[RCLUSTER_HOST_MAX];
    int port;
    rcluster_link link;             /* link.conn NULL: not connected */
    breaker br;
    int hook_id;                    /* node_hooks id; -1: none */
    /* The running pass of rcluster_exec: */
    int used;                       /* a link was asked for */
    int reused;                     /* its connection predates the pass */
    int failed;                     /* given up, refused or not reached */
    int conn_lost;                  /* a reused connection the peer closed:
                                       its reads are sent once more */
    int erred;                      /* answered an error reply this call */
} fc_node;

typedef struct seed {
    char host[RCLUSTER_HOST_MAX];
    int port;
} seed;

/* One queued write: offsets into wbuf. */
typedef struct fc_write {
    size_t key, klen, val, vlen;
} fc_write;

typedef struct featstore_cluster {
    featstore_params p;             /* user, password: the featstore's
                                       copies, which outlive this */
    featstore_stats *st;
    seed *seeds;
    int nseeds;
    fc_node **nodes;                /* one allocation each: links stay put */
    int nnodes, cap_nodes;
    rcluster_map *map;              /* NULL until the first refresh */
    int stale;                      /* refresh at the next chance */
    int64_t refreshed_ns;           /* last refresh attempt */
    unsigned salt;                  /* replica choice (rcluster_map_route) */
    unsigned rr;                    /* where the next refresh starts */
    int64_t deadline_ns;            /* the running call's */
    int64_t budget_ns;
    arena scratch;                  /* ping and flush */
    char *wbuf;                     /* queued writes' keys and values */
    size_t wlen, wcap;
    fc_write *w;
    int nw, cap_w;
} featstore_cluster;

static const char *const route_name = "Redis Cluster";

/* --- Nodes ------------------------------------------------------------- */

static void node_hook_event(featstore_cluster *fc, int id, featstore_node_event ev) {
    const featstore_node_hooks *h = fc->p.node_hooks;
    if (h && h->event && (id >= 0 || ev >= FEATSTORE_NODE_MOVED)) h->event(h->arg, id, ev);
}

/* A node's breaker events: to the featstore's breaker hook (the totals over
 * every connection), and openings and refusals per node. */
static void node_breaker_hook(void *arg, breaker_event ev) {
    fc_node *n = arg;
    featstore_cluster *fc = n->fc;
    if (fc->p.breaker_hook) fc->p.breaker_hook(fc->p.breaker_hook_arg, ev);
    if (ev == BREAKER_EV_OPENED)
        node_hook_event(fc, n->hook_id, FEATSTORE_NODE_BREAKER_OPENED);
    else if (ev == BREAKER_EV_SHORT_CIRCUIT)
        node_hook_event(fc, n->hook_id, FEATSTORE_NODE_SHORT_CIRCUIT);
}

static fc_node *node_find(featstore_cluster *fc, const char *host, int port) {
    for (int i = 0; i < fc->nnodes; i++)
        if (fc->nodes[i]->port == port && strcmp(fc->nodes[i]->host, host) == 0)
            return fc->nodes[i];
    return NULL;
}

/* The node host:port, added when new; NULL when out of memory. */
static fc_node *node_for(featstore_cluster *fc, const char *host, int port) {
    fc_node *n = node_find(fc, host, port);
    if (n) return n;
    if (strlen(host) >= RCLUSTER_HOST_MAX) return NULL;
    if (fc->nnodes == fc->cap_nodes) {
        int cap = fc->cap_nodes ? 2 * fc->cap_nodes : 8;
        fc_node **p = realloc(fc->nodes, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        fc->nodes = p;
        fc->cap_nodes = cap;
    }
    n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->fc = fc;
    snprintf(n->host, sizeof n->host, "%s", host);
    n->port = port;
    n->hook_id = -1;
    const featstore_node_hooks *h = fc->p.node_hooks;
    if (h && h->node) {
        char addr[RCLUSTER_HOST_MAX + 16];
        snprintf(addr, sizeof addr, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
        n->hook_id = h->node(h->arg, addr);
    }
    breaker_init(&n->br,
                 &(breaker_params){fc->p.breaker_base_ms, fc->p.breaker_max_ms,
                                   node_breaker_hook, n},
                 (uint64_t)(uintptr_t)n ^ (uint64_t)clock_now_ns());
    fc->nodes[fc->nnodes++] = n;
    return n;
}

static void node_close(fc_node *n) {
    rconn_close(n->link.conn);
    n->link.conn = NULL;
    n->link.readonly = 0;
}

/* Whether a timeout says something about the node: a call given less than
 * a quarter of command_timeout_ms may time out against a healthy node (as
 * in featstore_single.c). */
static int timeout_counts(const featstore_cluster *fc) {
    return fc->budget_ns * 4 >= (int64_t)fc->p.command_timeout_ms * 1000000;
}

/* The node failed this call: its breaker told (unless the failure says
 * nothing about it), its metrics counted. */
static void node_failed(featstore_cluster *fc, fc_node *n, int status) {
    n->failed = 1;
    if (status == CTR_EBACKEND || (status == CTR_ETIMEOUT && timeout_counts(fc)))
        breaker_failure(&n->br, clock_now_ns());
    node_hook_event(fc, n->hook_id,
                    status == CTR_ETIMEOUT ? FEATSTORE_NODE_TIMEOUT : FEATSTORE_NODE_ERROR);
}

/* The node's connection turned out of step (rconn.h): counted, logged;
 * the caller closes it. */
static void node_desync(featstore_cluster *fc, fc_node *n, const char *why) {
    static log_limit lim;
    fc->st->desyncs++;
    if (fc->p.desync_hook) fc->p.desync_hook(fc->p.desync_hook_arg);
    log_limited(&lim, LOG_WARN, "Redis replies out of step",
                strchr(n->host, ':') ? "Redis [%s]:%d: %s; connection dropped"
                                     : "Redis %s:%d: %s; connection dropped",
                n->host, n->port, why);
}

/* A connected (and authenticated) node, by `deadline` at the latest; NULL
 * with a reason in why (breaker open, cannot connect).  A kept connection
 * on which bytes arrived while it sat idle answers no command: it is
 * dropped and the node connected again. */
static rcluster_link *node_link(featstore_cluster *fc, fc_node *n, int64_t deadline, char *why,
                                size_t whylen) {
    int64_t now = clock_now_ns();
    if (!breaker_allow(&n->br, now)) {
        n->failed = 1;
        fc->st->fast_failures++;
        snprintf(why, whylen, "unavailable (circuit open after failures; next probe in %lld ms)",
                 (long long)breaker_wait_ms(&n->br, now));
        return NULL;
    }
    if (n->link.conn && rconn_check_idle(n->link.conn, why, whylen) < 0) {
        node_desync(fc, n, why);
        node_close(n);
    }
    if (n->link.conn) {
        n->reused = 1;
        return &n->link;
    }
    n->reused = 0;
    const rconn_params rp = {fc->p.connect_timeout_ms, fc->p.user, fc->p.password};
    fc->st->connect_attempts++;
    if (rconn_open(&rp, n->host, n->port, deadline, &n->link.conn, why, whylen) < 0) {
        node_failed(fc, n, CTR_EBACKEND);
        return NULL;
    }
    fc->st->connects++;
    n->link.readonly = 0;
    return &n->link;
}

/* rcluster_links.get */
static rcluster_link *links_get(void *ud, const char *host, int port, char *err,
                                size_t errlen) {
    featstore_cluster *fc = ud;
    fc_node *n = node_for(fc, host, port);
    if (!n) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    n->used = 1;
    rcluster_link *l = node_link(fc, n, fc->deadline_ns, err, errlen);
    if (l) node_hook_event(fc, n->hook_id, FEATSTORE_NODE_PIPELINE);
    return l;
}

/* rcluster_links.failed: the connection is out of step or broken. */
static void links_failed(void *ud, rcluster_link *l, int status, const char *why) {
    featstore_cluster *fc = ud;
    fc_node *n = (fc_node *)((char *)l - offsetof(fc_node, link));
    int lost = status == CTR_EBACKEND && n->reused && l->conn &&
               rconn_error_of(l->conn) == RCONN_CLOSED;
    if (l->conn && rconn_error_of(l->conn) == RCONN_DESYNC) node_desync(fc, n, why);
    node_close(n);
    if (lost) {     /* the resend decides; no breaker failure yet */
        n->failed = 1;
        n->conn_lost = 1;
        return;
    }
    node_failed(fc, n, status);
}

/* --- Slot map ------------------------------------------------------------ */

/* CLUSTER SLOTS from one node: CTR_OK with *out the map. */
static int slots_from(featstore_cluster *fc, fc_node *n, int64_t deadline, rcluster_map **out,
                      char *why, size_t whylen) {
    *out = NULL;
    n->failed = 0;
    n->reused = 0;
    rcluster_link *l = node_link(fc, n, deadline, why, whylen);
    if (!l) return CTR_EBACKEND;
    static const char *const argv[] = {"CLUSTER", "SLOTS"};
    static const size_t lens[] = {7, 5};
    redisReply *r;
    int rc = rconn_command(l->conn, 2, argv, lens, RCONN_ARRAY, deadline, &r, why, whylen);
    if (rc < 0) {
        if (rconn_error_of(l->conn) == RCONN_DESYNC) node_desync(fc, n, why);
        node_close(n);
        node_failed(fc, n, rc);
        return rc;
    }
    breaker_success(&n->br);
    rc = rcluster_map_parse(r, n->host, out, why, whylen);
    freeReplyObject(r);
    return rc == CTR_ENOMEM ? rc : rc < 0 ? CTR_EBACKEND : CTR_OK;
}

/* Reads the slot map from the first node that gives one by `deadline`:
 * the map's nodes (from a rotating start, so a dead one is not always
 * asked first; those whose breaker is open are skipped), then the seeds.
 * Each node gets half the time left, so one that hangs leaves time to ask
 * another.  The old map stays when none answers. */
static int refresh(featstore_cluster *fc, int64_t deadline, char *err, size_t errlen) {
    int64_t now = clock_now_ns();
    fc->refreshed_ns = now;
    int rc = CTR_EBACKEND;
    char why[320] = "no node to ask";
    int nmap = fc->map ? rcluster_map_nodes(fc->map) : 0;
    int total = nmap + fc->nseeds;
    for (int k = 0; k < total; k++) {
        const char *host;
        int port;
        if (k < nmap) {
            const rcluster_node *mn = rcluster_map_node(fc->map, (int)((fc->rr + (unsigned)k) % (unsigned)nmap));
            host = mn->host;
            port = mn->port;
        } else {
            host = fc->seeds[k - nmap].host;
            port = fc->seeds[k - nmap].port;
            if (fc->map && rcluster_map_find(fc->map, host, port) >= 0) continue;  /* asked */
        }
        if (clock_now_ns() >= deadline) {
            rc = CTR_ETIMEOUT;
            snprintf(why, sizeof why, "no time left");
            break;
        }
        fc_node *n = node_for(fc, host, port);
        if (!n) {
            rc = CTR_ENOMEM;
            snprintf(why, sizeof why, "out of memory");
            break;
        }
        rcluster_map *m;
        char w[200];
        int64_t left = deadline - clock_now_ns();
        int64_t ndl = k + 1 < total ? deadline - left / 2 : deadline;
        int r = slots_from(fc, n, ndl, &m, w, sizeof w);
        if (r == CTR_OK) {
            rcluster_map_free(fc->map);
            fc->map = m;
            fc->stale = rcluster_map_covered(m) < RCLUSTER_SLOTS;
            fc->rr++;
            fc->st->map_refreshes++;
            node_hook_event(fc, -1, FEATSTORE_NODE_REFRESH);
            return CTR_OK;
        }
        snprintf(why, sizeof why, "%s:%d: %s", host, port, w);
        rc = r == CTR_ENOMEM ? r : r == CTR_ETIMEOUT ? CTR_ETIMEOUT : CTR_EBACKEND;
        if (r == CTR_ENOMEM) break;
    }
    fc->rr++;
    fc->st->map_refresh_failures++;
    node_hook_event(fc, -1, FEATSTORE_NODE_REFRESH_FAILED);
    return ctr_fail(err, errlen, rc, "%s: no slot map (CLUSTER SLOTS) from any node; last: %s",
                    route_name, why);
}

/* Refreshes the map when there is none, when it is stale (at most every
 * cluster_refresh_ms), or when it is old.  A failed refresh keeps the old
 * map; with one to fall back on, a refresh may take half of the call's
 * time, the rest being the call's.  CTR_OK when there is a map to use. */
static int map_ready(featstore_cluster *fc, int64_t now, int64_t deadline, char *err,
                     size_t errlen) {
    int64_t since = now - fc->refreshed_ns;
    if (fc->map && !(fc->stale && since >= (int64_t)fc->p.cluster_refresh_ms * 1000000) &&
        since < (int64_t)FEATSTORE_CLUSTER_MAX_AGE_MS * 1000000)
        return CTR_OK;
    int rc = refresh(fc, fc->map ? now + (deadline - now) / 2 : deadline, err, errlen);
    if (fc->map) {
        if (err && errlen) err[0] = '\0';
        return CTR_OK;
    }
    return rc;
}

/* --- Running commands ---------------------------------------------------- */

static void pass_begin(featstore_cluster *fc) {
    for (int i = 0; i < fc->nnodes; i++) {
        fc_node *n = fc->nodes[i];
        n->used = n->reused = n->failed = n->conn_lost = 0;
    }
}

/* After a pass: nodes that answered close their breakers. */
static void pass_end(featstore_cluster *fc, const rcluster_exec_stats *xs) {
    for (int i = 0; i < fc->nnodes; i++) {
        fc_node *n = fc->nodes[i];
        if (n->used && !n->failed) breaker_success(&n->br);
    }
    fc->st->round_trips += (uint64_t)xs->nodes;
    fc->st->moved += (uint64_t)xs->moved;
    fc->st->asked += (uint64_t)xs->asked;
    fc->st->replica_reroutes += (uint64_t)xs->rerouted;
    for (int k = 0; k < xs->moved; k++) node_hook_event(fc, -1, FEATSTORE_NODE_MOVED);
    for (int k = 0; k < xs->asked; k++) node_hook_event(fc, -1, FEATSTORE_NODE_ASK);
    if (xs->stale) fc->stale = 1;
}

/* The node of map index i (NULL when the featstore never used it). */
static fc_node *node_of(featstore_cluster *fc, int i) {
    const rcluster_node *mn = i >= 0 ? rcluster_map_node(fc->map, i) : NULL;
    return mn ? node_find(fc, mn->host, mn->port) : NULL;
}

/* rcluster_exec, and once more for the commands of nodes whose reused
 * connection turned out closed (Redis restarted, an idle timeout): as in
 * featstore_single.c, a restart must not fail every worker's next call. */
static int exec(featstore_cluster *fc, rcluster_read read, int n, const rconn_cmd *cmds,
                int64_t deadline, arena *a, rcluster_reply *out, int resend, char *err,
                size_t errlen) {
    static const rcluster_links links_tmpl = {links_get, links_failed, NULL};
    rcluster_links links = links_tmpl;
    links.ud = fc;
    rcluster_exec_stats xs;
    pass_begin(fc);
    int rc = rcluster_exec(fc->map, &links, read, fc->salt, n, cmds, deadline, a, out, &xs,
                           err, errlen);
    pass_end(fc, &xs);
    if (rc == CTR_OK || rc == CTR_ENOMEM || rc == CTR_EINVAL || !resend) return rc;
    int lost = 0;
    for (int i = 0; i < fc->nnodes; i++) lost |= fc->nodes[i]->conn_lost;
    if (!lost) return rc;

    int *idx = arena_alloc(a, (size_t)n * sizeof *idx, _Alignof(int));
    if (!idx) return rc;
    int k = 0;
    for (int i = 0; i < n; i++) {
        fc_node *nd = out[i].status == CTR_EBACKEND ? node_of(fc, out[i].node) : NULL;
        if (nd && nd->conn_lost) idx[k++] = i;
    }
    if (!k) return rc;
    rconn_cmd *c2 = arena_alloc(a, (size_t)k * sizeof *c2, _Alignof(rconn_cmd));
    rcluster_reply *o2 = arena_alloc(a, (size_t)k * sizeof *o2, _Alignof(rcluster_reply));
    if (!c2 || !o2) return rc;
    for (int j = 0; j < k; j++) c2[j] = cmds[idx[j]];
    fc->st->retries++;
    char err2[256];
    pass_begin(fc);
    int rc2 = rcluster_exec(fc->map, &links, read, fc->salt, k, c2, deadline, a, o2, &xs, err2,
                            sizeof err2);
    pass_end(fc, &xs);
    if (rc2 == CTR_ENOMEM) return rc;
    for (int j = 0; j < k; j++) out[idx[j]] = o2[j];
    rc = CTR_OK;
    for (int i = 0; i < n && rc == CTR_OK; i++)
        if (out[i].status < 0) rc = out[i].status;
    if (rc == CTR_OK) {
        if (err && errlen) err[0] = '\0';
    } else if (rc2 < 0 && err && errlen) {
        snprintf(err, errlen, "%s", err2);
    }
    return rc;
}

/* An error reply that fails its key without saying anything about the
 * node: the cluster is down or a slot is being moved. */
static int cluster_state_error(const redisReply *r) {
    static const char *const kinds[] = {"CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN"};
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++)
        if (rconn_reply_is(r, kinds[k])) return 1;
    return 0;
}

static void fail_all(int n, redisReply **replies, int *status, int rc) {
    for (int i = 0; i < n; i++) {
        replies[i] = NULL;
        status[i] = rc;
    }
}

/* Runs n commands (pass, and with resend the retry) and sorts the
 * answers: error replies other than WRONGTYPE become failures of their
 * command. */
static int run(featstore_cluster *fc, rcluster_read read, int n, const rconn_cmd *cmds,
               int64_t deadline, arena *a, redisReply **replies, int *status, int resend,
               char *err, size_t errlen) {
    fail_all(n, replies, status, CTR_EBACKEND);   /* until answered */
    rcluster_reply *out = arena_alloc(a, (size_t)(n ? n : 1) * sizeof *out,
                                      _Alignof(rcluster_reply));
    if (!out) return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    int rc = exec(fc, read, n, cmds, deadline, a, out, resend, err, errlen);
    if (rc == CTR_ENOMEM || rc == CTR_EINVAL) return rc;
    for (int i = 0; i < fc->nnodes; i++) fc->nodes[i]->erred = 0;
    rc = CTR_OK;
    for (int i = 0; i < n; i++) {
        replies[i] = NULL;
        status[i] = out[i].status;
        redisReply *r = out[i].reply;
        if (status[i] == CTR_OK && r->type == REDIS_REPLY_ERROR && !rconn_reply_is(r, "WRONGTYPE")) {
            fc_node *nd = node_of(fc, out[i].node);
            if (rc == CTR_OK)
                ctr_fail(err, errlen, CTR_EBACKEND, "Redis %s:%d: %.*s",
                         nd ? nd->host : "?", nd ? nd->port : 0,
                         (int)(r->len > 200 ? 200 : r->len), r->str ? r->str : "");
            if (cluster_state_error(r)) {
                fc->stale = 1;
            } else if (nd && !nd->erred) {  /* LOADING, NOAUTH, OOM...: the node's */
                nd->erred = 1;
                node_failed(fc, nd, CTR_EBACKEND);
            }
            freeReplyObject(r);
            status[i] = CTR_EBACKEND;
            r = NULL;
        }
        replies[i] = r;
        if (status[i] < 0 && rc == CTR_OK) rc = status[i];
    }
    if (rc < 0) {
        fc->st->failures++;
        if (rc == CTR_ETIMEOUT) fc->st->timeouts++;
    }
    return rc;
}

/* The call's deadline: min(deadline_ns, command_timeout_ms); 0 when the
 * deadline has passed already. */
static int64_t call_begin(featstore_cluster *fc, int64_t deadline_ns) {
    int64_t t0 = clock_now_ns();
    if (deadline_ns && t0 >= deadline_ns) return 0;
    int64_t dl = t0 + (int64_t)fc->p.command_timeout_ms * 1000000;
    if (deadline_ns && deadline_ns < dl) dl = deadline_ns;
    fc->deadline_ns = dl;
    fc->budget_ns = dl - t0;
    return dl;
}

/* One pass of a read (see cluster_read); resend as for run. */
static int read_pass(featstore_cluster *fc, int n, const rconn_cmd *cmds, rcluster_read read,
                     int64_t deadline_ns, arena *a, redisReply **replies, int *status,
                     int resend, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (n < 0) return ctr_fail(err, errlen, CTR_EINVAL, "n = %d", n);
    if (n == 0) return CTR_OK;
    int64_t dl = call_begin(fc, deadline_ns);
    if (!dl) {
        fail_all(n, replies, status, CTR_ETIMEOUT);
        fc->st->failures++;
        fc->st->timeouts++;
        return ctr_fail(err, errlen, CTR_ETIMEOUT,
                        "%s: no time left in the request's budget", route_name);
    }
    int rc = map_ready(fc, clock_now_ns(), dl, err, errlen);
    if (rc < 0) {
        fail_all(n, replies, status, rc == CTR_ENOMEM ? CTR_EBACKEND : rc);
        fc->st->failures++;
        if (rc == CTR_ETIMEOUT) fc->st->timeouts++;
        return rc;
    }
    return run(fc, read, n, cmds, dl, a, replies, status, resend, err, errlen);
}

static int cluster_read(void *impl, int n, const rconn_cmd *cmds, featstore_route route,
                        int64_t deadline_ns, arena *a, redisReply **replies, int *status,
                        char *err, size_t errlen) {
    featstore_cluster *fc = impl;
    if (route == FEATSTORE_ROUTE_MASTER)   /* writes: the master, sent once */
        return read_pass(fc, n, cmds, RCLUSTER_READ_MASTER, deadline_ns, a, replies, status, 0,
                         err, errlen);
    if (route != FEATSTORE_ROUTE_MASTER_FIRST)
        return read_pass(fc, n, cmds, fc->p.read_replicas ? RCLUSTER_READ_REPLICA
                                                          : RCLUSTER_READ_MASTER,
                         deadline_ns, a, replies, status, 1, err, errlen);
    int rc = read_pass(fc, n, cmds, RCLUSTER_READ_MASTER, deadline_ns, a, replies, status, 1,
                       err, errlen);
    if (rc < 0 && rc != CTR_ENOMEM)
        rc = read_pass(fc, n, cmds, RCLUSTER_READ_REPLICA, deadline_ns, a, replies, status, 1,
                       err, errlen);
    return rc;
}

static int cluster_ping(void *impl, int64_t deadline_ns, char *err, size_t errlen) {
    featstore_cluster *fc = impl;
    int64_t dl = call_begin(fc, deadline_ns);
    if (!dl) {
        fc->st->failures++;
        fc->st->timeouts++;
        return ctr_fail(err, errlen, CTR_ETIMEOUT, "%s: no time left", route_name);
    }
    fc->st->round_trips++;
    int rc = refresh(fc, dl, err, errlen);
    if (rc < 0) {
        fc->st->failures++;
        if (rc == CTR_ETIMEOUT) fc->st->timeouts++;
    }
    return rc;
}

/* Every master of the map (a node serving at least one slot): cmd on each,
 * one at a time (a handful of nodes, and this is for set-up: FUNCTION
 * LOAD). */
static int cluster_each_master(void *impl, const rconn_cmd *cmd, char *err, size_t errlen) {
    featstore_cluster *fc = impl;
    int64_t dl = call_begin(fc, 0);
    int rc = map_ready(fc, clock_now_ns(), dl, err, errlen);
    if (rc < 0) {
        fc->st->failures++;
        return rc;
    }
    if (rcluster_map_covered(fc->map) < RCLUSTER_SLOTS) {
        fc->st->failures++;
        return ctr_fail(err, errlen, CTR_EBACKEND, "%s: %d of %d slots have no master",
                        route_name, RCLUSTER_SLOTS - rcluster_map_covered(fc->map),
                        RCLUSTER_SLOTS);
    }
    int nn = rcluster_map_nodes(fc->map);
    for (int i = 0; i < nn; i++) {
        int master = 0;
        for (int slot = 0; slot < RCLUSTER_SLOTS && !master; slot++)
            master = rcluster_map_master(fc->map, slot) == i;
        if (!master) continue;
        const rcluster_node *mn = rcluster_map_node(fc->map, i);
        fc_node *nd = node_for(fc, mn->host, mn->port);
        if (!nd) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        char why[320];
        dl = call_begin(fc, 0);
        rcluster_link *l = node_link(fc, nd, dl, why, sizeof why);
        redisReply *r = NULL;
        rc = l ? rconn_command(l->conn, cmd->argc, cmd->argv, cmd->argvlen, cmd->expect, dl, &r,
                               why, sizeof why)
               : CTR_EBACKEND;
        fc->st->round_trips += l != NULL;
        if (rc < 0) {
            if (l) {
                if (rconn_error_of(l->conn) == RCONN_DESYNC) node_desync(fc, nd, why);
                node_close(nd);
                node_failed(fc, nd, rc);
            }
            fc->st->failures++;
            return ctr_fail(err, errlen, rc, "Redis %s:%d: %s", mn->host, mn->port, why);
        }
        if (r->type == REDIS_REPLY_ERROR) {
            ctr_fail(err, errlen, CTR_EBACKEND, "Redis %s:%d: %.*s", mn->host, mn->port,
                     (int)(r->len > 200 ? 200 : r->len), r->str ? r->str : "");
            freeReplyObject(r);
            fc->st->failures++;
            return CTR_EBACKEND;
        }
        freeReplyObject(r);
        breaker_success(&nd->br);
    }
    return CTR_OK;
}

/* --- Writes -------------------------------------------------------------- */

static int cluster_put(void *impl, const char *key, size_t klen, const void *value, size_t len,
                       char *err, size_t errlen) {
    featstore_cluster *fc = impl;
    if (fc->nw == fc->cap_w) {
        int cap = fc->cap_w ? 2 * fc->cap_w : 256;
        fc_write *w = realloc(fc->w, (size_t)cap * sizeof *w);
        if (!w) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        fc->w = w;
        fc->cap_w = cap;
    }
    size_t need = fc->wlen + klen + len;
    if (need > fc->wcap) {
        size_t cap = fc->wcap ? fc->wcap : 1 << 16;
        while (cap < need) cap *= 2;
        char *b = realloc(fc->wbuf, cap);
        if (!b) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        fc->wbuf = b;
        fc->wcap = cap;
    }
    fc_write *w = &fc->w[fc->nw++];
    w->key = fc->wlen;
    w->klen = klen;
    memcpy(fc->wbuf + fc->wlen, key, klen);
    fc->wlen += klen;
    w->val = fc->wlen;
    w->vlen = len;
    if (len) memcpy(fc->wbuf + fc->wlen, value, len);
    fc->wlen += len;
    return CTR_OK;
}

static int cluster_pending(const void *impl) { return ((const featstore_cluster *)impl)->nw; }

static int cluster_flush(void *impl, char *err, size_t errlen) {
    featstore_cluster *fc = impl;
    if (err && errlen) err[0] = '\0';
    int n = fc->nw;
    if (!n) return CTR_OK;
    fc->nw = 0;
    fc->wlen = 0;
    int64_t dl = call_begin(fc, 0);
    arena_reset(&fc->scratch);
    arena *a = &fc->scratch;
    int rc = map_ready(fc, clock_now_ns(), dl, err, errlen);
    if (rc < 0) {
        fc->st->failures++;
        return rc;
    }
    static const char set[] = "SET";
    const char **argv = arena_alloc(a, (size_t)n * 3 * sizeof *argv, _Alignof(const char *));
    size_t *lens = arena_alloc(a, (size_t)n * 3 * sizeof *lens, _Alignof(size_t));
    rconn_cmd *cmds = arena_alloc(a, (size_t)n * sizeof *cmds, _Alignof(rconn_cmd));
    redisReply **replies = arena_alloc(a, (size_t)n * sizeof *replies, _Alignof(redisReply *));
    int *status = arena_alloc(a, (size_t)n * sizeof *status, _Alignof(int));
    if (!argv || !lens || !cmds || !replies || !status)
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        const char **av = argv + 3 * (size_t)i;
        size_t *al = lens + 3 * (size_t)i;
        av[0] = set;
        al[0] = 3;
        av[1] = fc->wbuf + fc->w[i].key;
        al[1] = fc->w[i].klen;
        av[2] = fc->wbuf + fc->w[i].val;
        al[2] = fc->w[i].vlen;
        cmds[i] = (rconn_cmd){3, av, al, RCONN_STATUS};
    }
    rc = run(fc, RCLUSTER_READ_MASTER, n, cmds, dl, a, replies, status, 1, err, errlen);
    if (rc == CTR_ENOMEM) return rc;
    int bad = rc < 0;
    for (int i = 0; i < n; i++) {
        redisReply *r = replies[i];
        if (!r) continue;
        if (r->type == REDIS_REPLY_ERROR && !bad++)   /* (run() leaves only WRONGTYPE) */
            ctr_fail(err, errlen, CTR_EBACKEND, "%s: SET: %.*s", route_name,
                     (int)(r->len > 200 ? 200 : r->len), r->str ? r->str : "");
        freeReplyObject(r);
    }
    if (rc < 0) return rc;
    if (bad) {
        fc->st->failures++;
        return CTR_EBACKEND;
    }
    return CTR_OK;
}

/* --- Open, close, state -------------------------------------------------- */

/* Parses "host:port[,host:port...]" ("[v6]:port" too) into fc->seeds. */
static int parse_seeds(featstore_cluster *fc, const char *list, char *err, size_t errlen) {
    int n = 1;
    for (const char *c = list; *c; c++) n += *c == ',';
    fc->seeds = calloc((size_t)n, sizeof *fc->seeds);
    if (!fc->seeds) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    const char *s = list;
    for (;;) {
        size_t len = strcspn(s, ",");
        while (len && (*s == ' ' || *s == '\t')) s++, len--;
        while (len && (s[len - 1] == ' ' || s[len - 1] == '\t')) len--;
        const char *colon = NULL;
        for (size_t i = 0; i < len; i++)
            if (s[i] == ':') colon = s + i;
        const char *h = s;
        size_t hlen = colon ? (size_t)(colon - s) : 0;
        if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
            h++;
            hlen -= 2;
        } else if (hlen && memchr(h, ':', hlen)) {
            hlen = 0;   /* an IPv6 host without brackets */
        }
        long port = 0;
        size_t pdig = 0;
        for (const char *p = colon ? colon + 1 : s + len; colon && p < s + len; p++, pdig++) {
            if (*p < '0' || *p > '9' || pdig >= 5) {
                pdig = 0;
                break;
            }
            port = port * 10 + (*p - '0');
        }
        if (!hlen || hlen >= RCLUSTER_HOST_MAX || !pdig || port < 1 || port > 65535)
            return ctr_fail(err, errlen, CTR_EINVAL,
                            "Redis Cluster seed \"%.*s\": expected host:port (IPv6 as "
                            "[addr]:port), seeds separated by commas",
                            (int)(len > 100 ? 100 : len), s);
        seed *sd = &fc->seeds[fc->nseeds++];
        memcpy(sd->host, h, hlen);
        sd->host[hlen] = '\0';
        sd->port = (int)port;
        if (!s[len]) break;
        s += len + 1;
        while (*s == ' ' || *s == '\t') s++;
    }
    return CTR_OK;
}

static void cluster_close(void *impl);

static int cluster_open(const featstore_params *p, featstore_stats *st, void **out, char *err,
                        size_t errlen) {
    static _Atomic unsigned next_salt;
    *out = NULL;
    if (p->cluster_refresh_ms < 1)
        return ctr_fail(err, errlen, CTR_EINVAL, "cluster_refresh_ms %d: must be positive",
                        p->cluster_refresh_ms);
    featstore_cluster *fc = calloc(1, sizeof *fc);
    if (!fc) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    fc->p = *p;
    fc->p.cluster = NULL;   /* not kept */
    fc->p.addr = NULL;      /* not used */
    fc->st = st;
    fc->salt = next_salt++;
    arena_init(&fc->scratch, 1 << 16);
    int rc = parse_seeds(fc, p->cluster, err, errlen);
    if (rc < 0) {
        cluster_close(fc);
        return rc;
    }
    *out = fc;
    return CTR_OK;
}

static void cluster_close(void *impl) {
    featstore_cluster *fc = impl;
    if (!fc) return;
    for (int i = 0; i < fc->nnodes; i++) {
        node_close(fc->nodes[i]);
        free(fc->nodes[i]);
    }
    free(fc->nodes);
    free(fc->seeds);
    rcluster_map_free(fc->map);
    arena_free(&fc->scratch);
    free(fc->wbuf);
    free(fc->w);
    free(fc);
}

static breaker_state cluster_breaker_state(const void *impl) {
    const featstore_cluster *fc = impl;
    breaker_state s = BREAKER_CLOSED;
    for (int i = 0; i < fc->nnodes; i++) {
        breaker_state b = fc->nodes[i]->br.state;
        if (b == BREAKER_OPEN) return b;
        if (b == BREAKER_HALF_OPEN) s = b;
    }
    return s;
}

static uint64_t cluster_breaker_opens(const void *impl) {
    const featstore_cluster *fc = impl;
    uint64_t n = 0;
    for (int i = 0; i < fc->nnodes; i++) n += fc->nodes[i]->br.opens;
    return n;
}

const featstore_backend featstore_cluster_backend = {
    .key_per_command = 1,
    .open = cluster_open,
    .close = cluster_close,
    .read = cluster_read,
    .ping = cluster_ping,
    .each_master = cluster_each_master,
    .put = cluster_put,
    .flush = cluster_flush,
    .pending = cluster_pending,
    .breaker_state = cluster_breaker_state,
    .breaker_opens = cluster_breaker_opens,
};
