/*
 * safetensors.c - strict safetensors reader (see safetensors.h).
 *
 * The header is JSON, parsed here by a small recursive-descent parser that
 * knows only what the format needs: objects, strings, non-negative integers,
 * arrays of them, and (skipped) any other JSON value inside unknown keys.
 * Depth is bounded so hostile input cannot exhaust the stack.
 */
#include "safetensors.h"

#include <stdlib.h>
#include <string.h>

#include "core/base/status.h"

#define MAX_DEPTH 32

typedef struct parser {
    const char *p, *end;
    char *err;
    size_t errlen;
    int failed;
} parser;

/* Records the first failure, with the offset into the header, which helps
 * people find the fault in a hex dump. */
static int fail_at(parser *ps, const char *start, const char *what) {
    if (!ps->failed)
        ctr_fail(ps->err, ps->errlen, CTR_EFORMAT,
                 "safetensors header: %s at header byte %ld", what,
                 (long)(ps->p - start));
    ps->failed = 1;
    return -1;
}

static void skip_ws(parser *ps) {
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int expect(parser *ps, char c) {
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != c) return -1;
    ps->p++;
    return 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Four hex digits at p into *cp; -1 if any is not one. */
static int hex4(const char *p, unsigned *cp) {
    *cp = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0) return -1;
        *cp = *cp * 16 + (unsigned)h;
    }
    return 0;
}

/* The escape after a backslash (ps->p at its letter) as a code point;
 * a \u surrogate pair is combined, a lone surrogate refused.  -1 if
 * invalid. */
static int parse_escape(parser *ps, unsigned *cp) {
    if (ps->p >= ps->end) return -1;
    unsigned char c = (unsigned char)*ps->p++;
    switch (c) {
    case '"': case '\\': case '/': *cp = c; return 0;
    case 'b': *cp = '\b'; return 0;
    case 'f': *cp = '\f'; return 0;
    case 'n': *cp = '\n'; return 0;
    case 'r': *cp = '\r'; return 0;
    case 't': *cp = '\t'; return 0;
    case 'u': break;
    default: return -1;
    }
    if (ps->end - ps->p < 4 || hex4(ps->p, cp) < 0) return -1;
    ps->p += 4;
    if (*cp >= 0xDC00 && *cp <= 0xDFFF) return -1;
    if (*cp < 0xD800 || *cp > 0xDBFF) return 0;
    unsigned lo;
    if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || hex4(ps->p + 2, &lo) < 0 ||
        lo < 0xDC00 || lo > 0xDFFF)
        return -1;
    ps->p += 6;
    *cp = 0x10000 + ((*cp - 0xD800) << 10) + (lo - 0xDC00);
    return 0;
}

/* cp as UTF-8 at w (1 to 4 bytes); returns the end. */
static char *put_utf8(char *w, unsigned cp) {
    if (cp < 0x80) {
        *w++ = (char)cp;
    } else if (cp < 0x800) {
        *w++ = (char)(0xC0 | (cp >> 6));
        *w++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *w++ = (char)(0xE0 | (cp >> 12));
        *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *w++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *w++ = (char)(0xF0 | (cp >> 18));
        *w++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *w++ = (char)(0x80 | (cp & 0x3F));
    }
    return w;
}

/* Parses a JSON string; on success *out is a malloc'd UTF-8 copy (when out
 * is non-NULL).  \u escapes become UTF-8; surrogate pairs are combined. */
static int parse_string(parser *ps, char **out) {
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '"') return -1;
    ps->p++;
    const char *s = ps->p;
    /* Find the closing quote first: the decoded string is never longer
     * than its source, so that bounds the copy. */
    while (s < ps->end && *s != '"') {
        if (*s == '\\') s++;
        s++;
    }
    if (s >= ps->end) return -1;
    char *buf = NULL, *w = NULL;
    if (out) {
        buf = malloc((size_t)(s - ps->p) + 1);
        if (!buf) return -1;
        w = buf;
    }
    while (ps->p < ps->end && *ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p++;
        if (c < 0x20) goto bad;
        if (c != '\\') {
            if (w) *w++ = (char)c;
            continue;
        }
        unsigned cp;
        if (parse_escape(ps, &cp) < 0) goto bad;
        /* An escape takes at least 2 source bytes and a \u one 6, so the
         * UTF-8 form (at most 4 bytes) always fits in buf. */
        if (w) w = put_utf8(w, cp);
    }
    if (ps->p >= ps->end) goto bad;
    ps->p++; /* closing quote */
    if (out) {
        *w = '\0';
        if (strlen(buf) != (size_t)(w - buf)) goto bad; /* embedded NUL */
        *out = buf;
    }
    return 0;
bad:
    free(buf);
    return -1;
}

/* A non-negative integer that fits in 2^62 (offsets and dims). */
static int parse_uint(parser *ps, uint64_t *out) {
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return -1;
    uint64_t v = 0;
    int digits = 0;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        if (v > (UINT64_C(1) << 62) / 10) return -1;
        v = v * 10 + (uint64_t)(*ps->p - '0');
        ps->p++;
        digits++;
    }
    if (digits > 1 && ps->p[-digits] == '0') return -1; /* leading zero */
    if (ps->p < ps->end && (*ps->p == '.' || *ps->p == 'e' || *ps->p == 'E'))
        return -1;
    *out = v;
    return 0;
}

/* Skips any JSON value (used for unknown keys). */
static int skip_value(parser *ps, int depth) {
    if (depth > MAX_DEPTH) return -1;
    skip_ws(ps);
    if (ps->p >= ps->end) return -1;
    char c = *ps->p;
    if (c == '"') return parse_string(ps, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        ps->p++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == close) { ps->p++; return 0; }
        for (;;) {
            if (c == '{') {
                if (parse_string(ps, NULL) < 0 || expect(ps, ':') < 0) return -1;
            }
            if (skip_value(ps, depth + 1) < 0) return -1;
            skip_ws(ps);
            if (ps->p >= ps->end) return -1;
            if (*ps->p == ',') { ps->p++; continue; }
            if (*ps->p == close) { ps->p++; return 0; }
            return -1;
        }
    }
    /* number, true, false, null */
    const char *s = ps->p;
    while (ps->p < ps->end && strchr("+-0123456789.eEtrufalsn", *ps->p)) ps->p++;
    return ps->p > s ? 0 : -1;
}

/* [uint, uint, ...] into v (at most max entries); *n gets the count. */
static int parse_uint_array(parser *ps, uint64_t *v, int max, int *n) {
    if (expect(ps, '[') < 0) return -1;
    *n = 0;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') { ps->p++; return 0; }
    for (;;) {
        if (*n >= max) return -1;
        if (parse_uint(ps, &v[(*n)++]) < 0) return -1;
        skip_ws(ps);
        if (ps->p >= ps->end) return -1;
        if (*ps->p == ',') { ps->p++; continue; }
        if (*ps->p == ']') { ps->p++; return 0; }
        return -1;
    }
}

static int parse_tensor(parser *ps, const char *start, st_tensor *t) {
    int have_dtype = 0, have_shape = 0, have_off = 0;
    if (expect(ps, '{') < 0) return fail_at(ps, start, "expected an object for a tensor");
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        return fail_at(ps, start, "empty tensor entry");
    }
    for (;;) {
        char *key = NULL;
        if (parse_string(ps, &key) < 0 || expect(ps, ':') < 0) {
            free(key);
            return fail_at(ps, start, "expected a key");
        }
        int r = 0;
        if (strcmp(key, "dtype") == 0) {
            char *d = NULL;
            r = parse_string(ps, &d);
            if (r == 0 && strlen(d) < sizeof t->dtype) strcpy(t->dtype, d);
            else r = -1;
            free(d);
            have_dtype = 1;
        } else if (strcmp(key, "shape") == 0) {
            uint64_t dims[ST_MAX_DIMS];
            int n = 0;
            r = parse_uint_array(ps, dims, ST_MAX_DIMS, &n);
            if (r == 0) {
                t->ndim = n;
                for (int i = 0; i < n; i++) t->shape[i] = (int64_t)dims[i];
            }
            have_shape = 1;
        } else if (strcmp(key, "data_offsets") == 0) {
            uint64_t off[2];
            int n = 0;
            r = parse_uint_array(ps, off, 2, &n);
            if (r == 0 && n == 2) { t->begin = off[0]; t->end = off[1]; }
            else r = -1;
            have_off = 1;
        } else {
            r = skip_value(ps, 1);
        }
        free(key);
        if (r < 0) return fail_at(ps, start, "bad tensor field");
        skip_ws(ps);
        if (ps->p >= ps->end) return fail_at(ps, start, "unterminated tensor entry");
        if (*ps->p == ',') { ps->p++; continue; }
        if (*ps->p == '}') { ps->p++; break; }
        return fail_at(ps, start, "expected ',' or '}'");
    }
    if (!have_dtype || !have_shape || !have_off)
        return fail_at(ps, start, "tensor entry lacks dtype, shape or data_offsets");
    return 0;
}

static int parse_metadata(parser *ps, const char *start, st_file *f) {
    if (expect(ps, '{') < 0) return fail_at(ps, start, "__metadata__ must be an object");
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') { ps->p++; return 0; }
    for (;;) {
        char *k = NULL, *v = NULL;
        if (parse_string(ps, &k) < 0 || expect(ps, ':') < 0 || parse_string(ps, &v) < 0) {
            free(k);
            free(v);
            return fail_at(ps, start, "__metadata__ values must be strings");
        }
        if (f->num_meta >= ST_MAX_TENSORS) {
            free(k);
            free(v);
            return fail_at(ps, start, "too many __metadata__ entries");
        }
        st_meta *nm = realloc(f->meta, (size_t)(f->num_meta + 1) * sizeof *nm);
        if (!nm) { free(k); free(v); return fail_at(ps, start, "out of memory"); }
        f->meta = nm;
        f->meta[f->num_meta].key = k;
        f->meta[f->num_meta].value = v;
        f->num_meta++;
        skip_ws(ps);
        if (ps->p >= ps->end) return fail_at(ps, start, "unterminated __metadata__");
        if (*ps->p == ',') { ps->p++; continue; }
        if (*ps->p == '}') { ps->p++; return 0; }
        return fail_at(ps, start, "expected ',' or '}' in __metadata__");
    }
}

int st_dtype_size(const char *dtype) {
    static const struct { const char *name; int size; } sizes[] = {
        {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
        {"I16", 2}, {"I8", 1}, {"U8", 1}, {"BOOL", 1}, {"U16", 2}, {"U32", 4},
        {"U64", 8}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (strcmp(dtype, sizes[i].name) == 0) return sizes[i].size;
    return 0;
}

/* One "name": value entry of the header object: the metadata map, or a
 * tensor appended to out.  -1 with the message set. */
static int parse_entry(parser *ps, const char *start, st_file *out) {
    char *name = NULL;
    if (parse_string(ps, &name) < 0 || expect(ps, ':') < 0) {
        free(name);
        return fail_at(ps, start, "expected a tensor name");
    }
    if (strcmp(name, "__metadata__") == 0) {
        free(name);
        return parse_metadata(ps, start, out);
    }
    const char *why = st_find(out, name)                    ? "duplicate tensor name"
                      : out->num_tensors >= ST_MAX_TENSORS ? "too many tensors"
                                                            : NULL;
    st_tensor *nt = why ? NULL : realloc(out->tensors, (size_t)(out->num_tensors + 1) * sizeof *nt);
    if (!nt) {
        free(name);
        return fail_at(ps, start, why ? why : "out of memory");
    }
    out->tensors = nt;
    st_tensor *t = &out->tensors[out->num_tensors++];
    memset(t, 0, sizeof *t);
    t->name = name;
    return parse_tensor(ps, start, t);
}

/* The header: one JSON object of entries, nothing after it. */
static int parse_header(parser *ps, const char *start, st_file *out) {
    if (expect(ps, '{') < 0) return fail_at(ps, start, "header is not a JSON object");
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
    } else {
        for (;;) {
            if (parse_entry(ps, start, out) < 0) return -1;
            skip_ws(ps);
            if (ps->p >= ps->end) return fail_at(ps, start, "unterminated header");
            if (*ps->p == ',') {
                ps->p++;
                continue;
            }
            if (*ps->p == '}') {
                ps->p++;
                break;
            }
            return fail_at(ps, start, "expected ',' or '}'");
        }
    }
    skip_ws(ps);
    if (ps->p != ps->end) return fail_at(ps, start, "trailing bytes after the header object");
    return 0;
}

/* A tensor's entry against the data: known dtype, byte length = elements x
 * size, inside the data buffer (data_len bytes). */
static int check_tensor(const st_tensor *t, size_t data_len, char *err, size_t errlen) {
    int es = st_dtype_size(t->dtype);
    if (!es)
        return ctr_fail(err, errlen, CTR_EFORMAT, "tensor %s: unknown dtype \"%s\"", t->name,
                        t->dtype);
    uint64_t n = 1;
    for (int d = 0; d < t->ndim; d++) {
        uint64_t dim = (uint64_t)t->shape[d];
        if (dim != 0 && n > (UINT64_C(1) << 62) / dim)
            return ctr_fail(err, errlen, CTR_EFORMAT, "tensor %s: shape too large", t->name);
        n *= dim;
    }
    if (t->end < t->begin || t->end > data_len)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "tensor %s: data_offsets [%llu, %llu] outside the data (%zu bytes; "
                        "file truncated?)", t->name, (unsigned long long)t->begin,
                        (unsigned long long)t->end, data_len);
    if (t->end - t->begin != n * (uint64_t)es)
        return ctr_fail(err, errlen, CTR_EFORMAT, "tensor %s: %llu bytes for %llu elements of %s",
                        t->name, (unsigned long long)(t->end - t->begin), (unsigned long long)n,
                        t->dtype);
    return CTR_OK;
}

int st_parse(const void *buf, size_t len, st_file *out, char *err, size_t errlen) {
    const unsigned char *b = buf;
    memset(out, 0, sizeof *out);
    if (len < 8)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "file too short for a safetensors header (%zu bytes)", len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    if (hlen < 2 || hlen > ST_MAX_HEADER || hlen > len - 8)
        return ctr_fail(err, errlen, CTR_EFORMAT,
                        "bad header length %llu (file has %zu bytes)",
                        (unsigned long long)hlen, len);
    const char *start = (const char *)b + 8;
    const unsigned char *data = b + 8 + hlen;
    size_t data_len = len - 8 - (size_t)hlen;
    parser ps = {start, start + hlen, err, errlen, 0};
    if (parse_header(&ps, start, out) < 0) goto fail;
    for (int i = 0; i < out->num_tensors; i++) {
        st_tensor *t = &out->tensors[i];
        if (check_tensor(t, data_len, err, errlen) < 0) goto fail;
        t->data = data + t->begin;
    }
    return CTR_OK;
fail:
    st_free(out);
    return CTR_EFORMAT;
}

void st_free(st_file *f) {
    for (int i = 0; i < f->num_tensors; i++) free(f->tensors[i].name);
    for (int i = 0; i < f->num_meta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->tensors);
    free(f->meta);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
    for (int i = 0; i < f->num_tensors; i++)
        if (f->tensors[i].name && strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

const char *st_meta_get(const st_file *f, const char *key) {
    for (int i = 0; i < f->num_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}
