/*
 * rank.h - the ranking request and its answer on the wire (JSON), decoded
 * into / encoded from plain C structs.  Used by ctr-score (one request a
 * line) and by ctr-server's POST /v1/rank (one request a body).
 *
 *   request: {"user_id": "u1" | 42,
 *             "candidates": [{"item_id": 17, "likes_level": 3, ...}, ...],
 *             "item_seq": [ids, oldest first],     (optional: replaces the
 *                                                   stored history)
 *             "top_k": 10,                          (optional, >= 1)
 *             "request_id": "abc"}                  (optional string)
 *
 * Candidate fields other than item_id are the model's context fields, by
 * name; a missing one takes the padding value 0; unknown names are refused
 * (a typo would otherwise silently score with padding).
 */
#ifndef CTR_PROTO_RANK_H
#define CTR_PROTO_RANK_H

#include <stddef.h>
#include <stdint.h>

#include "core/arena.h"

/* What the decoder needs to know of the model and the limits. */
typedef struct proto_rank_schema {
    int num_ctx;
    const char *const *ctx_name;  /* num_ctx field names, model order */
    int max_cand;                 /* more: CTR_ETOOMANY */
    int max_seq;                  /* longer item_seq: CTR_ETOOBIG */
} proto_rank_schema;

typedef struct proto_rank_request {
    const char *user_id;          /* integer ids kept as decimal text */
    int user_id_is_int;
    const char *request_id;       /* NULL when absent */
    int64_t *cand_id;             /* num_cand */
    int32_t *ctx;                 /* num_cand x num_ctx, row-major */
    int num_cand;
    int has_item_seq;
    int64_t *item_seq;            /* seq_len, oldest first */
    int seq_len;
    int top_k;                    /* 0 when absent */
} proto_rank_request;

/* Decodes a request.  Returns CTR_OK; CTR_EFORMAT for malformed JSON,
 * CTR_EINVAL for wrong types or missing fields, CTR_ETOOMANY for too many
 * candidates, CTR_ETOOBIG for too long a history; err says which field.
 * Everything out points to lives in the arena. */
int proto_rank_request_decode(const char *buf, size_t len,
                              const proto_rank_schema *schema, arena *a,
                              proto_rank_request *out, char *err,
                              size_t errlen);

#endif
