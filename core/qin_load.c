/*
 * qin_load.c - loads a QIN model file and folds it for scoring.
 *
 * The file holds the weights as training left them (FuxiCTR checkpoint
 * names, float32) and a __metadata__ map with the configuration.  Every
 * tensor's presence, dtype and shape is checked against that configuration
 * before anything is used.  Then the exact algebraic folds of
 * docs/MODEL_SPEC.md section 3 are done once, in double precision so that
 * folding adds no float32 rounding of its own:
 *   - QNN: the R row blocks summed (W' = sum_r W_r, b' = sum_r b_r) and batch
 *     norm folded in (s = gamma / sqrt(var + eps): W = diag(s) W',
 *     b = s b', c = beta - mean s);
 *   - attention: A = W_q^T W_k and B = W_o W_v (E x E), so the query, key
 *     and value projections of the training code become two item-side
 *     matrix-vector products that can be cached per item;
 *   - the first QNN layer split by the parts of its input ("the first
 *     layer", below), so that its product is mostly item-side too.
 * Then the QNN layers are prepared in the serving precision (dense.h).
 * This file is the cold half of QIN: qin.c (item vectors, the forward
 * pass, the engine's entry points) calls into it, never the other way.
 * Load time is dominated by reading the file (~125 MB for MicroLens) and
 * the two attention products (2 x 113M multiply-adds in dgemm).
 */
#include <cblas.h>
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

/* --- configuration from metadata -------------------------------------- */

/* The configuration: the feature schema engine.c has read and checked
 * (name, version, max_len, the vocabularies, the context fields), and the
 * keys of QIN's own. */
static int config_read(const st_file *f, const engine_schema *sc, qin_config *c, char *err,
                       size_t errlen) {
    memset(c, 0, sizeof *c);
    memcpy(c->name, sc->name, sizeof c->name);
    memcpy(c->version, sc->version, sizeof c->version);
    c->max_len = sc->max_len;
    c->item_vocab = sc->item_vocab;
    c->tag_vocab = sc->tag_vocab;
    c->num_tags = sc->num_tags;
    c->mm_in = sc->mm_dim;
    c->num_ctx = sc->num_ctx;
    memcpy(c->ctx_name, sc->ctx_name, sizeof c->ctx_name);
    memcpy(c->ctx_vocab, sc->ctx_vocab, sizeof c->ctx_vocab);
    /* Bounds keep every size product below 2^31 elements and reject nonsense
     * early with a clear message. */
    int r;
    if ((r = modelfile_meta_int(f, "embedding_dim", 1, 4096, &c->embedding_dim, err, errlen)) <
            0 ||
        (r = modelfile_meta_int(f, "num_layers", 1, 64, &c->num_layers, err, errlen)) < 0 ||
        (r = modelfile_meta_int(f, "num_row", 1, 64, &c->num_row, err, errlen)) < 0 ||
        (r = modelfile_meta_int(f, "batch_norm", 0, 1, &c->batch_norm, err, errlen)) < 0 ||
        (r = modelfile_meta_int(f, "mm_out", 1, 4096, &c->mm_out, err, errlen)) < 0)
        return r;
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

/* The optional int8x2 weights of QNN layer l, part i of INT8X2_PARTS
 * (weight, scale, balance): "qnn.layer.<l>.int8x2.<part>". */
#define INT8X2_PARTS 3
static void int8x2_name(char *buf, size_t n, int l, int i) {
    static const char *const part[INT8X2_PARTS] = {"weight", "scale", "balance"};
    snprintf(buf, n, "qnn.layer.%d.int8x2.%s", l, part[i]);
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
        for (int i = 0; i < INT8X2_PARTS; i++) {
            int8x2_name(buf, sizeof buf, l, i);
            if (strcmp(name, buf) == 0) return 1;
        }
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
    m->attn_a = linear_falloc((size_t)E * E);
    m->attn_b = linear_falloc((size_t)E * E);
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
    float *w = NULL, *b = NULL, *a = NULL;
    double *s = malloc((size_t)D * sizeof *s), *shift = malloc((size_t)D * sizeof *shift);
    double *row = malloc((size_t)D * sizeof *row);
    int rc;
    if (!s || !shift || !row) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory folding qnn layer %d", l);
        goto done;
    }
    snprintf(name, sizeof name, "qnn.layer.%d.linear.0.weight", l);
    if ((rc = modelfile_tensor(f, name, (int64_t)R * D, D, &w, err, errlen)) < 0) goto done;
    snprintf(name, sizeof name, "qnn.layer.%d.linear.0.bias", l);
    if ((rc = modelfile_tensor(f, name, (int64_t)R * D, -1, &b, err, errlen)) < 0) goto done;
    snprintf(name, sizeof name, "qnn.activation.%d.weight", l);
    if ((rc = modelfile_tensor(f, name, 1, -1, &a, err, errlen)) < 0) goto done;
    snprintf(name, sizeof name, "qnn.norm.%d.", l);
    if (m->cfg.batch_norm) {
        if ((rc = modelfile_batch_norm(f, name, modelfile_bn_torch, D, BN_EPS, s, shift, err,
                                       errlen)) < 0)
            goto done;
    } else {
        for (int i = 0; i < D; i++) {
            s[i] = 1.0;
            shift[i] = 0.0;
        }
    }
    float *wf = m->qnn_w[l] = linear_falloc((size_t)D * D);
    float *bf = m->qnn_b[l] = linear_falloc((size_t)D);
    float *cf = m->qnn_c[l] = linear_falloc((size_t)D);
    if (!wf || !bf || !cf) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory folding qnn layer %d", l);
        goto done;
    }
    for (int i = 0; i < D; i++) {
        double bsum = 0.0;
        for (int k = 0; k < D; k++) row[k] = 0.0;
        for (int r = 0; r < R; r++) {
            const float *src = w + ((size_t)r * D + i) * D;
            for (int k = 0; k < D; k++) row[k] += src[k];
            bsum += b[(size_t)r * D + i];
        }
        for (int k = 0; k < D; k++) wf[(size_t)i * D + k] = (float)(s[i] * row[k]);
        bf[i] = (float)(s[i] * bsum);
        cf[i] = (float)shift[i];
    }
    m->prelu[l] = a[0];
    rc = CTR_OK;
done:
    free(w); free(b); free(a); free(s); free(shift); free(row);
    return rc;
}

/* The optional int8x2 weights of layer l (tools/README.md, "Model file"):
 * qnn.layer.l.int8x2.{weight, scale, balance}, all three or none (then
 * int8x2 rounds the layer's weights to nearest at load). */
static int read_int8x2(qin_model *m, const st_file *f, int l, char *err, size_t errlen) {
    const int D = m->cfg.input_dim;
    char name[INT8X2_PARTS][128];
    int have = 0;
    for (int i = 0; i < INT8X2_PARTS; i++) {
        int8x2_name(name[i], sizeof name[i], l, i);
        have += st_find(f, name[i]) != NULL;
    }
    if (!have) return CTR_OK;
    if (have < INT8X2_PARTS)
        return ctr_fail(err, errlen, CTR_EMODEL, "qnn layer %d: int8x2 weights need %s, %s and %s "
                        "together", l, name[0], name[1], name[2]);
    if (!m->qnn_int8x2 &&
        !(m->qnn_int8x2 = calloc((size_t)m->cfg.num_layers, sizeof *m->qnn_int8x2)))
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    qin_int8 *q = &m->qnn_int8x2[l];
    int rc;
    if ((rc = modelfile_tensor_i8(f, name[0], D, D, &q->q, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, name[1], D, -1, &q->scale, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, name[2], D, -1, &q->balance, err, errlen)) < 0)
        return rc;
    for (int i = 0; i < D; i++) {
        if (q->scale[i] < 0.0f)
            return ctr_fail(err, errlen, CTR_EMODEL, "tensor %s: negative scale at %d", name[1], i);
        if (!(q->balance[i] > 0.0f))
            return ctr_fail(err, errlen, CTR_EMODEL, "tensor %s: %g at %d, expected > 0", name[2],
                            (double)q->balance[i], i);
    }
    return CTR_OK;
}

/* --- preparation: the QNN products and the first layer's split --------- */

/* The file's int8x2 weights of layer l for precision p, rows r0 .. (a
 * column part's from output r0), into g; NULL where the file has none or p
 * is not int8x2. */
static const dense_int8 *file_int8(const qin_model *m, dense_precision p, int l, int r0,
                                   dense_int8 *g) {
    if (p != DENSE_INT8X2 || !m->qnn_int8x2 || !m->qnn_int8x2[l].q) return NULL;
    const qin_int8 *q = &m->qnn_int8x2[l];
    g->q = q->q + (size_t)r0 * m->cfg.input_dim;
    g->scale = q->scale + r0;
    g->balance = q->balance;
    return g;
}

int qin_model_prepare(qin_model *m, const dense_params *p, char *err, size_t errlen) {
    const qin_config *c = &m->cfg;
    const int D = c->input_dim;
    dense_params dp = *p;
    dp.ld_in = dp.ld_out = qin_ldx(c);
    dense **layers = calloc((size_t)c->num_layers, sizeof *layers);
    if (!layers) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    for (int l = 0; l < c->num_layers; l++) {
        char inner[256] = "";
        dense_int8 g;
        dp.int8 = file_int8(m, dp.precision, l, 0, &g);
        int rc = dense_init(m->qnn_w[l], D, D, &dp, &layers[l], inner, sizeof inner);
        if (rc < 0) {
            for (int k = 0; k < l; k++) dense_free(layers[k]);
            free(layers);
            return ctr_fail(err, errlen, rc, "qnn layer %d, %s: %s", l,
                            dense_precision_name(dp.precision), inner);
        }
    }
    for (int l = 0; m->qnn_dense && l < c->num_layers; l++) dense_free(m->qnn_dense[l]);
    free(m->qnn_dense);
    m->qnn_dense = layers;
    /* The attention's products in bf16 where oneDNN runs them on AMX, for
     * bf16 and int8 (the precisions for speed): at N = 64 they took ~100 us
     * of int8's ~480 us forward pass in fp32 (oneDNN's sgemm at the fp32
     * units' peak) and take ~20 us on AMX; int8 505 -> 433 us, bf16 754 ->
     * 650 us (thread CPU, same run).  Their rounding adds to the error
     * (demo validation set, top 10 changed: bf16 3.3% -> 6.3%, int8 12.2%
     * -> 14.0%; AUC unchanged), so int8x2, the precision for accuracy,
     * keeps them fp32 (bench/results/perf-2026-12-07b.md). */
    dense_free(m->attn_score);
    dense_free(m->attn_pool);
    dense_free(m->attn_first);
    m->attn_score = m->attn_pool = m->attn_first = NULL;
    if ((p->precision == DENSE_BF16 || p->precision == DENSE_INT8) &&
        strcmp(dense_cpu_isa(), "avx512_core_amx") == 0) {
        const int L = c->max_len, E = c->item_dim;
        dense_params ap = dense_default_params();
        ap.precision = DENSE_BF16;
        ap.ld_in = qin_ldx(c);
        ap.ld_out = L;
        char inner[256] = "";
        int rc = dense_rt_init(L, E, 1, &ap, &m->attn_score, inner, sizeof inner);
        ap.ld_in = L;
        ap.ld_out = E;
        if (rc == CTR_OK) rc = dense_rt_init(E, L, 0, &ap, &m->attn_pool, inner, sizeof inner);
        ap.ld_out = qin_ldx(c);
        if (rc == CTR_OK) rc = dense_rt_init(D, L, 0, &ap, &m->attn_first, inner, sizeof inner);
        if (rc < 0) {
            dense_free(m->attn_score);
            dense_free(m->attn_pool);
            m->attn_score = m->attn_pool = NULL;
            m->vec_bf16 = 0;
            return ctr_fail(err, errlen, rc, "attention in bf16: %s", inner);
        }
    }
    /* Their history operands then live in the item vectors in bf16
     * (qin_internal.h, "the item vector's layout"): the request's gather
     * of 64 behaviours' A e, B e and V e read 460 KB of fp32 scattered
     * over 64 vectors and converted it, 7% of all CPU at saturation. */
    m->vec_bf16 = m->attn_score != NULL && m->attn_first != NULL;
    return CTR_OK;
}

int qin_model_prepare_parts(qin_model *m, const dense_params *p, char *err, size_t errlen) {
    const qin_config *c = &m->cfg;
    const int D = c->input_dim, w = D / QIN_PARTS;
    if (D % (32 * QIN_PARTS))
        return ctr_fail(err, errlen, CTR_EINVAL, "column parts: D = %d is not a multiple of %d",
                        D, 32 * QIN_PARTS);
    dense_params dp = *p;
    dp.ld_in = dp.ld_out = qin_ldx(c);
    const int np = c->num_layers * QIN_PARTS;
    dense **parts = calloc((size_t)np, sizeof *parts);
    if (!parts) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    for (int i = 0; i < np; i++) {
        const int l = i / QIN_PARTS, part = i % QIN_PARTS;
        char inner[256] = "";
        dense_int8 g;
        dp.int8 = file_int8(m, dp.precision, l, part * w, &g);
        int rc = dense_init(m->qnn_w[l] + (size_t)part * w * D, w, D, &dp, &parts[i], inner,
                            sizeof inner);
        if (rc < 0) {
            for (int k = 0; k < i; k++) dense_free(parts[k]);
            free(parts);
            return ctr_fail(err, errlen, rc, "qnn layer %d part %d, %s: %s", l, part,
                            dense_precision_name(dp.precision), inner);
        }
    }
    for (int i = 0; m->qnn_part && i < np; i++) dense_free(m->qnn_part[i]);
    free(m->qnn_part);
    m->qnn_part = parts;
    return CTR_OK;
}

/* --- the first layer ------------------------------------------------------
 *
 * The first layer's input is x_0 = [C_1 .. C_F | t | pool] with
 * pool = sum_j a_j B h_j + t, so its product splits exactly:
 *
 *     W_1 x_0 = sum_f W_1[:, C_f] C_f + (W_1[:, t] + W_1[:, pool]) t
 *               + sum_j a_j (W_1[:, pool] B) h_j
 *             = sum_f G_f[v_f] + U t + sum_j a_j V h_j.
 *
 * G_f has one row per context value, U t and V h one per item (cached in
 * the item vectors like A e and B e), so per candidate only the attention
 * weights times the history's V h remain: nh x D multiply-adds instead of
 * D x D (MicroLens: 64 x 1024 instead of 1024 x 1024, a quarter of the
 * forward pass's arithmetic gone; bench/README.md has the measurement). */
int qin_fold_first_layer(qin_model *m, char *err, size_t errlen) {
    const qin_config *c = &m->cfg;
    const int d = c->embedding_dim, E = c->item_dim, D = c->input_dim;
    const int off_t = c->num_ctx * d, off_p = off_t + E;
    const float *w = m->qnn_w[0], *b = m->attn_b;
    double *wp = malloc((size_t)D * E * sizeof *wp), *bd = malloc((size_t)E * E * sizeof *bd),
           *v = malloc((size_t)D * E * sizeof *v);
    int rc = CTR_OK;
    m->first_u = linear_falloc((size_t)D * E);
    m->first_v = linear_falloc((size_t)D * E);
    for (int f = 0; f < c->num_ctx; f++)
        m->first_ctx[f] = linear_falloc((size_t)c->ctx_vocab[f] * D);
    int ok = wp && bd && v && m->first_u && m->first_v;
    for (int f = 0; f < c->num_ctx; f++) ok = ok && m->first_ctx[f];
    if (!ok) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory splitting the first layer");
        goto done;
    }
    for (int o = 0; o < D; o++)
        for (int k = 0; k < E; k++) {
            const float *row = w + (size_t)o * D;
            m->first_u[(size_t)o * E + k] = (float)((double)row[off_t + k] + row[off_p + k]);
            wp[(size_t)o * E + k] = row[off_p + k];
        }
    for (size_t i = 0; i < (size_t)E * E; i++) bd[i] = b[i];
    /* V (D x E) = W_1[:, pool] (D x E) B (E x E) */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, D, E, E, 1.0, wp, E, bd, E, 0.0, v, E);
    for (size_t i = 0; i < (size_t)D * E; i++) m->first_v[i] = (float)v[i];
    for (int f = 0; f < c->num_ctx; f++)
        for (int val = 0; val < c->ctx_vocab[f]; val++) {
            const float *e = m->ctx_emb[f] + (size_t)val * d;
            for (int o = 0; o < D; o++) {
                const float *row = w + (size_t)o * D + f * d;
                double sum = 0;
                for (int k = 0; k < d; k++) sum += (double)row[k] * e[k];
                m->first_ctx[f][(size_t)val * D + o] = (float)sum;
            }
        }
    m->fold_first = 1;
done:
    free(wp);
    free(bd);
    free(v);
    return rc;
}

int qin_model_fold_first(qin_model *m, int on) {
    m->fold_first = on && m->first_u != NULL;
    return m->fold_first;
}

static int model_build(qin_model *m, const st_file *f, char *err, size_t errlen) {
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
        if ((rc = modelfile_tensor(f, name, c->ctx_vocab[i], d, &m->ctx_emb[i], err, errlen)) < 0)
            return rc;
    }
    m->iv = (itemvec_tables){.d = d, .item_vocab = c->item_vocab, .tag_vocab = c->tag_vocab,
                             .num_tags = c->num_tags, .mm_in = c->mm_in, .mm_out = c->mm_out};
    if ((rc = itemvec_load(&m->iv, f, err, errlen)) < 0) return rc;

    float *wq = NULL, *wk = NULL, *wv = NULL, *wo = NULL;
    if ((rc = modelfile_tensor(f, "attention_layers.W_q.weight", H, E, &wq, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "attention_layers.W_k.weight", H, E, &wk, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "attention_layers.W_v.weight", H, E, &wv, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "attention_layers.W_o.weight", E, H, &wo, err, errlen)) < 0 ||
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
        if ((rc = fold_qnn_layer(m, f, l, err, errlen)) < 0 ||
            (rc = read_int8x2(m, f, l, err, errlen)) < 0)
            return rc;
    /* The row-major QNN weights stay after qin_model_prepare has made the
     * serving products from them: the tests' reference, other backends. */
    if ((rc = qin_fold_first_layer(m, err, errlen)) < 0) return rc;

    float *fcb = NULL;
    if ((rc = modelfile_tensor(f, "qnn.fc.weight", 1, D, &m->fc_w, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "qnn.fc.bias", 1, -1, &fcb, err, errlen)) < 0)
        return rc;
    m->fc_b = fcb[0];
    free(fcb);
    return CTR_OK;
}

int qin_model_build(qin_model *m, const st_file *f, const engine_schema *sc, char *err,
                    size_t errlen) {
    int rc = config_read(f, sc, &m->cfg, err, errlen);
    return rc < 0 ? rc : model_build(m, f, err, errlen);
}

void qin_model_free(qin_model *m) {
    if (!m) return;
    for (int i = 0; i < ENGINE_MAX_CTX; i++) free(m->ctx_emb[i]);
    itemvec_free(&m->iv);
    free(m->attn_a);
    free(m->attn_b);
    for (int i = 0; i < ENGINE_MAX_CTX; i++) free(m->first_ctx[i]);
    free(m->first_u);
    free(m->first_v);
    for (int i = 0; m->qnn_part && i < m->cfg.num_layers * QIN_PARTS; i++)
        dense_free(m->qnn_part[i]);
    free(m->qnn_part);
    for (int l = 0; l < m->cfg.num_layers; l++) {
        if (m->qnn_w) free(m->qnn_w[l]);
        if (m->qnn_b) free(m->qnn_b[l]);
        if (m->qnn_c) free(m->qnn_c[l]);
        if (m->qnn_int8x2) {
            free(m->qnn_int8x2[l].q);
            free(m->qnn_int8x2[l].scale);
            free(m->qnn_int8x2[l].balance);
        }
    }
    free(m->qnn_int8x2);
    for (int l = 0; m->qnn_dense && l < m->cfg.num_layers; l++) dense_free(m->qnn_dense[l]);
    free(m->qnn_dense);
    dense_free(m->attn_score);
    dense_free(m->attn_pool);
    dense_free(m->attn_first);
    free(m->qnn_w);
    free(m->qnn_b);
    free(m->qnn_c);
    free(m->prelu);
    free(m->fc_w);
    free(m);
}
