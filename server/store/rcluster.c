/*
 * rcluster.c - Redis Cluster routing over hiredis 0.14, see rcluster.h: the
 * pipelined exec of single-key commands across every node a request
 * touches (the map and its parsing: rcluster_map.c).
 *
 * Workload: per rank request, a few hundred single-key reads spread over
 * every master, under a deadline of a few milliseconds.  So an exec writes
 * each node's whole pipeline before reading anything, then serves all
 * sockets from one ppoll: the request costs the slowest node's round trip,
 * not the sum of them.  The connections are rconn.h's, driven here with
 * its non-blocking pieces, so that the deadline covers the whole exchange
 * rather than each read.
 */
#include "rcluster.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "core/base/clock.h"

/* --- Pipelined exec ------------------------------------------------------- */

/* What a reply in a lane's queue answers, besides a command index. */
#define EXPECT_ASKING (-1)
#define EXPECT_READONLY (-2)
/* out[i].status while command i has no outcome yet. */
#define PENDING 1

/* One node's share of an exec. */
typedef struct lane {
    int node;
    rcluster_link *link;        /* NULL: not asked for yet, or given up */
    int down;                   /* get() gave none, or the link failed */
    int *expect;                /* this round's reply owners, in order */
    int nexpect, got;
    int flushed;                /* this round's output buffer written */
} lane;

typedef struct exec_state {
    rcluster_map *m;
    const rcluster_links *links;
    rcluster_read read;
    const rconn_cmd *cmds;
    int n;
    rcluster_reply *out;
    rcluster_exec_stats st;
    int *slot;                  /* [n] */
    int *target;                /* [n] node for the coming round */
    unsigned char *asking;      /* [n] send after ASKING */
    unsigned char *asked;       /* [n] has followed an ASK */
    unsigned char *rerouted;    /* [n] sent to the master instead */
    int *next;                  /* [n] commands for the coming round */
    int nnext;
    lane *lanes;                /* [cap] */
    int nlanes;
    int *lane_of;               /* [cap] node -> lane index, -1 */
    int cap;                    /* nodes (and so lanes) an exec can track */
    char *err;
    size_t errlen;
    int noted;                  /* err holds the first failure */
} exec_state;

/* Keeps the first failure's message. */
__attribute__((format(printf, 3, 4)))
static void note(exec_state *x, int status, const char *fmt, ...) {
    if (x->noted++ || !x->err || !x->errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err, x->errlen, fmt, ap);
    va_end(ap);
    (void)status;
}

static void settle(exec_state *x, int i, int status, int node) {
    x->out[i].status = status;
    x->out[i].reply = NULL;
    x->out[i].node = node;
}

static lane *lane_for(exec_state *x, int node) {
    if (node < 0 || node >= x->cap) return NULL;
    if (x->lane_of[node] >= 0) return &x->lanes[x->lane_of[node]];
    lane *l = &x->lanes[x->nlanes];
    memset(l, 0, sizeof *l);
    l->node = node;
    x->lane_of[node] = x->nlanes++;
    return l;
}

/* Asks the caller for the lane's link, once per exec; 1 when it has one. */
static int lane_up(exec_state *x, lane *l) {
    if (l->link) return 1;
    if (l->down) return 0;
    const rcluster_node *nd = rcluster_map_node(x->m, l->node);
    char why[160] = "";
    l->link = x->links->get(x->links->ud, nd->host, nd->port, why, sizeof why);
    if (!l->link || !l->link->conn) {
        l->link = NULL;
        l->down = 1;
        x->st.failed_nodes++;
        x->st.stale = 1;
        note(x, CTR_EBACKEND, "Redis %s:%d: %s", nd->host, nd->port,
             why[0] ? why : "no connection");
        return 0;
    }
    x->st.nodes++;
    return 1;
}

static void push(exec_state *x, int i, int node) {
    x->target[i] = node;
    x->next[x->nnext++] = i;
}

/* A read whose node cannot be reached goes to its slot's master instead,
 * once, unless reads are for the master anyway: 1 when target[i] is now
 * the master. */
static int reroute(exec_state *x, int i, int from) {
    if (x->read == RCLUSTER_READ_MASTER || x->rerouted[i]) return 0;
    int master = rcluster_map_master(x->m, x->slot[i]);
    if (master < 0 || master == from) return 0;
    x->rerouted[i] = 1;
    x->asking[i] = 0;
    x->target[i] = master;
    x->st.rerouted++;
    return 1;
}

/* Gives up on a lane's link: its unanswered commands fail with status (or
 * go to their master next round), and the owner is told.  When the link
 * turned out of step (RCONN_DESYNC), the answers already read from it are
 * withdrawn too: they may belong to other commands. */
static void lane_fail(exec_state *x, lane *l, int status, const char *why) {
    const rcluster_node *nd = rcluster_map_node(x->m, l->node);
    for (int k = l->got; k < l->nexpect; k++) {
        int i = l->expect[k];
        if (i < 0) continue;
        if (status != CTR_ETIMEOUT && reroute(x, i, l->node)) x->next[x->nnext++] = i;
        else settle(x, i, status, l->node);
    }
    if (rconn_error_of(l->link->conn) == RCONN_DESYNC)
        for (int i = 0; i < x->n; i++)
            if (x->out[i].status == CTR_OK && x->out[i].node == l->node) {
                freeReplyObject(x->out[i].reply);
                settle(x, i, CTR_EBACKEND, l->node);
            }
    note(x, status, "Redis %s:%d: %s", nd->host, nd->port, why);
    l->got = l->nexpect;
    x->links->failed(x->links->ud, l->link, status, why);
    l->link = NULL;
    l->down = 1;
    x->st.failed_nodes++;
    x->st.stale = 1;
}

/* Follows a MOVED or ASK for command i, answered by lane l. */
static int redirect(exec_state *x, lane *l, int i, const rcluster_redirect *rd) {
    const rcluster_node *from = rcluster_map_node(x->m, l->node);
    const char *host = rd->host[0] ? rd->host : from->host;
    int to;
    if (rd->kind == RCLUSTER_MOVED) {
        x->st.moved++;
        x->st.stale = 1;
        x->asking[i] = 0;
        to = rcluster_map_moved(x->m, rd->slot, host, rd->port);
    } else {
        if (x->asked[i]) {
            settle(x, i, CTR_EBACKEND, l->node);
            note(x, CTR_EBACKEND, "Redis %s:%d: redirected again after ASK", from->host,
                 from->port);
            return CTR_OK;
        }
        x->st.asked++;
        x->asked[i] = 1;
        x->asking[i] = 1;
        to = rcluster_map_add(x->m, host, rd->port);
    }
    if (to == CTR_ENOMEM) return CTR_ENOMEM;
    if (to < 0 || to >= x->cap) {
        settle(x, i, CTR_EBACKEND, l->node);
        note(x, CTR_EBACKEND, "Redis %s:%d: %s", from->host, from->port,
             to < 0 ? "redirected to a bad address" : "redirected to too many nodes");
        return CTR_OK;
    }
    push(x, i, to);
    return CTR_OK;
}

/* One reply, the answer to l->expect[l->got]. */
static int on_reply(exec_state *x, lane *l, redisReply *r) {
    int i = l->expect[l->got++];
    if (i == EXPECT_READONLY) {
        if (r->type == REDIS_REPLY_STATUS && r->len == 2 && memcmp(r->str, "OK", 2) == 0)
            l->link->readonly = 1;
        freeReplyObject(r);
        return CTR_OK;
    }
    if (i == EXPECT_ASKING) {   /* the command's own reply tells */
        freeReplyObject(r);
        return CTR_OK;
    }
    rcluster_redirect rd;
    if (r->type == REDIS_REPLY_ERROR && r->str &&
        rcluster_redirect_parse(r->str, r->len, &rd) == CTR_OK) {
        freeReplyObject(r);
        return redirect(x, l, i, &rd);
    }
    x->out[i].status = CTR_OK;
    x->out[i].reply = r;
    x->out[i].node = l->node;
    return CTR_OK;
}

/* Reads what the socket holds and consumes every complete reply. */
static int lane_read(exec_state *x, lane *l) {
    rconn *c = l->link->conn;
    if (rconn_read(c) < 0) {
        lane_fail(x, l, CTR_EBACKEND, rconn_why(c));
        return CTR_OK;
    }
    while (l->got < l->nexpect) {
        int owner = l->expect[l->got];
        redisReply *r;
        if (rconn_take(c, owner >= 0 ? x->cmds[owner].expect : RCONN_STATUS, &r) < 0) {
            lane_fail(x, l, CTR_EBACKEND, rconn_why(c));
            return CTR_OK;
        }
        if (!r) break;
        if (on_reply(x, l, r) == CTR_ENOMEM) return CTR_ENOMEM;
    }
    /* Every reply in: nothing may be left over. */
    if (l->got == l->nexpect && rconn_finish(c, NULL, 0) < 0)
        lane_fail(x, l, CTR_EBACKEND, rconn_why(c));
    return CTR_OK;
}

static void lane_write(exec_state *x, lane *l) {
    int done = 0;
    if (rconn_write(l->link->conn, &done) < 0)
        lane_fail(x, l, CTR_EBACKEND, rconn_why(l->link->conn));
    else
        l->flushed = done;
}

static int lane_busy(const lane *l) { return l->link && l->got < l->nexpect; }

static int append(lane *l, int argc, const char *const *argv, const size_t *lens, int owner) {
    rconn_cmd cmd = {argc, argv, lens, RCONN_ANY};   /* types are checked as replies are taken */
    if (rconn_append(l->link->conn, &cmd) < 0) return CTR_ENOMEM;
    l->expect[l->nexpect++] = owner;
    return CTR_OK;
}

/* Finds the link of each of the round's commands cur[0..n); a read whose
 * node is unreachable may go to its master, whose link is then tried
 * (reroute() allows that once).  Commands without a link are settled;
 * the others are left in cur[0..return). */
static int round_links(exec_state *x, int *cur, int n) {
    int nready = 0;
    for (int k = 0; k < n; k++) {
        int i = cur[k];
        for (;;) {
            lane *l = lane_for(x, x->target[i]);
            if (!l) {
                settle(x, i, CTR_EBACKEND, x->target[i]);
                note(x, CTR_EBACKEND, "Redis Cluster: redirected to too many nodes");
                break;
            }
            if (lane_up(x, l)) {
                cur[nready++] = i;
                break;
            }
            if (!reroute(x, i, l->node)) {
                settle(x, i, CTR_EBACKEND, l->node);
                break;
            }
        }
    }
    return nready;
}

/* Appends the commands cur[0..n) to their lanes' buffers (READONLY first
 * where the link needs it, ASKING before a command that follows an ASK)
 * and writes every lane what its socket takes.  CTR_OK or CTR_ENOMEM. */
static int round_send(exec_state *x, const int *cur, int n, arena *a) {
    static const char *const asking[] = {"ASKING"}, *const readonly[] = {"READONLY"};
    static const size_t asking_len[] = {6}, readonly_len[] = {8};
    for (int j = 0; j < x->nlanes; j++) {
        x->lanes[j].nexpect = x->lanes[j].got = 0;
        x->lanes[j].flushed = 0;
    }
    for (int k = 0; k < n; k++) {
        int i = cur[k];
        x->lanes[x->lane_of[x->target[i]]].nexpect += 1 + x->asking[i];
    }
    for (int j = 0; j < x->nlanes; j++) {
        lane *l = &x->lanes[j];
        if (!l->nexpect) continue;
        int ro = x->read != RCLUSTER_READ_MASTER && !l->link->readonly;
        l->expect = arena_alloc(a, (size_t)(l->nexpect + ro) * sizeof(int), _Alignof(int));
        if (!l->expect) return CTR_ENOMEM;
        l->nexpect = 0;
        if (ro && append(l, 1, readonly, readonly_len, EXPECT_READONLY) < 0) return CTR_ENOMEM;
    }
    for (int k = 0; k < n; k++) {
        int i = cur[k];
        lane *l = &x->lanes[x->lane_of[x->target[i]]];
        if (x->asking[i] && append(l, 1, asking, asking_len, EXPECT_ASKING) < 0)
            return CTR_ENOMEM;
        if (append(l, x->cmds[i].argc, x->cmds[i].argv, x->cmds[i].argvlen, i) < 0)
            return CTR_ENOMEM;
    }
    for (int j = 0; j < x->nlanes; j++)
        if (lane_busy(&x->lanes[j])) lane_write(x, &x->lanes[j]);
    return CTR_OK;
}

/* One ppoll over every lane still sending or waiting, until each has its
 * answers or the deadline passes (the lanes left then fail, timed out).
 * CTR_OK or CTR_ENOMEM. */
static int round_wait(exec_state *x, int64_t deadline, arena *a) {
    struct pollfd *pfd = arena_alloc(a, (size_t)x->nlanes * sizeof *pfd + 1, _Alignof(struct pollfd));
    int *which = arena_alloc(a, (size_t)x->nlanes * sizeof(int) + 1, _Alignof(int));
    if (!pfd || !which) return CTR_ENOMEM;
    for (;;) {
        int np = 0;
        for (int j = 0; j < x->nlanes; j++) {
            lane *l = &x->lanes[j];
            if (!lane_busy(l)) continue;
            pfd[np] = (struct pollfd){.fd = rconn_fd(l->link->conn),
                                      .events = (short)(POLLIN | (l->flushed ? 0 : POLLOUT))};
            which[np++] = j;
        }
        if (!np) return CTR_OK;
        int64_t left = deadline - clock_now_ns();
        if (left <= 0) {
            for (int q = 0; q < np; q++)
                lane_fail(x, &x->lanes[which[q]], CTR_ETIMEOUT, "no answer within the deadline");
            return CTR_OK;
        }
        struct timespec ts = {.tv_sec = left / 1000000000, .tv_nsec = left % 1000000000};
        int r = ppoll(pfd, (nfds_t)np, &ts, NULL);
        if (r < 0) {
            if (errno == EINTR) continue;
            const char *why = strerror(errno);
            for (int q = 0; q < np; q++) lane_fail(x, &x->lanes[which[q]], CTR_EBACKEND, why);
            return CTR_OK;
        }
        for (int q = 0; q < np; q++) {
            lane *l = &x->lanes[which[q]];
            short re = pfd[q].revents;
            if (!re || !lane_busy(l)) continue;
            if ((re & POLLOUT) && !l->flushed) {
                lane_write(x, l);
                if (!lane_busy(l)) continue;
            }
            if ((re & (POLLIN | POLLHUP | POLLERR)) && lane_read(x, l) == CTR_ENOMEM)
                return CTR_ENOMEM;
        }
    }
}

/* One round: the queued commands to their links, sent, answered. */
static int run_round(exec_state *x, int64_t deadline, arena *a) {
    int n = x->nnext;
    if (clock_now_ns() >= deadline) {
        for (int k = 0; k < n; k++) settle(x, x->next[k], CTR_ETIMEOUT, x->target[x->next[k]]);
        x->nnext = 0;
        note(x, CTR_ETIMEOUT, "Redis Cluster: deadline passed before redirected commands were sent");
        return CTR_OK;
    }
    int *cur = arena_alloc(a, (size_t)n * sizeof(int) + 1, _Alignof(int));
    if (!cur) return CTR_ENOMEM;
    memcpy(cur, x->next, (size_t)n * sizeof(int));
    x->nnext = 0;
    int nready = round_links(x, cur, n);
    if (round_send(x, cur, nready, a) < 0) return CTR_ENOMEM;
    return round_wait(x, deadline, a);
}

void rcluster_replies_free(rcluster_reply *out, int n) {
    for (int i = 0; i < n; i++) {
        if (out[i].reply) freeReplyObject(out[i].reply);
        out[i].reply = NULL;
    }
}

int rcluster_exec(rcluster_map *m, const rcluster_links *links, rcluster_read read,
                  unsigned salt, int n, const rconn_cmd *cmds, int64_t deadline_ns,
                  arena *a, rcluster_reply *out, rcluster_exec_stats *st, char *err,
                  size_t errlen) {
    if (st) memset(st, 0, sizeof *st);
    if (err && errlen) err[0] = '\0';
    if (n < 0 || n > INT_MAX / 4) return ctr_fail(err, errlen, CTR_EINVAL, "n = %d", n);
    for (int i = 0; i < n; i++)
        if (!cmds[i].argv || !cmds[i].argvlen || rcluster_key(&cmds[i]) < 0)
            return ctr_fail(err, errlen, CTR_EINVAL, "command %d has no key", i);
    for (int i = 0; i < n; i++) out[i] = (rcluster_reply){.status = PENDING, .node = -1};

    exec_state x;
    memset(&x, 0, sizeof x);
    x.m = m;
    x.links = links;
    x.read = read;
    x.cmds = cmds;
    x.n = n;
    x.out = out;
    x.err = err;
    x.errlen = errlen;
    /* Redirects can add nodes to the map, one per command and round at
     * most; in practice they name nodes the map knows. */
    x.cap = rcluster_map_nodes(m) + n + 8;
    size_t ni = (size_t)n * sizeof(int) + 1;
    x.slot = arena_alloc(a, ni, _Alignof(int));
    x.target = arena_alloc(a, ni, _Alignof(int));
    x.next = arena_alloc(a, ni, _Alignof(int));
    x.asking = arena_alloc(a, (size_t)n * 3 + 1, 1);
    x.lanes = arena_alloc(a, (size_t)x.cap * sizeof *x.lanes, _Alignof(lane));
    x.lane_of = arena_alloc(a, (size_t)x.cap * sizeof(int), _Alignof(int));
    if (!x.slot || !x.target || !x.next || !x.asking || !x.lanes || !x.lane_of)
        return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    memset(x.asking, 0, (size_t)n * 3);
    x.asked = x.asking + n;
    x.rerouted = x.asking + 2 * n;
    for (int j = 0; j < x.cap; j++) x.lane_of[j] = -1;

    for (int i = 0; i < n; i++) {
        const int k = rcluster_key(&cmds[i]);
        x.slot[i] = rcluster_keyslot(cmds[i].argv[k], cmds[i].argvlen[k]);
        int node = rcluster_map_route(m, x.slot[i], read, salt);
        if (node >= 0) {
            push(&x, i, node);
            continue;
        }
        settle(&x, i, CTR_EBACKEND, -1);
        x.st.stale = 1;
        note(&x, CTR_EBACKEND, "Redis Cluster: no node serves slot %d", x.slot[i]);
    }
    while (x.nnext && x.st.rounds < RCLUSTER_MAX_ROUNDS) {
        x.st.rounds++;
        if (run_round(&x, deadline_ns, a) == CTR_ENOMEM) {
            /* Links in flight are out of step now. */
            for (int j = 0; j < x.nlanes; j++)
                if (lane_busy(&x.lanes[j]))
                    lane_fail(&x, &x.lanes[j], CTR_EBACKEND, "out of memory");
            rcluster_replies_free(out, n);
            for (int i = 0; i < n; i++) out[i].status = CTR_ENOMEM;
            if (st) *st = x.st;
            return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        }
    }
    for (int k = 0; k < x.nnext; k++) {
        settle(&x, x.next[k], CTR_EBACKEND, x.target[x.next[k]]);
        note(&x, CTR_EBACKEND, "Redis Cluster: more than %d rounds of redirections",
             RCLUSTER_MAX_ROUNDS - 1);
    }
    int rc = CTR_OK;
    for (int i = 0; i < n; i++) {
        if (out[i].status == PENDING) settle(&x, i, CTR_EBACKEND, -1);
        if (out[i].status < 0 && rc == CTR_OK) rc = out[i].status;
    }
    if (rc == CTR_OK && err && errlen) err[0] = '\0';
    if (st) *st = x.st;
    return rc;
}
