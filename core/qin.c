/*
 * qin.c - item vectors and the batched QIN forward pass (docs/MODEL_SPEC.md
 * section 3; the folds it relies on are made by qin_load.c).
 *
 * Workload: one request = one user's history (up to max_len = 64 behaviours)
 * and N candidates (1 to a few hundred).  Per candidate the folded model
 * costs about 4.3M multiply-adds, of which the QNN's num_layers D x D
 * products are ~98% (MicroLens: 4 x 1024 x 1024).  So the hot spot is
 * qin_qnn_layer: one product for all N candidates per layer (dense.h: oneDNN
 * in the model's precision, or the packed AVX-512 kernel of gemm.c for fp32
 * at small N), then one fused pass for bias, batch-norm shift, PReLU and the
 * residual.  Everything
 * item-side (e, A e, B e, U e, V e) is computed once per item by
 * qin_items_compute and cached by the caller, so a request only gathers
 * those vectors.  The folds these rely on are made at load (qin_load.c);
 * this file reads the model and never calls back into the loader's
 * preparation.
 */
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "attn.h"
#include "linear.h"
#include "core/base/cpu.h"
#include "qin_internal.h"

/* qin_internal.h, "the item vector's layout". */
size_t qin_item_vec_floats(const qin_model *m) {
    const size_t E = (size_t)m->cfg.item_dim, D = (size_t)m->cfg.input_dim;
    if (!m->vec_bf16) return 3 * E + 2 * D;
    return (E + D + (2 * E + D + 1) / 2 + 15) & ~(size_t)15;
}

int qin_model_vec_bf16(qin_model *m, int on) {
    m->vec_bf16 = on && m->attn_score != NULL && m->attn_first != NULL;
    return m->vec_bf16;
}

/* e = [E_item[id] | masked tag mean | W_mm mm] into e (item_dim floats),
 * after checking the item (itemvec.h, shared with DIN).  The attention
 * halves are the caller's. */
static int item_base(const qin_model *m, const itemvec_input *item, float *e, char *err,
                     size_t errlen) {
    int rc = itemvec_check(&m->iv, item, err, errlen);
    if (rc < 0) return rc;
    itemvec_base(&m->iv, item, e);
    return CTR_OK;
}

int qin_items_compute(const qin_model *m, int n, const itemvec_input *items, float *out,
                      int *bad, char *err, size_t errlen) {
    const int E = m->cfg.item_dim, D = m->cfg.input_dim, ld = (int)qin_item_vec_floats(m);
    for (int i = 0; i < n; i++) {
        int rc = item_base(m, &items[i], out + (size_t)i * ld, err, errlen);
        if (rc < 0) {
            if (bad) *bad = i;
            return rc;
        }
    }
    if (n <= 0) return CTR_OK;
    /* Rows e_i times A^T, B^T, U^T and V^T, into the rows' other parts. */
    if (!m->vec_bf16) {
        linear_gemm(n, E, E, out, ld, m->attn_a, E, 1, 0.0f, out + E, ld);
        linear_gemm(n, E, E, out, ld, m->attn_b, E, 1, 0.0f, out + 2 * E, ld);
        linear_gemm(n, D, E, out, ld, m->first_u, E, 1, 0.0f, out + 3 * E, ld);
        linear_gemm(n, D, E, out, ld, m->first_v, E, 1, 0.0f, out + 3 * E + D, ld);
        return CTR_OK;
    }
    /* The bf16 layout: the same products in fp32, V e and then A e, B e
     * first into U e's place (D >= 2 E floats), each rounded into h16;
     * then U e.  No buffer beyond the vectors themselves. */
    const size_t h16 = (size_t)E + D, ldq = 2 * (size_t)ld;
    unsigned short *q = (unsigned short *)(out + h16);
    linear_gemm(n, D, E, out, ld, m->first_v, E, 1, 0.0f, out + E, ld);
    dense_bf16_rows(n, D, out + E, ld, q + 2 * E, ldq);
    linear_gemm(n, E, E, out, ld, m->attn_a, E, 1, 0.0f, out + E, ld);
    linear_gemm(n, E, E, out, ld, m->attn_b, E, 1, 0.0f, out + 2 * E, ld);
    dense_bf16_rows(n, 2 * E, out + E, ld, q, ldq);
    linear_gemm(n, D, E, out, ld, m->first_u, E, 1, 0.0f, out + E, ld);
    const size_t used = 2 * (size_t)E + D, tail = 2 * ((size_t)ld - h16) - used;
    for (int i = 0; i < n; i++) {
        unsigned short *qi = q + (size_t)i * ldq;
        memset(qi + used, 0, tail * sizeof *qi);
        /* A bf16 value is infinite or NaN when its exponent is all ones;
         * fp32 values near FLT_MAX round to infinity.  Such a vector
         * must fail engine_items_compute's check of the floats, which
         * sees a pair's low half only as mantissa bits: mark it. */
        unsigned inf = 0;
        for (size_t k = 0; k < used; k++) inf |= (qi[k] & 0x7f80u) == 0x7f80u;
        if (inf) out[(size_t)i * ld + h16] = NAN;
    }
    return CTR_OK;
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
    s->x = linear_falloc((size_t)max_cand * s->ldx);
    if (m->qnn_part) s->x2 = linear_falloc((size_t)max_cand * s->ldx);
    s->y = linear_falloc((size_t)max_cand * s->ldx);
    s->s = linear_falloc((size_t)max_cand * c->max_len);
    s->ah = linear_falloc((size_t)c->max_len * c->item_dim);
    s->bh = linear_falloc((size_t)c->max_len * c->item_dim);
    s->vh = linear_falloc((size_t)c->max_len * c->input_dim);
    s->keep = calloc((size_t)c->max_len, sizeof *s->keep);
    s->logit = linear_falloc((size_t)max_cand);
    int lowp_ok = 1;
    if (m->attn_score) {
        /* zeroed: the rows past a history are zero (A h) or finite */
        s->ah16 = (unsigned short *)linear_falloc((size_t)c->max_len * c->item_dim / 2 + 1);
        s->bh16 = (unsigned short *)linear_falloc((size_t)c->max_len * c->item_dim / 2 + 1);
        s->pt = linear_falloc((size_t)max_cand * c->item_dim);
        lowp_ok = s->ah16 && s->bh16 && s->pt;
    }
    if (m->attn_first) {
        s->vh16 = (unsigned short *)linear_falloc((size_t)c->max_len * c->input_dim / 2 + 1);
        lowp_ok = lowp_ok && s->vh16;
    }
    size_t ws = 0;
    const dense *attn[3] = {m->attn_score, m->attn_pool, m->attn_first};
    for (int k = 0; k < 3; k++)
        if (attn[k] && dense_ws_size(attn[k]) > ws) ws = dense_ws_size(attn[k]);
    for (int l = 0; l < c->num_layers; l++) {
        if (dense_ws_size(m->qnn_dense[l]) > ws) ws = dense_ws_size(m->qnn_dense[l]);
        for (int p = 0; m->qnn_part && p < QIN_PARTS; p++) {
            size_t b = dense_ws_size(m->qnn_part[l * QIN_PARTS + p]);
            ws = b > ws ? b : ws;
        }
    }
    int rc = dense_ws_init(ws, &s->dws);
    s->pws[0] = s->dws;
    for (int p = 1; rc == CTR_OK && m->qnn_part && p < QIN_PARTS; p++)
        rc = dense_ws_init(ws, &s->pws[p]);
    if (!s->x || !s->y || !s->s || !s->ah || !s->bh || !s->vh || !s->logit || !s->keep ||
        (m->qnn_part && !s->x2) || !lowp_ok || rc < 0) {
        qin_scratch_free(s);
        return rc < 0 ? rc : CTR_ENOMEM;
    }
    *out = s;
    return CTR_OK;
}

void qin_scratch_free(qin_scratch *s) {
    if (!s) return;
    free(s->x);
    free(s->x2);
    free(s->y);
    for (int p = 1; p < QIN_PARTS; p++) dense_ws_free(s->pws[p]);
    free(s->s);
    free(s->ah);
    free(s->bh);
    free(s->vh);
    free(s->keep);
    free(s->logit);
    free(s->ah16);
    free(s->bh16);
    free(s->vh16);
    free(s->pt);
    dense_ws_free(s->dws);
    free(s);
}

/* --- forward pieces ----------------------------------------------------- */

/* The two products go through linear_gemm (oneDNN's sgemm): their shapes
 * change with every request, and on AVX-512 machines it ran them 2x
 * (Haswell kernels) to 4.7x (OpenBLAS's baseline kernels) faster than
 * OpenBLAS at N = 64 (bench/README.md). */
void qin_attention(const qin_model *m, int n, const float *t, int ldt, int nh, const float *ah,
                   const float *bh, float *s, int lds, float *pool, int ldp) {
    const int E = m->cfg.item_dim;
    for (int i = 0; i < n; i++) memcpy(pool + (size_t)i * ldp, t + (size_t)i * ldt,
                                       (size_t)E * sizeof *pool);
    if (nh == 0 || n == 0) return; /* empty history: pool = t */
    /* s = relu(scale * T (A H)^T): n x nh. */
    linear_gemm(n, nh, E, t, ldt, ah, E, 1, 0.0f, s, lds);
    const float scale = m->attn_scale;
    for (int i = 0; i < n; i++) {
        float *row = s + (size_t)i * lds;
        for (int j = 0; j < nh; j++) {
            float v = scale * row[j];
            row[j] = v > 0.0f ? v : 0.0f;
        }
    }
    /* pool += s (B H): n x E. */
    linear_gemm(n, E, nh, s, lds, bh, E, 0, 1.0f, pool, ldp);
}

/* Rows lo..hi-1 of y (stride ldx) = the first layer's product for those
 * candidates, from the split parts (qin_load.c, "the first layer"): rows of
 * the attention weights s (stride lds) times V h of the behaviours (vh:
 * nh x D), plus U t of each candidate and G_f of its context values. */
CTR_CLONES static void
first_layer_product(const qin_model *m, const qin_request *req, int lo, int hi, int nh,
                    const float *s, int lds, const float *vh, float *y, int ldx,
                    int have_product) {
    const qin_config *c = &m->cfg;
    const int D = c->input_dim;
    if (have_product) {
        /* y holds s (V h) already (the bf16 attention) */
    } else if (nh > 0) {
        linear_gemm(hi - lo, D, nh, s + (size_t)lo * lds, lds, vh, D, 0, 0.0f,
                    y + (size_t)lo * ldx, ldx);
    } else {
        for (int i = lo; i < hi; i++) memset(y + (size_t)i * ldx, 0, (size_t)D * sizeof *y);
    }
    for (int i = lo; i < hi; i++) {
        float *restrict yi = y + (size_t)i * ldx;
        const float *restrict u = req->cand[i] + qin_vec_u(m);
        for (int k = 0; k < D; k++) yi[k] += u[k];
        for (int f = 0; f < c->num_ctx; f++) {
            int32_t v = req->ctx ? req->ctx[(size_t)i * c->num_ctx + f] : 0;
            const float *restrict g = m->first_ctx[f] + (size_t)v * D;
            for (int k = 0; k < D; k++) yi[k] += g[k];
        }
    }
}


const char *qin_model_describe(const qin_model *m) { return dense_describe(m->qnn_dense[0]); }

/* The fused pass after a layer's product, as a dense_post (dense.h): z =
 * x (y + b) + c (batch norm folded); PReLU; the residual x + z written to
 * xo (x itself, or, when a layer's columns are split across threads, the
 * next layer's buffer: the other threads still read x).  Rows of x and xo
 * have stride ldx; columns from `col` on. */
static dense_post qnn_post(const qin_model *m, int layer, const float *x, float *xo, int ldx,
                           int col) {
    dense_post p = {m->qnn_b[layer] + col, m->qnn_c[layer] + col, m->prelu[layer], x + col,
                    xo + col, ldx};
    return p;
}

/* Hot spot: ~98% of a request's arithmetic is this product (three quarters
 * of it with the first layer split). */
int qin_qnn_layer(const qin_model *m, dense_ws *ws, int layer, int n, float *x, float *y) {
    /* y = x W^T for all n candidates at once (W is D x D, [out, in]), in the
     * model's precision (dense.h). */
    /* The fused pass runs inside the call, where the kernel allows: int8
     * applies it while turning the int32 sums into floats. */
    const dense_post post = qnn_post(m, layer, x, x, qin_ldx(&m->cfg), 0);
    return dense_forward_post(m->qnn_dense[layer], ws, n, x, y, &post);
}

/* --- a layer's columns across threads ------------------------------------
 *
 * One big request on an idle server: rather than each core taking half
 * the candidates and streaming every layer's whole weight from the shared
 * cache, each core takes half of every layer's output columns for all the
 * candidates, and so always multiplies by the same half of the weights
 * (MicroLens int8: 1.5 MB a core for the three D x D layers, inside its
 * 2 MB L2; bf16 3 MB).  A layer reads x whole and writes its columns of
 * the next layer's state (x2), so the parts never wait for each other
 * inside a layer; the fork-join between layers is the price.
 *
 * Which core runs which part: whichever thread runs a part first claims
 * the part numbered by its CPU (sched_getcpu() % QIN_PARTS), if still
 * free, so a core keeps multiplying by the same half, request after
 * request, without pinning any thread. */

typedef struct layer_job {
    const qin_model *m;
    qin_scratch *s;
    int layer, n;
    const float *x;
    float *xo;
    atomic_int claimed;           /* bit p: part p taken */
    atomic_int failed;
} layer_job;

static void layer_part(void *arg, int part, int nparts) {
    layer_job *j = arg;
    (void)nparts;
    int cpu = sched_getcpu(), want = cpu >= 0 ? cpu % QIN_PARTS : part, p = -1;
    int seen = atomic_fetch_or(&j->claimed, 1 << want);
    if (!(seen & (1 << want))) p = want;
    for (int k = 0; p < 0 && k < QIN_PARTS; k++)
        if (!(atomic_fetch_or(&j->claimed, 1 << k) & (1 << k))) p = k;
    if (p < 0) return; /* cannot happen: as many calls as parts */
    const qin_config *c = &j->m->cfg;
    const int D = c->input_dim, w = D / QIN_PARTS, ldx = qin_ldx(c), l = j->layer;
    float *y = j->s->y + (size_t)p * w;
    const dense_post post = qnn_post(j->m, l, j->x, j->xo, ldx, p * w);
    if (dense_forward_post(j->m->qnn_part[l * QIN_PARTS + p], j->s->pws[p], j->n, j->x, y,
                           &post) < 0)
        atomic_store(&j->failed, 1);
}

/* Layers l0.. with their columns split across par's threads; the final
 * state is left in s->x.  CTR_OK or CTR_EINVAL (a product failed). */
static int qnn_layers_split(const qin_model *m, qin_scratch *s, const engine_par *par, int l0,
                            int n) {
    for (int l = l0; l < m->cfg.num_layers; l++) {
        layer_job j = {m, s, l, n, s->x, s->x2, 0, 0};
        par->run(par->ctx, layer_part, &j, QIN_PARTS);
        if (atomic_load(&j.failed)) return CTR_EINVAL;
        float *t = s->x;
        s->x = s->x2;
        s->x2 = t;
    }
    return CTR_OK;
}

void qin_head(const qin_model *m, int n, const float *x, int ldx, float *logit, float *prob) {
    const int D = m->cfg.input_dim;
    /* logit (n x 1) = x (n x D) fc_w^T */
    linear_gemm(n, 1, D, x, ldx, m->fc_w, D, 1, 0.0f, logit, 1);
    for (int i = 0; i < n; i++) prob[i] = 1.0f / (1.0f + expf(-(logit[i] + m->fc_b)));
}

/* --- the forward pass --------------------------------------------------- */

/* Behaviours keep[j0..j1) of the request into rows j0..j1-1 of A h, B h
 * and V h (the attention's and the first layer's operands).
 *
 * Hot spot: the operands of 64 behaviours scattered over 64 item vectors
 * (in int8 at saturation, converting them from fp32 was 7% of all CPU).
 * In the bf16 layout they are copied as they are: 3.5 KB a behaviour
 * (MicroLens) instead of 7 KB read and converted. */
static void gather_history(const qin_model *m, qin_scratch *s, const qin_request *req, int j0,
                           int j1) {
    const int E = m->cfg.item_dim, D = m->cfg.input_dim;
    if (m->vec_bf16) {
        for (int j = j0; j < j1; j++) {
            const unsigned short *h = qin_vec_h16(m, req->hist[s->keep[j]]);
            memcpy(s->ah16 + (size_t)j * E, h, (size_t)E * sizeof *h);
            memcpy(s->bh16 + (size_t)j * E, h + E, (size_t)E * sizeof *h);
            if (m->fold_first) memcpy(s->vh16 + (size_t)j * D, h + 2 * E, (size_t)D * sizeof *h);
        }
        return;
    }
    /* The fp32 layout: the bf16 products' operands converted on the way
     * (half the bytes written of the fp32 copies). */
    for (int j = j0; j < j1; j++) {
        const float *h = req->hist[s->keep[j]];
        if (m->attn_score) {
            dense_bf16_rows(1, E, qin_vec_a(m, h), E, s->ah16 + (size_t)j * E, E);
            dense_bf16_rows(1, E, qin_vec_b(m, h), E, s->bh16 + (size_t)j * E, E);
        } else {
            memcpy(s->ah + (size_t)j * E, qin_vec_a(m, h), (size_t)E * sizeof(float));
            memcpy(s->bh + (size_t)j * E, qin_vec_b(m, h), (size_t)E * sizeof(float));
        }
        if (m->fold_first && m->attn_first)
            dense_bf16_rows(1, D, qin_vec_v(m, h), D, s->vh16 + (size_t)j * D, D);
        else if (m->fold_first)
            memcpy(s->vh + (size_t)j * D, qin_vec_v(m, h), (size_t)D * sizeof(float));
    }
}

/* The attention of candidates lo..hi-1 in bf16 (m->attn_score; nh > 0):
 * what qin_attention computes, with the history padded to max_len (A h
 * rows past it zero, so their scores and weights are zero).  Weights into
 * s->s (fp32) as qin_attention leaves them (and zero past the history).
 * CTR_OK or dense_rt_forward's error. */
static int attention_bf16(const qin_model *m, qin_scratch *s, dense_ws *ws, int lo, int hi) {
    const qin_config *c = &m->cfg;
    const int E = c->item_dim, L = c->max_len, ldx = s->ldx, n = hi - lo;
    const int off_t = c->num_ctx * c->embedding_dim, off_p = off_t + E;
    float *t = s->x + (size_t)lo * ldx + off_t, *pool = s->x + (size_t)lo * ldx + off_p;
    float *w = s->s + (size_t)lo * L, *pt = s->pt + (size_t)lo * E;
    int rc;
    if ((rc = dense_rt_forward(m->attn_score, ws, n, t, s->ah16, w)) < 0) return rc;
    const float scale = m->attn_scale;
    for (int i = 0; i < n * L; i++) {
        float v = scale * w[i];
        w[i] = v > 0.0f ? v : 0.0f;
    }
    if ((rc = dense_rt_forward(m->attn_pool, ws, n, w, s->bh16, pt)) < 0) return rc;
    for (int i = 0; i < n; i++) {
        float *restrict pi = pool + (size_t)i * ldx;
        const float *restrict ti = t + (size_t)i * ldx, *restrict a = pt + (size_t)i * E;
        for (int k = 0; k < E; k++) pi[k] = ti[k] + a[k];
    }
    return CTR_OK;
}

/* Candidates lo..hi-1 up to the first layer's output: x0 = [ctx
 * embeddings | t | pool], the attention, and (folded) the first layer.
 * ws: the calling thread's workspace.  CTR_OK, or CTR_EINVAL when a bf16
 * product failed. */
static int first_rows(const qin_model *m, qin_scratch *s, dense_ws *ws, const qin_request *req,
                      int nh, int lo, int hi) {
    const qin_config *c = &m->cfg;
    const int d = c->embedding_dim, E = c->item_dim, ldx = s->ldx;
    const int off_t = c->num_ctx * d, off_p = off_t + E;
    for (int i = lo; i < hi; i++) {
        float *xi = s->x + (size_t)i * ldx;
        for (int f = 0; f < c->num_ctx; f++) {
            int32_t v = req->ctx ? req->ctx[(size_t)i * c->num_ctx + f] : 0;
            memcpy(xi + f * d, m->ctx_emb[f] + (size_t)v * d, (size_t)d * sizeof(float));
        }
        memcpy(xi + off_t, req->cand[i], (size_t)E * sizeof(float));
    }
    const size_t r = (size_t)lo * ldx;
    if (m->attn_score && nh > 0) {
        if (attention_bf16(m, s, ws, lo, hi) < 0) return CTR_EINVAL;
    } else {
        qin_attention(m, hi - lo, s->x + r + off_t, ldx, nh, s->ah, s->bh,
                      s->s + (size_t)lo * c->max_len, c->max_len, s->x + r + off_p, ldx);
    }
    if (m->fold_first) {
        /* s (V h) in bf16: the weights of the history padded to max_len
         * (zero past it, whichever way they were computed) */
        const int lowp = m->attn_first && nh > 0;
        if (lowp) {
            float *w = s->s + (size_t)lo * c->max_len;
            for (int i = 0; i < hi - lo; i++)
                for (int j = nh; j < c->max_len; j++) w[(size_t)i * c->max_len + j] = 0.0f;
            if (dense_rt_forward(m->attn_first, ws, hi - lo, w, s->vh16, s->y + r) < 0)
                return CTR_EINVAL;
        }
        first_layer_product(m, req, lo, hi, nh, s->s, c->max_len, s->vh, s->y, ldx, lowp);
        const dense_post post = qnn_post(m, 0, s->x + r, s->x + r, ldx, 0);
        dense_post_rows(hi - lo, c->input_dim, s->y + r, ldx, &post);
    }
    return CTR_OK;
}

/* The stages before the QNN layers, in parts (a request split across
 * threads): stage 0 gathers part of the history, stage 1 runs part of the
 * candidates through first_rows. */
typedef struct fwd_job {
    const qin_model *m;
    qin_scratch *s;
    const qin_request *req;
    int nh, stage;
    atomic_int failed;
} fwd_job;

static void fwd_part(void *arg, int part, int nparts) {
    fwd_job *j = arg;
    const int total = j->stage == 0 ? j->nh : j->req->num_cand;
    const int lo = (int)((long long)total * part / nparts),
              hi = (int)((long long)total * (part + 1) / nparts);
    if (hi <= lo) return;
    if (j->stage == 0) gather_history(j->m, j->s, j->req, lo, hi);
    else if (first_rows(j->m, j->s, j->s->pws[part], j->req, j->nh, lo, hi) < 0)
        atomic_store(&j->failed, 1);
}

int qin_forward(const qin_model *m, qin_scratch *s, const qin_request *req, float *prob,
                char *err, size_t errlen) {
    const qin_config *c = &m->cfg;
    const int n = req->num_cand;
    if (n == 0) return CTR_OK;

    /* The most recent max_len behaviours, padding skipped: with no softmax,
     * a masked position contributes exactly nothing. */
    int first = req->num_hist > c->max_len ? req->num_hist - c->max_len : 0, nh = 0;
    for (int j = first; j < req->num_hist; j++)
        if (req->hist[j]) s->keep[nh++] = j;
    /* bf16 attention: the history padded to max_len, the A h rows past it
     * zero (their scores, and so their weights, are then zero; the weights
     * past it are zeroed for the first layer's product anyway, as the fp32
     * attention leaves them as they were). */
    if (m->attn_score && nh < c->max_len)
        memset(s->ah16 + (size_t)nh * c->item_dim, 0,
               (size_t)(c->max_len - nh) * c->item_dim * sizeof *s->ah16);
    const engine_par *par = req->par;
    const int split = par && m->qnn_part && n >= par->min_rows && n > 1;
    fwd_job job = {m, s, req, nh, 0, 0};
    if (split) {
        /* The history's rows in parts, then the candidates' rows in parts
         * (two fork-joins: the second reads every behaviour). */
        job.stage = 0;
        par->run(par->ctx, fwd_part, &job, QIN_PARTS);
        job.stage = 1;
        par->run(par->ctx, fwd_part, &job, QIN_PARTS);
        if (atomic_load(&job.failed))
            return ctr_fail(err, errlen, CTR_EINVAL, "attention: %s failed (split)",
                            dense_describe(m->attn_score));
    } else {
        gather_history(m, s, req, 0, nh);
        if (first_rows(m, s, s->dws, req, nh, 0, n) < 0)
            return ctr_fail(err, errlen, CTR_EINVAL, "attention: %s failed",
                            dense_describe(m->attn_score));
    }
    const int ldx = s->ldx, l0 = m->fold_first ? 1 : 0;
    if (split) {
        if (qnn_layers_split(m, s, par, l0, n) < 0)
            return ctr_fail(err, errlen, CTR_EINVAL, "qnn layers: %s failed (split)",
                            dense_describe(m->qnn_part[0]));
    } else {
        for (int l = l0; l < c->num_layers; l++)
            if (qin_qnn_layer(m, s->dws, l, n, s->x, s->y) < 0)
                return ctr_fail(err, errlen, CTR_EINVAL, "qnn layer %d: %s failed", l,
                                dense_describe(m->qnn_dense[l]));
    }
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

static int qin_arch_build(void *impl, const st_file *f, const engine_schema *sc, char *err,
                          size_t errlen) {
    return qin_model_build(impl, f, sc, err, errlen);
}

/* The QNN's products as p says (dense.h): precision and kernel, and the
 * column parts where the width allows them (D a multiple of 64; otherwise
 * requests stay on one thread per request part). */
static int qin_arch_prepare(void *impl, const engine_params *p, char *err, size_t errlen) {
    qin_model *m = impl;
    dense_params dp = dense_default_params();
    dp.precision = p->precision;
    dp.backend = p->kernel;
    if (!cpu_path_on(CPU_PATH_QNN_DENSE) && p->precision == DENSE_FP32)
        dp.backend = DENSE_BACKEND_OPENBLAS;
    int rc = qin_model_prepare(m, &dp, err, errlen);
    if (rc < 0) return rc;
    dp.backend = p->kernel;
    if (p->column_parts == QIN_PARTS && m->cfg.input_dim % (32 * QIN_PARTS) == 0)
        rc = qin_model_prepare_parts(m, &dp, err, errlen);
    return rc;
}

static const char *qin_arch_describe(const void *impl) { return qin_model_describe(impl); }

static int qin_arch_column_parts(const void *impl) {
    return ((const qin_model *)impl)->qnn_part ? QIN_PARTS : 1;
}

static void qin_arch_free(void *impl) { qin_model_free(impl); }

static size_t qin_arch_vec_floats(const void *impl) { return qin_item_vec_floats(impl); }

static int qin_arch_items(const void *impl, int n, const engine_item *items, float *out, int *bad,
                          char *err, size_t errlen) {
    /* qin_items_compute takes itemvec_input: convert a chunk at a time on
     * the stack (the products stay batched per chunk). */
    enum { CHUNK = 128 };
    itemvec_input in[CHUNK];
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
    qin_request q = {req->hist, req->num_hist, req->cand, req->ctx, req->num_cand, req->par};
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
    .model_size = sizeof(qin_model),
    .build = qin_arch_build,
    .prepare = qin_arch_prepare,
    .free = qin_arch_free,
    .item_vec_floats = qin_arch_vec_floats,
    .items_compute = qin_arch_items,
    .scratch_init = qin_arch_scratch_init,
    .scratch_free = qin_arch_scratch_free,
    .forward = qin_arch_forward,
    .cost = qin_arch_cost,
    .describe = qin_arch_describe,
    .column_parts = qin_arch_column_parts,
};
