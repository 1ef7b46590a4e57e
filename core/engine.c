/*
 * engine.c - the engine interface (engine.h): reads the model file's
 * schema, hands the file to its architecture (arch.h), and checks what
 * every architecture's request has in common before calling its forward
 * pass.
 */
#include "engine.h"

#include <cblas.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "linear.h"
#include "modelfile.h"
#include "safetensors.h"

struct engine_model {
    engine_schema sc;
    engine_params params;
    const arch_ops *ops;
    void *impl;
};

struct engine_scratch {
    const engine_model *model;  /* compared, never read after the model is
                                   freed (see engine_scratch_free) */
    const arch_ops *ops;        /* static: frees the scratch without it */
    int max_cand;
    void *impl;
};

static const arch_ops *const ops_of[ENGINE_ARCH_COUNT] = {
    [ENGINE_ARCH_QIN] = &qin_arch_ops,
    [ENGINE_ARCH_DIN] = &din_arch_ops,
    [ENGINE_ARCH_TIN] = &tin_arch_ops,
};

const char *engine_arch_name(int arch) {
    static const char *const names[] = {
#define ENGINE_ARCH_STR(name, str) str,
        ENGINE_ARCH_MAP(ENGINE_ARCH_STR)
#undef ENGINE_ARCH_STR
    };
    return arch >= 0 && arch < ENGINE_ARCH_COUNT ? names[arch] : "unknown";
}

/* --- the schema a file declares ----------------------------------------- */

/* Splits a comma-separated list into at most ENGINE_MAX_CTX names; -1 when
 * there are more, or a name is empty or too long. */
static int split_names(const char *s, char out[][ENGINE_NAME_MAX], int *n) {
    *n = 0;
    if (!*s) return 0;
    for (;;) {
        const char *c = strchr(s, ',');
        size_t len = c ? (size_t)(c - s) : strlen(s);
        if (*n >= ENGINE_MAX_CTX || len == 0 || len >= ENGINE_NAME_MAX) return -1;
        memcpy(out[*n], s, len);
        out[*n][len] = '\0';
        (*n)++;
        if (!c) return 0;
        s = c + 1;
    }
}

/* Item fields a schema may name, in the order a file lists them. */
enum { F_ID = 1, F_TAGS = 2, F_MM = 4, F_CATE = 8 };

static int item_fields(const char *s, int *mask) {
    char names[ENGINE_MAX_CTX][ENGINE_NAME_MAX];
    int n;
    if (split_names(s, names, &n) < 0) return -1;
    *mask = 0;
    for (int i = 0; i < n; i++) {
        int bit = !strcmp(names[i], "item_id")         ? F_ID
                  : !strcmp(names[i], "item_tags")     ? F_TAGS
                  : !strcmp(names[i], "item_emb_d128") ? F_MM
                  : !strcmp(names[i], "cate_id")       ? F_CATE
                                                       : 0;
        if (!bit || (*mask & bit)) return -1;
        *mask |= bit;
    }
    return 0;
}

/* "format" and "arch" into sc->arch; *v1 set for a qin-v1 file.
 * CTR_EMODEL naming the key otherwise. */
static int schema_arch(const st_file *f, engine_schema *sc, int *v1, char *err, size_t errlen) {
    const char *fmt = st_meta_get(f, "format");
    const char *arch = st_meta_get(f, "arch");
    *v1 = fmt && !strcmp(fmt, MODELFILE_FORMAT_QIN1);
    if (!fmt || (!*v1 && strcmp(fmt, MODELFILE_FORMAT) != 0))
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata \"format\" is \"%s\", expected \"" MODELFILE_FORMAT
                        "\" (or \"" MODELFILE_FORMAT_QIN1 "\"); convert checkpoints with "
                        "tools/convert.py", fmt ? fmt : "(none)");
    int a = -1;
    for (int i = 0; i < ENGINE_ARCH_COUNT; i++)
        if (arch && !strcmp(arch, engine_arch_name(i))) a = i;
    if (a < 0 || (*v1 && a != ENGINE_ARCH_QIN))
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata \"arch\" is \"%s\"; this engine serves %s",
                        arch ? arch : "(none)",
                        *v1 ? "\"qin\" in a " MODELFILE_FORMAT_QIN1 " file" : "qin, din and tin");
    sc->arch = (engine_arch)a;
    return CTR_OK;
}

/* The item fields ("item_fields"; a qin-v1 file has QIN's) and their
 * vocabularies and widths into sc. */
static int schema_items(const st_file *f, engine_schema *sc, int v1, char *err, size_t errlen) {
    int rc;
    const int tin = sc->arch == ENGINE_ARCH_TIN;
    int mask = F_ID | F_TAGS | F_MM;
    if (!v1) {
        const char *fields = st_meta_get(f, "item_fields");
        if (!fields) return ctr_fail(err, errlen, CTR_EMODEL, "metadata lacks \"item_fields\"");
        int want = tin ? (F_ID | F_CATE) : (F_ID | F_TAGS | F_MM);
        if (item_fields(fields, &mask) < 0 || mask != want)
            return ctr_fail(err, errlen, CTR_EMODEL,
                            "metadata \"item_fields\" = \"%s\": a %s model reads %s", fields,
                            engine_arch_name(sc->arch),
                            tin ? "item_id,cate_id" : "item_id,item_tags,item_emb_d128");
    }
    /* Bounds keep every size product below 2^31 elements and reject
     * nonsense early with a clear message. */
    if ((rc = modelfile_meta_int(f, "max_len", 1, 4096, &sc->max_len, err, errlen)) < 0 ||
        (rc = modelfile_meta_int(f, "item_vocab", 2, INT_MAX, &sc->item_vocab, err, errlen)) < 0)
        return rc;
    sc->item_id_min = tin ? 0 : 1;
    if (mask & F_TAGS) {
        if ((rc = modelfile_meta_int(f, "tag_vocab", 1, INT_MAX, &sc->tag_vocab, err, errlen)) <
                0 ||
            (rc = modelfile_meta_int(f, "num_tags", 0, 1024, &sc->num_tags, err, errlen)) < 0)
            return rc;
    }
    if ((mask & F_MM) &&
        (rc = modelfile_meta_int(f, "mm_in", 1, 65536, &sc->mm_dim, err, errlen)) < 0)
        return rc;
    if ((mask & F_CATE) &&
        (rc = modelfile_meta_int(f, "cate_vocab", 1, INT_MAX, &sc->cate_vocab, err, errlen)) < 0)
        return rc;
    return CTR_OK;
}

/* The context fields ("context_fields", "context_vocab") into sc: names
 * unique, none an item field's. */
static int schema_context(const st_file *f, engine_schema *sc, char *err, size_t errlen) {
    const char *fields = st_meta_get(f, "context_fields");
    const char *vocabs = st_meta_get(f, "context_vocab");
    if (!fields || !vocabs)
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata lacks \"context_fields\" or \"context_vocab\"");
    int nv;
    if (split_names(fields, sc->ctx_name, &sc->num_ctx) < 0 ||
        modelfile_meta_ints(f, "context_vocab", ENGINE_MAX_CTX, 1, INT_MAX, sc->ctx_vocab, &nv,
                            NULL, 0) < 0 ||
        nv != sc->num_ctx)
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata context_fields \"%s\" / context_vocab \"%s\": expected "
                        "two comma-separated lists of the same length (at most %d)",
                        fields, vocabs, ENGINE_MAX_CTX);
    for (int i = 0; i < sc->num_ctx; i++) {
        for (int j = 0; j < i; j++)
            if (!strcmp(sc->ctx_name[i], sc->ctx_name[j]))
                return ctr_fail(err, errlen, CTR_EMODEL, "context field \"%s\" twice",
                                sc->ctx_name[i]);
        if (!strcmp(sc->ctx_name[i], "item_id") || !strcmp(sc->ctx_name[i], "item_tags") ||
            !strcmp(sc->ctx_name[i], "item_emb_d128") || !strcmp(sc->ctx_name[i], "cate_id"))
            return ctr_fail(err, errlen, CTR_EMODEL,
                            "context field \"%s\" clashes with an item field", sc->ctx_name[i]);
    }
    return CTR_OK;
}

/* Reads "format", "arch" and the feature schema into sc and checks it for
 * the architecture: CTR_EMODEL naming the key otherwise. */
static int schema_read(const st_file *f, engine_schema *sc, char *err, size_t errlen) {
    int rc, v1;
    memset(sc, 0, sizeof *sc);
    if ((rc = schema_arch(f, sc, &v1, err, errlen)) < 0 ||
        (rc = modelfile_meta_str(f, "name", sc->name, sizeof sc->name, err, errlen)) < 0 ||
        (rc = modelfile_meta_str(f, "version", sc->version, sizeof sc->version, err, errlen)) < 0 ||
        (rc = schema_items(f, sc, v1, err, errlen)) < 0)
        return rc;
    return schema_context(f, sc, err, errlen);
}

/* --- loading -------------------------------------------------------------- */

engine_params engine_default_params(void) {
    engine_params p = {DENSE_FP32, DENSE_BACKEND_AUTO, 1};
    return p;
}

int engine_precision_parse(const char *text, dense_precision *out, char *err, size_t errlen) {
    if (text && dense_precision_parse(text, out) == CTR_OK) return CTR_OK;
    return ctr_fail(err, errlen, CTR_EINVAL, "precision \"%s\": expected fp32, bf16, int8 or int8x2",
                    text ? text : "");
}

int engine_model_load_buffer_with(const void *buf, size_t len, const engine_params *p,
                                  engine_model **out, char *err, size_t errlen) {
    *out = NULL;
    const engine_params params = p ? *p : engine_default_params();
    if (params.precision < 0 || params.precision >= DENSE_PRECISION_COUNT)
        return ctr_fail(err, errlen, CTR_EINVAL, "unknown precision %d", (int)params.precision);
    if (params.kernel < 0 || params.kernel >= DENSE_BACKEND_COUNT)
        return ctr_fail(err, errlen, CTR_EINVAL, "unknown kernel %d", (int)params.kernel);
    if (params.column_parts != 1 && params.column_parts != 2)
        return ctr_fail(err, errlen, CTR_EINVAL, "column_parts %d: 1 or 2",
                        params.column_parts);
    st_file f;
    int rc = st_parse(buf, len, &f, err, errlen);
    if (rc < 0) return rc;
    engine_model *m = calloc(1, sizeof *m);
    if (!m) {
        st_free(&f);
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    }
    m->params = params;
    if ((rc = schema_read(&f, &m->sc, err, errlen)) < 0) goto fail;
    m->ops = ops_of[m->sc.arch];
    if (!(m->impl = calloc(1, m->ops->model_size))) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = m->ops->build(m->impl, &f, &m->sc, err, errlen)) < 0 ||
        (rc = m->ops->prepare(m->impl, &m->params, err, errlen)) < 0)
        goto fail;
    st_free(&f);
    /* BLAS runs single-threaded inside every call: the service gets its
     * parallelism from its own worker threads (one request, or one slice of
     * a request, per core).  Letting OpenBLAS start threads too would
     * oversubscribe the cores and, at our small matrix sizes, cost more in
     * hand-offs than it gains.  The setting is process-wide.  And oneDNN's
     * sgemm kernels are made now, not in the first request (linear.h). */
    openblas_set_num_threads(1);
    linear_warm_up();
    *out = m;
    return CTR_OK;
fail:
    st_free(&f);
    if (m->impl) m->ops->free(m->impl);
    free(m);
    return rc;
}

int engine_model_load_buffer(const void *buf, size_t len, engine_model **out, char *err,
                             size_t errlen) {
    return engine_model_load_buffer_with(buf, len, NULL, out, err, errlen);
}

int engine_model_load(const char *path, engine_model **out, char *err, size_t errlen) {
    return engine_model_load_with(path, NULL, out, err, errlen);
}

int engine_model_load_with(const char *path, const engine_params *p, engine_model **out,
                           char *err, size_t errlen) {
    *out = NULL;
    unsigned char *buf;
    size_t size;
    int rc = modelfile_read(path, &buf, &size, err, errlen);
    if (rc < 0) return rc;
    char inner[512] = "";
    rc = engine_model_load_buffer_with(buf, size, p, out, inner, sizeof inner);
    free(buf);
    if (rc < 0) return ctr_fail(err, errlen, rc, "%s: %s", path, inner);
    return CTR_OK;
}

void engine_model_free(engine_model *m) {
    if (!m) return;
    if (m->impl) m->ops->free(m->impl);
    free(m);
}

const engine_schema *engine_model_schema(const engine_model *m) { return &m->sc; }

void *engine_model_impl(const engine_model *m) { return m->impl; }

dense_precision engine_model_precision(const engine_model *m) { return m->params.precision; }

dense_backend engine_model_kernel(const engine_model *m) { return m->params.kernel; }

int engine_model_column_parts(const engine_model *m) {
    return m->ops->column_parts ? m->ops->column_parts(m->impl) : 1;
}

const char *engine_model_describe(const engine_model *m) { return m->ops->describe(m->impl); }

size_t engine_item_vec_floats(const engine_model *m) { return m->ops->item_vec_floats(m->impl); }

float *engine_item_vecs_alloc(const engine_model *m, int n) {
    if (n < 1) n = 1;
    size_t vf = engine_item_vec_floats(m);
    if ((size_t)n > SIZE_MAX / sizeof(float) / vf - 16) return NULL;
    size_t bytes = ((size_t)n * vf * sizeof(float) + 63) & ~(size_t)63;
    float *p = aligned_alloc(64, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

int engine_items_compute(const engine_model *m, int n, const engine_item *items, float *out,
                         int *bad, char *err, size_t errlen) {
    if (n <= 0) return CTR_OK;
    int rc = m->ops->items_compute(m->impl, n, items, out, bad, err, errlen);
    if (rc < 0) return rc;
    /* Every architecture's vectors, checked once here (itemvec_finite). */
    const size_t vf = engine_item_vec_floats(m);
    for (int i = 0; i < n; i++) {
        if (itemvec_finite(out + (size_t)i * vf, vf)) continue;
        if (bad) *bad = i;
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "item %lld: its vector overflows (features too large for the model)",
                        (long long)items[i].id);
    }
    return CTR_OK;
}

int engine_history_id_ok(const engine_model *m, int64_t id) {
    return id >= m->sc.item_id_min && id < m->sc.item_vocab;
}

int engine_item_check(const engine_model *m, const engine_item *item, char *err, size_t errlen) {
    const engine_schema *sc = &m->sc;
    if (item->id < sc->item_id_min)
        return ctr_fail(err, errlen, CTR_ERANGE, "item_id: %lld is not an item id (ids start at "
                        "%d%s)", (long long)item->id, sc->item_id_min,
                        sc->item_id_min ? "; 0 is padding" : "");
    if (item->id >= sc->item_vocab)
        return ctr_fail(err, errlen, CTR_ERANGE, "item_id: %lld is outside the model's item "
                        "vocabulary (%d..%d)", (long long)item->id, sc->item_id_min,
                        sc->item_vocab - 1);
    if (sc->cate_vocab && (item->cate < 0 || item->cate >= sc->cate_vocab))
        return ctr_fail(err, errlen, CTR_ERANGE, "cate_id: %d is outside the model's category "
                        "vocabulary (0..%d)", (int)item->cate, sc->cate_vocab - 1);
    for (int k = 0; sc->num_tags && item->tags && k < item->num_tags; k++)
        if (item->tags[k] < 0 || item->tags[k] >= sc->tag_vocab)
            return ctr_fail(err, errlen, CTR_ERANGE, "item_tags[%d]: %d is outside the model's "
                            "tag vocabulary (0..%d)", k, (int)item->tags[k], sc->tag_vocab - 1);
    return CTR_OK;
}

int engine_request_check(const engine_model *m, const int64_t *cand_id, const int32_t *ctx,
                         int n, char *err, size_t errlen) {
    const engine_schema *sc = &m->sc;
    for (int i = 0; i < n; i++) {
        if (cand_id && !engine_history_id_ok(m, cand_id[i]))
            return ctr_fail(err, errlen, CTR_ERANGE,
                            "candidates[%d].item_id: %lld is outside the model's items %d..%d", i,
                            (long long)cand_id[i], sc->item_id_min, sc->item_vocab - 1);
        for (int f = 0; ctx && f < sc->num_ctx; f++) {
            int32_t v = ctx[(size_t)i * sc->num_ctx + f];
            if (v < 0 || v >= sc->ctx_vocab[f])
                return ctr_fail(err, errlen, CTR_ERANGE,
                                "candidates[%d].%s: %d is outside the model's vocabulary (0..%d)",
                                i, sc->ctx_name[f], (int)v, sc->ctx_vocab[f] - 1);
        }
    }
    return CTR_OK;
}

int engine_scratch_init(const engine_model *m, int max_cand, engine_scratch **out) {
    *out = NULL;
    if (max_cand < 1 || max_cand > (1 << 20)) return CTR_EINVAL;
    engine_scratch *s = calloc(1, sizeof *s);
    if (!s) return CTR_ENOMEM;
    s->model = m;
    s->ops = m->ops;
    s->max_cand = max_cand;
    int rc = m->ops->scratch_init(m->impl, max_cand, &s->impl);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *out = s;
    return CTR_OK;
}

void engine_scratch_free(engine_scratch *s) {
    if (!s) return;
    if (s->impl) s->ops->scratch_free(s->impl);
    free(s);
}

int engine_forward(const engine_model *m, engine_scratch *s, const engine_request *req,
                   float *prob, char *err, size_t errlen) {
    const int n = req->num_cand;
    if (s->model != m) return ctr_fail(err, errlen, CTR_EINVAL, "scratch of another model");
    if (n < 0 || n > s->max_cand)
        return ctr_fail(err, errlen, CTR_ETOOMANY, "%d candidates, at most %d", n, s->max_cand);
    if (req->num_hist < 0 || (req->num_hist > 0 && !req->hist))
        return ctr_fail(err, errlen, CTR_EINVAL, "bad history (%d entries)", req->num_hist);
    if (req->explain && (req->explain->k < 1 || !req->explain->pos || !req->explain->weight))
        return ctr_fail(err, errlen, CTR_EINVAL, "explain: k must be >= 1, with room for k "
                        "entries per candidate");
    int rc = engine_request_check(m, NULL, req->ctx, n, err, errlen);
    if (rc < 0) return rc;
    for (int i = 0; i < n; i++)
        if (!req->cand[i]) return ctr_fail(err, errlen, CTR_EINVAL, "candidate %d: no vector", i);
    if (n == 0) return CTR_OK;
    return m->ops->forward(m->impl, s->impl, req, prob, err, errlen);
}

/* Candidate counts the warm-up scores: every small count (oneDNN picks
 * other kernels for a product of a few rows) and powers of two up to the
 * largest request. */
static const int warm_sizes[] = {1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, 128, 256};

int engine_warmup_thread(const engine_model *m, engine_scratch *s, char *err, size_t errlen) {
    /* A few rows, then the classes where the planner takes oneDNN's AMX
     * kernels (from 9 rows); larger calls run the same kernels. */
    static const int sizes[] = {1, 16, 64};
    const engine_schema *sc = &m->sc;
    const int top = s->max_cand < 64 ? s->max_cand : 64, nh = sc->max_len, ni = top + nh;
    const size_t vf = engine_item_vec_floats(m);
    engine_item *items = calloc((size_t)ni, sizeof *items);
    float *vecs = engine_item_vecs_alloc(m, ni), *prob = malloc((size_t)top * sizeof *prob);
    const float **ptr = malloc((size_t)ni * sizeof *ptr);
    int rc = CTR_ENOMEM;
    if (!items || !vecs || !prob || !ptr) {
        ctr_fail(err, errlen, rc, "thread warm-up: out of memory");
        goto done;
    }
    const int span = sc->item_vocab - sc->item_id_min;
    for (int i = 0; i < ni; i++) items[i].id = sc->item_id_min + i % span;
    if ((rc = engine_items_compute(m, ni, items, vecs, NULL, err, errlen)) < 0) goto done;
    for (int i = 0; i < ni; i++) ptr[i] = vecs + (size_t)i * vf;
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        const int n = sizes[k] < top ? sizes[k] : top;
        engine_request r = {ptr + top, nh, ptr, NULL, n, NULL, NULL};
        if ((rc = engine_forward(m, s, &r, prob, err, errlen)) < 0) goto done;
        if (n == top) break;
    }
    rc = CTR_OK;
done:
    free(items);
    free(vecs);
    free(prob);
    free(ptr);
    return rc;
}

int engine_warmup(const engine_model *m, int max_cand, char *err, size_t errlen) {
    const engine_schema *sc = &m->sc;
    if (max_cand < 1) max_cand = 1;
    int top = 0; /* the largest warm-up size within max_cand */
    for (size_t k = 0; k < sizeof warm_sizes / sizeof *warm_sizes; k++)
        if (warm_sizes[k] <= max_cand) top = warm_sizes[k];
    const int nh = sc->max_len, ni = top + nh;
    const size_t vf = engine_item_vec_floats(m);
    engine_scratch *s = NULL;
    engine_item *items = calloc((size_t)ni, sizeof *items);
    float *vecs = engine_item_vecs_alloc(m, ni), *prob = malloc((size_t)top * sizeof *prob);
    const float **ptr = malloc((size_t)ni * sizeof *ptr);
    int rc = CTR_ENOMEM;
    if (!items || !vecs || !prob || !ptr || engine_scratch_init(m, top, &s) < 0) {
        ctr_fail(err, errlen, rc, "warm-up: out of memory");
        goto done;
    }
    /* Real ids, every feature padding (no tags, a zero embedding, category
     * 0): valid for every architecture. */
    const int span = sc->item_vocab - sc->item_id_min;
    for (int i = 0; i < ni; i++) items[i].id = sc->item_id_min + i % span;
    for (size_t k = 0; k < sizeof warm_sizes / sizeof *warm_sizes && warm_sizes[k] <= top; k++)
        if ((rc = engine_items_compute(m, warm_sizes[k], items, vecs, NULL, err, errlen)) < 0)
            goto done;
    if ((rc = engine_items_compute(m, ni, items, vecs, NULL, err, errlen)) < 0) goto done;
    for (int i = 0; i < ni; i++) ptr[i] = vecs + (size_t)i * vf;
    /* Candidates first, then the history; a full history and one entry. */
    for (size_t k = 0; k < sizeof warm_sizes / sizeof *warm_sizes && warm_sizes[k] <= top; k++)
        for (int h = 0; h < 2; h++) {
            engine_request r = {ptr + top, h ? 1 : nh, ptr, NULL, warm_sizes[k], NULL, NULL};
            if ((rc = engine_forward(m, s, &r, prob, err, errlen)) < 0) goto done;
        }
    rc = CTR_OK;
done:
    engine_scratch_free(s);
    free(items);
    free(vecs);
    free(prob);
    free(ptr);
    return rc;
}

engine_cost engine_model_cost(const engine_model *m, int nh) {
    if (nh < 0) nh = 0;
    if (nh > m->sc.max_len) nh = m->sc.max_len;
    return m->ops->cost(m->impl, nh);
}
