/*
 * service.h - the state ctr-server's request handlers share.
 *
 * One service per process, built by ctr_server.c from the configuration
 * and read-only afterwards except for the model holder (reload) and the
 * atomics.  Per-thread state (Redis connection, engine scratch, request
 * arena, answer buffer) lives in a worker (below), created on a thread's
 * first request and freed when the thread exits.
 */
#ifndef CTR_SERVICE_H
#define CTR_SERVICE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/arena.h"
#include "core/qin.h"
#include "proto/buf.h"
#include "server/featstore.h"
#include "server/item_cache.h"
#include "server/metrics.h"
#include "server/model_slot.h"
#include "server/pool.h"

typedef struct service {
    model_holder *models;
    pool *scorers;                 /* helpers for splitting big requests */
    metrics *metrics;
    featstore_params fs_params;
    item_cache_params cache_params;
    char model_path[1024];
    int max_candidates;            /* per request; 422 above */
    int max_seq;                   /* item_seq entries accepted in a request */
    size_t max_body;               /* bytes; 413 above */
    int split_min;                 /* candidates per part when splitting */
    int split_min_mflops;          /* and arithmetic per part, MFLOP */
    int score_parts;               /* most parts a request is cut into */
    int skip_scoring;              /* answer with score 0, model not run */
    int deadline_ms;               /* a request's budget when it names none */
    int max_deadline_ms;           /* the most a request may ask for */
    atomic_int stopping;           /* set on SIGTERM: new requests get 503 */
    atomic_int feature_set;        /* SERVICE_FS_*: the health check's view
                                      of the feature-set marker */
    atomic_llong score_ns_per_mflop;  /* running estimate of the forward
                                         pass's speed, for deadlines */
} service;

/* What the last health check found (service.feature_set). */
enum {
    SERVICE_FS_UNKNOWN,            /* not checked yet, or Redis unreachable */
    SERVICE_FS_OK,                 /* marker present, schema matches */
    SERVICE_FS_MISSING,            /* Redis answers, no marker: empty or
                                      half-loaded feature store */
    SERVICE_FS_MISMATCH            /* marker of another schema */
};

typedef struct worker {
    service *svc;
    featstore *fs;                 /* this thread's Redis connection */
    qin_scratch *scratch;          /* for scratch_gen's model */
    uint64_t scratch_gen;
    arena arena;                   /* one request's data, reset per request */
    proto_buf out;                 /* the answer being built */
} worker;

/* This thread's worker, created on first use (NULL if out of memory).
 * Threads exit with their worker freed (pthread key destructor). */
worker *worker_self(service *svc);

/* This thread's scratch for slot's model, (re)made when the model changed.
 * NULL when out of memory. */
qin_scratch *worker_scratch(worker *w, const model_slot *slot);

/* Process-wide set-up/tear-down of the thread key; call once each. */
int worker_global_init(void);
void worker_global_free(void);

/* One POST /v1/rank as the HTTP layer hands it over. */
typedef struct rank_input {
    const char *body;
    size_t len;
    int64_t arrival_ns;            /* clock_now_ns() when it arrived: the
                                      deadline counts from here */
    int header_deadline_ms;        /* X-Request-Timeout-Ms; 0 when absent */
} rank_input;

/* POST /v1/rank: decodes the body, fetches features, scores, and writes the
 * JSON answer or error into w->out (stages in rank.h).  Returns the HTTP
 * status. */
int rank_handle(worker *w, const rank_input *in);

#endif
