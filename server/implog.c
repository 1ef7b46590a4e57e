/*
 * implog.c - the impression log's queue, thread and sinks (implog.h).
 *
 * The queue is one byte ring: a record is its length (8 bytes) and its
 * packed fields (below), copied in and out in at most two pieces when it
 * wraps.  Producers (request threads) pack straight into the ring under
 * the mutex; the log's thread copies one record out under the mutex, then
 * unpacks, formats (proto_impression_encode) and batches it with the lock
 * released.  It sleeps on a condition variable only when the queue is
 * empty, and producers signal only when it sleeps, so a busy log costs the
 * request path no wake-ups.
 *
 * Packed record (offsets from its start, every array 8-byte aligned):
 *   pk_head (counts, string lengths, time, flags)
 *   history int64[nh], cand_id int64[n], ctx int32[n * num_ctx],
 *   score float[n], rank int32[n]
 *   strings, each NUL-terminated: request_id, user_id, model name,
 *   version, precision, num_ctx context names, num_degraded reasons.
 * Everything is copied, so a record outlives the request, its model (a
 * reload) and its arena.
 *
 * Sinks run on the log's thread only.  A file is opened O_APPEND |
 * O_NONBLOCK: a write to a pipe or FIFO whose reader stalls waits in
 * poll() at most timeout_ms, then the batch is dropped (a regular file
 * never returns EAGAIN).  Redis is one connection of the feature store's
 * connection module (server/store/rconn.h): a batch is one pipeline of
 * XADDs under a deadline of timeout_ms, connect included; a reply out of
 * step drops the connection, as a failure does.
 */
#include "server/implog.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "core/base/clock.h"
#include "core/base/log.h"
#include "server/store/rcluster.h"
#include "server/store/rconn.h"

#define PK_ALIGN 8
#define MAX_STRINGS (5 + 64 + 64)
/* The thread's waits: after a batch, LINGER_MS for more records (a
 * producer does not wake it then unless the queue is a quarter full), so
 * a busy log costs no wake-up per record and writes ~LINGER_MS of records
 * at once; after a wait that brought nothing, IDLE_MS (the first record
 * wakes it). */
#define LINGER_MS 10
#define IDLE_MS 200
enum { AWAKE, LINGERING, IDLE };

typedef struct pk_head {
    double time;
    int32_t nh, n, num_ctx, num_degraded, top_k;
    int32_t user_id_is_int, history_from_request;
    int32_t nstr;                 /* strings that follow */
    uint32_t str_bytes;           /* their bytes, NULs included */
} pk_head;

enum { SINK_FILE, SINK_REDIS };

struct implog {
    implog_params p;
    int kind;
    char *target;                 /* owned copies of the params' strings */
    char *path, *key;             /* into target */
    char *addr, *user, *password;

    pthread_mutex_t mu;
    pthread_cond_t nonempty, drained;
    unsigned char *ring;
    size_t cap, head, used;       /* under mu */
    int sleeping;                 /* AWAKE, or how the log's thread waits */
    int idle;                     /* its last wait brought nothing */
    int stopping;
    int64_t stop_deadline_ns;
    uint64_t seq_in, seq_out;     /* records queued / finished (written or
                                     dropped) since open, under mu */
    atomic_int reopen;
    pthread_t thread;
    int thread_started;

    /* Log thread only. */
    int fd;
    rconn *rc;                    /* redis: the connection, or NULL */
    rconn_cmd *cmds;              /* redis: a batch's XADDs */
    const char **argv;
    size_t *argvlen;
    struct redisReply **replies;
    char cur_addr[300];           /* the node connected to (MOVED) */
    int64_t retry_at_ns;
    unsigned char *rec;           /* one record copied out */
    size_t rec_cap;
    proto_buf out;                /* the batch, formatted */
    int out_records;
    size_t *rec_off;              /* redis: where record i of the batch
                                     starts in out (batch + 1 entries) */
    proto_buf pend;               /* file: the rest of a line a failed
                                     write left half-written, written
                                     first next time */

    atomic_uint_fast64_t submitted, written, dropped_full, dropped_sink, dropped_shutdown,
        sink_errors, queue_bytes, reopens;
};

void implog_default_params(implog_params *p) {
    memset(p, 0, sizeof *p);
    p->queue_bytes = (size_t)16 << 20;
    p->timeout_ms = 1000;
    p->retry_ms = 1000;
    p->batch = 256;
    p->redis_maxlen = 1000000;
}

int implog_target_ok(const char *t, char *why, size_t whylen) {
    if (t && strncmp(t, "redis:", 6) == 0 && t[6]) return 1;
    if (t && strncmp(t, "file:", 5) == 0 && t[5]) return 1;
    snprintf(why, whylen, "expected redis:KEY (a Redis Stream) or file:PATH (JSON Lines)");
    return 0;
}

static void hook(implog *l, implog_event ev, uint64_t n) {
    if (l->p.hook) l->p.hook(l->p.hook_arg, ev, n);
}

static void count(implog *l, atomic_uint_fast64_t *ctr, implog_event ev, uint64_t n) {
    if (!n) return;
    atomic_fetch_add_explicit(ctr, n, memory_order_relaxed);
    hook(l, ev, n);
}

/* --- packing ------------------------------------------------------------- */

static size_t align8(size_t n) { return (n + PK_ALIGN - 1) & ~(size_t)(PK_ALIGN - 1); }

static size_t slen(const char *s) { return s ? strlen(s) + 1 : 1; }

/* Bytes of r packed; 0 when it has more strings than a record holds. */
static size_t pk_size(const proto_impression *r, uint32_t *str_bytes) {
    if (r->num_ctx < 0 || r->num_degraded < 0 || r->num_ctx > 64 || r->num_degraded > 64 ||
        r->n < 0 || r->nh < 0)
        return 0;
    size_t s = slen(r->request_id) + slen(r->user_id) + slen(r->model_name) +
               slen(r->model_version) + slen(r->precision);
    for (int c = 0; c < r->num_ctx; c++) s += slen(r->ctx_name[c]);
    for (int d = 0; d < r->num_degraded; d++) s += slen(r->degraded[d]);
    if (s > UINT32_MAX) return 0;
    *str_bytes = (uint32_t)s;
    const size_t n = (size_t)r->n;
    return align8(sizeof(pk_head)) + 8 * (size_t)r->nh + 8 * n +
           align8(4 * n * (size_t)r->num_ctx) + align8(4 * n) + align8(4 * n) + align8(s);
}

/* Copies n bytes into the ring at *pos (wrapping), advancing *pos. */
static void ring_put(implog *l, size_t *pos, const void *src, size_t n) {
    const unsigned char *s = src;
    size_t first = l->cap - *pos < n ? l->cap - *pos : n;
    if (src) {
        memcpy(l->ring + *pos, s, first);
        memcpy(l->ring, s + first, n - first);
    }
    *pos = (*pos + n) % l->cap;
}

static void ring_get(const implog *l, size_t pos, void *dst, size_t n) {
    unsigned char *d = dst;
    size_t first = l->cap - pos < n ? l->cap - pos : n;
    memcpy(d, l->ring + pos, first);
    memcpy(d + first, l->ring, n - first);
}

/* Writes a string and its NUL ("" for NULL). */
static void put_str(implog *l, size_t *pos, const char *s) {
    ring_put(l, pos, s ? s : "", slen(s));
}

/* An array of n bytes, padded to 8 (the padding's bytes are left as they
 * are: nobody reads them). */
static void put_arr(implog *l, size_t *pos, const void *src, size_t n) {
    ring_put(l, pos, src, n);
    ring_put(l, pos, NULL, align8(n) - n);
}

/* The queue gauge, set under mu so that its last value is the queue's. */
static void set_queue_bytes(implog *l) {
    atomic_store_explicit(&l->queue_bytes, l->used, memory_order_relaxed);
    hook(l, IMPLOG_QUEUE_BYTES, l->used);
}

int implog_submit(implog *l, const proto_impression *r) {
    uint32_t sb = 0;
    const size_t size = pk_size(r, &sb);
    const size_t need = 8 + size;
    pthread_mutex_lock(&l->mu);
    if (!size || l->stopping || l->cap - l->used < need) {
        pthread_mutex_unlock(&l->mu);
        count(l, &l->dropped_full, IMPLOG_DROPPED_FULL, 1);
        return 0;
    }
    size_t pos = (l->head + l->used) % l->cap;
    uint64_t len = size;
    ring_put(l, &pos, &len, 8);
    pk_head h = {r->time, r->nh, r->n, r->num_ctx, r->num_degraded, r->top_k,
                 r->user_id_is_int, r->history_from_request,
                 5 + r->num_ctx + r->num_degraded, sb};
    put_arr(l, &pos, &h, sizeof h);
    const size_t n = (size_t)r->n;
    put_arr(l, &pos, r->history, 8 * (size_t)r->nh);
    put_arr(l, &pos, r->cand_id, 8 * n);
    put_arr(l, &pos, r->ctx, 4 * n * (size_t)r->num_ctx);
    put_arr(l, &pos, r->score, 4 * n);
    put_arr(l, &pos, r->rank, 4 * n);
    put_str(l, &pos, r->request_id);
    put_str(l, &pos, r->user_id);
    put_str(l, &pos, r->model_name);
    put_str(l, &pos, r->model_version);
    put_str(l, &pos, r->precision);
    for (int c = 0; c < r->num_ctx; c++) put_str(l, &pos, r->ctx_name[c]);
    for (int d = 0; d < r->num_degraded; d++) put_str(l, &pos, r->degraded[d]);
    ring_put(l, &pos, NULL, align8(sb) - sb);
    l->used += need;
    l->seq_in++;
    set_queue_bytes(l);
    const int wake = l->sleeping == IDLE ||
                     (l->sleeping == LINGERING && l->used >= l->cap / 4);
    if (wake) l->sleeping = AWAKE;
    pthread_mutex_unlock(&l->mu);
    if (wake) pthread_cond_signal(&l->nonempty);
    atomic_fetch_add_explicit(&l->submitted, 1, memory_order_relaxed);
    return 1;
}

/* The record in l->rec (len bytes) as a proto_impression pointing into it.
 * 0, or -1 when it does not hold together (a bug: logged, dropped). */
static int unpack(const unsigned char *b, size_t len, proto_impression *r,
                  const char **strs) {
    pk_head h;
    if (len < sizeof h) return -1;
    memcpy(&h, b, sizeof h);
    const size_t n = (size_t)h.n;
    size_t off = align8(sizeof h);
    r->time = h.time;
    r->nh = h.nh;
    r->n = h.n;
    r->num_ctx = h.num_ctx;
    r->num_degraded = h.num_degraded;
    r->top_k = h.top_k;
    r->user_id_is_int = h.user_id_is_int;
    r->history_from_request = h.history_from_request;
    r->history = (const int64_t *)(const void *)(b + off);
    off += 8 * (size_t)h.nh;
    r->cand_id = (const int64_t *)(const void *)(b + off);
    off += 8 * n;
    r->ctx = (const int32_t *)(const void *)(b + off);
    off += align8(4 * n * (size_t)h.num_ctx);
    r->score = (const float *)(const void *)(b + off);
    off += align8(4 * n);
    r->rank = (const int32_t *)(const void *)(b + off);
    off += align8(4 * n);
    if (off + h.str_bytes > len || h.nstr != 5 + h.num_ctx + h.num_degraded ||
        h.nstr > MAX_STRINGS)
        return -1;
    const char *s = (const char *)b + off, *end = s + h.str_bytes;
    for (int i = 0; i < h.nstr; i++) {
        const char *z = memchr(s, '\0', (size_t)(end - s));
        if (!z) return -1;
        strs[i] = s;
        s = z + 1;
    }
    r->request_id = strs[0][0] ? strs[0] : NULL;
    r->user_id = strs[1];
    r->model_name = strs[2];
    r->model_version = strs[3];
    r->precision = strs[4];
    r->ctx_name = strs + 5;
    r->degraded = strs + 5 + h.num_ctx;
    return 0;
}

/* --- sinks ----------------------------------------------------------------- */

static int file_open(implog *l, char *err, size_t errlen) {
    int fd = open(l->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
    if (fd < 0)
        return ctr_fail(err, errlen, CTR_EIO, "impression log %s: %s", l->path, strerror(errno));
    if (l->fd >= 0) close(l->fd);
    l->fd = fd;
    return CTR_OK;
}

/* Writes b[0..n) to the file, waiting for a stalled pipe at most
 * timeout_ms in all.  0, or -1 (errno; ETIMEDOUT) with *done set to the
 * bytes written. */
static int write_all(implog *l, const char *b, size_t n, int64_t dl, size_t *done) {
    *done = 0;
    while (*done < n) {
        ssize_t w = write(l->fd, b + *done, n - *done);
        if (w > 0) {
            *done += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        int64_t left = dl - clock_now_ns();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd pfd = {.fd = l->fd, .events = POLLOUT};
        int ms = (int)(left / 1000000) + 1;
        if (poll(&pfd, 1, ms > 100 ? 100 : ms) < 0 && errno != EINTR) return -1;
    }
    return 0;
}

/* The batch to the file, after what an earlier failure left of a line, so
 * that a reader never sees two records on one line.  0 or -1 (errno). */
static int file_write(implog *l) {
    const int64_t dl = clock_now_ns() + (int64_t)l->p.timeout_ms * 1000000;
    size_t done;
    if (l->pend.len) {
        int rc = write_all(l, l->pend.data, l->pend.len, dl, &done);
        if (rc < 0) {
            int e = errno;
            memmove(l->pend.data, l->pend.data + done, l->pend.len - done);
            l->pend.len -= done;
            errno = e;
            return -1;
        }
        proto_buf_reset(&l->pend);
    }
    if (write_all(l, l->out.data, l->out.len, dl, &done) == 0) return 0;
    int e = errno;
    if (done) {
        /* Keep the rest of the line cut short; later records are lost. */
        const char *nl = memchr(l->out.data + done, '\n', l->out.len - done);
        size_t end = nl ? (size_t)(nl - l->out.data) + 1 : l->out.len;
        if (done < end) {
            proto_buf_reset(&l->pend);
            proto_buf_append(&l->pend, l->out.data + done, end - done);
        }
    }
    errno = e;
    return -1;
}

static void redis_drop(implog *l) {
    rconn_close(l->rc);
    l->rc = NULL;
}

/* Connects to addr ("host:port", "[v6]:port" or "/socket") and
 * authenticates (rconn.h), by deadline.  0, or -1 with a message. */
static int redis_connect(implog *l, const char *addr, int64_t deadline, char *err,
                         size_t errlen) {
    redis_drop(l);
    char host[256], why[300];
    int port = 0;
    if (addr[0] != '/') {
        const char *colon = strrchr(addr, ':');
        if (!colon || !colon[1]) {
            snprintf(err, errlen, "impression log: bad Redis address %s", addr);
            return -1;
        }
        const char *h = addr;
        size_t hl = (size_t)(colon - addr);
        if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
            h++;
            hl -= 2;
        }
        snprintf(host, sizeof host, "%.*s", (int)hl, h);
        port = atoi(colon + 1);
    } else {
        snprintf(host, sizeof host, "%s", addr);
    }
    const rconn_params rp = {l->p.timeout_ms, l->user, l->password};
    if (rconn_open(&rp, host, port, deadline, &l->rc, why, sizeof why) < 0) {
        snprintf(err, errlen, "impression log: Redis %s: %s", addr, why);
        return -1;
    }
    snprintf(l->cur_addr, sizeof l->cur_addr, "%s", addr);
    return 0;
}

/* XADDs the batch's records (out, split at rec_off) in one pipeline,
 * within timeout_ms; on a cluster, what a node redirects (MOVED, ASK) is
 * sent again to the node named.  0, or -1 with a message (the batch is
 * lost: which records were stored is unknown). */
static int redis_write(implog *l, char *err, size_t errlen) {
    const int64_t deadline = clock_now_ns() + (int64_t)l->p.timeout_ms * 1000000;
    char maxlen[24];
    const size_t mlen = (size_t)snprintf(maxlen, sizeof maxlen, "%ld", l->p.redis_maxlen);
    const size_t klen = strlen(l->key);
    int first = 0;   /* records before this one are stored */
    for (int hop = 0; hop < 3; hop++) {
        if (!l->rc &&
            redis_connect(l, l->cur_addr[0] ? l->cur_addr : l->addr, deadline, err, errlen) < 0) {
            /* The key's node is gone (a failover): back to the seed, whose
             * MOVED names the new one. */
            l->cur_addr[0] = '\0';
            return -1;
        }
        const int n = l->out_records - first;
        for (int i = 0; i < n; i++) {
            const char **av = l->argv + 8 * (size_t)i;
            size_t *al = l->argvlen + 8 * (size_t)i;
            const size_t a = l->rec_off[first + i], b = l->rec_off[first + i + 1];
            av[0] = "XADD", al[0] = 4;
            av[1] = l->key, al[1] = klen;
            av[2] = "MAXLEN", al[2] = 6;
            av[3] = "~", al[3] = 1;
            av[4] = maxlen, al[4] = mlen;
            av[5] = "*", al[5] = 1;
            av[6] = "impression", al[6] = 10;
            av[7] = l->out.data + a, al[7] = b - a;
            l->cmds[i] = (rconn_cmd){8, av, al, RCONN_STRING};
        }
        char why[300];
        if (rconn_exchange(l->rc, n, l->cmds, deadline, l->replies, why, sizeof why) < 0) {
            snprintf(err, errlen, "impression log: Redis %.200s: %.200s", l->cur_addr, why);
            redis_drop(l);
            return -1;
        }
        int moved_at = -1, rc = 0;
        rcluster_redirect to = {0};
        for (int i = 0; i < n; i++) {
            struct redisReply *r = l->replies[i];
            if (r->type == REDIS_REPLY_ERROR && moved_at < 0 && rc == 0) {
                if (l->p.redis_cluster && rcluster_redirect_parse(r->str, r->len, &to) == CTR_OK) {
                    moved_at = i;
                } else {
                    snprintf(err, errlen, "impression log: Redis %s: %.*s", l->cur_addr,
                             (int)(r->len > 200 ? 200 : r->len), r->str);
                    rc = -1;
                }
            }
            freeReplyObject(r);
        }
        if (rc < 0 || moved_at < 0) return rc;
        /* The key lives elsewhere (a cluster): send what was refused there.
         * ASK is for one command during a migration: ASKING first, and the
         * connection is not kept as the key's node. */
        first += moved_at;
        char addr[RCLUSTER_HOST_MAX + 16];
        snprintf(addr, sizeof addr, strchr(to.host, ':') ? "[%s]:%d" : "%s:%d",
                 to.host[0] ? to.host : "127.0.0.1", to.port);
        if (redis_connect(l, addr, deadline, err, errlen) < 0) return -1;
        if (to.kind == RCLUSTER_ASK) {
            static const char *const asking[] = {"ASKING"};
            static const size_t asking_len[] = {6};
            struct redisReply *r;
            if (rconn_command(l->rc, 1, asking, asking_len, RCONN_STATUS, deadline, &r, why,
                              sizeof why) < 0) {
                snprintf(err, errlen, "impression log: Redis %s: ASKING: %s", addr, why);
                redis_drop(l);
                return -1;
            }
            freeReplyObject(r);
            l->cur_addr[0] = '\0';   /* after this batch: the seed again */
        }
    }
    snprintf(err, errlen, "impression log: Redis redirected the stream %s more than twice",
             l->key);
    return -1;
}

/* Sends the formatted batch to the sink; counts it either way. */
static void flush_batch(implog *l) {
    static log_limit lim;
    if (!l->out_records) return;
    const uint64_t n = (uint64_t)l->out_records;
    char err[600] = "";
    int ok = -1;
    if (!proto_buf_ok(&l->out)) {
        snprintf(err, sizeof err, "impression log: out of memory formatting records");
    } else if (clock_now_ns() >= l->retry_at_ns) {
        if (l->kind == SINK_FILE) {
            int want = atomic_exchange(&l->reopen, 0);
            if (l->fd < 0 || want) {
                if (l->fd >= 0) atomic_fetch_add(&l->reopens, 1);
                if (file_open(l, err, sizeof err) < 0) goto done;
            }
            ok = file_write(l);
            if (ok < 0) {
                snprintf(err, sizeof err, "impression log %s: %s", l->path,
                         errno == ETIMEDOUT ? "write timed out (reader stalled?)"
                                            : strerror(errno));
                if (errno != ETIMEDOUT) {
                    /* EPIPE (the reader of a FIFO left), ENOSPC...: open
                     * it again at the retry. */
                    close(l->fd);
                    l->fd = -1;
                }
            }
        } else {
            ok = redis_write(l, err, sizeof err);
        }
    } else {
        snprintf(err, sizeof err, "impression log: sink failed recently, retrying later");
    }
done:
    if (ok == 0) {
        count(l, &l->written, IMPLOG_WRITTEN, n);
        hook(l, IMPLOG_SINK_UP, 1);
    } else {
        count(l, &l->dropped_sink, IMPLOG_DROPPED_SINK, n);
        if (clock_now_ns() >= l->retry_at_ns) {
            count(l, &l->sink_errors, IMPLOG_SINK_ERROR, 1);
            hook(l, IMPLOG_SINK_UP, 0);
            log_limited(&lim, LOG_WARN, "impression log failures", "%s; %llu record(s) dropped",
                        err, (unsigned long long)n);
            l->retry_at_ns = clock_now_ns() + (int64_t)l->p.retry_ms * 1000000;
        }
    }
    proto_buf_reset(&l->out);
    pthread_mutex_lock(&l->mu);
    l->seq_out += n;
    pthread_mutex_unlock(&l->mu);
    pthread_cond_broadcast(&l->drained);
    l->out_records = 0;
}

/* --- the log's thread ---------------------------------------------------- */

/* Takes one record out of the queue into l->rec; waits while it is empty.
 * Returns its length, 0 when the batch should be flushed now (the queue
 * is empty), or -1 when stopping and nothing is left. */
static long take(implog *l) {
    pthread_mutex_lock(&l->mu);
    while (!l->used) {
        if (l->stopping) {
            pthread_mutex_unlock(&l->mu);
            return -1;
        }
        if (l->out_records) {
            pthread_mutex_unlock(&l->mu);
            return 0;
        }
        l->sleeping = l->idle ? IDLE : LINGERING;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (l->idle ? IDLE_MS : LINGER_MS) * 1000000L;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&l->nonempty, &l->mu, &ts);
        l->sleeping = AWAKE;
        l->idle = !l->used;
    }
    if (l->stopping && clock_now_ns() >= l->stop_deadline_ns) {
        /* Grace over: what is left is dropped. */
        uint64_t left = l->seq_in - l->seq_out - (uint64_t)l->out_records;
        l->seq_out += left;
        l->used = 0;
        l->head = 0;
        set_queue_bytes(l);
        pthread_mutex_unlock(&l->mu);
        count(l, &l->dropped_shutdown, IMPLOG_DROPPED_SHUTDOWN, left);
        pthread_cond_broadcast(&l->drained);
        return -1;
    }
    uint64_t len;
    ring_get(l, l->head, &len, 8);
    if (len > l->rec_cap) {
        unsigned char *nr = realloc(l->rec, len);
        if (!nr) {
            /* Skip it: counted as a sink loss. */
            l->head = (l->head + 8 + len) % l->cap;
            l->used -= 8 + len;
            l->seq_out++;
            set_queue_bytes(l);
            pthread_mutex_unlock(&l->mu);
            count(l, &l->dropped_sink, IMPLOG_DROPPED_SINK, 1);
            return 0;
        }
        l->rec = nr;
        l->rec_cap = len;
    }
    ring_get(l, (l->head + 8) % l->cap, l->rec, len);
    l->head = (l->head + 8 + len) % l->cap;
    l->used -= 8 + len;
    set_queue_bytes(l);
    pthread_mutex_unlock(&l->mu);
    return (long)len;
}

/* After a sink failure, records stay queued until retry_at_ns (the queue
 * absorbs an outage as long as it can; producers drop when it is full),
 * unless the log is stopping. */
static void back_off(implog *l) {
    pthread_mutex_lock(&l->mu);
    while (!l->stopping && clock_now_ns() < l->retry_at_ns) {
        int64_t left = l->retry_at_ns - clock_now_ns();
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = ts.tv_nsec + (left < 100000000 ? left : 100000000);
        ts.tv_sec += ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&l->nonempty, &l->mu, &ts);
    }
    pthread_mutex_unlock(&l->mu);
}

static void *run(void *arg) {
    static log_limit lim;
    implog *l = arg;
    const char *strs[MAX_STRINGS];
    for (;;) {
        if (!l->out_records) back_off(l);
        long len = take(l);
        if (len < 0) break;
        if (len > 0) {
            proto_impression r;
            if (unpack(l->rec, (size_t)len, &r, strs) < 0) {
                log_limited(&lim, LOG_ERROR, "impression records unreadable",
                            "impression log: a queued record does not unpack; dropped");
                count(l, &l->dropped_sink, IMPLOG_DROPPED_SINK, 1);
                pthread_mutex_lock(&l->mu);
                l->seq_out++;
                pthread_mutex_unlock(&l->mu);
                continue;
            }
            proto_impression_encode(&r, l->kind == SINK_FILE, &l->out);
            l->out_records++;
            if (l->kind == SINK_REDIS) l->rec_off[l->out_records] = l->out.len;
        }
        if (l->out_records >= l->p.batch || (len == 0 && l->out_records) ||
            l->out.len >= ((size_t)1 << 20))
            flush_batch(l);
    }
    flush_batch(l);
    return NULL;
}

/* --- open / close ------------------------------------------------------------ */

static char *dup_or_null(const char *s, int *oom) {
    if (!s || !*s) return NULL;
    char *d = strdup(s);
    if (!d) *oom = 1;
    return d;
}

int implog_open(const implog_params *p, implog **out, char *err, size_t errlen) {
    *out = NULL;
    char why[160];
    if (!implog_target_ok(p->target, why, sizeof why))
        return ctr_fail(err, errlen, CTR_EINVAL, "impression log \"%s\": %s",
                        p->target ? p->target : "", why);
    if (p->queue_bytes < 4096 || p->timeout_ms < 1 || p->retry_ms < 0 || p->batch < 1 ||
        p->redis_maxlen < 1)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "impression log: queue of at least 4096 bytes, timeout >= 1 ms, "
                        "batch >= 1 and maxlen >= 1 needed");
    const int redis = strncmp(p->target, "redis:", 6) == 0;
    if (redis && (!p->redis_addr || !*p->redis_addr))
        return ctr_fail(err, errlen, CTR_EINVAL, "impression log %s: no Redis address",
                        p->target);
    implog *l = calloc(1, sizeof *l);
    if (!l) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    l->p = *p;
    l->kind = redis ? SINK_REDIS : SINK_FILE;
    l->fd = -1;
    proto_buf_init(&l->out);
    proto_buf_init(&l->pend);
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->nonempty, NULL);
    pthread_cond_init(&l->drained, NULL);
    int oom = 0, rc;
    l->target = dup_or_null(p->target, &oom);
    l->addr = dup_or_null(p->redis_addr, &oom);
    l->user = dup_or_null(p->redis_user, &oom);
    l->password = dup_or_null(p->redis_password, &oom);
    l->cap = p->queue_bytes;
    l->ring = malloc(l->cap);
    l->rec_off = calloc((size_t)p->batch + 1, sizeof *l->rec_off);
    if (redis) {
        l->cmds = calloc((size_t)p->batch, sizeof *l->cmds);
        l->argv = calloc((size_t)p->batch * 8, sizeof *l->argv);
        l->argvlen = calloc((size_t)p->batch * 8, sizeof *l->argvlen);
        l->replies = calloc((size_t)p->batch, sizeof *l->replies);
        oom |= !l->cmds || !l->argv || !l->argvlen || !l->replies;
    }
    if (oom || !l->ring || !l->rec_off) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        goto fail;
    }
    l->p.target = l->target;
    l->p.redis_addr = l->addr;
    l->p.redis_user = l->user;
    l->p.redis_password = l->password;
    if (redis) l->key = l->target + 6;
    else l->path = l->target + 5;
    if (!redis && (rc = file_open(l, err, errlen)) < 0) goto fail;
    if (pthread_create(&l->thread, NULL, run, l) != 0) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "impression log: cannot start its thread");
        goto fail;
    }
    l->thread_started = 1;
    pthread_setname_np(l->thread, "ctr-implog");   /* top -H, perf */
    *out = l;
    return CTR_OK;
fail:
    implog_close(l, 0);
    return rc;
}

void implog_close(implog *l, int grace_ms) {
    if (!l) return;
    if (l->thread_started) {
        pthread_mutex_lock(&l->mu);
        l->stopping = 1;
        l->stop_deadline_ns = clock_now_ns() + (int64_t)grace_ms * 1000000;
        pthread_mutex_unlock(&l->mu);
        pthread_cond_signal(&l->nonempty);
        pthread_join(l->thread, NULL);
    }
    if (l->fd >= 0) close(l->fd);
    redis_drop(l);
    if (l->password) {
        volatile char *v = l->password;
        while (*v) *v++ = 0;
    }
    free(l->password);
    free(l->user);
    free(l->addr);
    free(l->target);
    free(l->ring);
    free(l->rec);
    free(l->rec_off);
    free(l->cmds);
    free(l->argv);
    free(l->argvlen);
    free(l->replies);
    proto_buf_free(&l->pend);
    proto_buf_free(&l->out);
    pthread_cond_destroy(&l->drained);
    pthread_cond_destroy(&l->nonempty);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

void implog_reopen(implog *l) {
    if (l && l->kind == SINK_FILE) atomic_store(&l->reopen, 1);
}

void implog_stats_get(const implog *l, implog_stats *st) {
#define LD(f) atomic_load_explicit(&l->f, memory_order_relaxed)
    *st = (implog_stats){LD(submitted), LD(written), LD(dropped_full), LD(dropped_sink),
                         LD(dropped_shutdown), LD(sink_errors), LD(queue_bytes), LD(reopens)};
#undef LD
}

int implog_flush(implog *l, int timeout_ms) {
    const int64_t dl = clock_now_ns() + (int64_t)timeout_ms * 1000000;
    pthread_mutex_lock(&l->mu);
    const uint64_t want = l->seq_in;
    while (l->seq_out < want) {
        if (clock_now_ns() >= dl) break;
        pthread_cond_signal(&l->nonempty);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&l->drained, &l->mu, &ts);
    }
    int done = l->seq_out >= want;
    pthread_mutex_unlock(&l->mu);
    return done;
}
