/*
 * records.h - the JSON Lines records of ctr-score and ctr-load, decoded into
 * plain C structs.  This is the only way core/ and server/ see those files.
 *
 *   item:    {"item_id": 17, "item_tags": [3, 9, 0, 0, 0],
 *             "item_emb_d128": [128 numbers]}            (QIN, DIN)
 *            {"item_id": 0, "cate_id": 5}                (TIN)
 *   user:    {"user_id": "u1" | 42, "item_seq": [ids, oldest first]}
 *   event:   {"user_id": "u1" | 42, "item_id": 17}     (ctr-load --events:
 *            {"user_id": "u1" | 42, "item_seq": [ids]}  behaviours to append)
 *
 * Decoders are strict: wrong types, missing fields, non-integral ids,
 * out-of-range integers and non-finite numbers are refused with a message
 * that names the field ("item_emb_d128[7]: expected a number, got a
 * string").  Ids must be JSON integers (17, never 17.0 or "17") within
 * int64; tags must fit in int32; embedding values must be finite as
 * float32.  Unknown extra fields are allowed and ignored (the files may
 * carry columns the scorer does not use); a duplicated key is refused.
 * They check shapes only (tag count <= max_tags, embedding length ==
 * mm_dim); vocabulary ranges are the engine's business.
 * user_id is a non-empty string of at most 256 bytes, or an integer.
 * Memory: everything a decoded record points to lives in the caller's arena.
 * Thread-safe (no shared state).
 */
#ifndef CTR_PROTO_RECORDS_H
#define CTR_PROTO_RECORDS_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/arena.h"

typedef struct proto_item {
    int64_t item_id;
    int32_t *tags;          /* num_tags ids, in the file's order */
    int num_tags;
    float *mm;              /* mm_dim floats */
    int mm_dim;
    int has_cate;           /* 1 when cate_id was read */
    int32_t cate;           /* cate_id */
} proto_item;

/* Which item fields a model reads (engine.h's schema): a field it reads is
 * required, the others are ignored like any extra column. */
typedef struct proto_item_schema {
    int max_tags;           /* item_tags: at most this many; < 0: not read */
    int mm_dim;             /* item_emb_d128: exactly this many; < 0: not read */
    int cate;               /* 1: cate_id (an int32) is read */
} proto_item_schema;

typedef struct proto_user {
    const char *user_id;    /* integer ids are kept as their decimal text */
    int user_id_is_int;     /* 1 when the JSON value was an integer */
    int64_t *item_seq;      /* oldest first */
    int seq_len;
} proto_user;

/* Decodes one item line.  max_tags: tags allowed (fewer are fine: the rest
 * are padding); mm_dim: the embedding length required (the field name is
 * "item_emb_d128" whatever mm_dim is).  Returns CTR_OK; CTR_EFORMAT (with
 * line and column) when the line is not JSON; CTR_EINVAL for anything else
 * wrong; CTR_ENOMEM when the arena cannot grow.  On failure *out is
 * unspecified (and may point to arena memory). */
int proto_item_decode(const char *line, size_t len, int max_tags, int mm_dim,
                      arena *a, proto_item *out, char *err, size_t errlen);

/* The same for any schema (proto_item_decode reads item_tags and
 * item_emb_d128, no category).  Fields not read are left empty (NULL, 0). */
int proto_item_decode_schema(const char *line, size_t len,
                             const proto_item_schema *sch, arena *a,
                             proto_item *out, char *err, size_t errlen);

/* Decodes one user line.  max_seq bounds item_seq's length (CTR_ETOOBIG;
 * negative: no bound).  Other failures as for proto_item_decode.  An empty
 * item_seq is valid (item_seq is NULL then). */
int proto_user_decode(const char *line, size_t len, int max_seq, arena *a,
                      proto_user *out, char *err, size_t errlen);

/* Decodes one event line (behaviours to append to a user's history):
 * item_id (one id) or item_seq (ids, oldest first; at most max_seq of
 * them, CTR_ETOOBIG; negative: no bound), exactly one of the two and not
 * an empty item_seq, as a proto_user (item_seq of one for item_id; it
 * lives in the arena).  Other failures as for proto_user_decode. */
int proto_event_decode(const char *line, size_t len, int max_seq, arena *a,
                       proto_user *out, char *err, size_t errlen);

#endif
