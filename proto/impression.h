/*
 * impression.h - one record of the impression log (server/implog.h) on the
 * wire: a JSON object saying what one rank answer served, from which a
 * training row can be rebuilt exactly as scored.
 *
 *   {"time": 1714557600.123456,                   unix seconds, answer time
 *    "request_id": "abc" | null,                  the request's, if given
 *    "user_id": "u1" | 42,                        as the request gave it
 *    "model": {"name": "qin", "version": "v7", "precision": "fp32"},
 *    "history_source": "store" | "request",       read from the feature
 *                                                 store, or the request's
 *                                                 item_seq
 *    "history": [ids, oldest first],              what the model was given
 *                                                 (its most recent max_len)
 *    "top_k": 10,                                 0: every item returned
 *    "candidates": [{"item_id": 17, "likes_level": 3, "views_level": 2,
 *                    "score": 0.25, "rank": 1}, ...],
 *    "degraded": ["reason", ...]}
 *
 * Candidates are in request order, each with the model's context fields by
 * name (as in the request; a field the request left out shows its padding
 * value 0), its score (null when it could not be scored: see "degraded")
 * and its rank in the answer (1 = first; null when the answer left it out:
 * unscored, or cut by top_k).  One record is one line: no newline inside.
 *
 * Strings are escaped as in rank.h, so the output is valid JSON whatever
 * the request held.  Thread-safe (no shared state).
 */
#ifndef CTR_PROTO_IMPRESSION_H
#define CTR_PROTO_IMPRESSION_H

#include <stddef.h>
#include <stdint.h>

#include "proto/buf.h"

typedef struct proto_impression {
    double time;                    /* unix seconds */
    const char *request_id;         /* NULL: null */
    const char *user_id;
    int user_id_is_int;             /* printed as a JSON integer */
    const char *model_name, *model_version, *precision;
    int history_from_request;       /* 1: the request's item_seq */
    const int64_t *history;         /* nh ids, oldest first */
    int nh;
    int top_k;
    int num_ctx;
    const char *const *ctx_name;    /* num_ctx names, model order */
    int n;                          /* candidates, request order: */
    const int64_t *cand_id;         /* n */
    const int32_t *ctx;             /* n x num_ctx, row-major */
    const float *score;             /* n; a non-finite score is null */
    const int32_t *rank;            /* n; 0: not in the answer */
    const char *const *degraded;
    int num_degraded;
} proto_impression;

/* Appends the record as one line of JSON (with a final "\n" when
 * newline is set).  CTR_OK, or CTR_ENOMEM when the buffer could not grow. */
int proto_impression_encode(const proto_impression *r, int newline, proto_buf *b);

#endif
