/*
 * implog.h - the impression log: one record per sampled rank answer (what
 * was served, proto/impression.h), written off the request path to a
 * Redis Stream or a JSON Lines file, for retraining on the service's own
 * traffic.
 *
 *   redis:KEY   XADD KEY MAXLEN ~ redis_maxlen * impression <record JSON>,
 *               pipelined in batches; consumers read with XREADGROUP.  To
 *               the feature store's Redis (one node; on a Redis Cluster
 *               the node owning KEY, found by following MOVED) unless
 *               redis_addr names another.
 *   file:PATH   one record a line, appended (O_APPEND); implog_reopen
 *               (ctr-server: SIGHUP) reopens PATH, so logrotate can move
 *               the file away and signal.
 *
 * Workload: every sampled answer (up to every answer: thousands a second)
 * submits a record (~5 KB of JSON at 64 candidates); one thread of the
 * log's own ("ctr-implog") formats and writes them, in batches: after a
 * write it lingers 10 ms for more records unwoken (a producer wakes it only
 * when the queue is a quarter full, or when it sleeps idle), so a record
 * costs no wake-up and reaches the sink within ~10 ms.  Measured (demo
 * model, N = 64, bench/results/fresh-2026-12-07.md): ~8 us of the thread's
 * time a record to a file, ~10 us to Redis.  The request path must never
 * wait for the sink, so:
 *   - implog_submit copies the record's fields into a bounded byte queue
 *     (queue_bytes) under a mutex held for the copy only (~1 us for 64
 *     candidates); no allocation, no I/O, no formatting; the JSON is made
 *     on the log's thread;
 *   - a full queue drops the record and counts it (the answer is not
 *     delayed); a sink that fails or hangs (every write bounded by
 *     timeout_ms) loses the batch in flight, counted, and is retried after
 *     a back-off while the queue absorbs what arrives, then drops;
 *   - implog_close drains what is queued within its grace period and
 *     counts the rest as dropped.
 *
 * Counters (implog_stats) and events (implog_hook, for /metrics) say how
 * many records were written and dropped, and why.
 *
 * Thread-safety: implog_submit, implog_reopen and implog_stats_get may be
 * called from any thread at once; open and close from one.
 */
#ifndef CTR_SERVER_IMPLOG_H
#define CTR_SERVER_IMPLOG_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/status.h"
#include "proto/impression.h"

typedef struct implog implog;

/* What the hook is told (counts in `n`). */
typedef enum implog_event {
    IMPLOG_WRITTEN,           /* n records taken by the sink */
    IMPLOG_DROPPED_FULL,      /* n records refused: queue full */
    IMPLOG_DROPPED_SINK,      /* n records lost to a failed write */
    IMPLOG_DROPPED_SHUTDOWN,  /* n records still queued at the end of
                                 implog_close's grace period */
    IMPLOG_SINK_ERROR,        /* a write, connect or reopen failed */
    IMPLOG_SINK_UP,           /* n = 1: the last write succeeded; 0: it
                                 failed */
    IMPLOG_QUEUE_BYTES,       /* n = bytes queued now */
} implog_event;

/* Called from the submitting thread (DROPPED_FULL, QUEUE_BYTES) or the
 * log's thread (the others), QUEUE_BYTES with the queue's lock held (so the
 * last value reported is the queue's): must be thread-safe and quick, and
 * must not call into the log. */
typedef void (*implog_hook)(void *arg, implog_event ev, uint64_t n);

typedef struct implog_params {
    const char *target;         /* "redis:KEY" or "file:PATH"; copied */
    size_t queue_bytes;         /* queue bound (16 MiB) */
    int timeout_ms;             /* one write, connect or reply (1000) */
    int retry_ms;               /* back-off after a sink failure (1000) */
    int batch;                  /* records per write (256) */
    /* redis: */
    const char *redis_addr;     /* "host:port", "[v6]:port" or "/socket";
                                   copied (required for redis:) */
    int redis_cluster;          /* 1: follow MOVED / ASK to KEY's node */
    const char *redis_user;     /* AUTH user (NULL: default); copied */
    const char *redis_password; /* AUTH password (NULL: none); copied */
    long redis_maxlen;          /* stream cap, XADD MAXLEN ~ (1000000) */
    implog_hook hook;           /* NULL: none */
    void *hook_arg;
} implog_params;

typedef struct implog_stats {
    uint64_t submitted;         /* records queued */
    uint64_t written;           /* taken by the sink */
    uint64_t dropped_full;
    uint64_t dropped_sink;
    uint64_t dropped_shutdown;
    uint64_t sink_errors;
    uint64_t queue_bytes;       /* bytes queued now */
    uint64_t reopens;           /* file: reopens done */
} implog_stats;

/* Defaults as above; target NULL.  Thread-safe. */
void implog_default_params(implog_params *p);

/* 1 when target is "redis:KEY" or "file:PATH" with a non-empty KEY/PATH;
 * otherwise 0 with a message in why.  Thread-safe. */
int implog_target_ok(const char *target, char *why, size_t whylen);

/* Checks the params, opens a file target (so a bad path fails now, with a
 * message) and starts the log's thread; a Redis target connects on its
 * first write.  *out owns the log (implog_close).  CTR_EINVAL (bad
 * params), CTR_EIO (file cannot be opened), CTR_ENOMEM. */
int implog_open(const implog_params *p, implog **out, char *err, size_t errlen);

/* Writes what is queued for up to grace_ms (0: nothing more), counts the
 * rest as dropped, stops the thread and frees l (NULL is fine). */
void implog_close(implog *l, int grace_ms);

/* Queues one record (everything it points to is copied): 1; or 0 when
 * the queue is full (the record is dropped and counted).  Never waits for
 * the sink. */
int implog_submit(implog *l, const proto_impression *r);

/* A file target is reopened before its next write (for logrotate); a
 * no-op for Redis.  Async-signal-unsafe: call it from a thread, not a
 * handler. */
void implog_reopen(implog *l);

void implog_stats_get(const implog *l, implog_stats *st);

/* Waits until everything submitted so far has been written or dropped, at
 * most timeout_ms.  1 when it was, 0 on timeout.  For tests and
 * benchmarks. */
int implog_flush(implog *l, int timeout_ms);

#endif
