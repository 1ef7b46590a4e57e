/*
 * field.c - typed JSON field access with messages that name the field, see
 * field.h.
 *
 * jansson refuses an integer past int64 as a parse error ("too big integer")
 * with only a position, but the wire format promises a message that names
 * the field.  The text before the error position has already parsed as
 * valid JSON, so walking it backwards (key before ':', element count before
 * '[') recovers the path exactly; when the walk cannot, the jansson message
 * with line and column is still given.
 */
#include "field.h"

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/base/status.h"

static void path_print(char *dst, size_t cap, proto_path p) {
    int n;
    if (p.index >= 0 && p.inner)
        n = snprintf(dst, cap, "%s[%ld].%s", p.outer, p.index, p.inner);
    else if (p.index >= 0)
        n = snprintf(dst, cap, "%s[%ld]", p.outer, p.index);
    else if (p.inner)
        n = snprintf(dst, cap, "%s.%s", p.outer, p.inner);
    else
        n = snprintf(dst, cap, "%s", p.outer);
    (void)n;
}

int proto_field_fail(char *err, size_t errlen, int status, proto_path p,
                     const char *fmt, ...) {
    if (!err || !errlen) return status;
    char path[160];
    path_print(path, sizeof path, p);
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(err, errlen, "%s: %s", path, msg);
    return status;
}

const char *proto_field_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT:  return "an object";
    case JSON_ARRAY:   return "an array";
    case JSON_STRING:  return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL:    return "a number with a fraction or exponent";
    case JSON_TRUE:
    case JSON_FALSE:   return "a boolean";
    case JSON_NULL:    return "null";
    }
    return "an unknown value";
}

int proto_field_int64(const json_t *v, proto_path p, int64_t *out, char *err,
                      size_t errlen) {
    if (!json_is_integer(v))
        return proto_field_fail(err, errlen, CTR_EINVAL, p,
                                "expected an integer, got %s",
                                proto_field_kind(v));
    *out = (int64_t)json_integer_value(v);
    return CTR_OK;
}

int proto_field_int32(const json_t *v, proto_path p, int32_t *out, char *err,
                      size_t errlen) {
    int64_t x = 0;
    int rc = proto_field_int64(v, p, &x, err, errlen);
    if (rc < 0) return rc;
    if (x < INT32_MIN || x > INT32_MAX)
        return proto_field_fail(err, errlen, CTR_EINVAL, p,
                                "%" PRId64 " is outside the int32 range", x);
    *out = (int32_t)x;
    return CTR_OK;
}

int proto_field_float(const json_t *v, proto_path p, float *out, char *err,
                      size_t errlen) {
    if (!json_is_number(v))
        return proto_field_fail(err, errlen, CTR_EINVAL, p,
                                "expected a number, got %s",
                                proto_field_kind(v));
    double d = json_number_value(v);
    /* Past FLT_MAX the cast is undefined and the value would be infinite. */
    if (!(fabs(d) <= FLT_MAX))
        return proto_field_fail(err, errlen, CTR_EINVAL, p,
                                "%g is not a finite float32", d);
    *out = (float)d;
    return CTR_OK;
}

int proto_field_int64_array(const json_t *v, proto_path p, int max_len,
                            arena *a, int64_t **out, int *n, char *err,
                            size_t errlen) {
    if (!json_is_array(v))
        return proto_field_fail(err, errlen, CTR_EINVAL, p,
                                "expected an array of integers, got %s",
                                proto_field_kind(v));
    size_t len = json_array_size(v);
    if (max_len >= 0 && len > (size_t)max_len)
        return proto_field_fail(err, errlen, CTR_ETOOBIG, p,
                                "%zu ids, at most %d allowed", len, max_len);
    if (len > INT32_MAX)
        return proto_field_fail(err, errlen, CTR_ETOOBIG, p, "too long");
    int64_t *ids = NULL;
    if (len) {
        ids = arena_alloc(a, len * sizeof *ids, _Alignof(int64_t));
        if (!ids) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < len; i++) {
        json_t *e = json_array_get(v, i);
        if (json_is_integer(e)) {
            ids[i] = (int64_t)json_integer_value(e);
            continue;
        }
        /* Only on error: the element's path is the array's, indexed. */
        char parent[160];
        path_print(parent, sizeof parent, p);
        return proto_field_fail(err, errlen, CTR_EINVAL,
                                (proto_path){parent, (long)i, NULL},
                                "expected an integer, got %s",
                                proto_field_kind(e));
    }
    *out = ids;
    *n = (int)len;
    return CTR_OK;
}

int proto_field_id(const json_t *v, proto_path p, size_t max_len, arena *a,
                   const char **text, int *is_int, char *err, size_t errlen) {
    if (json_is_string(v)) {
        size_t len = json_string_length(v);
        if (len == 0)
            return proto_field_fail(err, errlen, CTR_EINVAL, p,
                                    "must not be empty");
        if (len > max_len)
            return proto_field_fail(err, errlen, CTR_EINVAL, p,
                                    "%zu bytes, at most %zu allowed", len,
                                    max_len);
        char *s = arena_strndup(a, json_string_value(v), len);
        if (!s) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        *text = s;
        *is_int = 0;
        return CTR_OK;
    }
    if (json_is_integer(v)) {
        char tmp[32];
        int n = snprintf(tmp, sizeof tmp, "%lld",
                         (long long)json_integer_value(v));
        char *s = arena_strndup(a, tmp, (size_t)n);
        if (!s) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        *text = s;
        *is_int = 1;
        return CTR_OK;
    }
    return proto_field_fail(err, errlen, CTR_EINVAL, p,
                            "expected a string or an integer, got %s",
                            proto_field_kind(v));
}

/* --- Naming the field of a number jansson could not hold ---------------- */

static long ws_back(const char *s, long i) {
    while (i >= 0 && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' ||
                      s[i] == '\r'))
        i--;
    return i;
}

/* s[i] closes a string: where it opens, or -1.  A quote is escaped when an
 * odd number of backslashes precede it. */
static long string_open_back(const char *s, long i) {
    for (long j = i - 1; j >= 0; j--) {
        if (s[j] != '"') continue;
        long k = j - 1;
        while (k >= 0 && s[k] == '\\') k--;
        if ((j - 1 - k) % 2 == 0) return j;
    }
    return -1;
}

/* The '{' or '[' that encloses position i, counting the commas between it
 * and i at its own level (the element index inside an array). */
static long enclosing_back(const char *s, long i, long *commas) {
    long depth = 0, n = 0;
    for (long j = i - 1; j >= 0; j--) {
        char c = s[j];
        if (c == '"') {
            j = string_open_back(s, j);
            if (j < 0) return -1;
        } else if (c == '}' || c == ']') {
            depth++;
        } else if (c == '{' || c == '[') {
            if (depth == 0) { *commas = n; return j; }
            depth--;
        } else if (c == ',' && depth == 0) {
            n++;
        }
    }
    return -1;
}

#define PATH_PARTS 8

/* Renders the path of the value starting at `start` into dst; 0 if it
 * cannot be recovered (deeper than PATH_PARTS, or text we do not expect). */
static int path_back(const char *s, long start, char *dst, size_t cap) {
    struct { const char *key; long keylen; long index; } part[PATH_PARTS];
    int np = 0;
    long pos = start;
    for (;;) {
        long p = ws_back(s, pos - 1);
        if (p < 0) break;                       /* reached the top level */
        if (np == PATH_PARTS) return 0;
        long commas = 0, b;
        if (s[p] == ':') {
            long q = ws_back(s, p - 1);
            if (q < 0 || s[q] != '"') return 0;
            long o = string_open_back(s, q);
            if (o < 0) return 0;
            part[np].key = s + o + 1;
            part[np].keylen = q - o - 1;
            part[np].index = -1;
            b = enclosing_back(s, o, &commas);
            if (b < 0 || s[b] != '{') return 0;
        } else if (s[p] == ',' || s[p] == '[') {
            b = enclosing_back(s, pos, &commas);
            if (b < 0 || s[b] != '[') return 0;
            part[np].key = NULL;
            part[np].keylen = 0;
            part[np].index = commas;
        } else {
            return 0;
        }
        np++;
        pos = b;
    }
    if (np == 0) return 0;
    size_t used = 0;
    dst[0] = '\0';
    for (int i = np - 1; i >= 0 && used < cap; i--) {
        int n;
        if (part[i].key)
            n = snprintf(dst + used, cap - used, "%s%.*s",
                         i == np - 1 ? "" : ".", (int)part[i].keylen,
                         part[i].key);
        else
            n = snprintf(dst + used, cap - used, "[%ld]", part[i].index);
        if (n < 0) return 0;
        used += (size_t)n;
    }
    return 1;
}

/* jansson's error for a number it could not hold, renamed after the field. */
static int name_big_number(const char *buf, size_t len, const json_error_t *je,
                           char *err, size_t errlen) {
    const char *what;
    if (strncmp(je->text, "too big integer", 15) == 0 ||
        strncmp(je->text, "too big negative integer", 24) == 0)
        what = "integer outside the int64 range";
    else if (strncmp(je->text, "real number overflow", 20) == 0)
        what = "number too large";
    else
        return 0;
    /* The error position is the end of the number's text. */
    long end = je->position;
    if (end <= 0 || (size_t)end > len) return 0;
    long start = end;
    while (start > 0 && strchr("0123456789+-.eE", buf[start - 1]) &&
           buf[start - 1] != '\0')
        start--;
    if (start == end) return 0;
    char path[160];
    if (!path_back(buf, start, path, sizeof path)) return 0;
    if (err && errlen) snprintf(err, errlen, "%s: %s", path, what);
    return 1;
}

int proto_field_parse_object(const char *buf, size_t len, const char *what,
                             json_t **out, char *err, size_t errlen) {
    json_error_t je;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (name_big_number(buf, len, &je, err, errlen)) return CTR_EINVAL;
        return ctr_fail(err, errlen, CTR_EFORMAT, "line %d, column %d: %s",
                        je.line, je.column, je.text);
    }
    if (!json_is_object(root)) {
        int rc = proto_field_fail(err, errlen, CTR_EINVAL, PROTO_PATH(what),
                                  "expected an object, got %s",
                                  proto_field_kind(root));
        json_decref(root);
        return rc;
    }
    *out = root;
    return CTR_OK;
}
