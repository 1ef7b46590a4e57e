/*
 * featstore.c - one worker's Redis connection for features, see featstore.h.
 *
 * Workload: a GET and an MGET of a few hundred keys per request, each with a
 * deadline of a few milliseconds, from one thread; Redis on the same host or
 * the same rack.  hiredis is used in non-blocking mode for its connect,
 * command formatting and reply parser, and this file drives the socket with
 * ppoll, because hiredis's blocking mode applies its timeout to each read
 * and a reply of a few hundred kilobytes takes many reads.
 */
#include "featstore.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "proto/features.h"

/* Longest "<prefix>i:<int64>" key beyond the prefix: "i:" and 20 digits
 * with a sign. */
#define ITEM_KEY_EXTRA 24

struct featstore {
    featstore_params p;         /* addr and prefix point to the copies below */
    char *addr;                 /* as given */
    char *host;                 /* TCP host without brackets; NULL for unix */
    int port;
    char *prefix;
    size_t prefix_len;
    redisContext *c;            /* NULL when not connected */
    int64_t retry_at_ns;        /* no connect attempt before this */
    int pending;                /* SETs queued in c's output buffer */
    int conn_lost;              /* the last failure was the peer closing or
                                   resetting the connection */
    featstore_stats st;
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void featstore_default_params(featstore_params *p) {
    p->addr = "127.0.0.1:6379";
    p->connect_timeout_ms = 50;
    p->command_timeout_ms = 20;
    p->reconnect_interval_ms = 100;
    p->prefix = "ctr:";
    p->max_tags = 5;
    p->mm_dim = 128;
    p->max_seq = 1000;
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
    if (!p->addr || !p->addr[0])
        return ctr_fail(err, errlen, CTR_EINVAL, "no Redis address");
    if (!p->prefix)
        return ctr_fail(err, errlen, CTR_EINVAL, "no key prefix");
    if (p->connect_timeout_ms <= 0 || p->command_timeout_ms <= 0 ||
        p->reconnect_interval_ms < 0)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "timeouts must be positive (connect %d ms, command %d "
                        "ms, reconnect interval %d ms)",
                        p->connect_timeout_ms, p->command_timeout_ms,
                        p->reconnect_interval_ms);
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
    fs->addr = strdup(p->addr);
    fs->prefix = strdup(p->prefix);
    if (!fs->addr || !fs->prefix) {
        ctr_fail(err, errlen, rc, "out of memory");
        goto fail;
    }
    fs->p.addr = fs->addr;
    fs->p.prefix = fs->prefix;
    fs->prefix_len = strlen(fs->prefix);
    if (fs->addr[0] != '/' &&
        (rc = parse_tcp_addr(fs, fs->addr, err, errlen)) < 0)
        goto fail;
    *out = fs;
    return CTR_OK;

fail:
    featstore_close(fs);
    return rc;
}

void featstore_close(featstore *fs) {
    if (!fs) return;
    if (fs->c) redisFree(fs->c);
    free(fs->addr);
    free(fs->host);
    free(fs->prefix);
    free(fs);
}

void featstore_stats_get(const featstore *fs, featstore_stats *st) {
    *st = fs->st;
}

int featstore_pending(const featstore *fs) { return fs->pending; }

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

static int connect_failed(featstore *fs, int64_t t0, char *err, size_t errlen,
                          const char *what) {
    ctr_fail(err, errlen, CTR_EBACKEND, "Redis %s: %s", fs->addr, what);
    drop(fs);
    fs->retry_at_ns = t0 + (int64_t)fs->p.reconnect_interval_ms * 1000000;
    return CTR_EBACKEND;
}

/* Makes sure there is a connection.  Failures are counted by the caller. */
static int ensure_connected(featstore *fs, char *err, size_t errlen) {
    if (fs->c) return CTR_OK;
    int64_t t0 = now_ns();
    if (t0 < fs->retry_at_ns) {
        fs->st.fast_failures++;
        return ctr_fail(err, errlen, CTR_EBACKEND,
                        "Redis %s unavailable (last connect failed; next "
                        "attempt in %lld ms)",
                        fs->addr,
                        (long long)((fs->retry_at_ns - t0 + 999999) / 1000000));
    }
    fs->st.connect_attempts++;
    fs->c = fs->host ? redisConnectNonBlock(fs->host, fs->port)
                     : redisConnectUnixNonBlock(fs->addr);
    if (!fs->c) return connect_failed(fs, t0, err, errlen, "out of memory");
    if (fs->c->err) {
        char msg[sizeof fs->c->errstr];
        memcpy(msg, fs->c->errstr, sizeof msg);
        return connect_failed(fs, t0, err, errlen, msg);
    }
    /* A TCP connect is usually still in progress here. */
    int64_t deadline = t0 + (int64_t)fs->p.connect_timeout_ms * 1000000;
    int r = wait_fd(fs->c->fd, POLLOUT, deadline);
    if (r == 0) {
        char msg[64];
        snprintf(msg, sizeof msg, "connect timed out after %d ms",
                 fs->p.connect_timeout_ms);
        return connect_failed(fs, t0, err, errlen, msg);
    }
    int soerr = r < 0 ? errno : 0;
    socklen_t sl = sizeof soerr;
    if (!soerr && getsockopt(fs->c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
        soerr = errno;
    if (soerr) return connect_failed(fs, t0, err, errlen, strerror(soerr));
    fs->st.connects++;
    fs->retry_at_ns = 0;
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
            snprintf(msg, sizeof msg, "no answer within %d ms",
                     fs->p.command_timeout_ms);
            return broken(fs, CTR_ETIMEOUT, err, errlen, msg);
        }
        if (r < 0) return broken(fs, CTR_EBACKEND, err, errlen, strerror(errno));
        if (redisBufferRead(fs->c) != REDIS_OK)
            return broken_ctx(fs, err, errlen);
    }
}

static int exchange(featstore *fs, int argc, const char **argv,
                    const size_t *argvlen, int64_t deadline,
                    redisReply **reply, char *err, size_t errlen) {
    int rc;
    fs->conn_lost = 0;
    if (redisAppendCommandArgv(fs->c, argc, argv, argvlen) != REDIS_OK)
        return broken_ctx(fs, err, errlen);
    if ((rc = send_all(fs, deadline, err, errlen)) < 0) return rc;
    return recv_reply(fs, deadline, reply, err, errlen);
}

/* One read-only command, one reply, within command_timeout_ms.
 *
 * A connection that sat idle may have been closed by the other end (Redis
 * restarted, a proxy or CLIENT KILL closed it) without our knowing until we
 * use it.  The commands sent here only read, so when a reused connection
 * turns out closed the command is sent once more on a new connection,
 * within the same deadline: otherwise every worker would fail one request
 * after each Redis restart.  Timeouts are not retried. */
static int command(featstore *fs, int argc, const char **argv,
                   const size_t *argvlen, redisReply **reply, char *err,
                   size_t errlen) {
    int rc;
    if (fs->pending)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "%d queued SETs: call featstore_flush first",
                        fs->pending);
    int reused = fs->c != NULL;
    if ((rc = ensure_connected(fs, err, errlen)) < 0) return failed(fs, rc);
    int64_t deadline = now_ns() + (int64_t)fs->p.command_timeout_ms * 1000000;
    rc = exchange(fs, argc, argv, argvlen, deadline, reply, err, errlen);
    if (rc == CTR_EBACKEND && reused && fs->conn_lost) {
        fs->st.retries++;
        if ((rc = ensure_connected(fs, err, errlen)) == CTR_OK)
            rc = exchange(fs, argc, argv, argvlen, deadline, reply, err,
                          errlen);
    }
    return rc < 0 ? failed(fs, rc) : CTR_OK;
}

/* An error reply leaves the connection in step; it is still a failed call. */
static int error_reply(featstore *fs, redisReply *r, int rc, char *err,
                       size_t errlen) {
    ctr_fail(err, errlen, rc, "Redis %s: %.*s", fs->addr,
             (int)(r->len > 200 ? 200 : r->len), r->str ? r->str : "");
    freeReplyObject(r);
    return rc == CTR_EBACKEND ? failed(fs, rc) : rc;
}

static int unexpected_reply(featstore *fs, redisReply *r, const char *cmd,
                            char *err, size_t errlen) {
    int type = r->type;
    freeReplyObject(r);
    char msg[80];
    snprintf(msg, sizeof msg, "unexpected reply type %d to %s", type, cmd);
    return failed(fs, broken(fs, CTR_EBACKEND, err, errlen, msg));
}

/* --- reading ------------------------------------------------------------- */

int featstore_ping(featstore *fs, char *err, size_t errlen) {
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    redisReply *r;
    int rc = command(fs, 1, argv, lens, &r, err, errlen);
    if (rc < 0) return rc;
    if (r->type == REDIS_REPLY_ERROR)
        return error_reply(fs, r, CTR_EBACKEND, err, errlen);
    if (r->type != REDIS_REPLY_STATUS || r->len != 4 ||
        memcmp(r->str, "PONG", 4) != 0)
        return unexpected_reply(fs, r, "PING", err, errlen);
    freeReplyObject(r);
    return CTR_OK;
}

int featstore_get_user(featstore *fs, const char *user_id, arena *a,
                       int64_t **ids, int *n, char *err, size_t errlen) {
    *ids = NULL;
    *n = 0;
    if (!user_id)
        return ctr_fail(err, errlen, CTR_EINVAL, "NULL user id");
    size_t ulen = strlen(user_id);
    size_t klen = fs->prefix_len + 2 + ulen;
    char *key = arena_alloc(a, klen, 1);
    if (!key) return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    memcpy(key, fs->prefix, fs->prefix_len);
    memcpy(key + fs->prefix_len, "u:", 2);
    memcpy(key + fs->prefix_len + 2, user_id, ulen);

    const char *argv[] = {"GET", key};
    size_t lens[] = {3, klen};
    redisReply *r;
    int rc = command(fs, 2, argv, lens, &r, err, errlen);
    if (rc < 0) return rc;
    switch (r->type) {
    case REDIS_REPLY_NIL:
        freeReplyObject(r);
        return ctr_fail(err, errlen, CTR_ENOTFOUND, "no user %s", user_id);
    case REDIS_REPLY_ERROR:
        /* WRONGTYPE: the key exists but holds a hash, list...: a value this
         * service did not write, so it is malformed data, not an outage. */
        if (r->len >= 9 && memcmp(r->str, "WRONGTYPE", 9) == 0) {
            fs->st.users_malformed++;
            return error_reply(fs, r, CTR_EFORMAT, err, errlen);
        }
        return error_reply(fs, r, CTR_EBACKEND, err, errlen);
    case REDIS_REPLY_STRING:
        break;
    default:
        return unexpected_reply(fs, r, "GET", err, errlen);
    }
    char msg[160];
    rc = features_user_decode(r->str, r->len, fs->p.max_seq, a, ids, n, msg,
                              sizeof msg);
    freeReplyObject(r);
    if (rc < 0) {
        *ids = NULL;
        *n = 0;
        if (rc == CTR_EFORMAT) fs->st.users_malformed++;
        return ctr_fail(err, errlen, rc, "user %s: %s", user_id, msg);
    }
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

int featstore_get_items(featstore *fs, const int64_t *ids, int n, arena *a,
                        featstore_item *out, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (n < 0) return ctr_fail(err, errlen, CTR_EINVAL, "n = %d", n);
    if (n == 0) return CTR_OK;
    if (n == INT_MAX) return ctr_fail(err, errlen, CTR_EINVAL, "too many ids");

    /* MGET key...: the arguments and all keys in the request arena. */
    size_t stride = fs->prefix_len + ITEM_KEY_EXTRA;
    const char **argv = arena_alloc(a, (size_t)(n + 1) * sizeof *argv,
                                    _Alignof(const char *));
    size_t *lens = arena_alloc(a, (size_t)(n + 1) * sizeof *lens,
                               _Alignof(size_t));
    char *keys = arena_alloc(a, (size_t)n * stride, 1);
    if (!argv || !lens || !keys)
        return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    argv[0] = "MGET";
    lens[0] = 4;
    for (int i = 0; i < n; i++) {
        char *k = keys + (size_t)i * stride;
        memcpy(k, fs->prefix, fs->prefix_len);
        k[fs->prefix_len] = 'i';
        k[fs->prefix_len + 1] = ':';
        argv[i + 1] = k;
        lens[i + 1] = fs->prefix_len + 2 + put_int64(k + fs->prefix_len + 2, ids[i]);
    }

    redisReply *r;
    int rc = command(fs, n + 1, argv, lens, &r, err, errlen);
    if (rc < 0) return rc;
    if (r->type == REDIS_REPLY_ERROR)
        return error_reply(fs, r, CTR_EBACKEND, err, errlen);
    if (r->type != REDIS_REPLY_ARRAY || r->elements != (size_t)n)
        return unexpected_reply(fs, r, "MGET", err, errlen);

    fs->st.items_requested += (uint64_t)n;
    int noted = 0;
    for (int i = 0; i < n; i++) {
        const redisReply *e = r->element[i];
        featstore_item *it = &out[i];
        memset(it, 0, sizeof *it);
        if (e->type != REDIS_REPLY_STRING) {
            /* MGET answers nil for an absent key and for a non-string. */
            it->status = CTR_ENOTFOUND;
            fs->st.items_missing++;
            continue;
        }
        features_item f;
        char msg[160];
        rc = features_item_decode(e->str, e->len, fs->p.max_tags,
                                  fs->p.mm_dim, a, &f, msg, sizeof msg);
        if (rc == CTR_ENOMEM) {
            freeReplyObject(r);
            return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
        }
        if (rc < 0) {
            it->status = CTR_EFORMAT;
            fs->st.items_malformed++;
            if (!noted++)
                ctr_fail(err, errlen, CTR_EFORMAT, "item %lld: %s",
                         (long long)ids[i], msg);
            continue;
        }
        it->found = 1;
        it->status = CTR_OK;
        it->tags = f.tags;
        it->num_tags = f.num_tags;
        it->mm = f.mm;
        it->mm_dim = f.mm_dim;
    }
    freeReplyObject(r);
    return CTR_OK;
}

/* --- writing ------------------------------------------------------------- */

static int put(featstore *fs, const char *kind, const char *id, size_t idlen,
               const void *value, size_t len, char *err, size_t errlen) {
    int rc;
    if ((rc = ensure_connected(fs, err, errlen)) < 0) return failed(fs, rc);
    /* The key is formatted into hiredis's buffer at once, so a stack copy
     * will do; ids are short (user ids are at most 256 bytes). */
    char stack[512];
    size_t klen = fs->prefix_len + 2 + idlen;
    char *key = klen <= sizeof stack ? stack : malloc(klen);
    if (!key) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    memcpy(key, fs->prefix, fs->prefix_len);
    memcpy(key + fs->prefix_len, kind, 2);
    memcpy(key + fs->prefix_len + 2, id, idlen);
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

int featstore_flush(featstore *fs, char *err, size_t errlen) {
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
