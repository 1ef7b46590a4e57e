/*
 * featstore_single.c - the feature store's backend for one Redis
 * (featstore_backend.h): one connection (rconn.h) and one circuit breaker
 * per featstore.
 *
 * Workload: per rank request, a history read (three pipelined commands)
 * and a pipeline of a few hundred GETRANGEs, each under a deadline of a few
 * milliseconds, from one worker thread; ctr-load's batches of a few hundred
 * SETs.  Redis on the same host or the same rack.
 *
 * A call is all or nothing: every command of the pipeline is answered, or
 * the call fails (a pipeline out of step too: none of its replies is
 * used).  An error reply (LOADING, NOAUTH, OOM...) fails the call
 * and counts against the breaker; WRONGTYPE is data, not an outage, and
 * goes back to the front end.  A failed exchange drops the connection (a
 * late reply would otherwise answer the next command); the next call
 * connects again, unless the breaker is open.
 */
#include "featstore_backend.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "core/base/clock.h"
#include "core/base/log.h"

typedef struct single {
    featstore_params p;         /* user, password: the front end's copies */
    char *addr;                 /* as given, for messages (and the unix
                                   socket path) */
    char *host;                 /* TCP host without brackets; NULL for unix */
    int port;
    featstore_stats *st;        /* the front end's */
    rconn *c;                   /* NULL when not connected */
    breaker br;                 /* fails calls fast after a failure */
    int64_t call_budget_ns;     /* the running call's budget (for the
                                   breaker: see timeout_counts) */
    int pending;                /* SETs queued in c's output buffer */
    int conn_lost;              /* the last failure was the other end
                                   closing or resetting the connection */
} single;

static void single_close(void *impl) {
    single *s = impl;
    if (!s) return;
    rconn_close(s->c);
    free(s->addr);
    free(s->host);
    free(s);
}

static int single_open(const featstore_params *p, featstore_stats *st, void **impl, char *err,
                       size_t errlen) {
    *impl = NULL;
    single *s = calloc(1, sizeof *s);
    if (!s) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    s->p = *p;
    s->st = st;
    s->addr = strdup(p->addr);
    if (!s->addr) {
        single_close(s);
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    }
    s->p.addr = s->addr;
    breaker_init(&s->br,
                 &(breaker_params){p->breaker_base_ms, p->breaker_max_ms, p->breaker_hook,
                                   p->breaker_hook_arg},
                 (uint64_t)(uintptr_t)s ^ (uint64_t)clock_now_ns());
    int rc;
    if ((rc = rconn_split_addr(s->addr, &s->host, &s->port, err, errlen)) < 0) {
        single_close(s);
        return rc;
    }
    *impl = s;
    return CTR_OK;
}

/* --- The connection ------------------------------------------------------ */

static void drop(single *s) {
    rconn_close(s->c);
    s->c = NULL;
    s->pending = 0;
}

/* Counts a failed call; returns rc. */
static int failed(single *s, int rc) {
    s->st->failures++;
    if (rc == CTR_ETIMEOUT) s->st->timeouts++;
    return rc;
}

/* Whether a timeout says something about Redis: a call given less than a
 * quarter of command_timeout_ms (the request's budget was nearly spent)
 * may time out against a healthy Redis, and must not open the breaker. */
static int timeout_counts(const single *s) {
    return s->call_budget_ns * 4 >= (int64_t)s->p.command_timeout_ms * 1000000;
}

/* A failed call: counted, and the breaker told when the failure is
 * Redis's. */
static int call_failed(single *s, int rc) {
    if (rc == CTR_EBACKEND || (rc == CTR_ETIMEOUT && timeout_counts(s)))
        breaker_failure(&s->br, clock_now_ns());
    return failed(s, rc);
}

/* A connection found out of step (rconn.h): counted, logged; the caller
 * drops it. */
static void desync(single *s, const char *why) {
    static log_limit lim;
    s->st->desyncs++;
    if (s->p.desync_hook) s->p.desync_hook(s->p.desync_hook_arg);
    log_limited(&lim, LOG_WARN, "Redis replies out of step", "Redis %s: %s; connection dropped",
                s->addr, why);
}

/* A kept connection about to be used again: bytes that arrived while it
 * sat idle answer no command, so it is dropped (the call then connects
 * again). */
static void drop_if_stray(single *s) {
    char why[160];
    if (!s->c || rconn_check_idle(s->c, why, sizeof why) == CTR_OK) return;
    desync(s, why);
    drop(s);
}

/* Makes sure there is a connection, connecting by `deadline` at the
 * latest.  Failures are counted by the caller. */
static int ensure_connected(single *s, int64_t deadline, char *err, size_t errlen) {
    if (s->c) return CTR_OK;
    char why[256];
    const rconn_params rp = {s->p.connect_timeout_ms, s->p.user, s->p.password};
    s->st->connect_attempts++;
    if (rconn_open(&rp, s->host ? s->host : s->addr, s->host ? s->port : 0, deadline, &s->c, why,
                   sizeof why) < 0)
        return ctr_fail(err, errlen, CTR_EBACKEND, "Redis %s: %s", s->addr, why);
    s->st->connects++;
    return CTR_OK;
}

/* The connection failed (rconn.h: it is out of step or broken): drop it,
 * so that the next call connects again, and say why. */
static int broken(single *s, int rc, const char *why, char *err, size_t errlen) {
    s->conn_lost = rconn_error_of(s->c) == RCONN_CLOSED;
    if (rconn_error_of(s->c) == RCONN_DESYNC) desync(s, why);
    if (rc == CTR_ETIMEOUT)
        ctr_fail(err, errlen, rc, "Redis %s: %s within %lld ms", s->addr, why,
                 (long long)(s->call_budget_ns / 1000000));
    else
        ctr_fail(err, errlen, rc, "Redis %s: %s", s->addr, why);
    drop(s);
    return rc;
}

/* One pipeline on the connection: every reply, or a failure. */
static int exchange(single *s, int n, const rconn_cmd *cmds, int64_t deadline,
                    struct redisReply **replies, char *err, size_t errlen) {
    char why[160];
    s->conn_lost = 0;
    s->st->round_trips++;
    int rc = rconn_exchange(s->c, n, cmds, deadline, replies, why, sizeof why);
    return rc < 0 ? broken(s, rc, why, err, errlen) : CTR_OK;
}

/* A pipeline of commands, one reply each, within min(deadline,
 * command_timeout_ms); the breaker decides first whether to try at all.
 *
 * A connection that sat idle may have been closed by the other end (Redis
 * restarted, a proxy or CLIENT KILL closed it) without our knowing until we
 * use it.  When resend is set (commands that only read) and a reused
 * connection turns out closed, the pipeline is sent once more on a new
 * connection, within the same deadline: otherwise every worker would fail
 * one request after each Redis restart.  Writes that must not happen twice
 * (an append) are never sent again.  Timeouts are not retried. */
static int command(single *s, int n, const rconn_cmd *cmds, int64_t deadline_ns,
                   struct redisReply **replies, int resend, char *err, size_t errlen) {
    for (int i = 0; i < n; i++) replies[i] = NULL;
    if (s->pending)
        return ctr_fail(err, errlen, CTR_EINVAL, "%d queued SETs: call featstore_flush first",
                        s->pending);
    int64_t t0 = clock_now_ns();
    if (deadline_ns && t0 >= deadline_ns) {
        s->call_budget_ns = 0;
        return failed(s, ctr_fail(err, errlen, CTR_ETIMEOUT,
                                  "Redis %s: no time left in the request's budget", s->addr));
    }
    if (!breaker_allow(&s->br, t0)) {
        s->st->fast_failures++;
        return failed(s, ctr_fail(err, errlen, CTR_EBACKEND,
                                  "Redis %s unavailable (circuit open after failures; next "
                                  "probe in %lld ms)",
                                  s->addr, (long long)breaker_wait_ms(&s->br, t0)));
    }
    int64_t dl = t0 + (int64_t)s->p.command_timeout_ms * 1000000;
    if (deadline_ns && deadline_ns < dl) dl = deadline_ns;
    s->call_budget_ns = dl - t0;
    drop_if_stray(s);
    int reused = s->c != NULL;
    int rc = ensure_connected(s, dl, err, errlen);
    if (rc < 0) return call_failed(s, rc);
    rc = exchange(s, n, cmds, dl, replies, err, errlen);
    if (rc == CTR_EBACKEND && reused && s->conn_lost && resend) {
        s->st->retries++;
        if ((rc = ensure_connected(s, dl, err, errlen)) == CTR_OK)
            rc = exchange(s, n, cmds, dl, replies, err, errlen);
    }
    if (rc < 0) return call_failed(s, rc);
    breaker_success(&s->br);
    return CTR_OK;
}

/* An error reply leaves the connection in step; it is still a failed call
 * (Redis is loading, refuses...). */
static int error_reply(single *s, struct redisReply *r, char *err, size_t errlen) {
    ctr_fail(err, errlen, CTR_EBACKEND, "Redis %s: %.*s", s->addr,
             (int)(r->len > 200 ? 200 : r->len), r->str ? r->str : "");
    freeReplyObject(r);
    return call_failed(s, CTR_EBACKEND);
}

/* --- The table's functions ------------------------------------------------ */

static void free_replies(struct redisReply **r, int n) {
    for (int i = 0; i < n; i++)
        if (r[i]) freeReplyObject(r[i]);
}

static int single_read(void *impl, int n, const rconn_cmd *cmds, featstore_route route,
                       int64_t deadline_ns, arena *a, struct redisReply **r, int *status,
                       char *err, size_t errlen) {
    single *s = impl;
    (void)a;
    int rc = command(s, n, cmds, deadline_ns, r, route != FEATSTORE_ROUTE_MASTER, err, errlen);
    for (int i = 0; i < n && rc == CTR_OK; i++) {
        if (r[i]->type == REDIS_REPLY_ERROR && !rconn_reply_is(r[i], "WRONGTYPE")) {
            struct redisReply *e = r[i];
            r[i] = NULL;
            free_replies(r, n);
            rc = error_reply(s, e, err, errlen);
        }
    }
    for (int i = 0; i < n; i++) {
        status[i] = rc;
        if (rc < 0) r[i] = NULL;
    }
    return rc;
}

static int single_ping(void *impl, int64_t deadline_ns, char *err, size_t errlen) {
    single *s = impl;
    static const char *const argv[] = {"PING"};
    static const size_t lens[] = {4};
    const rconn_cmd c = {1, argv, lens, RCONN_STATUS};
    struct redisReply *r;
    int rc = command(s, 1, &c, deadline_ns, &r, 1, err, errlen);
    if (rc < 0) return rc;
    if (r->type == REDIS_REPLY_ERROR) return error_reply(s, r, err, errlen);
    if (r->len != 4 || memcmp(r->str, "PONG", 4) != 0) {   /* another command's +OK */
        char why[80];
        snprintf(why, sizeof why, "out of step: +%.*s answered PING",
                 (int)(r->len > 20 ? 20 : r->len), r->str);
        freeReplyObject(r);
        desync(s, why);
        drop(s);
        ctr_fail(err, errlen, CTR_EBACKEND, "Redis %s: %s", s->addr, why);
        return call_failed(s, CTR_EBACKEND);
    }
    freeReplyObject(r);
    return CTR_OK;
}

/* The one Redis is the one master. */
static int single_each_master(void *impl, const rconn_cmd *cmd, char *err, size_t errlen) {
    single *s = impl;
    struct redisReply *r;
    int rc = command(s, 1, cmd, 0, &r, 0, err, errlen);
    if (rc < 0) return rc;
    if (r->type == REDIS_REPLY_ERROR) return error_reply(s, r, err, errlen);
    freeReplyObject(r);
    return CTR_OK;
}

/* SETs go straight into the connection's output buffer (connecting first
 * if needed); flush sends them. */
static int single_put(void *impl, const char *key, size_t klen, const void *value, size_t len,
                      char *err, size_t errlen) {
    single *s = impl;
    int64_t t0 = clock_now_ns();
    if (!s->pending) drop_if_stray(s);   /* a batch's first SET */
    int rc = ensure_connected(s, t0 + (int64_t)s->p.connect_timeout_ms * 1000000, err, errlen);
    if (rc < 0) return failed(s, rc);
    const char *argv[] = {"SET", key, value};
    const size_t lens[] = {3, klen, len};
    const rconn_cmd c = {3, argv, lens, RCONN_STATUS};
    if (rconn_append(s->c, &c) < 0) return failed(s, broken(s, CTR_EBACKEND, rconn_why(s->c), err,
                                                            errlen));
    s->pending++;
    return CTR_OK;
}

static int single_flush(void *impl, char *err, size_t errlen) {
    single *s = impl;
    if (!s->pending) return CTR_OK;
    int64_t t0 = clock_now_ns();
    int64_t deadline = t0 + (int64_t)s->p.command_timeout_ms * 1000000;
    s->call_budget_ns = deadline - t0;
    int rc, want = s->pending;
    char why[160];
    s->st->round_trips++;
    if ((rc = rconn_send(s->c, deadline, why, sizeof why)) < 0)
        return failed(s, broken(s, rc, why, err, errlen));
    /* Read every answer even after an error reply, so the connection stays
     * in step; report the first error. */
    int bad = 0;
    for (int i = 0; i < want; i++) {
        struct redisReply *r;
        if ((rc = rconn_recv(s->c, deadline, RCONN_STATUS, &r, why, sizeof why)) < 0)
            return failed(s, broken(s, rc, why, err, errlen));
        s->pending--;
        if (r->type == REDIS_REPLY_ERROR && !bad++)
            ctr_fail(err, errlen, CTR_EBACKEND, "Redis %s: SET: %.*s", s->addr,
                     (int)(r->len > 200 ? 200 : r->len), r->str ? r->str : "");
        freeReplyObject(r);
    }
    if ((rc = rconn_finish(s->c, why, sizeof why)) < 0)
        return failed(s, broken(s, rc, why, err, errlen));
    return bad ? failed(s, CTR_EBACKEND) : CTR_OK;
}

static int single_pending(const void *impl) { return ((const single *)impl)->pending; }

static breaker_state single_breaker_state(const void *impl) {
    return ((const single *)impl)->br.state;
}

static uint64_t single_breaker_opens(const void *impl) {
    return ((const single *)impl)->br.opens;
}

const featstore_backend featstore_single_backend = {
    .open = single_open,
    .close = single_close,
    .read = single_read,
    .ping = single_ping,
    .each_master = single_each_master,
    .put = single_put,
    .flush = single_flush,
    .pending = single_pending,
    .breaker_state = single_breaker_state,
    .breaker_opens = single_breaker_opens,
};
