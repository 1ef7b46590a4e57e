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
 *             "deadline_ms": 50,                    (optional, >= 1: the
 *                                                   answer is due this long
 *                                                   after arrival)
 *             "request_id": "abc",                  (optional string)
 *             "model": "din",                       (optional: which of the
 *                                                   server's models; absent:
 *                                                   the first)
 *             "explain": 3}                         (optional, 0..16: the
 *                                                   behaviours that weighed
 *                                                   most, per answered item)
 *
 * Candidate fields other than item_id are the model's context fields, by
 * name; a missing one takes the padding value 0; unknown names are refused
 * (a typo would otherwise silently score with padding).  Unknown top-level
 * fields are refused for the same reason ("item_sequence" must not quietly
 * fall back to the stored history).
 *
 * Decoding rules (each refusal names the field):
 *   - user_id: required; a non-empty string of at most PROTO_RANK_ID_MAX
 *     bytes, or an integer (kept as its decimal text, echoed as an integer);
 *   - candidates: required array of objects; empty is valid (the answer is
 *     empty); more than schema->max_cand: CTR_ETOOMANY;
 *   - item_id, item_seq ids: JSON integers within int64 (17.0 and "17" are
 *     refused); whether they are in the vocabulary is the engine's business;
 *   - context values: JSON integers within int32 (vocabulary: engine);
 *   - item_seq: optional array, at most schema->max_seq ids (CTR_ERANGE);
 *   - deadline_ms: optional integer >= 1 (values past INT_MAX clamped);
 *     present and empty means "no history", which differs from absent;
 *   - top_k: optional integer >= 1 (values past INT_MAX are clamped);
 *   - request_id: optional string of 1..PROTO_RANK_REQUEST_ID_MAX bytes;
 *   - model: optional string of 1..PROTO_RANK_MODEL_MAX bytes; a name the
 *     caller does not know is CTR_ENOTFOUND (404), decided before the
 *     candidates are, since their context fields are that model's;
 *   - explain: optional integer 0..PROTO_RANK_EXPLAIN_MAX (0: none, as
 *     absent); negative is CTR_EINVAL, above the bound CTR_ERANGE (422);
 *   - null is never a stand-in for "absent": it is a wrong type.
 *
 * The answer, written by proto_rank_answer_encode:
 *
 *   {"request_id": "abc",                          (only when given)
 *    "model": {"name": "qin", "version": "2025-01-01"},
 *    "items": [{"item_id": 17, "score": 0.123456789,
 *               "explain": [{"item_id": 5, "position": 61,     (with
 *                            "weight": 0.25}, ...]}, ...],       explain)
 *    "took_us": 123,
 *    "stage_us": {"queue": 3, "decode": 9, "history": 60, "items": 0,
 *                 "score": 41},                     (when given)
 *    "degraded": ["reason", ...],                   (always; [] when none)
 *    "unscored": [item ids]}                        (only when not empty)
 *
 * Encoders append to a proto_buf (buf.h) and print directly rather than
 * build a JSON tree: 256 items cost 256 short printfs.  Scores are printed
 * with %.9g, enough to read back the same float32; a non-finite score is
 * printed as null.  Strings are escaped (and invalid UTF-8 replaced), so
 * the output is valid JSON whatever the input.
 *
 * All functions are thread-safe (no shared state).
 */
#ifndef CTR_PROTO_RANK_H
#define CTR_PROTO_RANK_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/arena.h"
#include "proto/buf.h"

#define PROTO_RANK_ID_MAX 256          /* bytes of a string user_id */
#define PROTO_RANK_REQUEST_ID_MAX 128  /* bytes of request_id */
#define PROTO_RANK_MODEL_MAX 63        /* bytes of a model name */
#define PROTO_RANK_EXPLAIN_MAX 16      /* most behaviours explained */

/* What the decoder needs to know of the model and the limits. */
typedef struct proto_rank_schema {
    int num_ctx;
    const char *const *ctx_name;  /* num_ctx field names, model order */
    int max_cand;                 /* more: CTR_ETOOMANY; negative: no
                                     bound */
    int max_seq;                  /* longer item_seq: CTR_ETOOBIG;
                                     negative: no bound */
    const char *name;             /* proto_rank_request_decode: the one
                                     model name accepted in "model"; NULL
                                     accepts any */
} proto_rank_schema;

/* Chooses the model a request is for, by the name in its "model" field
 * (NULL: it names none, so the default), and returns the schema to decode
 * the rest with; NULL when there is no model of that name (the decode then
 * fails with CTR_ENOTFOUND).  The decoder may call it more than once for
 * one request (its fast path may have begun with the default before it
 * meets "model" and hand over to the tree path); the schema the request
 * was decoded with is the last one returned. */
typedef const proto_rank_schema *(*proto_rank_pick)(void *arg, const char *model);

typedef struct proto_rank_request {
    const char *user_id;          /* integer ids kept as decimal text */
    int user_id_is_int;
    const char *request_id;       /* NULL when absent */
    int64_t *cand_id;             /* num_cand */
    int32_t *ctx;                 /* num_cand x num_ctx, row-major;
                                     missing fields are 0 (padding) */
    int num_cand;
    int has_item_seq;
    int64_t *item_seq;            /* seq_len, oldest first (NULL when
                                     absent or empty) */
    int seq_len;
    int top_k;                    /* 0 when absent */
    int deadline_ms;              /* 0 when absent */
    const char *model;            /* NULL when absent */
    int explain;                  /* 0..PROTO_RANK_EXPLAIN_MAX; 0 when
                                     absent */
} proto_rank_request;

/* Decodes a request.  Returns CTR_OK; CTR_EFORMAT for malformed JSON,
 * CTR_EINVAL for wrong types or missing fields, CTR_ETOOMANY for too many
 * candidates, CTR_ERANGE for too long a history; err says which field;
 * CTR_ENOMEM when the arena cannot grow.  A number too large for int64 or
 * double is CTR_EINVAL naming the field (jansson itself refuses to hold
 * it).  Everything out points to lives in the arena; on failure *out is
 * unspecified. */
int proto_rank_request_decode(const char *buf, size_t len,
                              const proto_rank_schema *schema, arena *a,
                              proto_rank_request *out, char *err,
                              size_t errlen);

/* The same for a caller with several models: pick (with arg) chooses the
 * schema by the request's "model" field. */
int proto_rank_request_decode_pick(const char *buf, size_t len, proto_rank_pick pick,
                                   void *arg, arena *a, proto_rank_request *out, char *err,
                                   size_t errlen);

/* The two halves of proto_rank_request_decode, for tests and benchmarks.
 * _fast decodes the plain, valid subset of requests in one pass and returns
 * 1, or declines with 0 (out is then unspecified); _tree (jansson) decodes
 * anything, with the error messages.  Wherever _fast returns 1, both give
 * the same out. */
int proto_rank_request_decode_fast(const char *buf, size_t len, proto_rank_pick pick,
                                   void *arg, arena *a, proto_rank_request *out);
int proto_rank_request_decode_tree(const char *buf, size_t len, proto_rank_pick pick,
                                   void *arg, arena *a, proto_rank_request *out, char *err,
                                   size_t errlen);

/* The picker of a single schema (arg is the proto_rank_schema): the
 * default, and the name schema->name when that is set. */
const proto_rank_schema *proto_rank_pick_one(void *schema, const char *model);

/* --- The answer --------------------------------------------------------- */

typedef struct proto_rank_item {
    int64_t item_id;
    float score;
    int cand;             /* index of the candidate in the request */
} proto_rank_item;

/* Orders n scored candidates for the answer: score descending, equal
 * scores in candidate order (a stable sort, so equal scores never swap
 * between calls), NaN last; then keeps the first top_k (top_k <= 0: all).
 * out must hold n items.  Returns how many were kept.  Allocates nothing. */
int proto_rank_order(const int64_t *cand_id, const float *score, int n,
                     int top_k, proto_rank_item *out);

/* Stages of a request whose times the answer reports (stage_us). */
#define PROTO_RANK_STAGES 5
extern const char *const proto_rank_stage_name[PROTO_RANK_STAGES];

typedef struct proto_rank_answer {
    const char *request_id;         /* NULL: the field is left out */
    const char *model_name;
    const char *model_version;
    const proto_rank_item *items;   /* in answer order (proto_rank_order) */
    int num_items;
    int64_t took_us;
    const int64_t *stage_us;        /* PROTO_RANK_STAGES times in the order
                                       of proto_rank_stage_name, or NULL
                                       (the field is left out) */
    const char *const *degraded;    /* num_degraded reasons */
    int num_degraded;
    const int64_t *unscored;        /* candidates that could not be scored
                                       (no features); the field is left
                                       out when num_unscored is 0 */
    int num_unscored;
    /* Explanations: explain_k behaviours per candidate of the request
     * (items[i].cand indexes them), as positions in hist_ids (-1: none,
     * left out) and weights.  explain_k 0: no "explain" field. */
    int explain_k;
    const int32_t *explain_pos;
    const float *explain_weight;
    const int64_t *hist_ids;
} proto_rank_answer;

/* Appends the answer's JSON (no newline) to out.  CTR_OK, or CTR_ENOMEM
 * when the buffer could not grow. */
int proto_rank_answer_encode(const proto_rank_answer *ans, proto_buf *out);

/* Appends ctr-score's output line (no newline):
 *   {"user_id": "u1" | 42, "scores": [p0, p1, ...]}
 * user_id is printed as an integer when user_id_is_int (it must then be the
 * decimal text the decoder kept), else as a string.  Scores in candidate
 * order, %.9g.  CTR_OK or CTR_ENOMEM. */
int proto_rank_scores_encode(const char *user_id, int user_id_is_int,
                             const float *scores, int n, proto_buf *out);

#endif
