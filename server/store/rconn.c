/*
 * rconn.c - one Redis connection under a deadline, see rconn.h.
 *
 * Workload: pipelines of a few to a few hundred commands, each exchange
 * bounded by a deadline of a few milliseconds, from one thread.  hiredis
 * runs in non-blocking mode (its connect, command formatting and reply
 * parser); this file waits on the socket with ppoll until the deadline, so
 * a server that trickles bytes cannot hold a caller past it.
 */
#include "rconn.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "core/base/clock.h"

struct rconn {
    redisContext *c;
    rconn_error error;          /* RCONN_NONE while usable */
    char why[128];              /* the failure's detail */
};

const char *rconn_error_name(rconn_error e) {
    static const char *const names[] = {
#define RCONN_ERROR_TEXT(name, text) text,
        RCONN_ERROR_MAP(RCONN_ERROR_TEXT)
#undef RCONN_ERROR_TEXT
    };
    return (unsigned)e < RCONN_ERROR_COUNT ? names[e] : "unknown";
}

rconn_error rconn_error_of(const rconn *c) { return c->error; }

const char *rconn_why(const rconn *c) { return c->why; }

int rconn_fd(const rconn *c) { return c->c->fd; }

/* Marks c failed with `kind` and the detail; copies it into err.  Returns
 * the status for the kind. */
__attribute__((format(printf, 5, 6)))
static int fail(rconn *c, rconn_error kind, char *err, size_t errlen, const char *fmt, ...) {
    if (c->error == RCONN_NONE) {
        c->error = kind;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->why, sizeof c->why, fmt, ap);
        va_end(ap);
    }
    int rc = kind == RCONN_TIMEOUT ? CTR_ETIMEOUT : CTR_EBACKEND;
    return ctr_fail(err, errlen, rc, "%s", c->why);
}

/* A failure hiredis reported on the context. */
static int fail_ctx(rconn *c, char *err, size_t errlen) {
    rconn_error kind;
    switch (c->c->err) {
    case REDIS_ERR_IO:
    case REDIS_ERR_EOF: kind = RCONN_CLOSED; break;
    case REDIS_ERR_PROTOCOL: kind = RCONN_PROTOCOL; break;
    case REDIS_ERR_OOM: kind = RCONN_NOMEM; break;
    default: kind = RCONN_IO; break;
    }
    return fail(c, kind, err, errlen, "%s", c->c->errstr[0] ? c->c->errstr : rconn_error_name(kind));
}

/* Waits until fd is ready for `events` or the deadline passes: 1 ready,
 * 0 timed out, -1 error (errno). */
static int wait_fd(int fd, short events, int64_t deadline) {
    for (;;) {
        int64_t left = deadline - clock_now_ns();
        if (left <= 0) return 0;
        struct pollfd pfd = {.fd = fd, .events = events};
        struct timespec ts = {.tv_sec = left / 1000000000, .tv_nsec = left % 1000000000};
        int r = ppoll(&pfd, 1, &ts, NULL);
        if (r > 0) return 1;
        if (r == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

void rconn_close(rconn *c) {
    if (!c) return;
    if (c->c) redisFree(c->c);
    free(c);
}

/* AUTH [user] password, answered by `deadline`.  Redis's refusal
 * (WRONGPASS, or ERR for AUTH on a server without a password) names
 * neither the user nor the password. */
static int authenticate(rconn *c, const rconn_params *p, int64_t deadline, char *err,
                        size_t errlen) {
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
    if (rconn_command(c, argc, argv, lens, RCONN_STATUS, deadline, &rep, why, sizeof why) < 0)
        return ctr_fail(err, errlen, CTR_EBACKEND, "AUTH: %s", why);
    int ok = rep->type == REDIS_REPLY_STATUS && rep->len == 2 && memcmp(rep->str, "OK", 2) == 0;
    if (!ok) {
        if (rep->type == REDIS_REPLY_ERROR)
            ctr_fail(err, errlen, CTR_EBACKEND, "authentication refused: %.*s",
                     (int)(rep->len > 160 ? 160 : rep->len), rep->str ? rep->str : "");
        else
            ctr_fail(err, errlen, CTR_EBACKEND, "AUTH answered +%.*s, not +OK",
                     (int)(rep->len > 40 ? 40 : rep->len), rep->str ? rep->str : "");
    }
    freeReplyObject(rep);
    return ok ? CTR_OK : CTR_EBACKEND;
}

int rconn_open(const rconn_params *p, const char *host, int port, int64_t deadline_ns,
               rconn **out, char *err, size_t errlen) {
    *out = NULL;
    int64_t t0 = clock_now_ns();
    rconn *c = calloc(1, sizeof *c);
    if (!c) return ctr_fail(err, errlen, CTR_EBACKEND, "out of memory");
    c->c = port ? redisConnectNonBlock(host, port) : redisConnectUnixNonBlock(host);
    if (!c->c) {
        free(c);
        return ctr_fail(err, errlen, CTR_EBACKEND, "out of memory");
    }
    if (c->c->err) {
        ctr_fail(err, errlen, CTR_EBACKEND, "%s", c->c->errstr);
        rconn_close(c);
        return CTR_EBACKEND;
    }
    /* A TCP connect is usually still in progress here. */
    int64_t cdl = t0 + (int64_t)p->connect_timeout_ms * 1000000;
    if (deadline_ns && deadline_ns < cdl) cdl = deadline_ns;
    int r = wait_fd(c->c->fd, POLLOUT, cdl);
    int soerr = r < 0 ? errno : 0;
    socklen_t sl = sizeof soerr;
    if (r > 0 && getsockopt(c->c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) soerr = errno;
    if (r == 0 || soerr) {
        if (r == 0)
            ctr_fail(err, errlen, CTR_EBACKEND, "connect timed out after %lld ms",
                     (long long)((cdl - t0 + 500000) / 1000000));
        else
            ctr_fail(err, errlen, CTR_EBACKEND, "%s", strerror(soerr));
        rconn_close(c);
        return CTR_EBACKEND;
    }
    if (p->password && p->password[0] && authenticate(c, p, cdl, err, errlen) < 0) {
        rconn_close(c);
        return CTR_EBACKEND;
    }
    *out = c;
    return CTR_OK;
}

/* --- Where replies belong ------------------------------------------------- */

int rconn_reply_type(const redisReply *r) {
    switch (r->type) {
    case REDIS_REPLY_STRING: return RCONN_STRING;
    case REDIS_REPLY_INTEGER: return RCONN_INTEGER;
    case REDIS_REPLY_STATUS: return RCONN_STATUS;
    case REDIS_REPLY_ARRAY: return RCONN_ARRAY;
    case REDIS_REPLY_NIL: return RCONN_NIL;
    default: return 0;
    }
}

/* "string", "integer or nil"...: the types of a mask, for messages. */
static const char *types_text(int mask, char *buf, size_t cap) {
    static const char *const names[] = {"string", "integer", "status", "array", "nil"};
    size_t k = 0;
    buf[0] = '\0';
    for (int b = 0; b < 5; b++)
        if (mask & (1 << b))
            k += (size_t)snprintf(buf + k, k < cap ? cap - k : 0, "%s%s", k ? " or " : "",
                                  names[b]);
    return buf[0] ? buf : "error";
}

/* Takes r when it answers a command that expects `expect`; otherwise
 * frees it and fails c out of step. */
static int check_type(rconn *c, redisReply *r, int expect, char *err, size_t errlen) {
    if (expect == RCONN_ANY || r->type == REDIS_REPLY_ERROR || (rconn_reply_type(r) & expect))
        return CTR_OK;
    char got[24], want[64];
    types_text(rconn_reply_type(r), got, sizeof got);
    types_text(expect, want, sizeof want);
    freeReplyObject(r);
    return fail(c, RCONN_DESYNC, err, errlen, "out of step: a reply of type %s where %s was due",
                got, want);
}

/* Bytes that no command asked for: unparsed in the reader, or arrived on
 * the socket (FIONREAD: 0 at end of file, which the next use reports). */
static int stray(rconn *c, const char *when, char *err, size_t errlen) {
    if (c->error) return ctr_fail(err, errlen, CTR_EBACKEND, "%s", c->why);
    const redisReader *rd = c->c->reader;
    size_t left = rd->len > rd->pos ? rd->len - rd->pos : 0;
    int avail = 0;
    if (ioctl(c->c->fd, FIONREAD, &avail) < 0) avail = 0;
    left += avail > 0 ? (size_t)avail : 0;
    if (!left) return CTR_OK;
    return fail(c, RCONN_DESYNC, err, errlen, "out of step: %zu byte%s %s", left,
                left == 1 ? "" : "s", when);
}

int rconn_finish(rconn *c, char *err, size_t errlen) {
    return stray(c, "left over after the replies", err, errlen);
}

int rconn_check_idle(rconn *c, char *err, size_t errlen) {
    return stray(c, "arrived while no command was waiting", err, errlen);
}

/* --- Blocking ------------------------------------------------------------- */

int rconn_append(rconn *c, const rconn_cmd *cmd) {
    if (c->error) return CTR_EBACKEND;
    if (redisAppendCommandArgv(c->c, cmd->argc, (const char **)cmd->argv, cmd->argvlen) !=
        REDIS_OK)
        return fail_ctx(c, NULL, 0);
    return CTR_OK;
}

int rconn_send(rconn *c, int64_t deadline_ns, char *err, size_t errlen) {
    if (c->error) return ctr_fail(err, errlen, CTR_EBACKEND, "%s", c->why);
    for (;;) {
        int done = 0;
        if (redisBufferWrite(c->c, &done) != REDIS_OK) return fail_ctx(c, err, errlen);
        if (done) return CTR_OK;
        int r = wait_fd(c->c->fd, POLLOUT, deadline_ns);
        if (r == 0) return fail(c, RCONN_TIMEOUT, err, errlen, "the command could not be sent");
        if (r < 0) return fail(c, RCONN_IO, err, errlen, "%s", strerror(errno));
    }
}

int rconn_recv(rconn *c, int64_t deadline_ns, int expect, redisReply **reply, char *err,
               size_t errlen) {
    *reply = NULL;
    if (c->error) return ctr_fail(err, errlen, CTR_EBACKEND, "%s", c->why);
    for (;;) {
        void *r = NULL;
        if (redisGetReplyFromReader(c->c, &r) != REDIS_OK) return fail_ctx(c, err, errlen);
        if (r) {
            int rc = check_type(c, r, expect, err, errlen);
            if (rc == CTR_OK) *reply = r;
            return rc;
        }
        int w = wait_fd(c->c->fd, POLLIN, deadline_ns);
        if (w == 0) return fail(c, RCONN_TIMEOUT, err, errlen, "no answer");
        if (w < 0) return fail(c, RCONN_IO, err, errlen, "%s", strerror(errno));
        if (redisBufferRead(c->c) != REDIS_OK) return fail_ctx(c, err, errlen);
    }
}

int rconn_exchange(rconn *c, int n, const rconn_cmd *cmds, int64_t deadline_ns,
                   redisReply **replies, char *err, size_t errlen) {
    for (int i = 0; i < n; i++) replies[i] = NULL;
    int rc;
    for (int i = 0; i < n; i++)
        if (rconn_append(c, &cmds[i]) < 0) return ctr_fail(err, errlen, CTR_EBACKEND, "%s", c->why);
    if ((rc = rconn_send(c, deadline_ns, err, errlen)) < 0) return rc;
    for (int i = 0; i < n && rc == CTR_OK; i++)
        rc = rconn_recv(c, deadline_ns, cmds[i].expect, &replies[i], err, errlen);
    if (rc == CTR_OK) rc = rconn_finish(c, err, errlen);
    if (rc < 0)   /* none of an out-of-step pipeline's replies is handed out */
        for (int k = 0; k < n; k++) {
            if (replies[k]) freeReplyObject(replies[k]);
            replies[k] = NULL;
        }
    return rc;
}

int rconn_command(rconn *c, int argc, const char *const *argv, const size_t *argvlen,
                  int expect, int64_t deadline_ns, redisReply **reply, char *err,
                  size_t errlen) {
    rconn_cmd cmd = {argc, argv, argvlen, expect};
    return rconn_exchange(c, 1, &cmd, deadline_ns, reply, err, errlen);
}

/* --- Non-blocking ----------------------------------------------------------- */

int rconn_write(rconn *c, int *done) {
    *done = 0;
    if (c->error) return CTR_EBACKEND;
    return redisBufferWrite(c->c, done) == REDIS_OK ? CTR_OK : fail_ctx(c, NULL, 0);
}

int rconn_read(rconn *c) {
    if (c->error) return CTR_EBACKEND;
    return redisBufferRead(c->c) == REDIS_OK ? CTR_OK : fail_ctx(c, NULL, 0);
}

int rconn_take(rconn *c, int expect, redisReply **reply) {
    *reply = NULL;
    if (c->error) return CTR_EBACKEND;
    void *r = NULL;
    if (redisGetReplyFromReader(c->c, &r) != REDIS_OK) return fail_ctx(c, NULL, 0);
    if (r && check_type(c, r, expect, NULL, 0) < 0) return CTR_EBACKEND;
    *reply = r;
    return CTR_OK;
}

size_t rconn_buffered(const rconn *c) {
    const redisReader *r = c->c->reader;
    return r && r->len > r->pos ? r->len - r->pos : 0;
}

/* --- Replies ---------------------------------------------------------------- */

int rconn_reply_is(const redisReply *r, const char *code) {
    size_t l = strlen(code);
    return r->type == REDIS_REPLY_ERROR && r->str && r->len >= l && memcmp(r->str, code, l) == 0;
}

int rconn_split_addr(const char *addr, char **host, int *port, char *err, size_t errlen) {
    *host = NULL;
    *port = 0;
    if (addr[0] == '/') return CTR_OK;
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || !colon[1])
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "Redis address \"%s\": expected host:port or a unix "
                        "socket path starting with '/'",
                        addr);
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || *end || p < 1 || p > 65535)
        return ctr_fail(err, errlen, CTR_EINVAL, "Redis address \"%s\": bad port", addr);
    const char *h = addr;
    size_t hlen = (size_t)(colon - addr);
    if (h[0] == '[') {
        if (hlen < 3 || h[hlen - 1] != ']')
            return ctr_fail(err, errlen, CTR_EINVAL, "Redis address \"%s\": unbalanced brackets",
                            addr);
        h++;
        hlen -= 2;
    } else if (memchr(h, ':', hlen)) {
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "Redis address \"%s\": write an IPv6 host as [addr]:port", addr);
    }
    if (!(*host = strndup(h, hlen))) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    *port = (int)p;
    return CTR_OK;
}
