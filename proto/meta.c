/* meta.c - the feature-set marker's JSON, see meta.h. */
#include "meta.h"

#include <stdio.h>
#include <string.h>

#include "core/base/status.h"
#include "field.h"

int proto_meta_encode(const proto_meta *m, proto_buf *b) {
    proto_buf_printf(b, "{\"format\":%d,\"num_tags\":%d,\"mm_dim\":%d,\"items\":%lld,"
                        "\"users\":%lld,\"loaded_at\":%.3f,\"model_version\":",
                     m->format, m->num_tags, m->mm_dim, (long long)m->items,
                     (long long)m->users, m->loaded_at);
    proto_buf_json_cstr(b, m->model_version);
    proto_buf_printf(b, ",\"item_changes\":%llu}", (unsigned long long)m->item_changes);
    return proto_buf_ok(b) ? CTR_OK : CTR_ENOMEM;
}

static int get_int(json_t *root, const char *key, int64_t lo, int64_t hi, int64_t *out,
                   char *err, size_t errlen) {
    json_t *v = json_object_get(root, key);
    if (!v || !json_is_integer(v))
        return ctr_fail(err, errlen, CTR_EFORMAT, "feature-set marker: \"%s\" %s", key,
                        v ? "is not an integer" : "is missing");
    *out = json_integer_value(v);
    if (*out < lo || *out > hi)
        return ctr_fail(err, errlen, CTR_EFORMAT, "feature-set marker: \"%s\" out of range",
                        key);
    return CTR_OK;
}

int proto_meta_decode(const char *buf, size_t len, proto_meta *out, char *err,
                      size_t errlen) {
    memset(out, 0, sizeof *out);
    json_t *root;
    int rc = proto_field_parse_object(buf, len, "feature-set marker", &root, err, errlen);
    if (rc < 0) return CTR_EFORMAT;
    int64_t v = 0;
    if ((rc = get_int(root, "format", 0, 1 << 30, &v, err, errlen)) < 0) goto done;
    out->format = (int)v;
    if (out->format != PROTO_META_FORMAT) {
        rc = ctr_fail(err, errlen, CTR_EFORMAT, "feature-set marker format %d, this build "
                      "reads %d", out->format, PROTO_META_FORMAT);
        goto done;
    }
    if ((rc = get_int(root, "num_tags", 0, 255, &v, err, errlen)) < 0) goto done;
    out->num_tags = (int)v;
    if ((rc = get_int(root, "mm_dim", 0, 65535, &v, err, errlen)) < 0) goto done;
    out->mm_dim = (int)v;
    if ((rc = get_int(root, "items", 0, INT64_MAX, &out->items, err, errlen)) < 0) goto done;
    if ((rc = get_int(root, "users", 0, INT64_MAX, &out->users, err, errlen)) < 0) goto done;
    json_t *t = json_object_get(root, "loaded_at");
    if (!t || !json_is_number(t)) {
        rc = ctr_fail(err, errlen, CTR_EFORMAT, "feature-set marker: \"loaded_at\" %s",
                      t ? "is not a number" : "is missing");
        goto done;
    }
    out->loaded_at = json_number_value(t);
    json_t *mv = json_object_get(root, "model_version");
    if (mv && json_is_string(mv))
        snprintf(out->model_version, sizeof out->model_version, "%s", json_string_value(mv));
    json_t *ic = json_object_get(root, "item_changes");
    if (ic && (!json_is_integer(ic) || json_integer_value(ic) < 0)) {
        rc = ctr_fail(err, errlen, CTR_EFORMAT,
                      "feature-set marker: \"item_changes\" is not a count");
        goto done;
    }
    out->item_changes = ic ? (uint64_t)json_integer_value(ic) : 0;
    rc = CTR_OK;
done:
    json_decref(root);
    return rc;
}
