/*
 * qin.c - item vectors and the batched QIN forward pass.
 *
 * Workload: one request = one user's history (up to max_len = 64 behaviours)
 * and N candidates (1 to a few hundred).  Per candidate the folded model
 * costs about 4.3M multiply-adds, of which the QNN's num_layers D x D
 * products are ~98% (MicroLens: 4 x 1024 x 1024).  So the hot spot is
 * qin_qnn_layer: one product for all N candidates per layer (dense.h: oneDNN
 * in the model's precision, or the packed AVX-512 kernel of gemm.c for fp32
 * at small N), then one fused pass for bias, batch-norm shift, PReLU and the
 * residual.  Everything
 * item-side (e, A e, B e) is computed once per item by qin_item_compute and
 * cached by the caller, so a request only gathers those vectors.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qin_internal.h"

size_t qin_item_vec_floats(const qin_model *m) { return 3 * (size_t)m->cfg.item_dim; }

float *qin_item_vec_alloc(const qin_model *m) { return qin_falloc(qin_item_vec_floats(m)); }

/* e = [E_item[id] | masked tag mean | W_mm mm] into e (item_dim floats),
 * after checking the item.  The attention halves are the caller's. */
static int item_base(const qin_model *m, const qin_item_input *item, float *e, char *err,
                     size_t errlen) {
    const qin_config *c = &m->cfg;
    const int d = c->embedding_dim;
    if (item->id < 1 || item->id >= c->item_vocab)
        return ctr_fail(err, errlen, CTR_ERANGE, "item_id %lld outside 1..%d",
                        (long long)item->id, c->item_vocab - 1);
    if (item->num_tags < 0 || item->num_tags > c->num_tags)
        return ctr_fail(err, errlen, CTR_EINVAL, "item %lld: %d tags, at most %d",
                        (long long)item->id, item->num_tags, c->num_tags);
    for (int k = 0; k < item->num_tags; k++)
        if (item->tags[k] < 0 || item->tags[k] >= c->tag_vocab)
            return ctr_fail(err, errlen, CTR_ERANGE, "item %lld: tag %d outside 0..%d",
                            (long long)item->id, (int)item->tags[k], c->tag_vocab - 1);
    if (item->mm)
        for (int k = 0; k < c->mm_in; k++)
            if (!isfinite(item->mm[k]))
                return ctr_fail(err, errlen, CTR_EINVAL,
                                "item %lld: non-finite multimodal value at %d",
                                (long long)item->id, k);

    float *e_tag = e + d, *e_mm = e + 2 * d;
    memcpy(e, m->item_emb + (size_t)item->id * d, (size_t)d * sizeof *e);

    /* Masked mean over the tags whose embedding row is not all zero; the
     * divisor n + 1e-12 is the training code's, and makes all-padding
     * tags give zero. */
    memset(e_tag, 0, (size_t)d * sizeof *e_tag);
    int live = 0;
    for (int k = 0; k < item->num_tags; k++) {
        if (!m->tag_live[item->tags[k]]) continue;
        const float *row = m->tag_emb + (size_t)item->tags[k] * d;
        for (int j = 0; j < d; j++) e_tag[j] += row[j];
        live++;
    }
    float denom = (float)live + 1e-12f;
    for (int j = 0; j < d; j++) e_tag[j] /= denom;

    if (item->mm)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, c->mm_out, c->mm_in, 1.0f, m->w_mm, c->mm_in,
                    item->mm, 1, 0.0f, e_mm, 1);
    else
        memset(e_mm, 0, (size_t)c->mm_out * sizeof *e_mm);
    return CTR_OK;
}

int qin_item_compute(const qin_model *m, const qin_item_input *item, float *vec, char *err,
                     size_t errlen) {
    const int E = m->cfg.item_dim;
    int rc = item_base(m, item, vec, err, errlen);
    if (rc < 0) return rc;
    /* The item-side halves of the attention: A e (keys) and B e (values). */
    cblas_sgemv(CblasRowMajor, CblasNoTrans, E, E, 1.0f, m->attn_a, E, vec, 1, 0.0f, vec + E, 1);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, E, E, 1.0f, m->attn_b, E, vec, 1, 0.0f,
                vec + 2 * E, 1);
    return CTR_OK;
}

int qin_items_compute(const qin_model *m, int n, const qin_item_input *items, float *out,
                      int *bad, char *err, size_t errlen) {
    const int E = m->cfg.item_dim, ld = 3 * E;
    for (int i = 0; i < n; i++) {
        int rc = item_base(m, &items[i], out + (size_t)i * ld, err, errlen);
        if (rc < 0) {
            if (bad) *bad = i;
            return rc;
        }
    }
    if (n <= 0) return CTR_OK;
    /* Rows e_i (stride 3E) times A^T and B^T, into the rows' other parts. */
    int rc = dense_sgemm(1, n, E, E, 1.0f, out, ld, m->attn_a, E, 0.0f, out + E, ld);
    if (rc == CTR_OK) rc = dense_sgemm(1, n, E, E, 1.0f, out, ld, m->attn_b, E, 0.0f, out + 2 * E, ld);
    return rc < 0 ? ctr_fail(err, errlen, rc, "item vectors: product failed") : CTR_OK;
}

/* --- scratch ------------------------------------------------------------ */

int qin_scratch_init(const qin_model *m, int max_cand, qin_scratch **out) {
    *out = NULL;
    if (max_cand < 1 || max_cand > (1 << 20)) return CTR_EINVAL;
    const qin_config *c = &m->cfg;
    qin_scratch *s = calloc(1, sizeof *s);
    if (!s) return CTR_ENOMEM;
    s->model = m;
    s->max_cand = max_cand;
    s->ldx = qin_ldx(c);
    s->x = qin_falloc((size_t)max_cand * s->ldx);
    s->y = qin_falloc((size_t)max_cand * s->ldx);
    s->s = qin_falloc((size_t)max_cand * c->max_len);
    s->ah = qin_falloc((size_t)c->max_len * c->item_dim);
    s->bh = qin_falloc((size_t)c->max_len * c->item_dim);
    s->logit = qin_falloc((size_t)max_cand);
    size_t ws = 0;
    for (int l = 0; l < c->num_layers; l++)
        if (dense_ws_size(m->qnn_dense[l]) > ws) ws = dense_ws_size(m->qnn_dense[l]);
    int rc = dense_ws_init(ws, &s->dws);
    if (!s->x || !s->y || !s->s || !s->ah || !s->bh || !s->logit || rc < 0) {
        qin_scratch_free(s);
        return rc < 0 ? rc : CTR_ENOMEM;
    }
    *out = s;
    return CTR_OK;
}

void qin_scratch_free(qin_scratch *s) {
    if (!s) return;
    free(s->x);
    free(s->y);
    free(s->s);
    free(s->ah);
    free(s->bh);
    free(s->logit);
    dense_ws_free(s->dws);
    free(s);
}

int qin_scratch_max_cand(const qin_scratch *s) { return s->max_cand; }

/* --- forward pieces ----------------------------------------------------- */

/* The two products are oneDNN's sgemm (dense_sgemm): their shapes change
 * with every request, and on AVX-512 machines it ran them 2x (Haswell
 * kernels) to 4.7x (OpenBLAS's baseline kernels) faster than OpenBLAS at
 * N = 64 (bench/README.md). */
int qin_attention(const qin_model *m, int n, const float *t, int ldt, int nh, const float *ah,
                  const float *bh, float *s, int lds, float *pool, int ldp) {
    const int E = m->cfg.item_dim;
    for (int i = 0; i < n; i++) memcpy(pool + (size_t)i * ldp, t + (size_t)i * ldt,
                                       (size_t)E * sizeof *pool);
    if (nh == 0 || n == 0) return CTR_OK; /* empty history: pool = t */
    /* s = relu(scale * T (A H)^T): n x nh. */
    int rc = dense_sgemm(1, n, nh, E, m->attn_scale, t, ldt, ah, E, 0.0f, s, lds);
    if (rc < 0) return rc;
    for (int i = 0; i < n; i++) {
        float *row = s + (size_t)i * lds;
        for (int j = 0; j < nh; j++) row[j] = row[j] > 0.0f ? row[j] : 0.0f;
    }
    /* pool += s (B H): n x E. */
    return dense_sgemm(0, n, E, nh, 1.0f, s, lds, bh, E, 1.0f, pool, ldp);
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
    m->precision = dp.precision;
    return CTR_OK;
}

int qin_model_set_precision(qin_model *m, dense_precision p, char *err, size_t errlen) {
    if (p == m->precision) return CTR_OK;
    dense_params dp = dense_default_params();
    dp.precision = p;
    return qin_model_prepare(m, &dp, err, errlen);
}

dense_precision qin_model_precision(const qin_model *m) { return m->precision; }

const char *qin_model_describe(const qin_model *m) { return dense_describe(m->qnn_dense[0]); }

/* The fused pass after a layer's product: z = x (y + b) + c (batch norm
 * folded); PReLU; x += z.  Cloned for AVX-512 (chosen at load time by the
 * dynamic linker): compiled for the baseline x86-64 it runs 4 floats at a
 * time, and with the product on oneDNN's int8 kernels it was 7% of the
 * forward pass (perf, N = 64). */
__attribute__((target_clones("avx512f", "default"))) static void
qnn_fused(int n, int D, float *x, int ldx, const float *y, const float *restrict b,
          const float *restrict c, float a) {
    for (int i = 0; i < n; i++) {
        float *restrict xi = x + (size_t)i * ldx;
        const float *restrict yi = y + (size_t)i * ldx;
        for (int k = 0; k < D; k++) {
            float z = xi[k] * (yi[k] + b[k]) + c[k];
            /* PReLU as max + a min: exactly z or a z, and written as two
             * min/max patterns so the compiler vectorizes it without a
             * branch (the signs of z are random: a branch mispredicts). */
            float pos = z > 0.0f ? z : 0.0f, neg = z < 0.0f ? z : 0.0f;
            xi[k] += pos + a * neg;
        }
    }
}

/* Hot spot: ~98% of a request's arithmetic is this product. */
int qin_qnn_layer(const qin_model *m, dense_ws *ws, int layer, int n, float *x, float *y) {
    /* y = x W^T for all n candidates at once (W is D x D, [out, in]), in the
     * model's precision (dense.h). */
    int rc = dense_forward(m->qnn_dense[layer], ws, n, x, y);
    if (rc < 0) return rc;
    qnn_fused(n, m->cfg.input_dim, x, qin_ldx(&m->cfg), y, m->qnn_b[layer], m->qnn_c[layer],
              m->prelu[layer]);
    return CTR_OK;
}

void qin_head(const qin_model *m, int n, const float *x, int ldx, float *logit, float *prob) {
    const int D = m->cfg.input_dim;
    cblas_sgemv(CblasRowMajor, CblasNoTrans, n, D, 1.0f, x, ldx, m->fc_w, 1, 0.0f, logit, 1);
    for (int i = 0; i < n; i++) prob[i] = 1.0f / (1.0f + expf(-(logit[i] + m->fc_b)));
}

/* --- the forward pass --------------------------------------------------- */

int qin_forward(const qin_model *m, qin_scratch *s, const qin_request *req, float *prob,
                char *err, size_t errlen) {
    const qin_config *c = &m->cfg;
    const int d = c->embedding_dim, E = c->item_dim, n = req->num_cand;
    if (s->model != m) return ctr_fail(err, errlen, CTR_EINVAL, "scratch of another model");
    if (n < 0 || n > s->max_cand)
        return ctr_fail(err, errlen, CTR_ETOOMANY, "%d candidates, at most %d", n, s->max_cand);
    if (req->ctx)
        for (int i = 0; i < n; i++)
            for (int f = 0; f < c->num_ctx; f++) {
                int32_t v = req->ctx[(size_t)i * c->num_ctx + f];
                if (v < 0 || v >= c->ctx_vocab[f])
                    return ctr_fail(err, errlen, CTR_ERANGE,
                                    "candidate %d: %s = %d outside 0..%d", i, c->ctx_name[f],
                                    (int)v, c->ctx_vocab[f] - 1);
            }
    for (int i = 0; i < n; i++)
        if (!req->cand[i]) return ctr_fail(err, errlen, CTR_EINVAL, "candidate %d: no vector", i);
    if (n == 0) return CTR_OK;

    /* The most recent max_len behaviours, padding skipped: with no softmax,
     * a masked position contributes exactly nothing. */
    int first = req->num_hist > c->max_len ? req->num_hist - c->max_len : 0, nh = 0;
    for (int j = first; j < req->num_hist; j++) {
        const float *h = req->hist[j];
        if (!h) continue;
        memcpy(s->ah + (size_t)nh * E, h + E, (size_t)E * sizeof(float));
        memcpy(s->bh + (size_t)nh * E, h + 2 * E, (size_t)E * sizeof(float));
        nh++;
    }

    /* x0 = [ctx embeddings | t | pool] per candidate row. */
    const int ldx = s->ldx, off_t = c->num_ctx * d, off_p = off_t + E;
    for (int i = 0; i < n; i++) {
        float *xi = s->x + (size_t)i * ldx;
        for (int f = 0; f < c->num_ctx; f++) {
            int32_t v = req->ctx ? req->ctx[(size_t)i * c->num_ctx + f] : 0;
            memcpy(xi + f * d, m->ctx_emb[f] + (size_t)v * d, (size_t)d * sizeof(float));
        }
        memcpy(xi + off_t, req->cand[i], (size_t)E * sizeof(float));
    }
    if (qin_attention(m, n, s->x + off_t, ldx, nh, s->ah, s->bh, s->s, c->max_len, s->x + off_p,
                      ldx) < 0)
        return ctr_fail(err, errlen, CTR_EINVAL, "attention: product failed");
    for (int l = 0; l < c->num_layers; l++)
        if (qin_qnn_layer(m, s->dws, l, n, s->x, s->y) < 0)
            return ctr_fail(err, errlen, CTR_EINVAL, "qnn layer %d: %s failed", l,
                            dense_describe(m->qnn_dense[l]));
    qin_head(m, n, s->x, ldx, s->logit, prob);
    return CTR_OK;
}
