/*
 * rank.c - the ranking request decoder and the answer encoders, see rank.h.
 *
 * Workload: one request per call, up to max_cand (256..1024) candidates of
 * a few fields each, on the server's request path.  Decoding goes through
 * jansson (the tree is freed before returning) and copies into the
 * request's arena.  Encoding prints straight into a reusable buffer, and
 * ordering is an in-place heapsort because glibc's qsort may malloc and the
 * answer path must not.
 */
#include "rank.h"

#include <limits.h>
#include <math.h>
#include <string.h>

#include "core/base/status.h"
#include "field.h"

/* --- Decoding ----------------------------------------------------------- */

static int decode_candidate(json_t *c, long i, const proto_rank_schema *sc,
                            int64_t *id, int32_t *ctx, char *err,
                            size_t errlen) {
    if (!json_is_object(c))
        return proto_field_fail(err, errlen, CTR_EINVAL,
                                (proto_path){"candidates", i, NULL},
                                "expected an object, got %s",
                                proto_field_kind(c));
    const char *key;
    json_t *v;
    int have_id = 0, rc;
    for (int k = 0; k < sc->num_ctx; k++) ctx[k] = 0;
    json_object_foreach(c, key, v) {
        proto_path p = {"candidates", i, key};
        if (strcmp(key, "item_id") == 0) {
            if ((rc = proto_field_int64(v, p, id, err, errlen)) < 0) return rc;
            have_id = 1;
            continue;
        }
        int k = 0;
        while (k < sc->num_ctx && strcmp(key, sc->ctx_name[k]) != 0) k++;
        if (k == sc->num_ctx)
            return proto_field_fail(err, errlen, CTR_EINVAL, p,
                                    "unknown field (a candidate has item_id "
                                    "and the model's context fields%s)",
                                    sc->num_ctx ? "" : ", of which it has none");
        if ((rc = proto_field_int32(v, p, &ctx[k], err, errlen)) < 0) return rc;
    }
    if (!have_id)
        return proto_field_fail(err, errlen, CTR_EINVAL,
                                (proto_path){"candidates", i, "item_id"},
                                "missing field");
    return CTR_OK;
}

static int decode_candidates(json_t *v, const proto_rank_schema *sc,
                             arena *a, proto_rank_request *out, char *err,
                             size_t errlen) {
    if (!json_is_array(v))
        return proto_field_fail(err, errlen, CTR_EINVAL,
                                PROTO_PATH("candidates"),
                                "expected an array of objects, got %s",
                                proto_field_kind(v));
    size_t n = json_array_size(v);
    if (sc->max_cand >= 0 && n > (size_t)sc->max_cand)
        return proto_field_fail(err, errlen, CTR_ETOOMANY,
                                PROTO_PATH("candidates"),
                                "%zu given, at most %d allowed", n,
                                sc->max_cand);
    if (n > (size_t)(INT_MAX / (sc->num_ctx + 1)))
        return proto_field_fail(err, errlen, CTR_ETOOMANY,
                                PROTO_PATH("candidates"), "%zu given", n);
    size_t nc = n ? n : 1;
    out->cand_id = arena_alloc(a, nc * sizeof *out->cand_id, 64);
    out->ctx = arena_alloc(a, nc * (size_t)(sc->num_ctx ? sc->num_ctx : 1) *
                                  sizeof *out->ctx, 64);
    if (!out->cand_id || !out->ctx)
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        int rc = decode_candidate(json_array_get(v, i), (long)i, sc,
                                  &out->cand_id[i],
                                  out->ctx + i * (size_t)sc->num_ctx, err,
                                  errlen);
        if (rc < 0) return rc;
    }
    out->num_cand = (int)n;
    return CTR_OK;
}

/* Refuses unknown names first: a typo is the likelier mistake. */
static int check_names(json_t *root, char *err, size_t errlen) {
    static const char *const known[] = {"user_id", "candidates", "item_seq", "top_k",
                                        "request_id", "deadline_ms", "model", "explain"};
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        size_t k = 0;
        while (k < sizeof known / sizeof *known && strcmp(key, known[k]) != 0) k++;
        if (k == sizeof known / sizeof *known)
            return proto_field_fail(err, errlen, CTR_EINVAL, PROTO_PATH(key),
                                    "unknown field (a request has user_id, "
                                    "candidates, item_seq, top_k, "
                                    "request_id, deadline_ms, model, explain)");
    }
    return CTR_OK;
}

/* "model", then the schema it picks. */
static int decode_model(json_t *root, proto_rank_pick pick, void *arg, arena *a,
                        proto_rank_request *out, const proto_rank_schema **sc, char *err,
                        size_t errlen) {
    json_t *v = json_object_get(root, "model");
    if (v) {
        if (!json_is_string(v))
            return proto_field_fail(err, errlen, CTR_EINVAL, PROTO_PATH("model"),
                                    "expected a string, got %s", proto_field_kind(v));
        size_t len = json_string_length(v);
        if (len == 0 || len > PROTO_RANK_MODEL_MAX || memchr(json_string_value(v), 0, len))
            return proto_field_fail(err, errlen, CTR_EINVAL, PROTO_PATH("model"),
                                    "%zu bytes, 1 to %d allowed (no NUL)", len,
                                    PROTO_RANK_MODEL_MAX);
        out->model = arena_strndup(a, json_string_value(v), len);
        if (!out->model) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    }
    *sc = pick(arg, out->model);
    if (!*sc)
        return proto_field_fail(err, errlen, CTR_ENOTFOUND, PROTO_PATH("model"),
                                "no model named \"%s\" here", out->model ? out->model : "");
    return CTR_OK;
}

static int decode_fields(json_t *root, const proto_rank_schema *sc, arena *a,
                         proto_rank_request *out, char *err, size_t errlen) {
    json_t *v;
    int rc;

    if (!(v = json_object_get(root, "user_id")))
        return proto_field_fail(err, errlen, CTR_EINVAL,
                                PROTO_PATH("user_id"), "missing field");
    if ((rc = proto_field_id(v, PROTO_PATH("user_id"), PROTO_RANK_ID_MAX, a,
                             &out->user_id, &out->user_id_is_int, err,
                             errlen)) < 0)
        return rc;

    if ((v = json_object_get(root, "request_id"))) {
        if (!json_is_string(v))
            return proto_field_fail(err, errlen, CTR_EINVAL,
                                    PROTO_PATH("request_id"),
                                    "expected a string, got %s",
                                    proto_field_kind(v));
        size_t len = json_string_length(v);
        if (len == 0 || len > PROTO_RANK_REQUEST_ID_MAX)
            return proto_field_fail(err, errlen, CTR_EINVAL,
                                    PROTO_PATH("request_id"),
                                    "%zu bytes, 1 to %d allowed", len,
                                    PROTO_RANK_REQUEST_ID_MAX);
        out->request_id = arena_strndup(a, json_string_value(v), len);
        if (!out->request_id)
            return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    }

    if ((v = json_object_get(root, "explain"))) {
        int64_t k;
        if ((rc = proto_field_int64(v, PROTO_PATH("explain"), &k, err, errlen)) < 0)
            return rc;
        if (k < 0)
            return proto_field_fail(err, errlen, CTR_EINVAL, PROTO_PATH("explain"),
                                    "must be 0 or more");
        if (k > PROTO_RANK_EXPLAIN_MAX)
            return proto_field_fail(err, errlen, CTR_ERANGE, PROTO_PATH("explain"),
                                    "%lld asked, at most %d behaviours are explained",
                                    (long long)k, PROTO_RANK_EXPLAIN_MAX);
        out->explain = (int)k;
    }

    if ((v = json_object_get(root, "top_k"))) {
        int64_t k;
        if ((rc = proto_field_int64(v, PROTO_PATH("top_k"), &k, err,
                                    errlen)) < 0)
            return rc;
        if (k < 1)
            return proto_field_fail(err, errlen, CTR_EINVAL,
                                    PROTO_PATH("top_k"),
                                    "must be at least 1");
        out->top_k = k > INT_MAX ? INT_MAX : (int)k;
    }

    if ((v = json_object_get(root, "deadline_ms"))) {
        int64_t ms;
        if ((rc = proto_field_int64(v, PROTO_PATH("deadline_ms"), &ms, err,
                                    errlen)) < 0)
            return rc;
        if (ms < 1)
            return proto_field_fail(err, errlen, CTR_EINVAL,
                                    PROTO_PATH("deadline_ms"),
                                    "must be at least 1");
        out->deadline_ms = ms > INT_MAX ? INT_MAX : (int)ms;
    }

    if ((v = json_object_get(root, "item_seq"))) {
        /* Too long a history is a field out of range (422), not a body too
         * large: the body was within the limit. */
        if ((rc = proto_field_int64_array(v, PROTO_PATH("item_seq"),
                                          sc->max_seq, a, &out->item_seq,
                                          &out->seq_len, err, errlen)) < 0)
            return rc == CTR_ETOOBIG ? CTR_ERANGE : rc;
        out->has_item_seq = 1;
    }

    if (!(v = json_object_get(root, "candidates")))
        return proto_field_fail(err, errlen, CTR_EINVAL,
                                PROTO_PATH("candidates"), "missing field");
    return decode_candidates(v, sc, a, out, err, errlen);
}


/* --- Fast path ------------------------------------------------------------
 *
 * jansson builds a tree (a malloc'd object per candidate, a hash table per
 * object): about 1.4 us per candidate, a sizeable share of a warm request's
 * time outside the model.  Well-formed requests, which is nearly all of
 * them, are decoded here in one pass straight into the arena.  The fast
 * path accepts only a plain subset of JSON: strings of printable ASCII with
 * no escapes, non-negative integers of at most 18 digits without leading
 * zeros, no null/true/false/fractions, each field at most once, and every
 * limit respected.  On anything else it declines (returns 0) and the
 * jansson path below decodes the request, so every error message, and
 * every accepted unusual input, comes from one place.  A differential test
 * (tests/proto/test_rank.c) checks that the two agree wherever the fast
 * path accepts. */

typedef struct fast {
    const char *p, *end;
} fast;

static void fast_ws(fast *f) {
    while (f->p < f->end && (*f->p == ' ' || *f->p == '\n' || *f->p == '\t' || *f->p == '\r'))
        f->p++;
}

static int fast_char(fast *f, char c) {
    fast_ws(f);
    if (f->p >= f->end || *f->p != c) return 0;
    f->p++;
    return 1;
}

/* A plain string: *s, *n point into the buffer (no escapes to undo). */
static int fast_string(fast *f, const char **s, size_t *n) {
    if (!fast_char(f, '"')) return 0;
    const char *b = f->p;
    while (f->p < f->end && *f->p != '"') {
        unsigned char c = (unsigned char)*f->p;
        if (c < 0x20 || c > 0x7e || c == '\\') return 0;
        f->p++;
    }
    if (f->p >= f->end) return 0;
    *s = b;
    *n = (size_t)(f->p - b);
    f->p++;
    return 1;
}

/* A non-negative integer of 1..18 digits, no leading zero. */
static int fast_uint(fast *f, int64_t *v, const char **text, size_t *tlen) {
    fast_ws(f);
    const char *b = f->p;
    int64_t x = 0;
    while (f->p < f->end && *f->p >= '0' && *f->p <= '9') {
        if (f->p - b >= 18) return 0; /* 19+ digits: the tree path decides */
        x = x * 10 + (*f->p++ - '0');
    }
    size_t n = (size_t)(f->p - b);
    if (n == 0 || n > 18 || (n > 1 && *b == '0')) return 0;
    if (f->p < f->end && (*f->p == '.' || *f->p == 'e' || *f->p == 'E')) return 0;
    *v = x;
    if (text) {
        *text = b;
        *tlen = n;
    }
    return 1;
}

/* The separator after an element: 1 for ',', 2 for the closing bracket,
 * 0 for anything else. */
static int fast_next(fast *f, char close) {
    fast_ws(f);
    if (f->p >= f->end) return 0;
    if (*f->p == ',') { f->p++; return 1; }
    if (*f->p == close) { f->p++; return 2; }
    return 0;
}

static int fast_candidates(fast *f, const proto_rank_schema *sc, arena *a,
                           proto_rank_request *out) {
    if (!fast_char(f, '[')) return 0;
    const int nctx = sc->num_ctx;
    int cap = sc->max_cand >= 0 ? sc->max_cand : 0;
    if (nctx >= 31 || cap > (1 << 20)) return 0;
    out->cand_id = arena_alloc(a, (size_t)(cap ? cap : 1) * sizeof *out->cand_id, 64);
    out->ctx = arena_alloc(a, (size_t)(cap ? cap : 1) * (size_t)(nctx ? nctx : 1) *
                                  sizeof *out->ctx, 64);
    if (!out->cand_id || !out->ctx) return 0;
    int n = 0;
    fast_ws(f);
    if (f->p < f->end && *f->p == ']') {
        f->p++;
        out->num_cand = 0;
        return 1;
    }
    for (;;) {
        if (n >= cap || !fast_char(f, '{')) return 0;
        int32_t *ctx = out->ctx + (size_t)n * nctx;
        for (int k = 0; k < nctx; k++) ctx[k] = 0;
        unsigned seen = 0;
        for (;;) {
            const char *key;
            size_t klen;
            int64_t v;
            if (!fast_string(f, &key, &klen) || !fast_char(f, ':') || !fast_uint(f, &v, NULL, NULL))
                return 0;
            int slot;
            if (klen == 7 && memcmp(key, "item_id", 7) == 0) {
                slot = 0;
                out->cand_id[n] = v;
            } else {
                slot = 1;
                while (slot <= nctx && (strlen(sc->ctx_name[slot - 1]) != klen ||
                                        memcmp(sc->ctx_name[slot - 1], key, klen) != 0))
                    slot++;
                if (slot > nctx || v > INT32_MAX) return 0;
                ctx[slot - 1] = (int32_t)v;
            }
            if (seen & (1u << slot)) return 0; /* a field twice */
            seen |= 1u << slot;
            int r = fast_next(f, '}');
            if (r == 2) break;
            if (r != 1) return 0;
        }
        if (!(seen & 1u)) return 0; /* no item_id */
        n++;
        int r = fast_next(f, ']');
        if (r == 2) break;
        if (r != 1) return 0;
    }
    out->num_cand = n;
    return 1;
}

static int fast_seq(fast *f, const proto_rank_schema *sc, arena *a, proto_rank_request *out) {
    if (!fast_char(f, '[')) return 0;
    int cap = sc->max_seq >= 0 ? sc->max_seq : 0;
    if (cap > (1 << 24)) return 0;
    int64_t *ids = arena_alloc(a, (size_t)(cap ? cap : 1) * sizeof *ids, 64);
    if (!ids) return 0;
    int n = 0;
    fast_ws(f);
    if (f->p < f->end && *f->p == ']') {
        f->p++;
    } else {
        for (;;) {
            if (n >= cap || !fast_uint(f, &ids[n], NULL, NULL)) return 0;
            n++;
            int r = fast_next(f, ']');
            if (r == 2) break;
            if (r != 1) return 0;
        }
    }
    out->item_seq = n ? ids : NULL;
    out->seq_len = n;
    out->has_item_seq = 1;
    return 1;
}

/* 1: decoded into out; 0: declined (out is garbage, use the tree path).
 * The schema is picked when first needed (candidates, item_seq) or when
 * "model" comes; a "model" after the default was used for something that
 * names another model declines. */
static int fast_decode(const char *buf, size_t len, proto_rank_pick pick, void *arg, arena *a,
                       proto_rank_request *out) {
    fast f = {buf, buf + len};
    const proto_rank_schema *sc = NULL;
    enum { F_USER = 1, F_CAND = 2, F_SEQ = 4, F_TOPK = 8, F_RID = 16, F_DL = 32, F_MODEL = 64,
           F_EXPLAIN = 128 };
    unsigned seen = 0;
    if (!fast_char(&f, '{')) return 0;
    for (;;) {
        const char *key, *s;
        size_t klen, slen;
        int64_t v;
        if (!fast_string(&f, &key, &klen) || !fast_char(&f, ':')) return 0;
        unsigned bit;
        if (klen == 7 && memcmp(key, "user_id", 7) == 0) {
            bit = F_USER;
            fast_ws(&f);
            int is_str = f.p < f.end && *f.p == '"';
            if (is_str ? !fast_string(&f, &s, &slen) : !fast_uint(&f, &v, &s, &slen)) return 0;
            if (slen == 0 || slen > PROTO_RANK_ID_MAX) return 0;
            if (!(out->user_id = arena_strndup(a, s, slen))) return 0;
            out->user_id_is_int = !is_str;
        } else if (klen == 10 && memcmp(key, "candidates", 10) == 0) {
            bit = F_CAND;
            if (!sc && !(sc = pick(arg, NULL))) return 0;
            if (!fast_candidates(&f, sc, a, out)) return 0;
        } else if (klen == 8 && memcmp(key, "item_seq", 8) == 0) {
            bit = F_SEQ;
            if (!sc && !(sc = pick(arg, NULL))) return 0;
            if (!fast_seq(&f, sc, a, out)) return 0;
        } else if (klen == 5 && memcmp(key, "model", 5) == 0) {
            bit = F_MODEL;
            if (!fast_string(&f, &s, &slen) || slen == 0 || slen > PROTO_RANK_MODEL_MAX) return 0;
            if (!(out->model = arena_strndup(a, s, slen))) return 0;
            const proto_rank_schema *named = pick(arg, out->model);
            if (!named || (sc && named != sc)) return 0;
            sc = named;
        } else if (klen == 7 && memcmp(key, "explain", 7) == 0) {
            bit = F_EXPLAIN;
            if (!fast_uint(&f, &v, NULL, NULL) || v > PROTO_RANK_EXPLAIN_MAX) return 0;
            out->explain = (int)v;
        } else if (klen == 5 && memcmp(key, "top_k", 5) == 0) {
            bit = F_TOPK;
            if (!fast_uint(&f, &v, NULL, NULL) || v < 1) return 0;
            out->top_k = v > INT_MAX ? INT_MAX : (int)v;
        } else if (klen == 11 && memcmp(key, "deadline_ms", 11) == 0) {
            bit = F_DL;
            if (!fast_uint(&f, &v, NULL, NULL) || v < 1) return 0;
            out->deadline_ms = v > INT_MAX ? INT_MAX : (int)v;
        } else if (klen == 10 && memcmp(key, "request_id", 10) == 0) {
            bit = F_RID;
            if (!fast_string(&f, &s, &slen) || slen == 0 || slen > PROTO_RANK_REQUEST_ID_MAX)
                return 0;
            if (!(out->request_id = arena_strndup(a, s, slen))) return 0;
        } else {
            return 0;
        }
        if (seen & bit) return 0;
        seen |= bit;
        int r = fast_next(&f, '}');
        if (r == 2) break;
        if (r != 1) return 0;
    }
    fast_ws(&f);
    return f.p == f.end && (seen & F_USER) && (seen & F_CAND);
}

int proto_rank_request_decode_tree(const char *buf, size_t len, proto_rank_pick pick,
                                   void *arg, arena *a, proto_rank_request *out, char *err,
                                   size_t errlen) {
    memset(out, 0, sizeof *out);
    json_t *root;
    int rc = proto_field_parse_object(buf, len, "request", &root, err, errlen);
    if (rc < 0) return rc;
    const proto_rank_schema *sc;
    if ((rc = check_names(root, err, errlen)) == CTR_OK &&
        (rc = decode_model(root, pick, arg, a, out, &sc, err, errlen)) == CTR_OK)
        rc = decode_fields(root, sc, a, out, err, errlen);
    json_decref(root);
    return rc;
}

int proto_rank_request_decode_fast(const char *buf, size_t len, proto_rank_pick pick,
                                   void *arg, arena *a, proto_rank_request *out) {
    memset(out, 0, sizeof *out);
    return fast_decode(buf, len, pick, arg, a, out);
}

int proto_rank_request_decode_pick(const char *buf, size_t len, proto_rank_pick pick,
                                   void *arg, arena *a, proto_rank_request *out, char *err,
                                   size_t errlen) {
    if (proto_rank_request_decode_fast(buf, len, pick, arg, a, out)) return CTR_OK;
    /* Declined: the tree path decodes it, or says precisely what is wrong.
     * The arena keeps what the fast path took until the request ends. */
    return proto_rank_request_decode_tree(buf, len, pick, arg, a, out, err, errlen);
}

const proto_rank_schema *proto_rank_pick_one(void *schema, const char *model) {
    const proto_rank_schema *sc = schema;
    return !model || !sc->name || strcmp(model, sc->name) == 0 ? sc : NULL;
}

int proto_rank_request_decode(const char *buf, size_t len,
                              const proto_rank_schema *schema, arena *a,
                              proto_rank_request *out, char *err,
                              size_t errlen) {
    return proto_rank_request_decode_pick(buf, len, proto_rank_pick_one, (void *)schema, a, out,
                                          err, errlen);
}

/* --- Ordering ----------------------------------------------------------- */

/* 1 when x comes before y in the answer. */
static int before(const proto_rank_item *x, const proto_rank_item *y) {
    int xn = isnan(x->score), yn = isnan(y->score);
    if (xn != yn) return yn;
    if (!xn && x->score != y->score) return x->score > y->score;
    return x->cand < y->cand;
}

/* Sifts h[i] down a heap whose root is the item that comes last. */
static void sift(proto_rank_item *h, int n, int i) {
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && before(&h[c], &h[c + 1])) c++;
        if (!before(&h[i], &h[c])) return;
        proto_rank_item t = h[i];
        h[i] = h[c];
        h[c] = t;
        i = c;
    }
}

int proto_rank_order(const int64_t *cand_id, const float *score, int n,
                     int top_k, proto_rank_item *out) {
    if (n <= 0) return 0;
    for (int i = 0; i < n; i++) {
        out[i].item_id = cand_id[i];
        out[i].score = score[i];
        out[i].cand = i;
    }
    /* Heapsort: the order is total (ties broken by candidate index), so the
     * result is the one a stable sort would give. */
    for (int i = n / 2 - 1; i >= 0; i--) sift(out, n, i);
    for (int end = n - 1; end > 0; end--) {
        proto_rank_item t = out[0];
        out[0] = out[end];
        out[end] = t;
        sift(out, end, 0);
    }
    return top_k > 0 && top_k < n ? top_k : n;
}

/* --- Encoding ----------------------------------------------------------- */

const char *const proto_rank_stage_name[PROTO_RANK_STAGES] = {
    "queue", "decode", "history", "items", "score",
};

static void put_score(proto_buf *b, float s) { proto_buf_json_float(b, s); }

/* ,"explain":[{"item_id":..,"position":..,"weight":..},...] of candidate
 * c: its rows of positions and weights, rows at -1 left out. */
static void put_explain(proto_buf *b, const proto_rank_answer *ans, int c) {
    const int k = ans->explain_k;
    const int32_t *pos = ans->explain_pos + (size_t)c * k;
    const float *w = ans->explain_weight + (size_t)c * k;
    proto_buf_puts(b, ",\"explain\":[");
    for (int j = 0, any = 0; j < k; j++) {
        if (pos[j] < 0) continue;
        proto_buf_puts(b, any++ ? ",{\"item_id\":" : "{\"item_id\":");
        proto_buf_json_int(b, ans->hist_ids[pos[j]]);
        proto_buf_printf(b, ",\"position\":%d,\"weight\":", (int)pos[j]);
        proto_buf_json_float(b, w[j]);
        proto_buf_putc(b, '}');
    }
    proto_buf_putc(b, ']');
}

int proto_rank_answer_encode(const proto_rank_answer *ans, proto_buf *b) {
    proto_buf_putc(b, '{');
    if (ans->request_id) {
        proto_buf_puts(b, "\"request_id\":");
        proto_buf_json_cstr(b, ans->request_id);
        proto_buf_putc(b, ',');
    }
    proto_buf_puts(b, "\"model\":{\"name\":");
    proto_buf_json_cstr(b, ans->model_name);
    proto_buf_puts(b, ",\"version\":");
    proto_buf_json_cstr(b, ans->model_version);
    proto_buf_puts(b, "},\"items\":[");
    /* Hot spot of the encoder: one printf per item. */
    for (int i = 0; i < ans->num_items; i++) {
        const proto_rank_item *it = &ans->items[i];
        proto_buf_puts(b, i ? ",{\"item_id\":" : "{\"item_id\":");
        proto_buf_json_int(b, it->item_id);
        proto_buf_puts(b, ",\"score\":");
        put_score(b, it->score);
        if (ans->explain_k > 0) put_explain(b, ans, it->cand);
        proto_buf_putc(b, '}');
    }
    proto_buf_printf(b, "],\"took_us\":%lld,", (long long)ans->took_us);
    if (ans->stage_us) {
        proto_buf_puts(b, "\"stage_us\":{");
        for (int i = 0; i < PROTO_RANK_STAGES; i++)
            proto_buf_printf(b, "%s\"%s\":%lld", i ? "," : "", proto_rank_stage_name[i],
                             (long long)ans->stage_us[i]);
        proto_buf_puts(b, "},");
    }
    proto_buf_puts(b, "\"degraded\":[");
    for (int i = 0; i < ans->num_degraded; i++) {
        if (i) proto_buf_putc(b, ',');
        proto_buf_json_cstr(b, ans->degraded[i]);
    }
    proto_buf_putc(b, ']');
    if (ans->num_unscored > 0) {
        proto_buf_puts(b, ",\"unscored\":[");
        for (int i = 0; i < ans->num_unscored; i++)
            proto_buf_printf(b, "%s%lld", i ? "," : "", (long long)ans->unscored[i]);
        proto_buf_putc(b, ']');
    }
    proto_buf_putc(b, '}');
    return proto_buf_ok(b) ? CTR_OK : CTR_ENOMEM;
}

/* 1 when s is an optional minus and 1..19 digits: safe to print bare. */
static int is_int_text(const char *s) {
    if (*s == '-') s++;
    size_t n = strspn(s, "0123456789");
    return n > 0 && n <= 19 && s[n] == '\0';
}

int proto_rank_scores_encode(const char *user_id, int user_id_is_int,
                             const float *scores, int n, proto_buf *b) {
    proto_buf_puts(b, "{\"user_id\":");
    if (user_id_is_int && user_id && is_int_text(user_id))
        proto_buf_puts(b, user_id);
    else
        proto_buf_json_cstr(b, user_id);
    proto_buf_puts(b, ",\"scores\":[");
    for (int i = 0; i < n; i++) {
        if (i) proto_buf_putc(b, ',');
        put_score(b, scores[i]);
    }
    proto_buf_puts(b, "]}");
    return proto_buf_ok(b) ? CTR_OK : CTR_ENOMEM;
}
