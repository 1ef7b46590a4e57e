/*
 * records.c - item and user lines of the JSON Lines files, see records.h.
 *
 * Workload: ctr-score and ctr-load read these once at start (about 92k
 * item lines of ~1.5 kB, up to a million user lines), so the decoder goes
 * through a jansson tree and copies what it keeps into the caller's arena;
 * the tree is freed before returning.  Unknown fields are ignored so that
 * the files may carry columns the scorer does not use (labels, timestamps).
 */
#include "records.h"

#include <string.h>

#include "core/base/status.h"
#include "field.h"

#define RECORDS_USER_ID_MAX 256

/* A required member, or a "missing field" error. */
static int member(json_t *obj, const char *key, json_t **out, char *err,
                  size_t errlen) {
    *out = json_object_get(obj, key);
    if (!*out)
        return proto_field_fail(err, errlen, CTR_EINVAL, PROTO_PATH(key),
                                "missing field");
    return CTR_OK;
}

static int item_fields(json_t *root, const proto_item_schema *sch, arena *a,
                       proto_item *out, char *err, size_t errlen) {
    json_t *v;
    int rc;
    const int max_tags = sch->max_tags, mm_dim = sch->mm_dim;
    memset(out, 0, sizeof *out);
    if ((rc = member(root, "item_id", &v, err, errlen)) < 0) return rc;
    if ((rc = proto_field_int64(v, PROTO_PATH("item_id"), &out->item_id, err,
                                errlen)) < 0)
        return rc;
    if (sch->cate) {
        if ((rc = member(root, "cate_id", &v, err, errlen)) < 0) return rc;
        if ((rc = proto_field_int32(v, PROTO_PATH("cate_id"), &out->cate, err,
                                    errlen)) < 0)
            return rc;
        out->has_cate = 1;
    }
    if (max_tags < 0) goto mm;

    if ((rc = member(root, "item_tags", &v, err, errlen)) < 0) return rc;
    if (!json_is_array(v))
        return proto_field_fail(err, errlen, CTR_EINVAL,
                                PROTO_PATH("item_tags"),
                                "expected an array of integers, got %s",
                                proto_field_kind(v));
    size_t nt = json_array_size(v);
    if (nt > (size_t)(max_tags < 0 ? 0 : max_tags))
        return proto_field_fail(err, errlen, CTR_EINVAL,
                                PROTO_PATH("item_tags"),
                                "%zu tags, at most %d allowed", nt, max_tags);
    out->num_tags = (int)nt;
    out->tags = arena_alloc(a, (nt ? nt : 1) * sizeof *out->tags,
                            _Alignof(int32_t));
    if (!out->tags) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    for (size_t i = 0; i < nt; i++)
        if ((rc = proto_field_int32(json_array_get(v, i),
                                    (proto_path){"item_tags", (long)i, NULL},
                                    &out->tags[i], err, errlen)) < 0)
            return rc;

mm:
    if (mm_dim < 0) return CTR_OK;
    if ((rc = member(root, "item_emb_d128", &v, err, errlen)) < 0) return rc;
    if (!json_is_array(v))
        return proto_field_fail(err, errlen, CTR_EINVAL,
                                PROTO_PATH("item_emb_d128"),
                                "expected an array of numbers, got %s",
                                proto_field_kind(v));
    size_t nm = json_array_size(v);
    if (nm != (size_t)mm_dim)
        return proto_field_fail(err, errlen, CTR_EINVAL,
                                PROTO_PATH("item_emb_d128"),
                                "%zu numbers, the model needs %d", nm, mm_dim);
    out->mm_dim = mm_dim;
    out->mm = arena_alloc(a, (nm ? nm : 1) * sizeof *out->mm,
                          _Alignof(float));
    if (!out->mm) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    for (size_t i = 0; i < nm; i++)
        if ((rc = proto_field_float(json_array_get(v, i),
                                    (proto_path){"item_emb_d128", (long)i,
                                                 NULL},
                                    &out->mm[i], err, errlen)) < 0)
            return rc;
    return CTR_OK;
}

int proto_item_decode_schema(const char *line, size_t len,
                             const proto_item_schema *sch, arena *a,
                             proto_item *out, char *err, size_t errlen) {
    json_t *root;
    int rc = proto_field_parse_object(line, len, "item", &root, err, errlen);
    if (rc < 0) return rc;
    rc = item_fields(root, sch, a, out, err, errlen);
    json_decref(root);
    return rc;
}

int proto_item_decode(const char *line, size_t len, int max_tags, int mm_dim,
                      arena *a, proto_item *out, char *err, size_t errlen) {
    /* Both fields read (a negative size allows nothing, as it always
     * has); no category. */
    proto_item_schema sch = {max_tags < 0 ? 0 : max_tags, mm_dim < 0 ? 0 : mm_dim, 0};
    return proto_item_decode_schema(line, len, &sch, a, out, err, errlen);
}

int proto_user_decode(const char *line, size_t len, int max_seq, arena *a,
                      proto_user *out, char *err, size_t errlen) {
    json_t *root, *v;
    int rc = proto_field_parse_object(line, len, "user", &root, err, errlen);
    if (rc < 0) return rc;
    if ((rc = member(root, "user_id", &v, err, errlen)) < 0) goto done;
    if ((rc = proto_field_id(v, PROTO_PATH("user_id"), RECORDS_USER_ID_MAX, a,
                             &out->user_id, &out->user_id_is_int, err,
                             errlen)) < 0)
        goto done;
    if ((rc = member(root, "item_seq", &v, err, errlen)) < 0) goto done;
    rc = proto_field_int64_array(v, PROTO_PATH("item_seq"), max_seq, a,
                                 &out->item_seq, &out->seq_len, err, errlen);
done:
    json_decref(root);
    return rc;
}

int proto_event_decode(const char *line, size_t len, int max_seq, arena *a,
                       proto_user *out, char *err, size_t errlen) {
    json_t *root, *v;
    int rc = proto_field_parse_object(line, len, "event", &root, err, errlen);
    if (rc < 0) return rc;
    if ((rc = member(root, "user_id", &v, err, errlen)) < 0) goto done;
    if ((rc = proto_field_id(v, PROTO_PATH("user_id"), RECORDS_USER_ID_MAX, a,
                             &out->user_id, &out->user_id_is_int, err, errlen)) < 0)
        goto done;
    json_t *one = json_object_get(root, "item_id"), *seq = json_object_get(root, "item_seq");
    if (!one == !seq) {
        rc = proto_field_fail(err, errlen, CTR_EINVAL, PROTO_PATH("item_id"),
                              one ? "give item_id or item_seq, not both"
                                  : "missing field (or item_seq)");
        goto done;
    }
    if (one) {
        out->item_seq = arena_alloc(a, sizeof *out->item_seq, _Alignof(int64_t));
        if (!out->item_seq) {
            rc = ctr_fail(err, errlen, CTR_ENOMEM, "arena full");
            goto done;
        }
        out->seq_len = 1;
        rc = proto_field_int64(one, PROTO_PATH("item_id"), out->item_seq, err, errlen);
        goto done;
    }
    rc = proto_field_int64_array(seq, PROTO_PATH("item_seq"), max_seq, a, &out->item_seq,
                                 &out->seq_len, err, errlen);
    if (rc == CTR_OK && out->seq_len == 0)
        rc = proto_field_fail(err, errlen, CTR_EINVAL, PROTO_PATH("item_seq"),
                              "empty: nothing to append");
done:
    json_decref(root);
    return rc;
}
