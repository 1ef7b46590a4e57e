/*
 * qin.c - item vectors and the batched QIN forward pass.
 *
 * Workload: one request = one user's history (up to max_len = 64 behaviours)
 * and N candidates (1 to a few hundred).  Per candidate the folded model
 * costs about 4.3M multiply-adds, of which the QNN's num_layers D x D
 * products are ~98% (MicroLens: 4 x 1024 x 1024).  So the hot spot is
 * qin_qnn_layer: one GEMM for all N candidates per layer (the packed
 * AVX-512 kernel of gemm.c where the CPU has it, else OpenBLAS sgemm), then
 * one fused pass for bias, batch-norm shift, PReLU and the residual.  Everything
 * item-side (e, A e, B e) is computed once per item by qin_item_compute and
 * cached by the caller, so a request only gathers those vectors.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "attn.h"
#include "gemm.h"
#include "qin_internal.h"

size_t qin_item_vec_floats(const qin_model *m) { return 3 * (size_t)m->cfg.item_dim; }

float *qin_item_vec_alloc(const qin_model *m) { return qin_falloc(qin_item_vec_floats(m)); }

/* e = [E_item[id] | masked tag mean | W_mm mm] into e (item_dim floats),
 * after checking the item (itemvec.h, shared with DIN).  The attention
 * halves are the caller's. */
static int item_base(const qin_model *m, const qin_item_input *item, float *e, char *err,
                     size_t errlen) {
    int rc = itemvec_check(&m->iv, item, err, errlen);
    if (rc < 0) return rc;
    itemvec_base(&m->iv, item, e);
    return CTR_OK;
}

/* An item vector with an infinite or NaN entry (finite inputs can still
 * overflow: 3e38 in the multimodal embedding) would poison every score it
 * touches, and a cached one would keep doing so: refuse it. */
static int vec_finite(const qin_model *m, const qin_item_input *item, const float *vec,
                      char *err, size_t errlen) {
    if (itemvec_finite(vec, qin_item_vec_floats(m))) return CTR_OK;
    return ctr_fail(err, errlen, CTR_EINVAL,
                    "item %lld: its vector overflows (features too large for the model)",
                    (long long)item->id);
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
    return vec_finite(m, item, vec, err, errlen);
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
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, E, E, 1.0f, out, ld, m->attn_a, E,
                0.0f, out + E, ld);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, E, E, 1.0f, out, ld, m->attn_b, E,
                0.0f, out + 2 * E, ld);
    for (int i = 0; i < n; i++) {
        int rc = vec_finite(m, &items[i], out + (size_t)i * ld, err, errlen);
        if (rc < 0) {
            if (bad) *bad = i;
            return rc;
        }
    }
    return CTR_OK;
}

int qin_request_check(const qin_config *c, const int64_t *cand_id, const int32_t *ctx, int n,
                      char *err, size_t errlen) {
    for (int i = 0; i < n; i++) {
        if (cand_id[i] < 1 || cand_id[i] >= c->item_vocab)
            return ctr_fail(err, errlen, CTR_ERANGE,
                            "candidates[%d].item_id: %lld outside the model's items 1..%d", i,
                            (long long)cand_id[i], c->item_vocab - 1);
        for (int f = 0; ctx && f < c->num_ctx; f++) {
            int32_t v = ctx[(size_t)i * c->num_ctx + f];
            if (v < 0 || v >= c->ctx_vocab[f])
                return ctr_fail(err, errlen, CTR_ERANGE, "candidates[%d].%s: %d outside 0..%d",
                                i, c->ctx_name[f], (int)v, c->ctx_vocab[f] - 1);
        }
    }
    return CTR_OK;
}

int qin_history_usable(const qin_config *c, int64_t id) { return id >= 1 && id < c->item_vocab; }

double qin_candidate_flops(const qin_config *c) {
    /* Per candidate: the QNN's D x D products (the bulk), the attention
     * against max_len behaviours, the head. */
    return 2.0 * c->num_layers * (double)c->input_dim * c->input_dim +
           4.0 * c->max_len * c->item_dim + 2.0 * c->input_dim;
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
    s->ldx = (c->input_dim + 15) & ~15;
    s->x = qin_falloc((size_t)max_cand * s->ldx);
    s->y = qin_falloc((size_t)max_cand * s->ldx);
    s->s = qin_falloc((size_t)max_cand * c->max_len);
    s->ah = qin_falloc((size_t)c->max_len * c->item_dim);
    s->bh = qin_falloc((size_t)c->max_len * c->item_dim);
    s->logit = qin_falloc((size_t)max_cand);
    if (!s->x || !s->y || !s->s || !s->ah || !s->bh || !s->logit) {
        qin_scratch_free(s);
        return CTR_ENOMEM;
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
    free(s);
}

int qin_scratch_max_cand(const qin_scratch *s) { return s->max_cand; }

/* --- forward pieces ----------------------------------------------------- */

void qin_attention(const qin_model *m, int n, const float *t, int ldt, int nh, const float *ah,
                   const float *bh, float *s, int lds, float *pool, int ldp) {
    const int E = m->cfg.item_dim;
    for (int i = 0; i < n; i++) memcpy(pool + (size_t)i * ldp, t + (size_t)i * ldt,
                                       (size_t)E * sizeof *pool);
    if (nh == 0 || n == 0) return; /* empty history: pool = t */
    /* s = relu(scale * T (A H)^T): n x nh. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nh, E, m->attn_scale, t, ldt, ah, E,
                0.0f, s, lds);
    for (int i = 0; i < n; i++) {
        float *row = s + (size_t)i * lds;
        for (int j = 0; j < nh; j++) row[j] = row[j] > 0.0f ? row[j] : 0.0f;
    }
    /* pool += s (B H): n x E. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, E, nh, 1.0f, s, lds, bh, E, 1.0f,
                pool, ldp);
}

/* Hot spot: ~98% of a request's arithmetic is this GEMM. */
void qin_qnn_layer(const qin_model *m, int layer, int n, float *x, int ldx, float *y) {
    const int D = m->cfg.input_dim;
    const float *w = m->qnn_w[layer];
    const float *restrict b = m->qnn_b[layer], *restrict c = m->qnn_c[layer];
    const float a = m->prelu[layer];
    /* y = x W^T for all n candidates at once (W is D x D, [out, in]): the
     * packed AVX-512 kernel where the model has packed weights, else one
     * OpenBLAS sgemm. */
    if (m->use_packed)
        gemm_packed(n, D, x, ldx, m->qnn_packed[layer], y, ldx);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, D, D, 1.0f, x, ldx, w, D, 0.0f,
                    y, ldx);
    /* Fused: z = x (y + b) + c (batch norm folded); PReLU; x += z. */
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
    qin_attention(m, n, s->x + off_t, ldx, nh, s->ah, s->bh, s->s, c->max_len, s->x + off_p, ldx);
    for (int l = 0; l < c->num_layers; l++) qin_qnn_layer(m, l, n, s->x, ldx, s->y);
    qin_head(m, n, s->x, ldx, s->logit, prob);
    return CTR_OK;
}

/* --- the engine interface (arch.h) --------------------------------------- */

/* QIN behind engine.h: the functions above, unchanged; the explanation
 * reads the attention weights qin_forward leaves in its scratch. */

typedef struct qin_engine_scratch {
    qin_scratch *s;
    int32_t *pos;                 /* max_len: positions of the kept behaviours */
} qin_engine_scratch;

static int qin_arch_load(const st_file *f, const engine_schema *sc, void **impl, char *err,
                         size_t errlen) {
    (void)sc;
    return qin_model_build(f, (qin_model **)impl, err, errlen);
}

static void qin_arch_free(void *impl) { qin_model_free(impl); }

static size_t qin_arch_vec_floats(const void *impl) { return qin_item_vec_floats(impl); }

static int qin_arch_items(const void *impl, int n, const engine_item *items, float *out, int *bad,
                          char *err, size_t errlen) {
    /* qin_items_compute takes qin_item_input: convert a chunk at a time on
     * the stack (the products stay batched per chunk). */
    enum { CHUNK = 128 };
    qin_item_input in[CHUNK];
    const size_t vf = qin_item_vec_floats(impl);
    for (int i0 = 0; i0 < n; i0 += CHUNK) {
        int c = n - i0 < CHUNK ? n - i0 : CHUNK;
        for (int i = 0; i < c; i++) in[i] = engine_item_base(&items[i0 + i]);
        int rc = qin_items_compute(impl, c, in, out + (size_t)i0 * vf, bad, err, errlen);
        if (rc < 0) {
            if (bad) *bad += i0;
            return rc;
        }
    }
    return CTR_OK;
}

static void qin_arch_scratch_free(void *scratch) {
    qin_engine_scratch *es = scratch;
    if (!es) return;
    qin_scratch_free(es->s);
    free(es->pos);
    free(es);
}

static int qin_arch_scratch_init(const void *impl, int max_cand, void **scratch) {
    const qin_model *m = impl;
    qin_engine_scratch *es = calloc(1, sizeof *es);
    if (!es) return CTR_ENOMEM;
    int rc = qin_scratch_init(m, max_cand, &es->s);
    es->pos = malloc((size_t)m->cfg.max_len * sizeof *es->pos);
    if (rc == CTR_OK && !es->pos) rc = CTR_ENOMEM;
    if (rc < 0) {
        qin_arch_scratch_free(es);
        return rc;
    }
    *scratch = es;
    return CTR_OK;
}

static int qin_arch_forward(const void *impl, void *scratch, const engine_request *req,
                            float *prob, char *err, size_t errlen) {
    const qin_model *m = impl;
    qin_engine_scratch *es = scratch;
    qin_request q = {req->hist, req->num_hist, req->cand, req->ctx, req->num_cand};
    int rc = qin_forward(m, es->s, &q, prob, err, errlen);
    if (rc < 0 || !req->explain) return rc;
    /* qin_forward kept the same behaviours (the window, padding skipped)
     * and left a_j in s (num_cand x max_len). */
    int nh = attn_window(req->hist, req->num_hist, m->cfg.max_len, es->pos);
    attn_explain(es->s->s, req->num_cand, nh, m->cfg.max_len, es->pos, req->explain, 0);
    return CTR_OK;
}

static engine_cost qin_arch_cost(const void *impl, int nh) {
    const qin_config *c = &((const qin_model *)impl)->cfg;
    const double D = c->input_dim, E = c->item_dim, H = c->attn_dim, R = c->num_row;
    engine_cost k;
    /* Folded: the attention (t . A h and a_j B h, 2 E per behaviour), the
     * QNN (D x D per layer) and the head. */
    k.folded = 2.0 * nh * E + c->num_layers * D * D + D;
    /* As trained: every candidate's copy of the history gets its item
     * vectors (W_mm) and projections (W_k, W_v), the target W_q, the
     * scores and pool (2 H per behaviour), W_o, the R-row QNN, the head. */
    k.unfolded = (double)c->mm_in * c->mm_out * (nh + 1) + E * H * (1 + 2.0 * nh) +
                 2.0 * nh * H + H * E + c->num_layers * R * D * D + D;
    return k;
}

const arch_ops qin_arch_ops = {
    .load = qin_arch_load,
    .free = qin_arch_free,
    .item_vec_floats = qin_arch_vec_floats,
    .items_compute = qin_arch_items,
    .scratch_init = qin_arch_scratch_init,
    .scratch_free = qin_arch_scratch_free,
    .forward = qin_arch_forward,
    .cost = qin_arch_cost,
};
