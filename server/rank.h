/*
 * rank.h - POST /v1/rank as a sequence of stages over one request context,
 * each a function a unit test can call on its own:
 *
 *   rank_begin     acquire the model, start the clock and the budget
 *   rank_decode    JSON body -> request; the model's range rules; deadline
 *   rank_history   the user's history (the request's own, or one bounded
 *                  read from the feature store)
 *   rank_items     item vectors: cache, then one read for what it lacks
 *   rank_score     the forward pass, split across the scoring pool; scores
 *                  that are not finite handled
 *   rank_answer    order, encode
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
 * Degraded reasons (README "Defined behaviour"):
 *   history_unavailable        history read failed (Redis down, breaker
 *                              open, malformed value): empty history used
 *   history_deadline           no time left to read the history
 *   history_item_invalid       history items whose vectors overflow (or
 *                              that make scores non-finite) were dropped
 *   item_features_unavailable  the item read failed: uncached candidates
 *                              unscored
 *   item_features_deadline     no time left to read item features
 *   item_features_missing      candidates without features: unscored
 *   item_features_invalid      candidates with malformed or overflowing
 *                              features: unscored
 *   non_finite                 candidates whose score is not finite:
 *                              unscored
 *   scoring_deadline           candidates left unscored for lack of time
 *   feature_set_missing        the feature store has no (matching)
 *                              feature-set marker: Redis may have restarted
 *                              empty, so a missing user is not evidence of
 *                              a new user
 *
 * Thread-safety: a context belongs to one request on one thread.
 */
#ifndef CTR_SERVER_RANK_H
#define CTR_SERVER_RANK_H

#include <stdint.h>

#include "proto/rank.h"
#include "server/service.h"

#define RANK_MAX_DEGRADED 12

enum { RANK_STAGE_QUEUE, RANK_STAGE_DECODE, RANK_STAGE_HISTORY, RANK_STAGE_ITEMS,
       RANK_STAGE_SCORE, RANK_STAGES };

typedef struct rank_ctx {
    worker *w;
    service *svc;
    model_slot *slot;              /* referenced from begin to end */
    const qin_config *cfg;
    arena *a;
    int64_t arrival_ns, deadline_ns, stage_t0;
    int64_t stage_ns[RANK_STAGES];
    int deadline_ms;

    proto_rank_request req;

    /* History: ids, then their slots in the unique-item table. */
    int64_t *hist_ids;
    int nh;

    /* Unique items of candidates and history. */
    int nu;
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

    const char *degraded[RANK_MAX_DEGRADED];
    int ndeg;
} rank_ctx;

/* Why a unique item has no vector. */
enum { RANK_NOVEC_NONE, RANK_NOVEC_MISSING, RANK_NOVEC_INVALID, RANK_NOVEC_UNAVAILABLE,
       RANK_NOVEC_DEADLINE };

/* Set-up: the context of in's request on w (the model is acquired, the
 * arena and the answer buffer reset). */
void rank_begin(rank_ctx *x, worker *w, const rank_input *in);
int rank_decode(rank_ctx *x, const rank_input *in);
int rank_history(rank_ctx *x);
int rank_items(rank_ctx *x);
int rank_score(rank_ctx *x);
int rank_answer(rank_ctx *x);
void rank_end(rank_ctx *x);

/* Adds a degraded reason once (a string literal). */
void rank_degrade(rank_ctx *x, const char *reason);

/* Nanoseconds the forward pass is expected to take for n candidates. */
int64_t rank_score_estimate_ns(const rank_ctx *x, int n);

#endif
