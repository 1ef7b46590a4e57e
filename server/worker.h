/*
 * worker.h - per-thread state of ctr-server: for each model a feature-store
 * connection under its key prefix and an engine scratch for its current
 * generation, plus the request arena and the answer buffer.
 *
 * Workload: one worker per request thread and scoring helper, made on the
 * thread's first request (or by worker_prepare as it starts) and freed when
 * the thread exits; every rank request reuses its thread's worker, so the
 * scoring path allocates nothing.
 *
 * Thread-safety: a worker belongs to its thread; worker_self and
 * worker_prepare may be called from any thread once worker_global_init
 * has run.
 */
#ifndef CTR_SERVER_WORKER_H
#define CTR_SERVER_WORKER_H

#include <stdint.h>

#include "core/base/arena.h"
#include "core/engine.h"
#include "proto/buf.h"
#include "server/store/featstore.h"
#include "server/model_slot.h"
#include "server/service.h"

/* Per thread, per model: a Redis connection under the model's prefix, and
 * an engine scratch for the model's current generation. */
typedef struct worker_model {
    featstore *fs;
    engine_scratch *scratch;       /* for scratch_gen's slot */
    uint64_t scratch_gen;
} worker_model;

typedef struct worker {
    service *svc;
    worker_model m[SERVICE_MAX_MODELS];
    arena arena;                   /* one request's data, reset per request */
    proto_buf out;                 /* the answer being built */
} worker;

/* This thread's worker, created on first use (NULL if out of memory).
 * Threads exit with their worker freed (pthread key destructor). */
worker *worker_self(service *svc);

/* This thread's scratch for model m's slot, (re)made when the model
 * changed.  NULL when out of memory. */
engine_scratch *worker_scratch(worker *w, const service_model *m, const model_slot *slot);

/* Makes this thread's worker and its scratch for every model's current
 * slot now (request threads call it as they start), so that a first
 * request does not pay for allocating them (a few ms for DIN at MicroLens
 * shapes).  A reload's new slots get theirs on first use. */
void worker_prepare(service *svc);

/* Process-wide set-up/tear-down of the thread key, from one thread; call
 * once each.  worker_global_free does nothing unless worker_global_init
 * succeeded, so a start-up that failed early may call it. */
int worker_global_init(void);
void worker_global_free(void);

#endif
