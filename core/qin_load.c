/*
 * qin_load.c - loads a QIN model file and folds it for scoring.
 *
 * The file holds the weights as training left them (FuxiCTR checkpoint
 * names, float32) and a __metadata__ map with the configuration.  Every
 * tensor's presence, dtype and shape is checked against that configuration
 * before anything is used.  Then the exact algebraic folds of MODEL_SPEC
 * section 3 are done once, in double precision so that folding adds no
 * float32 rounding of its own:
 *   - QNN: the R row blocks summed (W' = sum_r W_r, b' = sum_r b_r) and batch
 *     norm folded in (s = gamma / sqrt(var + eps): W = diag(s) W',
 *     b = s b', c = beta - mean s);
 *   - attention: A = W_q^T W_k and B = W_o W_v (E x E), so the query, key
 *     and value projections of the training code become two item-side
 *     matrix-vector products that can be cached per item.
 * Load time is dominated by reading the file (~125 MB for MicroLens) and
 * the two attention products (2 x 113M multiply-adds in dgemm).
 */
#include <cblas.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qin_internal.h"
#include "linear.h"
#include "modelfile.h"
#include "safetensors.h"

#define P "embedding_layer.embedding_layer."
#define BN_EPS 1e-5

float *qin_falloc(size_t n) { return linear_falloc(n); }

/* --- configuration from metadata -------------------------------------- */

/* The shared readers of modelfile.h, under the short names this file has
 * always used. */
static int meta_int(const st_file *f, const char *key, int lo, int hi, int *out,
                    char *err, size_t errlen) {
    return modelfile_meta_int(f, key, lo, hi, out, err, errlen);
}

static int meta_str(const st_file *f, const char *key, char *dst, size_t cap,
                    char *err, size_t errlen) {
    return modelfile_meta_str(f, key, dst, cap, err, errlen);
}

static int config_read(const st_file *f, qin_config *c, char *err, size_t errlen) {
    int r;
    /* Format (ctr-model-2, or the first one, ctr-qin-1), architecture and
     * feature schema, as every architecture's loader reads them. */
    engine_schema sc;
    if ((r = modelfile_schema(f, &sc, err, errlen)) < 0) return r;
    if (sc.arch != ENGINE_ARCH_QIN)
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata \"arch\" is \"%s\"; this engine serves \"qin\" (the "
                        "engine of engine.h serves all three)", engine_arch_name(sc.arch));
    memset(c, 0, sizeof *c);
    if ((r = meta_str(f, "name", c->name, sizeof c->name, err, errlen)) < 0) return r;
    if ((r = meta_str(f, "version", c->version, sizeof c->version, err, errlen)) < 0) return r;
    /* Bounds keep every size product below 2^31 elements and reject nonsense
     * early with a clear message. */
    if ((r = meta_int(f, "embedding_dim", 1, 4096, &c->embedding_dim, err, errlen)) < 0 ||
        (r = meta_int(f, "max_len", 1, 4096, &c->max_len, err, errlen)) < 0 ||
        (r = meta_int(f, "num_layers", 1, 64, &c->num_layers, err, errlen)) < 0 ||
        (r = meta_int(f, "num_row", 1, 64, &c->num_row, err, errlen)) < 0 ||
        (r = meta_int(f, "batch_norm", 0, 1, &c->batch_norm, err, errlen)) < 0 ||
        (r = meta_int(f, "item_vocab", 2, INT_MAX, &c->item_vocab, err, errlen)) < 0 ||
        (r = meta_int(f, "tag_vocab", 1, INT_MAX, &c->tag_vocab, err, errlen)) < 0 ||
        (r = meta_int(f, "num_tags", 0, 1024, &c->num_tags, err, errlen)) < 0 ||
        (r = meta_int(f, "mm_in", 1, 65536, &c->mm_in, err, errlen)) < 0 ||
        (r = meta_int(f, "mm_out", 1, 4096, &c->mm_out, err, errlen)) < 0)
        return r;
    const char *fields = st_meta_get(f, "context_fields");
    const char *vocabs = st_meta_get(f, "context_vocab");
    if (!fields || !vocabs)
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata lacks \"context_fields\" or \"context_vocab\"");
    char vs[QIN_MAX_CTX][QIN_NAME_MAX];
    int nv;
    if (modelfile_split(fields, c->ctx_name, &c->num_ctx) < 0 ||
        modelfile_split(vocabs, vs, &nv) < 0 || nv != c->num_ctx)
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata context_fields \"%s\" / context_vocab \"%s\": expected "
                        "two comma-separated lists of the same length (at most %d)",
                        fields, vocabs, QIN_MAX_CTX);
    for (int i = 0; i < c->num_ctx; i++) {
        char *end;
        long v = strtol(vs[i], &end, 10);
        if (*end || v < 1 || v > INT_MAX)
            return ctr_fail(err, errlen, CTR_EMODEL, "context_vocab \"%s\" is not a size",
                            vs[i]);
        c->ctx_vocab[i] = (int)v;
        for (int j = 0; j < i; j++)
            if (strcmp(c->ctx_name[i], c->ctx_name[j]) == 0)
                return ctr_fail(err, errlen, CTR_EMODEL, "context field \"%s\" twice",
                                c->ctx_name[i]);
        if (strcmp(c->ctx_name[i], "item_id") == 0 || strcmp(c->ctx_name[i], "item_tags") == 0)
            return ctr_fail(err, errlen, CTR_EMODEL,
                            "context field \"%s\" clashes with an item field", c->ctx_name[i]);
    }
    c->item_dim = 2 * c->embedding_dim + c->mm_out;
    c->attn_dim = 2 * c->item_dim;
    c->input_dim = c->num_ctx * c->embedding_dim + 2 * c->item_dim;
    if ((long long)c->input_dim * c->input_dim * c->num_row > INT_MAX ||
        (long long)c->item_vocab * c->embedding_dim > INT_MAX ||
        (long long)c->tag_vocab * c->embedding_dim > INT_MAX)
        return ctr_fail(err, errlen, CTR_EMODEL, "configuration too large");
    return CTR_OK;
}

/* --- tensors ------------------------------------------------------------ */

/* modelfile_tensor (modelfile.h) under this file's name for it. */
static int tensor_get(const st_file *f, const char *name, int64_t d0, int64_t d1,
                      float **out, char *err, size_t errlen) {
    return modelfile_tensor(f, name, d0, d1, out, err, errlen);
}

static int expected_name(const qin_config *c, const char *name) {
    char buf[256];
    if (strncmp(name, P "embedding_layers.", strlen(P "embedding_layers.")) == 0) {
        const char *f = name + strlen(P "embedding_layers.");
        for (int i = 0; i < c->num_ctx; i++) {
            snprintf(buf, sizeof buf, "%s.weight", c->ctx_name[i]);
            if (strcmp(f, buf) == 0) return 1;
        }
        return strcmp(f, "item_id.weight") == 0 || strcmp(f, "item_tags.weight") == 0;
    }
    if (strcmp(name, P "feature_encoders.item_emb_d128.weight") == 0) return 1;
    static const char *attn[] = {"attention_layers.W_q.weight", "attention_layers.W_k.weight",
                                 "attention_layers.W_v.weight", "attention_layers.W_o.weight",
                                 "qnn.fc.weight", "qnn.fc.bias"};
    for (size_t i = 0; i < sizeof attn / sizeof attn[0]; i++)
        if (strcmp(name, attn[i]) == 0) return 1;
    for (int l = 0; l < c->num_layers; l++) {
        static const char *per[] = {"qnn.layer.%d.linear.0.weight", "qnn.layer.%d.linear.0.bias",
                                    "qnn.activation.%d.weight", "qnn.norm.%d.weight",
                                    "qnn.norm.%d.bias", "qnn.norm.%d.running_mean",
                                    "qnn.norm.%d.running_var", "qnn.norm.%d.num_batches_tracked"};
        for (size_t i = 0; i < sizeof per / sizeof per[0]; i++) {
            if (!c->batch_norm && i >= 3) break;
            snprintf(buf, sizeof buf, per[i], l);
            if (strcmp(name, buf) == 0) return 1;
        }
    }
    return 0;
}

/* Copies a float array into a fresh double array. */
static double *to_double(const float *src, size_t n) {
    double *d = malloc(n * sizeof *d);
    if (d)
        for (size_t i = 0; i < n; i++) d[i] = src[i];
    return d;
}

/* A = W_q^T W_k, B = W_o W_v, in double, rounded once to float. */
static int fold_attention(qin_model *m, const float *wq, const float *wk, const float *wv,
                          const float *wo, char *err, size_t errlen) {
    const int E = m->cfg.item_dim, H = m->cfg.attn_dim;
    size_t nw = (size_t)H * E;
    double *q = to_double(wq, nw), *k = to_double(wk, nw), *v = to_double(wv, nw),
           *o = to_double(wo, nw), *r = malloc((size_t)E * E * sizeof *r);
    int rc = CTR_OK;
    m->attn_a = qin_falloc((size_t)E * E);
    m->attn_b = qin_falloc((size_t)E * E);
    if (!q || !k || !v || !o || !r || !m->attn_a || !m->attn_b) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory folding attention");
        goto done;
    }
    /* W_q, W_k: H x E ([out, in]); A (E x E) = W_q^T W_k. */
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, E, E, H, 1.0, q, E, k, E, 0.0, r, E);
    for (size_t i = 0; i < (size_t)E * E; i++) m->attn_a[i] = (float)r[i];
    /* W_o: E x H, W_v: H x E; B (E x E) = W_o W_v. */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, E, E, H, 1.0, o, H, v, E, 0.0, r, E);
    for (size_t i = 0; i < (size_t)E * E; i++) m->attn_b[i] = (float)r[i];
done:
    free(q); free(k); free(v); free(o); free(r);
    return rc;
}

/* Folds layer l: rows of the R blocks summed, batch norm applied. */
static int fold_qnn_layer(qin_model *m, const st_file *f, int l, char *err, size_t errlen) {
    const int D = m->cfg.input_dim, R = m->cfg.num_row;
    char name[128];
    float *w = NULL, *b = NULL, *g = NULL, *be = NULL, *mu = NULL, *var = NULL, *a = NULL;
    int rc;
    snprintf(name, sizeof name, "qnn.layer.%d.linear.0.weight", l);
    if ((rc = tensor_get(f, name, (int64_t)R * D, D, &w, err, errlen)) < 0) goto done;
    snprintf(name, sizeof name, "qnn.layer.%d.linear.0.bias", l);
    if ((rc = tensor_get(f, name, (int64_t)R * D, -1, &b, err, errlen)) < 0) goto done;
    snprintf(name, sizeof name, "qnn.activation.%d.weight", l);
    if ((rc = tensor_get(f, name, 1, -1, &a, err, errlen)) < 0) goto done;
    if (m->cfg.batch_norm) {
        snprintf(name, sizeof name, "qnn.norm.%d.weight", l);
        if ((rc = tensor_get(f, name, D, -1, &g, err, errlen)) < 0) goto done;
        snprintf(name, sizeof name, "qnn.norm.%d.bias", l);
        if ((rc = tensor_get(f, name, D, -1, &be, err, errlen)) < 0) goto done;
        snprintf(name, sizeof name, "qnn.norm.%d.running_mean", l);
        if ((rc = tensor_get(f, name, D, -1, &mu, err, errlen)) < 0) goto done;
        snprintf(name, sizeof name, "qnn.norm.%d.running_var", l);
        if ((rc = tensor_get(f, name, D, -1, &var, err, errlen)) < 0) goto done;
        for (int i = 0; i < D; i++)
            if (var[i] < 0) {
                rc = ctr_fail(err, errlen, CTR_EMODEL, "qnn.norm.%d.running_var[%d] < 0", l, i);
                goto done;
            }
    }
    float *wf = m->qnn_w[l] = qin_falloc((size_t)D * D);
    float *bf = m->qnn_b[l] = qin_falloc((size_t)D);
    float *cf = m->qnn_c[l] = qin_falloc((size_t)D);
    double *row = malloc((size_t)D * sizeof *row);
    if (!wf || !bf || !cf || !row) {
        free(row);
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory folding qnn layer %d", l);
        goto done;
    }
    for (int i = 0; i < D; i++) {
        double s = 1.0, shift = 0.0, bsum = 0.0;
        if (m->cfg.batch_norm) {
            s = (double)g[i] / sqrt((double)var[i] + BN_EPS);
            shift = (double)be[i] - (double)mu[i] * s;
        }
        for (int k = 0; k < D; k++) row[k] = 0.0;
        for (int r = 0; r < R; r++) {
            const float *src = w + ((size_t)r * D + i) * D;
            for (int k = 0; k < D; k++) row[k] += src[k];
            bsum += b[(size_t)r * D + i];
        }
        for (int k = 0; k < D; k++) wf[(size_t)i * D + k] = (float)(s * row[k]);
        bf[i] = (float)(s * bsum);
        cf[i] = (float)shift;
    }
    free(row);
    m->prelu[l] = a[0];
    rc = CTR_OK;
done:
    free(w); free(b); free(g); free(be); free(mu); free(var); free(a);
    return rc;
}

static int model_build(qin_model *m, const st_file *f, dense_precision precision,
                       dense_backend kernel, char *err, size_t errlen) {
    qin_config *c = &m->cfg;
    const int d = c->embedding_dim, E = c->item_dim, H = c->attn_dim, D = c->input_dim;
    char name[256];
    int rc;

    for (int i = 0; i < f->num_tensors; i++)
        if (!expected_name(c, f->tensors[i].name))
            return ctr_fail(err, errlen, CTR_EMODEL,
                            "unexpected tensor %s (not part of the declared configuration)",
                            f->tensors[i].name);

    for (int i = 0; i < c->num_ctx; i++) {
        snprintf(name, sizeof name, P "embedding_layers.%s.weight", c->ctx_name[i]);
        if ((rc = tensor_get(f, name, c->ctx_vocab[i], d, &m->ctx_emb[i], err, errlen)) < 0)
            return rc;
    }
    m->iv = (itemvec_tables){.d = d, .item_vocab = c->item_vocab, .tag_vocab = c->tag_vocab,
                             .num_tags = c->num_tags, .mm_in = c->mm_in, .mm_out = c->mm_out};
    if ((rc = itemvec_load(&m->iv, f, err, errlen)) < 0) return rc;

    float *wq = NULL, *wk = NULL, *wv = NULL, *wo = NULL;
    if ((rc = tensor_get(f, "attention_layers.W_q.weight", H, E, &wq, err, errlen)) < 0 ||
        (rc = tensor_get(f, "attention_layers.W_k.weight", H, E, &wk, err, errlen)) < 0 ||
        (rc = tensor_get(f, "attention_layers.W_v.weight", H, E, &wv, err, errlen)) < 0 ||
        (rc = tensor_get(f, "attention_layers.W_o.weight", E, H, &wo, err, errlen)) < 0 ||
        (rc = fold_attention(m, wq, wk, wv, wo, err, errlen)) < 0) {
        free(wq); free(wk); free(wv); free(wo);
        return rc;
    }
    free(wq); free(wk); free(wv); free(wo);
    m->attn_scale = (float)(1.0 / sqrt((double)H));

    m->qnn_w = calloc((size_t)c->num_layers, sizeof *m->qnn_w);
    m->qnn_b = calloc((size_t)c->num_layers, sizeof *m->qnn_b);
    m->qnn_c = calloc((size_t)c->num_layers, sizeof *m->qnn_c);
    m->prelu = calloc((size_t)c->num_layers, sizeof *m->prelu);
    if (!m->qnn_w || !m->qnn_b || !m->qnn_c || !m->prelu)
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    for (int l = 0; l < c->num_layers; l++)
        if ((rc = fold_qnn_layer(m, f, l, err, errlen)) < 0) return rc;
    /* The QNN's products in the precision asked (dense.h); the row-major
     * weights stay for the tests' reference and other precisions
     * (qin_model_set_precision). */
    dense_params dp = dense_default_params();
    dp.precision = precision;
    dp.backend = kernel;
    if (getenv("CTR_QNN_OPENBLAS") && precision == DENSE_FP32) dp.backend = DENSE_BACKEND_OPENBLAS;
    if ((rc = qin_model_prepare(m, &dp, err, errlen)) < 0 ||
        (rc = qin_fold_first_layer(m, err, errlen)) < 0)
        return rc;

    float *fcb = NULL;
    if ((rc = tensor_get(f, "qnn.fc.weight", 1, D, &m->fc_w, err, errlen)) < 0 ||
        (rc = tensor_get(f, "qnn.fc.bias", 1, -1, &fcb, err, errlen)) < 0)
        return rc;
    m->fc_b = fcb[0];
    free(fcb);
    return CTR_OK;
}

int qin_model_build(const st_file *f, dense_precision precision, dense_backend kernel,
                    qin_model **out, char *err, size_t errlen) {
    *out = NULL;
    qin_model *m = calloc(1, sizeof *m);
    if (!m) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    int rc;
    if ((rc = config_read(f, &m->cfg, err, errlen)) < 0 ||
        (rc = model_build(m, f, precision, kernel, err, errlen)) < 0) {
        qin_model_free(m);
        return rc;
    }
    *out = m;
    return CTR_OK;
}

int qin_model_load_buffer(const void *buf, size_t len, qin_model **out, char *err,
                          size_t errlen) {
    *out = NULL;
    st_file f;
    int rc = st_parse(buf, len, &f, err, errlen);
    if (rc < 0) return rc;
    qin_model *m;
    rc = qin_model_build(&f, DENSE_FP32, DENSE_BACKEND_AUTO, &m, err, errlen);
    st_free(&f);
    if (rc < 0) return rc;
    /* BLAS runs single-threaded inside every call: the service gets its
     * parallelism from its own worker threads (one request, or one slice of
     * a request, per core).  Letting OpenBLAS start threads too would
     * oversubscribe the cores and, at our small matrix sizes, cost more in
     * hand-offs than it gains.  The setting is process-wide. */
    openblas_set_num_threads(1);
    /* oneDNN's sgemm kernels made now, not in the first request
     * (linear.h). */
    linear_warm_up();
    *out = m;
    return CTR_OK;
}

int qin_model_load(const char *path, qin_model **out, char *err, size_t errlen) {
    *out = NULL;
    unsigned char *buf;
    size_t size;
    int rc = modelfile_read(path, &buf, &size, err, errlen);
    if (rc < 0) return rc;
    char inner[512] = "";
    rc = qin_model_load_buffer(buf, size, out, inner, sizeof inner);
    free(buf);
    if (rc < 0) return ctr_fail(err, errlen, rc, "%s: %s", path, inner);
    return CTR_OK;
}

void qin_model_free(qin_model *m) {
    if (!m) return;
    for (int i = 0; i < QIN_MAX_CTX; i++) free(m->ctx_emb[i]);
    itemvec_free(&m->iv);
    free(m->attn_a);
    free(m->attn_b);
    for (int i = 0; i < QIN_MAX_CTX; i++) free(m->first_ctx[i]);
    free(m->first_u);
    free(m->first_v);
    for (int i = 0; m->qnn_part && i < m->cfg.num_layers * QIN_PARTS; i++)
        dense_free(m->qnn_part[i]);
    free(m->qnn_part);
    for (int l = 0; l < m->cfg.num_layers; l++) {
        if (m->qnn_w) free(m->qnn_w[l]);
        if (m->qnn_b) free(m->qnn_b[l]);
        if (m->qnn_c) free(m->qnn_c[l]);
    }
    for (int l = 0; m->qnn_dense && l < m->cfg.num_layers; l++) dense_free(m->qnn_dense[l]);
    free(m->qnn_dense);
    free(m->qnn_w);
    free(m->qnn_b);
    free(m->qnn_c);
    free(m->prelu);
    free(m->fc_w);
    free(m);
}

const qin_config *qin_model_config(const qin_model *m) { return &m->cfg; }
