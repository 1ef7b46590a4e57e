/*
 * rank_split.h - one request's forward pass across the scoring pool
 * (service.h's service_split: on one thread, its candidates in parts, or
 * each layer's output columns in parts), and --split auto's start-up
 * planner that times each way per request size.
 *
 * rank.c's score stage runs every forward pass through rank_split_score;
 * the planner times that same function, so what it measures is what a
 * request runs.
 *
 * Thread-safety: rank_split_score may run on any request worker at once
 * (a job belongs to one call); rank_split_plan on the main thread at start,
 * before requests are served.
 */
#ifndef CTR_SERVER_RANK_SPLIT_H
#define CTR_SERVER_RANK_SPLIT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/engine.h"
#include "server/service.h"

/* One forward pass: n candidates of model m (its slot held by the
 * caller), their context rows ctx (n x num_ctx), the history hist (nh
 * vectors); scores into prob[0..n-1]. */
typedef struct rank_split_job {
    service *svc;
    const service_model *m;
    const model_slot *slot;
    const float *const *hist;
    int nh;
    const float *const *cand;     /* n scorable candidates */
    const int32_t *ctx;
    int n;
    float *prob;
    const engine_explain *ex;     /* n rows of explanations, or NULL */
    const char *request_id;       /* for the log; never NULL */
    atomic_int failed;            /* 0 at the start */
} rank_split_job;

/* How a request is cut: its layers in cols column parts (> 1: the
 * engine hands the others to the pool), or else its candidates in parts
 * (1: on the caller's thread alone). */
typedef struct rank_split_way {
    int cols;
    int parts;
} rank_split_way;

/* The rank requests in hand besides the caller's: svc->ranking counts
 * each request in rank_handle, the caller included (0 outside a request,
 * as for the planner). */
static inline int rank_split_others(const service *svc) {
    const int ranking = atomic_load(&svc->ranking);
    return ranking > 1 ? ranking - 1 : 0;
}

/* The way rank_split_score cuts a request of n candidates of a model with
 * column_parts (engine_model_column_parts) in mode, at this moment: parts
 * only where each carries split_min candidates and split_min_mflops of
 * arithmetic (per_cand: one candidate's flops), and no more parts than
 * the score threads that the other requests in hand leave
 * (rank_split_others). */
rank_split_way rank_split_choose(const service *svc, int column_parts, service_split mode, int n,
                                 double per_cand);

/* Scores job's candidates as mode says, split across svc's pool when each
 * part is worth a hand-off to another thread: at least split_min
 * candidates and split_min_mflops of arithmetic, per_cand being the
 * flops of one candidate (2 x the folded model's multiply-adds,
 * engine_model_cost).  COLUMNS where the model has no column parts splits
 * candidates.  A request scored while others are in hand (svc->ranking,
 * where rank_handle counts each request, this one included) takes only
 * the score threads they leave: none left, it runs on this thread
 * whatever mode says.  0, or -1 when the engine failed (logged,
 * rate-limited). */
int rank_split_score(rank_split_job *job, service_split mode, double per_cand);

/* --split auto: times a request of each size class (service.h) of model m
 * on one thread, its candidates split across svc's pool, and its layers
 * split by columns (where the model has column parts), and sets
 * m->split and m->split_us.  Call once at start, on the main thread, after
 * the pool's helpers are warm and before requests are served; a few
 * milliseconds to a few hundred (the MicroLens-size QIN in fp32 at 256
 * candidates).  CTR_OK, CTR_ENOMEM, or CTR_EINVAL when scoring failed. */
int rank_split_plan(service *svc, service_model *m, char *err, size_t errlen);

/* Which mode rank_split_plan keeps from medians us[0..nmodes-1] (indexed by
 * service_split): candidates unless another is more than 5% faster, then
 * the fastest. */
service_split rank_split_pick(const double *us, int nmodes);

#endif
