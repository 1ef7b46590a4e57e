/*
 * rank.h - POST /v1/rank as a sequence of stages over one request context,
 * each a function a unit test can call on its own:
 *
 *   rank_begin     start the clock
 *   rank_decode    JSON body -> request, with the schema of the model it
 *                  names (acquired here); the model's range rules; deadline
 *   rank_history   the user's history (the request's own, or one bounded
 *                  read from the feature store, while an idle scoring
 *                  thread looks up the candidates' vectors in the cache)
 *   rank_items     item vectors: cache (the candidates' unless looked up
 *                  already, then the history's), then one read for what
 *                  it lacks
 *   rank_score     the forward pass, split across the scoring pool; scores
 *                  that are not finite handled; explanations when asked
 *   rank_answer    order, encode
 *   rank_log       the impression log's record of the answer (sampled;
 *                  a copy into its queue, implog.h)
 *   rank_end       release cache pins and the model
 *
 * A stage returns 0 to go on, or the HTTP status of an answer it has
 * already written into w->out (an error, or "nothing left to do").
 *
 * The deadline: a request has deadline_ms (the body's, else the
 * X-Request-Timeout-Ms header's, else the configured default; at most
 * max_deadline_ms) counted from its arrival.  Every feature-store call gets
 * the remaining budget less what scoring is expected to need (a running
 * estimate of the forward pass's speed), so Redis never eats the time the
 * model needs.  When the budget runs short, the answer comes on time with
 * what is there and says why in "degraded" (reasons below); candidates left
 * out are listed in "unscored".
 *
 * Degraded reasons: the labels and when each is given are
 * proto/degraded.h's map (published in proto/openapi.yaml).
 *
 * Thread-safety: a context belongs to one request on one thread.
 */
#ifndef CTR_SERVER_RANK_H
#define CTR_SERVER_RANK_H

#include <stdint.h>

#include "proto/degraded.h"
#include "proto/rank.h"
#include "server/service.h"
#include "server/worker.h"

enum { RANK_STAGE_QUEUE, RANK_STAGE_DECODE, RANK_STAGE_HISTORY, RANK_STAGE_ITEMS,
       RANK_STAGE_SCORE, RANK_STAGES };

typedef struct rank_ctx {
    worker *w;
    service *svc;
    service_model *m;              /* the model the request names */
    model_slot *slot;              /* m's, referenced from decode to end */
    const engine_schema *sc;       /* slot's */
    proto_rank_schema pschema;     /* what the decoder reads of it */
    double flops_per_cand;         /* 2 x folded multiply-adds at the
                                      history length (max_len until the
                                      history is read) */
    arena *a;
    int64_t arrival_ns, deadline_ns, stage_t0;
    int64_t stage_ns[RANK_STAGES];
    int deadline_ms;

    proto_rank_request req;

    /* History: ids (the most recent max_len, oldest first: explanation
     * positions index this array), then their slots in the unique-item
     * table. */
    int64_t *hist_ids;
    int nh;
    featstore_user_probe hprobe;   /* the history cache's miss, for the read */

    /* Unique items of candidates (the first ncu) and history. */
    int nu, ncu;
    struct rank_idmap *umap;       /* item id -> slot among them */
    int cands_looked;              /* the candidates' cache lookups are
                                      done (beside the history read) */
    int64_t *uid;
    const float **uvec;            /* NULL: no vector */
    unsigned char *ureason;        /* why no vector (RANK_NOVEC_*) */
    item_cache_ref *refs;
    int nref;
    int *cand_u, *hist_u;          /* -1 for a padding history entry */
    int fetch_failed;

    /* Scoring. */
    float *prob;                   /* per candidate; NaN when unscored */
    unsigned char *scored;         /* per candidate: 1 when prob is valid */
    int32_t *xpos;                 /* with explain k: per candidate, k
                                      positions in hist_ids (-1: none) */
    float *xweight;                /* and their weights */

    proto_degraded degraded[PROTO_DEGRADED_COUNT];  /* in the order first met */
    int ndeg;

    /* The answer: items in answer order (rank_answer). */
    proto_rank_item *items;
    int num_items;
} rank_ctx;

/* Why a unique item has no vector. */
enum { RANK_NOVEC_NONE, RANK_NOVEC_MISSING, RANK_NOVEC_INVALID, RANK_NOVEC_UNAVAILABLE,
       RANK_NOVEC_DEADLINE };

/* One POST /v1/rank as the HTTP layer hands it over. */
typedef struct rank_input {
    const char *body;
    size_t len;
    int64_t arrival_ns;            /* clock_now_ns() when it arrived: the
                                      deadline counts from here */
    int header_deadline_ms;        /* X-Request-Timeout-Ms; 0 when absent */
} rank_input;

/* POST /v1/rank: decodes the body, fetches features, scores, and writes the
 * JSON answer or error into w->out (the stages below).  Returns the HTTP
 * status. */
int rank_handle(worker *w, const rank_input *in);

/* Set-up: the context of in's request on w (the arena and the answer
 * buffer reset; the model is acquired by rank_decode, once the request
 * has named it). */
void rank_begin(rank_ctx *x, worker *w, const rank_input *in);
int rank_decode(rank_ctx *x, const rank_input *in);
int rank_history(rank_ctx *x);
int rank_items(rank_ctx *x);
int rank_score(rank_ctx *x);
int rank_answer(rank_ctx *x);
void rank_log(rank_ctx *x);
void rank_end(rank_ctx *x);

/* Adds a degraded reason once. */
void rank_degrade(rank_ctx *x, proto_degraded reason);

/* Nanoseconds the forward pass is expected to take for n candidates (of
 * the model rank_decode acquired). */
int64_t rank_score_estimate_ns(const rank_ctx *x, int n);

#endif
