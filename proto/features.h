/*
 * features.h - the compact binary values the feature store keeps in Redis:
 * one per item (tags and multimodal embedding) and one per user (behaviour
 * history).  ctr-load encodes them, the scoring workers decode them on every
 * request, so decoding is a bounds check and a copy, nothing more.
 *
 * Workload: a request reads one user value and up to a few hundred item
 * values (about 8 + 4 * 5 + 4 * 128 = 540 bytes each for MicroLens); a
 * history holds up to a few thousand ids.
 *
 * Every multi-byte field is little-endian whatever the host, so a value
 * written on one machine reads the same on any other.
 *
 *   item value (key <prefix>i:<item_id>, item_id in decimal):
 *     offset 0  u8   'C'
 *            1  u8   'I'
 *            2  u8   version: 1, or 2 for a value with a category
 *            3  u8   num_tags (0..255)
 *            4  u16  mm_dim (0..65535)
 *            6  u16  version 1: reserved, 0; version 2: flags, bit 0 set
 *                    (a category follows), the other bits 0
 *            8  i32  tag ids [num_tags]
 *               f32  multimodal embedding [mm_dim], IEEE 754 binary32
 *               i32  category id (version 2 only; TIN's cate_id)
 *     length: exactly 8 + 4 num_tags + 4 mm_dim (+ 4 in version 2) bytes.
 *     Values without a category are written as version 1, byte for byte
 *     what this layout has always been, so QIN and DIN features load and
 *     read as before; version 2 is written only for models that read a
 *     category (TIN).
 *
 *   user value (key <prefix>u:<user_id>, user_id as in the request):
 *     offset 0  u8   'C'
 *            1  u8   'U'
 *            2  u8   version: 2 (written now), or 1 (written before
 *                    appends existed; still read)
 *            3  u8   reserved, 0
 *            4  u32  version 2: max_seq (>= 1), the most recent ids an
 *                    append keeps (see below); version 1: count
 *            8  i32  item ids, oldest first, each 0..2^31-1 (0 is
 *                    padding, as in the model)
 *     length: 8 + 4 n bytes for n ids; in version 1 n must equal count.
 *     Version 2 drops the count so that an append is an APPEND of the new
 *     ids (the Redis function ctr_append, deploy/redis/ctr.lua) and a
 *     value is never rewritten per click: it may hold more than max_seq
 *     ids, and an append that takes it past features_user_trim_at(max_seq)
 *     cuts it back to the most recent max_seq (one rewrite every
 *     max_seq / 4 appends).  Readers keep the most recent ids they need
 *     either way.
 *
 * The decoders are strict because a value that does not match its schema
 * is a deployment error (wrong loader, wrong model, truncated write) that
 * must show, not a slightly wrong score: wrong magic, unknown version,
 * non-zero reserved bytes, a length other than the header says, more tags
 * than the model has slots, an embedding width other than the model's, a
 * non-finite float or a negative history id are all CTR_EFORMAT with a
 * message saying which.  deploy/REDIS_SCHEMA.md describes the same layout
 * for operators.
 *
 * Pure functions: no I/O, no global state; thread-safe.
 */
#ifndef CTR_PROTO_FEATURES_H
#define CTR_PROTO_FEATURES_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/arena.h"

#define FEATURES_VERSION 1          /* item without category; user as
                                       written before appends */
#define FEATURES_VERSION_CATE 2     /* item with a category */
#define FEATURES_USER_VERSION 2     /* user value written now (appendable) */
#define FEATURES_HEADER_SIZE 8
#define FEATURES_MAX_TAGS 255       /* num_tags is one byte */
#define FEATURES_MAX_MM 65535       /* mm_dim is two bytes */

/* A decoded item value.  The arrays live in the arena given to the
 * decoder; mm is 64-byte aligned, for the engine's vector code. */
typedef struct features_item {
    int32_t *tags;          /* num_tags ids; NULL when num_tags is 0 */
    int num_tags;
    float *mm;              /* mm_dim floats; NULL when mm_dim is 0 */
    int mm_dim;
    int has_cate;           /* 1 for a version 2 value */
    int32_t cate;           /* its category id (0 when has_cate is 0) */
} features_item;

/* Bytes of an encoded item value; 0 when num_tags or mm_dim is out of the
 * format's range (negative, or above FEATURES_MAX_TAGS / _MAX_MM). */
size_t features_item_size(int num_tags, int mm_dim);

/* Encodes an item into buf (cap bytes, owned by the caller); *len gets the
 * bytes written (features_item_size).  CTR_EINVAL, with a message, when
 * num_tags or mm_dim is out of range, an embedding value is not finite, or
 * cap is too small; buf is then unspecified. */
int features_item_encode(const int32_t *tags, int num_tags, const float *mm,
                         int mm_dim, void *buf, size_t cap, size_t *len,
                         char *err, size_t errlen);

/* The same with a category: a version 2 value of features_item_size + 4
 * bytes (features_item_cate_size). */
size_t features_item_cate_size(int num_tags, int mm_dim);
int features_item_encode_cate(const int32_t *tags, int num_tags, const float *mm,
                              int mm_dim, int32_t cate, void *buf, size_t cap,
                              size_t *len, char *err, size_t errlen);

/* Decodes an item value of len bytes, version 1 or 2 (has_cate says which;
 * whether the model needs the category is the caller's to check).  max_tags: tag slots the model has
 * (a value may carry fewer: the rest are padding); mm_dim: the embedding
 * width the model requires (exact).  CTR_OK and *out; CTR_EFORMAT for any
 * departure from the layout above; CTR_ENOMEM when the arena cannot grow.
 * *out is unspecified on failure (it may point to arena memory). */
int features_item_decode(const void *buf, size_t len, int max_tags,
                         int mm_dim, arena *a, features_item *out, char *err,
                         size_t errlen);

/* Bytes of an encoded user value of count ids (either version); 0 when
 * count exceeds UINT32_MAX or the size would not fit in size_t. */
size_t features_user_size(size_t count);

/* The length past which an append cuts a version 2 value back to its
 * most recent max_seq ids: max_seq + max(1, max_seq / 4) (the Redis
 * function follows the same rule). */
static inline uint64_t features_user_trim_at(uint32_t max_seq) {
    return (uint64_t)max_seq + (max_seq / 4 > 1 ? max_seq / 4 : 1);
}

/* Encodes a history (n ids, oldest first) into buf (cap bytes) as a
 * version 2 value, the one written now, whose appends keep max_seq ids
 * (1..UINT32_MAX; n itself is not cut here).  CTR_EINVAL, with a message
 * naming the position, for an id outside 0..INT32_MAX, a negative n,
 * max_seq 0, or a cap that is too small. */
int features_user_encode_v2(const int64_t *ids, int n, uint32_t max_seq, void *buf,
                            size_t cap, size_t *len, char *err, size_t errlen);

/* The same as a version 1 value (count in the header), the layout written
 * before appends existed; still read everywhere, kept for tests and for
 * tools that must feed an older reader. */
int features_user_encode(const int64_t *ids, int n, void *buf, size_t cap,
                         size_t *len, char *err, size_t errlen);

/* Checks the 8-byte header hdr of a user value that is len bytes long in
 * all, without its ids (for a reader that fetches the header and the tail
 * apart): *count gets its number of ids, *max_seq its max_seq (0 for
 * version 1).  CTR_OK; CTR_EFORMAT for a wrong magic, an unknown version,
 * a non-zero reserved byte, a length that is not 8 + 4 n (or disagrees
 * with a version 1 count), a version 2 max_seq of 0. */
int features_user_header(const void *hdr, size_t len, uint32_t *count, uint32_t *max_seq,
                         char *err, size_t errlen);

/* Decodes a user value of len bytes (either version) into the arena:
 * *ids gets the most recent min(count, keep) ids, oldest first (keep < 0:
 * all of them), *n their number (*ids is NULL when *n is 0).  The whole
 * value is checked, kept part or not.  CTR_OK; CTR_EFORMAT for a
 * malformed value; CTR_ENOMEM.  *ids and *n are unspecified on failure. */
int features_user_decode(const void *buf, size_t len, int keep, arena *a,
                         int64_t **ids, int *n, char *err, size_t errlen);

#endif
