/*
 * featstore.c - one worker's Redis connection for features, see featstore.h.
 *
 * Workload: a history read (three pipelined commands) and a pipeline of a
 * few hundred GETRANGEs per request, each with a deadline of a few
 * milliseconds, from one thread; Redis on the same host or
 * the same rack.  hiredis is used in non-blocking mode for its connect,
 * command formatting and reply parser, and this file drives the socket with
 * ppoll, because hiredis's blocking mode applies its timeout to each read
 * and a reply of a few hundred kilobytes takes many reads.
 */
#include "featstore.h"
#include "featstore_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "proto/features.h"
#include "core/base/clock.h"

/* Longest "<prefix>i:<int64>" key beyond the prefix: "i:" and 20 digits
 * with a sign. */
#define ITEM_KEY_EXTRA 24
/* Longest key featstore_get_meta builds. */
#define CONFIG_KEY_MAX 1100

struct featstore {
    featstore_params p;         /* addr and prefix point to the copies below */
    char *addr;                 /* as given */
    char *host;                 /* TCP host without brackets; NULL for unix */
    int port;
    char *prefix;
    size_t prefix_len;
    char *user, *password;      /* AUTH; NULL when not set */
    featstore_cluster *cl;      /* Redis Cluster mode; NULL: one node */
    redisContext *c;            /* NULL when not connected */
    breaker br;                 /* fails calls fast after a failure */
    int64_t call_budget_ns;     /* the running call's budget (for the
                                   breaker: see timeout_counts) */
    int pending;                /* SETs queued in c's output buffer */
    int conn_lost;              /* the last failure was the peer closing or
                                   resetting the connection */
    arena scratch;              /* cluster calls without the caller's arena */
    featstore_stats st;
};

#define now_ns clock_now_ns

void featstore_default_params(featstore_params *p) {
    p->addr = "127.0.0.1:6379";
    p->connect_timeout_ms = 50;
    p->command_timeout_ms = 20;
    p->breaker_base_ms = 100;
    p->breaker_max_ms = 400;
    p->breaker_hook = NULL;
    p->breaker_hook_arg = NULL;
    p->prefix = "ctr:";
    p->max_tags = 5;
    p->mm_dim = 128;
    p->cate = 0;
    p->max_seq = 1000;
    p->cluster = NULL;
    p->read_replicas = 0;
    p->cluster_refresh_ms = 100;
    p->user = NULL;
    p->password = NULL;
    p->node_hooks = NULL;
}

/* Splits "host:port" / "[v6]:port" into fs->host and fs->port. */
static int parse_tcp_addr(featstore *fs, const char *addr, char *err,
                          size_t errlen) {
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || !colon[1])
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "Redis address \"%s\": expected host:port or a unix "
                        "socket path starting with '/'",
                        addr);
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || *end || port < 1 || port > 65535)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "Redis address \"%s\": bad port", addr);
    const char *h = addr;
    size_t hlen = (size_t)(colon - addr);
    if (h[0] == '[') {
        if (hlen < 3 || h[hlen - 1] != ']')
            return ctr_fail(err, errlen, CTR_EINVAL,
                            "Redis address \"%s\": unbalanced brackets", addr);
        h++;
        hlen -= 2;
    } else if (memchr(h, ':', hlen)) {
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "Redis address \"%s\": write an IPv6 host as "
                        "[addr]:port",
                        addr);
    }
    fs->host = strndup(h, hlen);
    if (!fs->host) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    fs->port = (int)port;
    return CTR_OK;
}

int featstore_open(const featstore_params *p, featstore **out, char *err,
                   size_t errlen) {
    *out = NULL;
    int cluster = p->cluster && p->cluster[0];
    if (!cluster && (!p->addr || !p->addr[0]))
        return ctr_fail(err, errlen, CTR_EINVAL, "no Redis address");
    if (!p->prefix)
        return ctr_fail(err, errlen, CTR_EINVAL, "no key prefix");
    if (p->connect_timeout_ms <= 0 || p->command_timeout_ms <= 0 ||
        p->breaker_base_ms <= 0 || p->breaker_max_ms < p->breaker_base_ms)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "timeouts must be positive (connect %d ms, command %d "
                        "ms, breaker %d..%d ms)",
                        p->connect_timeout_ms, p->command_timeout_ms,
                        p->breaker_base_ms, p->breaker_max_ms);
    if (p->max_tags < 0 || p->max_tags > FEATURES_MAX_TAGS || p->mm_dim < 0 ||
        p->mm_dim > FEATURES_MAX_MM || p->max_seq < 0)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "limits out of range (max_tags %d, mm_dim %d, max_seq "
                        "%d)",
                        p->max_tags, p->mm_dim, p->max_seq);

    int rc = CTR_ENOMEM;
    featstore *fs = calloc(1, sizeof *fs);
    if (!fs) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    fs->p = *p;
    fs->addr = strdup(cluster ? "Redis Cluster" : p->addr);
    fs->prefix = strdup(p->prefix);
    if (!fs->addr || !fs->prefix) {
        ctr_fail(err, errlen, rc, "out of memory");
        goto fail;
    }
    fs->p.addr = fs->addr;
    fs->p.prefix = fs->prefix;
    arena_init(&fs->scratch, 1 << 12);
    fs->prefix_len = strlen(fs->prefix);
    fs->p.user = fs->p.password = NULL;
    fs->p.cluster = NULL;
    if ((p->user && p->user[0] && !(fs->user = strdup(p->user))) ||
        (p->password && p->password[0] && !(fs->password = strdup(p->password)))) {
        ctr_fail(err, errlen, rc, "out of memory");
        goto fail;
    }
    fs->p.user = fs->user;
    fs->p.password = fs->password;
    if (cluster) {
        featstore_params cp = fs->p;   /* the seeds are parsed, not kept */
        cp.cluster = p->cluster;
        if ((rc = featstore_cluster_open(&cp, &fs->st, &fs->cl, err, errlen)) < 0) goto fail;
        *out = fs;
        return CTR_OK;
    }
    breaker_init(&fs->br,
                 &(breaker_params){p->breaker_base_ms, p->breaker_max_ms,
                                   p->breaker_hook, p->breaker_hook_arg},
                 (uint64_t)(uintptr_t)fs ^ (uint64_t)now_ns());
    if (fs->addr[0] != '/' &&
        (rc = parse_tcp_addr(fs, fs->addr, err, errlen)) < 0)
        goto fail;
    *out = fs;
    return CTR_OK;

fail:
    featstore_close(fs);
    return rc;
}

/* Overwrites a secret before freeing it, so it does not linger in freed
 * memory (core dumps). */
static void free_secret(char *s) {
    if (!s) return;
    volatile char *v = s;
    while (*v) *v++ = 0;
    free(s);
}

void featstore_close(featstore *fs) {
    if (!fs) return;
    featstore_cluster_close(fs->cl);
    if (fs->c) redisFree(fs->c);
    free(fs->user);
    free_secret(fs->password);
    free(fs->addr);
    free(fs->host);
    free(fs->prefix);
    arena_free(&fs->scratch);
    free(fs);
}

void featstore_stats_get(const featstore *fs, featstore_stats *st) {
    *st = fs->st;
    st->breaker_opens = fs->cl ? featstore_cluster_breaker_opens(fs->cl) : fs->br.opens;
}

breaker_state featstore_breaker_state(const featstore *fs) {
    return fs->cl ? featstore_cluster_breaker_state(fs->cl) : fs->br.state;
}

int featstore_pending(const featstore *fs) {
    return fs->cl ? featstore_cluster_pending(fs->cl) : fs->pending;
}

/* --- connection ---------------------------------------------------------- */

static void drop(featstore *fs) {
    if (fs->c) redisFree(fs->c);
    fs->c = NULL;
    fs->pending = 0;
}

/* Counts a failed call; returns rc. */
static int failed(featstore *fs, int rc) {
    fs->st.failures++;
    if (rc == CTR_ETIMEOUT) fs->st.timeouts++;
    return rc;
}

/* Waits until fd is ready for `events` or the deadline passes: 1 ready,
 * 0 timed out, -1 error (errno). */
static int wait_fd(int fd, short events, int64_t deadline) {
    for (;;) {
        int64_t left = deadline - now_ns();
        if (left <= 0) return 0;
        struct pollfd pfd = {.fd = fd, .events = events};
        struct timespec ts = {.tv_sec = left / 1000000000,
                              .tv_nsec = left % 1000000000};
        int r = ppoll(&pfd, 1, &ts, NULL);
        if (r > 0) return 1;
        if (r == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

int featstore_connect(const featstore_params *p, const char *host, int port,
                      const char *unix_path, int64_t deadline_ns, featstore_stats *st,
                      redisContext **out, char *err, size_t errlen) {
    *out = NULL;
    int64_t t0 = now_ns();
    st->connect_attempts++;
    redisContext *c = host ? redisConnectNonBlock(host, port) : redisConnectUnixNonBlock(unix_path);
    if (!c) return ctr_fail(err, errlen, CTR_EBACKEND, "out of memory");
    if (c->err) {
        ctr_fail(err, errlen, CTR_EBACKEND, "%s", c->errstr);
        redisFree(c);
        return CTR_EBACKEND;
    }
    /* A TCP connect is usually still in progress here. */
    int64_t cdl = t0 + (int64_t)p->connect_timeout_ms * 1000000;
    if (deadline_ns && deadline_ns < cdl) cdl = deadline_ns;
    int r = wait_fd(c->fd, POLLOUT, cdl);
    int soerr = r < 0 ? errno : 0;
    socklen_t sl = sizeof soerr;
    if (r > 0 && getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) soerr = errno;
    if (r == 0 || soerr) {
        if (r == 0)
            ctr_fail(err, errlen, CTR_EBACKEND, "connect timed out after %lld ms",
                     (long long)((cdl - t0 + 500000) / 1000000));
        else
            ctr_fail(err, errlen, CTR_EBACKEND, "%s", strerror(soerr));
        redisFree(c);
        return CTR_EBACKEND;
    }
    if (p->password && p->password[0]) {
        /* AUTH [user] password, answered within the connect's time.  Redis's
         * refusal (WRONGPASS, or ERR for AUTH on a server without one)
         * names neither the user nor the password. */
        const char *argv[3] = {"AUTH"};
        size_t lens[3] = {4};
        int argc = 1;
        if (p->user && p->user[0]) {
            argv[argc] = p->user;
            lens[argc++] = strlen(p->user);
        }
        argv[argc] = p->password;
        lens[argc++] = strlen(p->password);
        redisReply *rep = NULL;
        char why[160];
        int rc = rcluster_command(c, argc, argv, lens, cdl, &rep, why, sizeof why);
        if (rc < 0) {
            redisFree(c);
            return ctr_fail(err, errlen, CTR_EBACKEND, "AUTH: %s", why);
        }
        int ok = rep->type == REDIS_REPLY_STATUS && rep->len == 2 && memcmp(rep->str, "OK", 2) == 0;
        if (!ok) {
            if (rep->type == REDIS_REPLY_ERROR)
                ctr_fail(err, errlen, CTR_EBACKEND, "authentication refused: %.*s",
                         (int)(rep->len > 160 ? 160 : rep->len), rep->str ? rep->str : "");
            else
                ctr_fail(err, errlen, CTR_EBACKEND, "unexpected reply type %d to AUTH",
                         rep->type);
            freeReplyObject(rep);
            redisFree(c);
            return CTR_EBACKEND;
        }
        freeReplyObject(rep);
    }
    st->connects++;
    *out = c;
    return CTR_OK;
}

/* Makes sure there is a connection, connecting by `deadline` at the
 * latest.  Failures are counted by the caller. */
static int ensure_connected(featstore *fs, int64_t deadline, char *err,
                            size_t errlen) {
    if (fs->c) return CTR_OK;
    char why[256];
    if (featstore_connect(&fs->p, fs->host, fs->port, fs->addr, deadline, &fs->st, &fs->c, why,
                          sizeof why) < 0) {
        drop(fs);
        return ctr_fail(err, errlen, CTR_EBACKEND, "Redis %s: %s", fs->addr, why);
    }
    return CTR_OK;
}

/* A broken connection: drop it (the next call reconnects at once). */
static int broken(featstore *fs, int rc, char *err, size_t errlen,
                  const char *what) {
    ctr_fail(err, errlen, rc, "Redis %s: %s", fs->addr, what);
    drop(fs);
    return rc;
}

static int broken_ctx(featstore *fs, char *err, size_t errlen) {
    fs->conn_lost = fs->c->err == REDIS_ERR_EOF || fs->c->err == REDIS_ERR_IO;
    char msg[sizeof fs->c->errstr];
    memcpy(msg, fs->c->errstr, sizeof msg);
    msg[sizeof msg - 1] = '\0';
    return broken(fs, CTR_EBACKEND, err, errlen, msg);
}

/* Writes everything queued in the context's output buffer. */
static int send_all(featstore *fs, int64_t deadline, char *err, size_t errlen) {
    fs->st.round_trips++;
    int done = 0;
    for (;;) {
        if (redisBufferWrite(fs->c, &done) != REDIS_OK)
            return broken_ctx(fs, err, errlen);
        if (done) return CTR_OK;
        int r = wait_fd(fs->c->fd, POLLOUT, deadline);
        if (r == 0)
            return broken(fs, CTR_ETIMEOUT, err, errlen,
                          "timed out sending the command");
        if (r < 0) return broken(fs, CTR_EBACKEND, err, errlen, strerror(errno));
    }
}

/* Reads one reply (the caller frees it with freeReplyObject). */
static int recv_reply(featstore *fs, int64_t deadline, redisReply **out,
                      char *err, size_t errlen) {
    for (;;) {
        void *reply = NULL;
        if (redisGetReplyFromReader(fs->c, &reply) != REDIS_OK)
            return broken_ctx(fs, err, errlen);
        if (reply) {
            *out = reply;
            return CTR_OK;
        }
        int r = wait_fd(fs->c->fd, POLLIN, deadline);
        if (r == 0) {
            char msg[64];
            snprintf(msg, sizeof msg, "no answer within %lld ms",
                     (long long)(fs->call_budget_ns / 1000000));
            return broken(fs, CTR_ETIMEOUT, err, errlen, msg);
        }
        if (r < 0) return broken(fs, CTR_EBACKEND, err, errlen, strerror(errno));
        if (redisBufferRead(fs->c) != REDIS_OK)
            return broken_ctx(fs, err, errlen);
    }
}

/* One command of a pipeline (argv[1] is its key, for the cluster). */
typedef rcluster_cmd cmd;

static void free_replies(redisReply **r, int n) {
    for (int i = 0; i < n; i++)
        if (r[i]) freeReplyObject(r[i]);
}

static int exchange(featstore *fs, int ncmd, const cmd *cmds, int64_t deadline,
                    redisReply **replies, char *err, size_t errlen) {
    int rc;
    fs->conn_lost = 0;
    for (int i = 0; i < ncmd; i++)
        if (redisAppendCommandArgv(fs->c, cmds[i].argc, (const char **)cmds[i].argv,
                                   cmds[i].argvlen) != REDIS_OK)
            return broken_ctx(fs, err, errlen);
    if ((rc = send_all(fs, deadline, err, errlen)) < 0) return rc;
    for (int i = 0; i < ncmd; i++) {
        if ((rc = recv_reply(fs, deadline, &replies[i], err, errlen)) < 0) {
            free_replies(replies, i);
            return rc;
        }
    }
    return CTR_OK;
}

/* Whether a timeout says something about Redis: a call given less than a
 * quarter of command_timeout_ms (the request's budget was nearly spent)
 * may time out against a healthy Redis, and must not open the breaker. */
static int timeout_counts(const featstore *fs) {
    return fs->call_budget_ns * 4 >= (int64_t)fs->p.command_timeout_ms * 1000000;
}

/* A failed call: counted, and the breaker told when the failure is
 * Redis's. */
static int call_failed(featstore *fs, int rc) {
    if (!fs->cl && (rc == CTR_EBACKEND || (rc == CTR_ETIMEOUT && timeout_counts(fs))))
        breaker_failure(&fs->br, now_ns());
    return failed(fs, rc);
}

/* A pipeline of read-only commands, one reply each, within
 * min(deadline, command_timeout_ms); the breaker decides first whether to
 * try at all.
 *
 * A connection that sat idle may have been closed by the other end (Redis
 * restarted, a proxy or CLIENT KILL closed it) without our knowing until we
 * use it.  The commands sent here only read, so when a reused connection
 * turns out closed the pipeline is sent once more on a new connection,
 * within the same deadline: otherwise every worker would fail one request
 * after each Redis restart.  Timeouts are not retried. */
static int command(featstore *fs, int ncmd, const cmd *cmds, int64_t deadline_ns,
                   redisReply **replies, char *err, size_t errlen) {
    int rc;
    if (fs->pending)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "%d queued SETs: call featstore_flush first",
                        fs->pending);
    int64_t t0 = now_ns();
    if (deadline_ns && t0 >= deadline_ns) {
        fs->call_budget_ns = 0;
        return failed(fs, ctr_fail(err, errlen, CTR_ETIMEOUT,
                                   "Redis %s: no time left in the request's "
                                   "budget", fs->addr));
    }
    if (!breaker_allow(&fs->br, t0)) {
        fs->st.fast_failures++;
        return failed(fs, ctr_fail(err, errlen, CTR_EBACKEND,
                                   "Redis %s unavailable (circuit open after "
                                   "failures; next probe in %lld ms)",
                                   fs->addr,
                                   (long long)breaker_wait_ms(&fs->br, t0)));
    }
    int64_t dl = t0 + (int64_t)fs->p.command_timeout_ms * 1000000;
    if (deadline_ns && deadline_ns < dl) dl = deadline_ns;
    fs->call_budget_ns = dl - t0;
    int reused = fs->c != NULL;
    if ((rc = ensure_connected(fs, dl, err, errlen)) < 0) return call_failed(fs, rc);
    rc = exchange(fs, ncmd, cmds, dl, replies, err, errlen);
    if (rc == CTR_EBACKEND && reused && fs->conn_lost) {
        fs->st.retries++;
        if ((rc = ensure_connected(fs, dl, err, errlen)) == CTR_OK)
            rc = exchange(fs, ncmd, cmds, dl, replies, err, errlen);
    }
    if (rc < 0) return call_failed(fs, rc);
    breaker_success(&fs->br);
    return CTR_OK;
}

/* One command, one reply. */
static int command1(featstore *fs, int argc, const char **argv,
                    const size_t *lens, int64_t deadline_ns, redisReply **reply,
                    char *err, size_t errlen) {
    cmd c = {argc, argv, lens};
    return command(fs, 1, &c, deadline_ns, reply, err, errlen);
}

/* An error reply leaves the connection in step; it is still a failed call. */
static int error_reply(featstore *fs, redisReply *r, int rc, char *err,
                       size_t errlen) {
    ctr_fail(err, errlen, rc, "Redis %s: %.*s", fs->addr,
             (int)(r->len > 200 ? 200 : r->len), r->str ? r->str : "");
    freeReplyObject(r);
    return rc == CTR_EBACKEND ? call_failed(fs, rc) : rc;
}

static int unexpected_reply(featstore *fs, redisReply *r, const char *what,
                            char *err, size_t errlen) {
    int type = r->type;
    freeReplyObject(r);
    char msg[80];
    snprintf(msg, sizeof msg, "unexpected reply type %d to %s", type, what);
    return call_failed(fs, broken(fs, CTR_EBACKEND, err, errlen, msg));
}

int featstore_is_wrongtype(const redisReply *r) {
    return r->type == REDIS_REPLY_ERROR && r->len >= 9 && memcmp(r->str, "WRONGTYPE", 9) == 0;
}

/* Read commands on either backend.  CTR_OK: r[i] answers cmds[i] (never an
 * error reply other than WRONGTYPE).  On one node a call is all or nothing:
 * an error reply (LOADING...) fails it and counts against the breaker, and
 * a failure leaves r[] all NULL.  On a cluster status[i] says per command:
 * on a failure, the replies of the commands that were answered are in r[]
 * (the others NULL) and the caller frees them.  `route`:
 * FEATSTORE_ROUTE_* (cluster only). */
static int run_reads(featstore *fs, int n, const cmd *cmds, int route, int64_t deadline_ns,
                     arena *a, redisReply **r, int *status, char *err, size_t errlen) {
    if (fs->cl)
        return featstore_cluster_read(fs->cl, n, cmds, route, deadline_ns, a, r, status, err,
                                      errlen);
    int rc = command(fs, n, cmds, deadline_ns, r, err, errlen);
    for (int i = 0; i < n && rc == CTR_OK; i++) {
        if (r[i]->type == REDIS_REPLY_ERROR && !featstore_is_wrongtype(r[i])) {
            redisReply *e = r[i];
            r[i] = NULL;
            free_replies(r, n);
            rc = error_reply(fs, e, CTR_EBACKEND, err, errlen);
        }
    }
    for (int i = 0; i < n; i++) {
        status[i] = rc;
        if (rc < 0) r[i] = NULL;
    }
    return rc;
}

/* --- reading ------------------------------------------------------------- */

int featstore_ping(featstore *fs, int64_t deadline_ns, char *err, size_t errlen) {
    if (fs->cl) return featstore_cluster_ping(fs->cl, deadline_ns, err, errlen);
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    redisReply *r;
    int rc = command1(fs, 1, argv, lens, deadline_ns, &r, err, errlen);
    if (rc < 0) return rc;
    if (r->type == REDIS_REPLY_ERROR)
        return error_reply(fs, r, CTR_EBACKEND, err, errlen);
    if (r->type != REDIS_REPLY_STATUS || r->len != 4 ||
        memcmp(r->str, "PONG", 4) != 0)
        return unexpected_reply(fs, r, "PING", err, errlen);
    freeReplyObject(r);
    return CTR_OK;
}

/* Writes the decimal digits of v at p; returns the length. */
static size_t put_int64(char *p, int64_t v) {
    char tmp[24];
    size_t n = 0;
    /* Negate in unsigned arithmetic so INT64_MIN needs no special case. */
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    size_t len = 0;
    if (v < 0) p[len++] = '-';
    while (n) p[len++] = tmp[--n];
    return len;
}

/* WRONGTYPE: the key exists but holds a hash, list...: a value this
 * service did not write, so it is malformed data, not an outage. */
#define is_wrongtype featstore_is_wrongtype

int featstore_get_user(featstore *fs, const char *user_id, int keep, int64_t deadline_ns,
                       arena *a, int64_t **ids, int *n, char *err, size_t errlen) {
    *ids = NULL;
    *n = 0;
    if (!user_id)
        return ctr_fail(err, errlen, CTR_EINVAL, "NULL user id");
    if (keep < 1 || keep > fs->p.max_seq) keep = fs->p.max_seq;
    size_t ulen = strlen(user_id);
    size_t klen = fs->prefix_len + 2 + ulen;
    char *key = arena_alloc(a, klen, 1);
    if (!key) return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    memcpy(key, fs->prefix, fs->prefix_len);
    memcpy(key + fs->prefix_len, "u:", 2);
    memcpy(key + fs->prefix_len + 2, user_id, ulen);

    /* The length, the header and the last `keep` ids, in one round trip.
     * (A value replaced between the reads shows as a length mismatch, or
     * as a history mixing the two versions for this one request.) */
    char tail[24];
    size_t tlen = (size_t)snprintf(tail, sizeof tail, "-%lld", (long long)keep * 4);
    const char *a0[] = {"STRLEN", key};
    size_t l0[] = {6, klen};
    const char *a1[] = {"GETRANGE", key, "0", "7"};
    size_t l1[] = {8, klen, 1, 1};
    const char *a2[] = {"GETRANGE", key, tail, "-1"};
    size_t l2[] = {8, klen, tlen, 2};
    cmd cmds[] = {{2, a0, l0}, {4, a1, l1}, {4, a2, l2}};
    redisReply *r[3];
    int stv[3];
    int rc = run_reads(fs, 3, cmds, FEATSTORE_ROUTE_DEFAULT, deadline_ns, a, r, stv, err, errlen);
    if (rc < 0) {
        free_replies(r, 3);
        return rc;
    }
    for (int i = 0; i < 3; i++) {
        if (is_wrongtype(r[i])) {
            fs->st.users_malformed++;
            free_replies(r, 3);
            return ctr_fail(err, errlen, CTR_EFORMAT,
                            "user %s: the key is not a string (WRONGTYPE)", user_id);
        }
        if (r[i]->type != (i ? REDIS_REPLY_STRING : REDIS_REPLY_INTEGER)) {
            redisReply *e = r[i];
            r[i] = NULL;
            free_replies(r, 3);
            return unexpected_reply(fs, e, i ? "GETRANGE" : "STRLEN", err, errlen);
        }
    }
    long long total = r[0]->integer;
    if (total == 0) {
        free_replies(r, 3);
        return ctr_fail(err, errlen, CTR_ENOTFOUND, "no user %s", user_id);
    }
    /* Check the header and the kept ids with the one decoder: a value made
     * of the header (count set to the ids kept) and the tail's last ids.
     * The length must be what the header's count says. */
    char msg[160];
    rc = CTR_EFORMAT;
    const unsigned char *h = (const unsigned char *)r[1]->str;
    if (r[1]->len < FEATURES_HEADER_SIZE) {
        snprintf(msg, sizeof msg, "user value of %lld bytes is shorter than its %d-byte header",
                 total, FEATURES_HEADER_SIZE);
    } else {
        uint32_t count = (uint32_t)h[4] | (uint32_t)h[5] << 8 | (uint32_t)h[6] << 16 |
                         (uint32_t)h[7] << 24;
        size_t kept = count < (uint32_t)keep ? count : (size_t)keep;
        size_t have = r[2]->len;
        /* The header's own fields first (magic, version), as a value of
         * no ids. */
        unsigned char h0[FEATURES_HEADER_SIZE];
        memcpy(h0, h, 4);
        memset(h0 + 4, 0, 4);
        int64_t *none;
        int nnone;
        int hrc = features_user_decode(h0, sizeof h0, 0, a, &none, &nnone, msg, sizeof msg);
        if (hrc < 0) {
            rc = hrc;
        } else if ((unsigned long long)total != FEATURES_HEADER_SIZE + 4ull * count) {
            snprintf(msg, sizeof msg, "user value of %lld bytes, its header says %lu ids",
                     total, (unsigned long)count);
        } else if (have < 4 * kept) {
            snprintf(msg, sizeof msg, "user value changed while being read");
        } else {
            unsigned char *v = arena_alloc(a, FEATURES_HEADER_SIZE + 4 * kept, 8);
            if (!v) {
                free_replies(r, 3);
                return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
            }
            memcpy(v, h, FEATURES_HEADER_SIZE);
            v[4] = (unsigned char)kept;
            v[5] = (unsigned char)(kept >> 8);
            v[6] = (unsigned char)(kept >> 16);
            v[7] = (unsigned char)(kept >> 24);
            memcpy(v + FEATURES_HEADER_SIZE, r[2]->str + have - 4 * kept, 4 * kept);
            rc = features_user_decode(v, FEATURES_HEADER_SIZE + 4 * kept, keep, a, ids, n,
                                      msg, sizeof msg);
        }
    }
    free_replies(r, 3);
    if (rc < 0) {
        *ids = NULL;
        *n = 0;
        if (rc == CTR_EFORMAT) fs->st.users_malformed++;
        return ctr_fail(err, errlen, rc, "user %s: %s", user_id, msg);
    }
    return CTR_OK;
}

int featstore_get_items(featstore *fs, const int64_t *ids, int n, int64_t deadline_ns,
                        arena *a, featstore_item *out, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (n < 0) return ctr_fail(err, errlen, CTR_EINVAL, "n = %d", n);
    if (n == 0) return CTR_OK;
    if (n >= INT_MAX / 4) return ctr_fail(err, errlen, CTR_EINVAL, "too many ids");

    /* GETRANGE key 0 <longest allowed>: one byte more than a valid value
     * can have shows a value that is too long, without reading it. */
    size_t longest = fs->p.cate ? features_item_cate_size(fs->p.max_tags, fs->p.mm_dim)
                                : features_item_size(fs->p.max_tags, fs->p.mm_dim);
    char last[24];
    size_t last_len = (size_t)snprintf(last, sizeof last, "%zu", longest);
    size_t stride = fs->prefix_len + ITEM_KEY_EXTRA;
    const char **argv = arena_alloc(a, (size_t)n * 4 * sizeof *argv, _Alignof(const char *));
    size_t *lens = arena_alloc(a, (size_t)n * 4 * sizeof *lens, _Alignof(size_t));
    cmd *cmds = arena_alloc(a, (size_t)n * sizeof *cmds, _Alignof(cmd));
    redisReply **r = arena_alloc(a, (size_t)n * sizeof *r, _Alignof(redisReply *));
    int *stv = arena_alloc(a, (size_t)n * sizeof *stv, _Alignof(int));
    char *keys = arena_alloc(a, (size_t)n * stride, 1);
    if (!argv || !lens || !cmds || !r || !stv || !keys)
        return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    for (int i = 0; i < n; i++) {
        char *k = keys + (size_t)i * stride;
        memcpy(k, fs->prefix, fs->prefix_len);
        k[fs->prefix_len] = 'i';
        k[fs->prefix_len + 1] = ':';
        const char **av = argv + 4 * (size_t)i;
        size_t *al = lens + 4 * (size_t)i;
        av[0] = "GETRANGE";
        al[0] = 8;
        av[1] = k;
        al[1] = fs->prefix_len + 2 + put_int64(k + fs->prefix_len + 2, ids[i]);
        av[2] = "0";
        al[2] = 1;
        av[3] = last;
        al[3] = last_len;
        cmds[i] = (cmd){4, av, al};
    }

    int rc = run_reads(fs, n, cmds, FEATSTORE_ROUTE_DEFAULT, deadline_ns, a, r, stv, err,
                       errlen);
    /* A cluster node that failed costs its items only (err keeps why). */
    int answered = 0;
    for (int i = 0; i < n && rc < 0; i++) answered += stv[i] == CTR_OK;
    if (rc < 0 && (!answered || rc == CTR_ENOMEM || rc == CTR_EINVAL)) {
        free_replies(r, n);
        return rc;
    }
    int noted = rc < 0;
    rc = CTR_OK;

    fs->st.items_requested += (uint64_t)n;
    for (int i = 0; i < n && rc == CTR_OK; i++) {
        const redisReply *e = r[i];
        featstore_item *it = &out[i];
        memset(it, 0, sizeof *it);
        if (stv[i] < 0) {
            it->status = stv[i];
            fs->st.items_unavailable++;
            continue;
        }
        if (e->type == REDIS_REPLY_STRING && e->len == 0) {
            /* GETRANGE answers "" for an absent key. */
            it->status = CTR_ENOTFOUND;
            fs->st.items_missing++;
            continue;
        }
        features_item f;
        char msg[160];
        int drc;
        if (e->type != REDIS_REPLY_STRING) {
            drc = CTR_EFORMAT;
            snprintf(msg, sizeof msg, "the key is not a string");
        } else if (e->len > longest) {
            drc = CTR_EFORMAT;
            snprintf(msg, sizeof msg, "value longer than the %zu bytes the schema allows",
                     longest);
        } else {
            drc = features_item_decode(e->str, e->len, fs->p.max_tags, fs->p.mm_dim, a, &f,
                                       msg, sizeof msg);
            if (drc == CTR_OK && fs->p.cate && !f.has_cate) {
                drc = CTR_EFORMAT;
                snprintf(msg, sizeof msg, "no category (the model reads one)");
            }
        }
        if (drc == CTR_ENOMEM) {
            rc = ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
            break;
        }
        if (drc < 0) {
            it->status = CTR_EFORMAT;
            fs->st.items_malformed++;
            if (!noted++)
                ctr_fail(err, errlen, CTR_EFORMAT, "item %lld: %s", (long long)ids[i], msg);
            continue;
        }
        it->found = 1;
        it->status = CTR_OK;
        it->tags = f.tags;
        it->num_tags = f.num_tags;
        it->mm = f.mm;
        it->mm_dim = f.mm_dim;
        it->has_cate = f.has_cate;
        it->cate = f.cate;
    }
    free_replies(r, n);
    return rc;
}

int featstore_get_meta(featstore *fs, int64_t deadline_ns, char *buf, size_t cap,
                       size_t *len, char *err, size_t errlen) {
    *len = 0;
    if (cap) buf[0] = '\0';
    char key[CONFIG_KEY_MAX];
    int klen = snprintf(key, sizeof key, "%smeta", fs->prefix);
    if (klen < 0 || (size_t)klen >= sizeof key)
        return ctr_fail(err, errlen, CTR_EINVAL, "key prefix too long");
    char last[16];
    size_t last_len = (size_t)snprintf(last, sizeof last, "%d", FEATSTORE_META_MAX);
    const char *argv[] = {"GETRANGE", key, "0", last};
    size_t lens[] = {8, (size_t)klen, 1, last_len};
    cmd c = {4, argv, lens};
    redisReply *r;
    int stv;
    arena_reset(&fs->scratch);
    /* On a cluster, from the master; from its replica when the master
     * cannot answer (it may be failing over: the marker has not changed). */
    int rc = run_reads(fs, 1, &c, FEATSTORE_ROUTE_MASTER, deadline_ns, &fs->scratch, &r, &stv,
                       err, errlen);
    if (rc < 0 && fs->cl && rc != CTR_ENOMEM)
        rc = run_reads(fs, 1, &c, FEATSTORE_ROUTE_REPLICA, deadline_ns, &fs->scratch, &r, &stv,
                       err, errlen);
    if (rc < 0) return rc;
    if (is_wrongtype(r)) {
        freeReplyObject(r);
        return ctr_fail(err, errlen, CTR_EFORMAT, "%s is not a string", key);
    }
    if (r->type == REDIS_REPLY_ERROR) return error_reply(fs, r, CTR_EBACKEND, err, errlen);
    if (r->type != REDIS_REPLY_STRING) return unexpected_reply(fs, r, "GETRANGE", err, errlen);
    if (r->len == 0) {
        freeReplyObject(r);
        return ctr_fail(err, errlen, CTR_ENOTFOUND, "no feature-set marker %s", key);
    }
    if (r->len > FEATSTORE_META_MAX || r->len >= cap) {
        freeReplyObject(r);
        return ctr_fail(err, errlen, CTR_EFORMAT, "%s is longer than %d bytes", key,
                        FEATSTORE_META_MAX);
    }
    memcpy(buf, r->str, r->len);
    buf[r->len] = '\0';
    *len = r->len;
    freeReplyObject(r);
    return CTR_OK;
}

/* --- writing ------------------------------------------------------------- */

static int put(featstore *fs, const char *kind, const char *id, size_t idlen,
               const void *value, size_t len, char *err, size_t errlen) {
    int rc;
    int64_t t0 = now_ns();
    if (!fs->cl &&
        (rc = ensure_connected(fs, t0 + (int64_t)fs->p.connect_timeout_ms * 1000000, err,
                               errlen)) < 0)
        return failed(fs, rc);
    /* The key is formatted into hiredis's buffer at once, so a stack copy
     * will do; ids are short (user ids are at most 256 bytes). */
    char stack[512];
    size_t kind_len = strlen(kind);
    size_t klen = fs->prefix_len + kind_len + idlen;
    char *key = klen <= sizeof stack ? stack : malloc(klen);
    if (!key) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    memcpy(key, fs->prefix, fs->prefix_len);
    memcpy(key + fs->prefix_len, kind, kind_len);
    memcpy(key + fs->prefix_len + kind_len, id, idlen);
    if (fs->cl) {
        rc = featstore_cluster_put(fs->cl, key, klen, value, len, err, errlen);
        if (key != stack) free(key);
        return rc;
    }
    const char *argv[] = {"SET", key, value};
    size_t lens[] = {3, klen, len};
    rc = redisAppendCommandArgv(fs->c, 3, argv, lens);
    if (key != stack) free(key);
    if (rc != REDIS_OK) return failed(fs, broken_ctx(fs, err, errlen));
    fs->pending++;
    return CTR_OK;
}

int featstore_put_item(featstore *fs, int64_t item_id, const void *value,
                       size_t len, char *err, size_t errlen) {
    char id[24];
    return put(fs, "i:", id, put_int64(id, item_id), value, len, err, errlen);
}

int featstore_put_user(featstore *fs, const char *user_id, const void *value,
                       size_t len, char *err, size_t errlen) {
    if (!user_id) return ctr_fail(err, errlen, CTR_EINVAL, "NULL user id");
    return put(fs, "u:", user_id, strlen(user_id), value, len, err, errlen);
}

int featstore_put_meta(featstore *fs, const void *value, size_t len, char *err,
                       size_t errlen) {
    return put(fs, "meta", "", 0, value, len, err, errlen);
}

int featstore_flush(featstore *fs, char *err, size_t errlen) {
    if (fs->cl) return featstore_cluster_flush(fs->cl, err, errlen);
    if (!fs->pending) return CTR_OK;
    int64_t deadline = now_ns() + (int64_t)fs->p.command_timeout_ms * 1000000;
    int rc, want = fs->pending;
    if ((rc = send_all(fs, deadline, err, errlen)) < 0) return failed(fs, rc);
    /* Read every answer even after an error reply, so the connection stays
     * in step; report the first error. */
    int bad = 0;
    for (int i = 0; i < want; i++) {
        redisReply *r;
        if ((rc = recv_reply(fs, deadline, &r, err, errlen)) < 0)
            return failed(fs, rc);
        fs->pending--;
        if (r->type == REDIS_REPLY_STATUS) {
            freeReplyObject(r);
            continue;
        }
        if (!bad++) {
            if (r->type == REDIS_REPLY_ERROR)
                ctr_fail(err, errlen, CTR_EBACKEND, "Redis %s: SET: %.*s",
                         fs->addr, (int)(r->len > 200 ? 200 : r->len),
                         r->str ? r->str : "");
            else
                ctr_fail(err, errlen, CTR_EBACKEND,
                         "Redis %s: unexpected reply type %d to SET",
                         fs->addr, r->type);
        }
        freeReplyObject(r);
    }
    return bad ? failed(fs, CTR_EBACKEND) : CTR_OK;
}

int featstore_password_file(const char *path, char *buf, size_t cap, char *err,
                            size_t errlen) {
    if (cap) buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return ctr_fail(err, errlen, CTR_EIO, "password file \"%s\": %s", path,
                        strerror(errno));
    size_t n = 0;
    int c, too_long = 0;
    while ((c = fgetc(f)) != EOF && c != '\n') {
        if (n + 1 < cap) buf[n++] = (char)c;
        else too_long = 1;
    }
    int rerr = ferror(f);
    fclose(f);
    if (n && buf[n - 1] == '\r') n--;
    if (cap) buf[n] = '\0';
    if (rerr)
        return ctr_fail(err, errlen, CTR_EIO, "password file \"%s\": read error", path);
    if (too_long) {
        volatile char *v = buf;
        for (size_t i = 0; i < cap; i++) v[i] = 0;
        return ctr_fail(err, errlen, CTR_EINVAL, "password file \"%s\": first line longer "
                        "than %zu bytes", path, cap ? cap - 1 : 0);
    }
    if (!n)
        return ctr_fail(err, errlen, CTR_EINVAL, "password file \"%s\": empty first line",
                        path);
    return CTR_OK;
}
