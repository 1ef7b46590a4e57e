/*
 * features.c - encoders and strict decoders of the binary item and user
 * values, see features.h for the layout.
 *
 * Runs on every scoring request (a few hundred item values), so the decoders
 * do one pass over the bytes: the byte-by-byte little-endian reads below
 * compile to plain loads on little-endian hosts, and nothing is allocated
 * but the arena arrays the caller keeps.
 */
#include "features.h"

#include <limits.h>
#include <string.h>

#include "core/base/status.h"

#define MAGIC0 'C'
#define MAGIC_ITEM 'I'
#define MAGIC_USER 'U'

/* --- little-endian access, independent of host byte order --------------- */

static inline uint16_t get_u16(const unsigned char *p) {
    return (uint16_t)(p[0] | (unsigned)p[1] << 8);
}

static inline uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline void put_u16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static inline void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* Two's complement reinterpretation without implementation-defined
 * conversion of out-of-range unsigned values. */
static inline int32_t u32_to_i32(uint32_t u) {
    int32_t v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static inline uint32_t i32_to_u32(int32_t v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

/* Finite iff the exponent is not all ones; testing the bits avoids float
 * comparisons on signalling NaNs and works under -ffast-math. */
static inline int bits_finite(uint32_t bits) {
    return (bits & 0x7f800000u) != 0x7f800000u;
}

/* --- items ---------------------------------------------------------------- */

size_t features_item_size(int num_tags, int mm_dim) {
    if (num_tags < 0 || num_tags > FEATURES_MAX_TAGS || mm_dim < 0 ||
        mm_dim > FEATURES_MAX_MM)
        return 0;
    return FEATURES_HEADER_SIZE + 4 * (size_t)num_tags + 4 * (size_t)mm_dim;
}

size_t features_item_cate_size(int num_tags, int mm_dim) {
    size_t n = features_item_size(num_tags, mm_dim);
    return n ? n + 4 : 0;
}

static int item_encode(const int32_t *tags, int num_tags, const float *mm,
                       int mm_dim, const int32_t *cate, void *buf, size_t cap,
                       size_t *len, char *err, size_t errlen);

int features_item_encode(const int32_t *tags, int num_tags, const float *mm,
                         int mm_dim, void *buf, size_t cap, size_t *len,
                         char *err, size_t errlen) {
    return item_encode(tags, num_tags, mm, mm_dim, NULL, buf, cap, len, err,
                       errlen);
}

int features_item_encode_cate(const int32_t *tags, int num_tags, const float *mm,
                              int mm_dim, int32_t cate, void *buf, size_t cap,
                              size_t *len, char *err, size_t errlen) {
    return item_encode(tags, num_tags, mm, mm_dim, &cate, buf, cap, len, err,
                       errlen);
}

/* Version 1 without a category (cate NULL), version 2 with one. */
static int item_encode(const int32_t *tags, int num_tags, const float *mm,
                       int mm_dim, const int32_t *cate, void *buf, size_t cap,
                       size_t *len, char *err, size_t errlen) {
    if (num_tags < 0 || num_tags > FEATURES_MAX_TAGS)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "%d tags: the item format holds 0..%d", num_tags,
                        FEATURES_MAX_TAGS);
    if (mm_dim < 0 || mm_dim > FEATURES_MAX_MM)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "embedding width %d: the item format holds 0..%d",
                        mm_dim, FEATURES_MAX_MM);
    if ((num_tags && !tags) || (mm_dim && !mm))
        return ctr_fail(err, errlen, CTR_EINVAL, "NULL tags or embedding");
    size_t need = cate ? features_item_cate_size(num_tags, mm_dim)
                       : features_item_size(num_tags, mm_dim);
    if (cap < need)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "buffer of %zu bytes, item value needs %zu", cap, need);
    unsigned char *p = buf;
    p[0] = MAGIC0;
    p[1] = MAGIC_ITEM;
    p[2] = cate ? FEATURES_VERSION_CATE : FEATURES_VERSION;
    p[3] = (unsigned char)num_tags;
    put_u16(p + 4, (uint16_t)mm_dim);
    put_u16(p + 6, cate ? 1 : 0);
    p += FEATURES_HEADER_SIZE;
    for (int i = 0; i < num_tags; i++, p += 4) put_u32(p, i32_to_u32(tags[i]));
    for (int i = 0; i < mm_dim; i++, p += 4) {
        uint32_t bits;
        memcpy(&bits, &mm[i], sizeof bits);
        if (!bits_finite(bits))
            return ctr_fail(err, errlen, CTR_EINVAL,
                            "embedding[%d] is not finite", i);
        put_u32(p, bits);
    }
    if (cate) put_u32(p, i32_to_u32(*cate));
    *len = need;
    return CTR_OK;
}

int features_item_decode(const void *buf, size_t len, int max_tags,
                         int mm_dim, arena *a, features_item *out, char *err,
                         size_t errlen) {
    const unsigned char *p = buf;
    if (len < FEATURES_HEADER_SIZE)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "item value of %zu bytes is shorter than its %d-byte "
                        "header",
                        len, FEATURES_HEADER_SIZE);
    if (p[0] != MAGIC0 || p[1] != MAGIC_ITEM)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "not an item value (magic %02x %02x, expected 'C' 'I')",
                        p[0], p[1]);
    if (p[2] != FEATURES_VERSION && p[2] != FEATURES_VERSION_CATE)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "item value version %u, this build reads %d and %d",
                        p[2], FEATURES_VERSION, FEATURES_VERSION_CATE);
    const int has_cate = p[2] == FEATURES_VERSION_CATE;
    int nt = p[3];
    int md = get_u16(p + 4);
    if (get_u16(p + 6) != (has_cate ? 1 : 0))
        return ctr_fail(err, errlen, CTR_EFORMAT, has_cate
                        ? "item value flags are not 1 (category)"
                        : "item value reserved bytes are not zero");
    if (nt > max_tags)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "item value has %d tags, the model has %d slots", nt,
                        max_tags);
    if (md != mm_dim)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "item embedding width %d, the model needs %d", md,
                        mm_dim);
    size_t want = has_cate ? features_item_cate_size(nt, md)
                           : features_item_size(nt, md);
    if (len != want)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "item value of %zu bytes, its header says %zu", len,
                        want);
    p += FEATURES_HEADER_SIZE;

    out->num_tags = nt;
    out->mm_dim = md;
    out->tags = NULL;
    out->mm = NULL;
    out->has_cate = has_cate;
    out->cate = 0;
    if (nt) {
        out->tags = arena_alloc(a, (size_t)nt * sizeof *out->tags,
                                _Alignof(int32_t));
        if (!out->tags) return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
        for (int i = 0; i < nt; i++, p += 4) out->tags[i] = u32_to_i32(get_u32(p));
    }
    if (md) {
        out->mm = arena_alloc(a, (size_t)md * sizeof *out->mm, 64);
        if (!out->mm) return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
        for (int i = 0; i < md; i++, p += 4) {
            uint32_t bits = get_u32(p);
            if (!bits_finite(bits))
                return ctr_fail(err, errlen, CTR_EFORMAT,
                                "item embedding[%d] is not finite", i);
            memcpy(&out->mm[i], &bits, sizeof bits);
        }
    }
    if (has_cate) out->cate = u32_to_i32(get_u32(p));
    return CTR_OK;
}

/* --- users ---------------------------------------------------------------- */

size_t features_user_size(size_t count) {
    if (count > UINT32_MAX || count > (SIZE_MAX - FEATURES_HEADER_SIZE) / 4)
        return 0;
    return FEATURES_HEADER_SIZE + 4 * count;
}

/* Version 1 (count in the header) or 2 (max_seq in its place). */
static int user_encode(const int64_t *ids, int n, int version, uint32_t word, void *buf,
                       size_t cap, size_t *len, char *err, size_t errlen) {
    if (n < 0 || (n && !ids))
        return ctr_fail(err, errlen, CTR_EINVAL, "bad history (n = %d)", n);
    size_t need = features_user_size((size_t)n);
    if (cap < need)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "buffer of %zu bytes, user value needs %zu", cap, need);
    unsigned char *p = buf;
    p[0] = MAGIC0;
    p[1] = MAGIC_USER;
    p[2] = (unsigned char)version;
    p[3] = 0;
    put_u32(p + 4, word);
    p += FEATURES_HEADER_SIZE;
    for (int i = 0; i < n; i++, p += 4) {
        if (ids[i] < 0 || ids[i] > INT32_MAX)
            return ctr_fail(err, errlen, CTR_EINVAL,
                            "item_seq[%d] = %lld: the user format holds ids "
                            "0..%ld",
                            i, (long long)ids[i], (long)INT32_MAX);
        put_u32(p, (uint32_t)ids[i]);
    }
    *len = need;
    return CTR_OK;
}

int features_user_encode(const int64_t *ids, int n, void *buf, size_t cap,
                         size_t *len, char *err, size_t errlen) {
    return user_encode(ids, n, FEATURES_VERSION, (uint32_t)(n > 0 ? n : 0), buf, cap, len,
                       err, errlen);
}

int features_user_encode_v2(const int64_t *ids, int n, uint32_t max_seq, void *buf,
                            size_t cap, size_t *len, char *err, size_t errlen) {
    if (max_seq == 0)
        return ctr_fail(err, errlen, CTR_EINVAL, "max_seq 0: a history keeps at least one id");
    return user_encode(ids, n, FEATURES_USER_VERSION, max_seq, buf, cap, len, err, errlen);
}

int features_user_header(const void *hdr, size_t len, uint32_t *count, uint32_t *max_seq,
                         char *err, size_t errlen) {
    const unsigned char *p = hdr;
    if (len < FEATURES_HEADER_SIZE)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "user value of %zu bytes is shorter than its %d-byte "
                        "header",
                        len, FEATURES_HEADER_SIZE);
    if (p[0] != MAGIC0 || p[1] != MAGIC_USER)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "not a user value (magic %02x %02x, expected 'C' 'U')",
                        p[0], p[1]);
    if (p[2] != FEATURES_VERSION && p[2] != FEATURES_USER_VERSION)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "user value version %u, this build reads %d and %d", p[2],
                        FEATURES_VERSION, FEATURES_USER_VERSION);
    if (p[3] != 0)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "user value reserved byte is not zero");
    const uint32_t word = get_u32(p + 4);
    /* Counts compared rather than 8 + 4 count computed, which could wrap
     * where size_t is 32 bits. */
    const size_t body = len - FEATURES_HEADER_SIZE;
    if (p[2] == FEATURES_VERSION) {
        if (body % 4 != 0 || body / 4 != word)
            return ctr_fail(err, errlen, CTR_EFORMAT,
                            "user value of %zu bytes, its header says %lu ids "
                            "(%llu bytes)",
                            len, (unsigned long)word,
                            (unsigned long long)word * 4 + FEATURES_HEADER_SIZE);
        *count = word;
        *max_seq = 0;
        return CTR_OK;
    }
    if (body % 4 != 0 || body / 4 > UINT32_MAX)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "user value of %zu bytes is not 8 + 4 n", len);
    if (word == 0)
        return ctr_fail(err, errlen, CTR_EFORMAT, "user value max_seq is 0");
    *count = (uint32_t)(body / 4);
    *max_seq = word;
    return CTR_OK;
}

int features_user_decode(const void *buf, size_t len, int keep, arena *a,
                         int64_t **ids, int *n, char *err, size_t errlen) {
    const unsigned char *p = buf;
    uint32_t count, max_seq;
    int rc = features_user_header(buf, len, &count, &max_seq, err, errlen);
    if (rc < 0) return rc;
    p += FEATURES_HEADER_SIZE;

    /* Every id is checked, kept or not: a value with a bad id in its old
     * part is as corrupt as one with a bad id at the end. */
    for (uint32_t i = 0; i < count; i++)
        if (get_u32(p + 4 * (size_t)i) > INT32_MAX)
            return ctr_fail(err, errlen, CTR_EFORMAT,
                            "user value id [%lu] is negative",
                            (unsigned long)i);

    uint32_t kept = count;
    if (keep >= 0 && (uint32_t)keep < kept) kept = (uint32_t)keep;
    if (kept > INT_MAX)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "user value of %lu ids is too long",
                        (unsigned long)count);
    *n = (int)kept;
    *ids = NULL;
    if (!kept) return CTR_OK;
    int64_t *v = arena_alloc(a, (size_t)kept * sizeof *v, _Alignof(int64_t));
    if (!v) return ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
    p += 4 * (size_t)(count - kept);
    for (uint32_t i = 0; i < kept; i++, p += 4) v[i] = get_u32(p);
    *ids = v;
    return CTR_OK;
}
