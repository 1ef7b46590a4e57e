/*
 * din.c - DIN (Deep Interest Network, the WWW 2025 challenge baseline on
 * FuxiCTR's DIN_Attention; docs/MODEL_SPEC.md section 4) behind the engine
 * interface (arch.h, engine.h): item vectors and the forward pass, every
 * request; the loader and its folds are din_load.c (din_internal.h).
 *
 * Model as trained, per candidate t and behaviour h_j (E = 2 d + mm_out):
 *   s_j = MLP_att([t, h_j, t - h_j, t * h_j])      (4E -> H1 -> ... -> 1)
 *   s_j *= m_j;  optional softmax over the real behaviours
 *   u = sum_j s_j h_j
 *   p = sigmoid(DNN([ctx embeddings | t | u]))     (Linear, BN, act, ...)
 *
 * Folds, exact, done once at load in double:
 *   - the first attention layer W1 = [Wa | Wb | Wc | Wd] splits into
 *     (Wa + Wc) t + (Wb - Wc) h + Wd (t * h): the first two terms depend on
 *     one item each and are part of the item vector, so only Wd (t * h) is
 *     per pair;
 *   - every batch norm of the DNN folds into its Linear
 *     (W' = diag(s) W, b' = s (b - mean) + beta, s = gamma / sqrt(var + eps));
 *   - Dice's own batch norm (no affine, eps 1e-9) becomes a scale and a
 *     shift inside its sigmoid.
 *
 * Workload and hot spot: the attention MLP runs once per candidate-behaviour
 * pair: at MicroLens shapes (E = 256, units 512 -> 256) about 262k
 * multiply-adds a pair, 17M a candidate at a history of 64, against ~1.3M
 * for the DNN.  The pairs of a request are cut into blocks of about
 * DIN_PAIR_ROWS rows (whole candidates each); each block runs its two
 * products (dense.h) and, around them, one pass over its rows per layer
 * (t * h before the first; adds, activation and, after the last hidden
 * layer, the one-unit output layer's dot product after each), so a block's
 * activations stay in the core's L2 between product and pass.
 *
 * Precision (engine_params): the attention MLP's hidden layers (Wd of
 * layer 0 and layers 1..na-2) and the DNN's hidden layers are dense layers
 * (dense.h), prepared at load in the model's precision; their outputs of
 * one unit (the attention score, the logit) are fp32 dot products in the
 * pass after the last hidden layer; the item-side folds and the pooling
 * are fp32 products (linear_gemm).  Activations
 * are kept at tight row strides (each layer's own width): oneDNN runs wider
 * strides on a slower path.
 *
 * Item vector: [e (E) | (Wb - Wc) e (H1) | (Wa + Wc) e + b1 (H1)], padded
 * to a multiple of 16 floats.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "core/base/cpu.h"
#include "din_internal.h"
#include "vmath.h"

#define DIN_DICE_CHUNK 256

typedef struct din_scratch {
    linear_bufs bufs;                /* owns the buffers below */
    int max_cand, rows;              /* rows: pair rows per block */
    int32_t *pos;                    /* max_len */
    float *he;                       /* max_len x E: e of the behaviours */
    const float **hv;                /* max_len: the behaviours' item vectors */
    float *s;                        /* max_cand x max_len: s_j */
    float *x;                        /* rows x E: t * h of a block */
    float *z0, *z1;                  /* rows x max_width: layer activations */
    float *in;                       /* max_cand x in_dim: DNN input */
    float *y0, *y1;                  /* max_cand x max_width */
    dense_ws *ws;                    /* the dense layers' workspace */
} din_scratch;

/* --- activations ------------------------------------------------------- */

/* y = Dice(y + b) on n rows of `units` (tight), in one pass (b may be
 * NULL): the gate p = sigmoid(x scale + shift), a chunk at a time through
 * vmath (the pair matrices make this one exponential per unit of every
 * candidate-behaviour pair).  ReLU is part of the passes below. */
CTR_CLONES static void dice_apply(const din_act *a, int n, int units, const float *b, float *y) {
    for (int i = 0; i < n; i++) {
        float *restrict r = y + (size_t)i * units;
        if (b)
            for (int k = 0; k < units; k++) r[k] += b[k];
        for (int k0 = 0; k0 < units; k0 += DIN_DICE_CHUNK) {
            const int kn = units - k0 < DIN_DICE_CHUNK ? units - k0 : DIN_DICE_CHUNK;
            float p[DIN_DICE_CHUNK];
            for (int k = 0; k < kn; k++) p[k] = r[k0 + k] * a->scale[k0 + k] + a->shift[k0 + k];
            vmath_sigmoid(p, kn);
            for (int k = 0; k < kn; k++)
                r[k0 + k] *= a->alpha[k0 + k] + (1.0f - a->alpha[k0 + k]) * p[k];
        }
    }
}

/* --- the pair rows: the hot spot --------------------------------------- *
 *
 * A block's rows are its candidate-behaviour pairs, candidate-major: row
 * c nh + j is candidate c with behaviour j.  Around each dense product one
 * pass over the rows does all the rest (the products themselves are
 * dense.h's): before layer 0, x = t * h; after each hidden layer, the
 * adds, the activation and, after the last one, the output unit's dot
 * product, so the one-unit layer costs no pass, no product call and no
 * matrix of its own.  At MicroLens shapes and 64 x 64 pairs these passes
 * read and write about 30 MB of fp32 a request, mostly from L2: with 4
 * floats a step, as the baseline x86-64 build compiles plain loops, they
 * took half as long as the AMX products themselves (perf, bf16, N = 64);
 * with AVX-512 (the DIN_AVX512 path of core/base/cpu.h), a quarter. */

/* What one pass does to the rows [c nh + j] of z (units floats each, tight):
 *   v = z + a_c + b_j + bias (a_c = a[c] + aoff: candidate c's item vector
 *   from offset aoff; b_j = b[j] + boff: behaviour j's; each of a, b, bias
 *   may be NULL), then ReLU when relu;
 *   w NULL: z = v; else out[c ldo + j] = w . v + w0 (z untouched). */
typedef struct din_pass {
    int nc, nh, units;
    float *z;
    const float *const *a, *const *b;
    int aoff, boff;
    const float *bias;
    int relu;
    const float *w;
    float w0;
    float *out;
    int ldo;
} din_pass;

/* The portable pass, and the reference the AVX-512 one is tested against
 * (tests/core/test_din.c). */
static void pass_plain(const din_pass *p) {
    for (int c = 0; c < p->nc; c++)
        for (int j = 0; j < p->nh; j++) {
            float *restrict z = p->z + ((size_t)c * p->nh + j) * p->units;
            const float *ac = p->a ? p->a[c] + p->aoff : NULL;
            const float *bj = p->b ? p->b[j] + p->boff : NULL;
            float dot = 0.0f;
            for (int k = 0; k < p->units; k++) {
                float v = z[k];
                if (ac) v += ac[k];
                if (bj) v += bj[k];
                if (p->bias) v += p->bias[k];
                if (p->relu) v = v > 0.0f ? v : 0.0f;
                if (p->w) dot += v * p->w[k];
                else z[k] = v;
            }
            if (p->w) p->out[(size_t)c * p->ldo + j] = dot + p->w0;
        }
}

/* x = t_c * h_j for every pair (t: the candidates' vectors, h: nh rows of
 * stride E), E floats each. */
static void mul_plain(int nc, int nh, int E, const float *const *t, const float *h, float *x) {
    for (int c = 0; c < nc; c++)
        for (int j = 0; j < nh; j++) {
            const float *restrict tc = t[c], *restrict hj = h + (size_t)j * E;
            float *restrict xr = x + ((size_t)c * nh + j) * E;
            for (int k = 0; k < E; k++) xr[k] = tc[k] * hj[k];
        }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DIN_X86 1

#define AVX512 __attribute__((target("avx512f")))

static AVX512 inline __mmask16 tail_mask(int left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

/* One row of a pass, 16 floats a step (the last step masked); the flags are
 * constants in each caller below, so every combination compiles to its own
 * branch-free loop.  Two accumulators for the dot, so that consecutive
 * steps do not wait on one another's FMA. */
static AVX512 inline __attribute__((always_inline)) float
row_avx512(int units, float *z, const float *ac, const float *bj, const float *bias, int relu,
           const float *w) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    const __m512 zero = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= units; k += 32) {
        __m512 v0 = _mm512_loadu_ps(z + k), v1 = _mm512_loadu_ps(z + k + 16);
        if (ac) {
            v0 = _mm512_add_ps(v0, _mm512_loadu_ps(ac + k));
            v1 = _mm512_add_ps(v1, _mm512_loadu_ps(ac + k + 16));
        }
        if (bj) {
            v0 = _mm512_add_ps(v0, _mm512_loadu_ps(bj + k));
            v1 = _mm512_add_ps(v1, _mm512_loadu_ps(bj + k + 16));
        }
        if (bias) {
            v0 = _mm512_add_ps(v0, _mm512_loadu_ps(bias + k));
            v1 = _mm512_add_ps(v1, _mm512_loadu_ps(bias + k + 16));
        }
        if (relu) {
            v0 = _mm512_max_ps(v0, zero);
            v1 = _mm512_max_ps(v1, zero);
        }
        if (w) {
            acc0 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(w + k), acc0);
            acc1 = _mm512_fmadd_ps(v1, _mm512_loadu_ps(w + k + 16), acc1);
        } else {
            _mm512_storeu_ps(z + k, v0);
            _mm512_storeu_ps(z + k + 16, v1);
        }
    }
    for (; k < units; k += 16) {
        const __mmask16 m = tail_mask(units - k);
        __m512 v = _mm512_maskz_loadu_ps(m, z + k);
        if (ac) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, ac + k));
        if (bj) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bj + k));
        if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + k));
        if (relu) v = _mm512_max_ps(v, zero);
        if (w) acc0 = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, w + k), acc0);
        else _mm512_mask_storeu_ps(z + k, m, v);
    }
    return w ? _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) : 0.0f;
}

/* The rows of a pass with the flags fixed (a, b, bias and w as given, each
 * either NULL or not in every call of one instance). */
static AVX512 inline __attribute__((always_inline)) void
rows_avx512(const din_pass *p, int has_a, int has_b, int has_bias, int relu, int dot) {
    for (int c = 0; c < p->nc; c++) {
        const float *ac = has_a ? p->a[c] + p->aoff : NULL;
        for (int j = 0; j < p->nh; j++) {
            float *z = p->z + ((size_t)c * p->nh + j) * p->units;
            const float *bj = has_b ? p->b[j] + p->boff : NULL;
            float d = row_avx512(p->units, z, ac, bj, has_bias ? p->bias : NULL, relu,
                                 dot ? p->w : NULL);
            if (dot) p->out[(size_t)c * p->ldo + j] = d + p->w0;
        }
    }
}

/* The passes the model makes, each its own loop; any other combination
 * (none today) takes the general one. */
static AVX512 void pass_avx512(const din_pass *p) {
    const int a = p->a != NULL, b = p->b != NULL, bias = p->bias != NULL, dot = p->w != NULL;
    if (a && b && !bias && p->relu && !dot) rows_avx512(p, 1, 1, 0, 1, 0);       /* layer 0 */
    else if (a && b && !bias && p->relu && dot) rows_avx512(p, 1, 1, 0, 1, 1);   /* layer 0, last */
    else if (a && b && !bias && !p->relu && !dot) rows_avx512(p, 1, 1, 0, 0, 0); /* before Dice */
    else if (!a && !b && bias && p->relu && !dot) rows_avx512(p, 0, 0, 1, 1, 0); /* hidden */
    else if (!a && !b && bias && p->relu && dot) rows_avx512(p, 0, 0, 1, 1, 1);  /* last hidden */
    else if (!a && !b && !bias && !p->relu && dot) rows_avx512(p, 0, 0, 0, 0, 1); /* after Dice */
    else rows_avx512(p, a, b, bias, p->relu, dot);
}

static AVX512 void mul_avx512(int nc, int nh, int E, const float *const *t, const float *h,
                              float *x) {
    for (int c = 0; c < nc; c++)
        for (int j = 0; j < nh; j++) {
            const float *tc = t[c], *hj = h + (size_t)j * E;
            float *xr = x + ((size_t)c * nh + j) * E;
            for (int k = 0; k < E; k += 16) {
                const __mmask16 m = tail_mask(E - k);
                _mm512_mask_storeu_ps(xr + k, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, tc + k),
                                                                _mm512_maskz_loadu_ps(m, hj + k)));
            }
        }
}
#undef AVX512
#endif

static void pass_run(const din_pass *p) {
#ifdef DIN_X86
    if (cpu_path_on(CPU_PATH_DIN_AVX512)) {
        pass_avx512(p);
        return;
    }
#endif
    pass_plain(p);
}

static void pair_mul(int nc, int nh, int E, const float *const *t, const float *h, float *x) {
#ifdef DIN_X86
    if (cpu_path_on(CPU_PATH_DIN_AVX512)) {
        mul_avx512(nc, nh, E, t, h, x);
        return;
    }
#endif
    mul_plain(nc, nh, E, t, h, x);
}

/* After a hidden layer's product z (rows nc x nh, units wide): its adds p
 * (a, b, bias as the layer has them), its activation, and when out_l is
 * set (the layer before the output unit) that unit into p.out. */
static void hidden_pass(din_pass p, const din_act *act, const linear_layer *out_l) {
    if (!act->dice) {
        p.relu = 1;
        if (out_l) {
            p.w = out_l->w;
            p.w0 = out_l->b[0];
        }
        pass_run(&p);
        return;
    }
    /* Dice: the adds, the gate (vmath), then the output unit alone. */
    if (p.a || p.b) {
        din_pass add = p;
        add.relu = 0;
        add.w = NULL;
        pass_run(&add);
        dice_apply(act, p.nc * p.nh, p.units, NULL, p.z);
    } else {
        dice_apply(act, p.nc * p.nh, p.units, p.bias, p.z);
    }
    if (out_l) {
        din_pass dot = {.nc = p.nc, .nh = p.nh, .units = p.units, .z = p.z, .w = out_l->w,
                        .w0 = out_l->b[0], .out = p.out, .ldo = p.ldo};
        pass_run(&dot);
    }
}

/* --- item vectors ------------------------------------------------------ */

static size_t din_vec_floats(const void *impl) { return (size_t)((const din_model *)impl)->vec_floats; }

static int din_items(const void *impl, int n, const engine_item *items, float *out, int *bad,
                     char *err, size_t errlen) {
    const din_model *m = impl;
    const int E = m->E, H1 = m->att_units[0], ld = m->vec_floats;
    for (int i = 0; i < n; i++) {
        itemvec_input in = engine_item_base(&items[i]);
        int rc = itemvec_check(&m->iv, &in, err, errlen);
        if (rc < 0) {
            if (bad) *bad = i;
            return rc;
        }
        float *v = out + (size_t)i * ld;
        itemvec_base(&m->iv, &in, v);
        memset(v + E, 0, (size_t)(ld - E) * sizeof *v);
        for (int o = 0; o < H1; o++) v[E + H1 + o] = m->b1[o];
    }
    /* The item-side halves of attention layer 0, for all n at once:
     * (Wb - Wc) e and (Wa + Wc) e + b1. */
    linear_gemm(n, H1, E, out, ld, m->w_h, E, 1, 0.0f, out + E, ld);
    linear_gemm(n, H1, E, out, ld, m->w_t, E, 1, 1.0f, out + E + H1, ld);
    return CTR_OK;
}

/* --- scratch ----------------------------------------------------------- */

static void din_scratch_free(void *scratch) {
    din_scratch *s = scratch;
    if (!s) return;
    linear_bufs_free(&s->bufs);
    free(s->hv);
    dense_ws_free(s->ws);
    free(s);
}

static int din_scratch_init(const void *impl, int max_cand, void **scratch) {
    const din_model *m = impl;
    din_scratch *s = calloc(1, sizeof *s);
    if (!s) return CTR_ENOMEM;
    const size_t L = (size_t)m->max_len, W = (size_t)m->max_width, N = (size_t)max_cand;
    s->max_cand = max_cand;
    s->rows = m->pair_rows > m->max_len ? m->pair_rows : m->max_len;
    const size_t R = (size_t)s->rows;
    linear_bufs *b = &s->bufs;
    s->pos = linear_bufs_ints(b, L);
    s->he = linear_bufs_floats(b, L * m->E);
    s->hv = calloc(L, sizeof *s->hv);
    s->s = linear_bufs_floats(b, N * L);
    s->x = linear_bufs_floats(b, R * m->E);
    s->z0 = linear_bufs_floats(b, R * W);
    s->z1 = linear_bufs_floats(b, R * W);
    s->in = linear_bufs_floats(b, N * m->in_dim);
    s->y0 = linear_bufs_floats(b, N * W);
    s->y1 = linear_bufs_floats(b, N * W);
    int rc = dense_ws_init(m->ws_bytes, &s->ws);
    if (b->failed || !s->hv || rc < 0) {
        din_scratch_free(s);
        return rc < 0 ? rc : CTR_ENOMEM;
    }
    *scratch = s;
    return CTR_OK;
}

/* --- forward ----------------------------------------------------------- */

/* Attention scores of candidates [i0, i0 + nc) against the nh behaviours
 * into rows of s->s.  One block: nc x nh pair rows.  CTR_OK or
 * dense_forward's error. */
static int din_block(const din_model *m, din_scratch *s, const float *const *cand, int i0,
                     int nc, int nh) {
    const int E = m->E, H1 = m->att_units[0], rows = nc * nh, last = m->na - 2;
    pair_mul(nc, nh, E, cand + i0, s->he, s->x);
    /* Layer 0: Wd (t * h), then + (Wa + Wc) t + b1 (the candidate's) and
     * (Wb - Wc) h (the behaviour's), the activation, and the output unit
     * when it is the only hidden layer. */
    int rc = dense_forward(m->att_d[0], s->ws, rows, s->x, s->z0);
    if (rc < 0) return rc;
    float *out = s->s + (size_t)i0 * m->max_len;
    din_pass p0 = {.nc = nc, .nh = nh, .units = H1, .z = s->z0, .a = cand + i0,
                   .aoff = E + H1, .b = s->hv, .boff = E, .out = out, .ldo = m->max_len};
    hidden_pass(p0, &m->att_act[0], last == 0 ? &m->att[m->na - 1] : NULL);
    /* Hidden layers 1..na-2, the last with the output unit. */
    float *a = s->z0, *b = s->z1;
    for (int k = 1; k <= last; k++) {
        if ((rc = dense_forward(m->att_d[k], s->ws, rows, a, b)) < 0) return rc;
        din_pass pk = {.nc = nc, .nh = nh, .units = m->att[k].out, .z = b, .bias = m->att[k].b,
                       .out = out, .ldo = m->max_len};
        hidden_pass(pk, &m->att_act[k], k == last ? &m->att[m->na - 1] : NULL);
        float *t = a;
        a = b;
        b = t;
    }
    return CTR_OK;
}

static int din_forward(const void *impl, void *scratch, const engine_request *req, float *prob,
                       char *err, size_t errlen) {
    const din_model *m = impl;
    din_scratch *s = scratch;
    const int n = req->num_cand, E = m->E, d = m->d, L = m->max_len;

    /* The behaviours that count (padding and unknown ids masked: they add
     * s_j m_j h_j = 0 without softmax, and exp(-1e9) = 0 with it). */
    const int nh = attn_window(req->hist, req->num_hist, L, s->pos);
    attn_gather(req->hist, s->pos, nh, 0, E, s->he, E);
    for (int j = 0; j < nh; j++) s->hv[j] = req->hist[s->pos[j]];

    /* Attention scores, a block of whole candidates at a time. */
    if (nh > 0) {
        int per = s->rows / nh;
        if (per < 1) per = 1;
        for (int i0 = 0; i0 < n; i0 += per)
            if (din_block(m, s, req->cand, i0, n - i0 < per ? n - i0 : per, nh) < 0)
                return ctr_fail(err, errlen, CTR_EINVAL, "attention MLP: %s failed",
                                dense_describe(m->att_d[0]));
        if (m->softmax) attn_softmax_rows(s->s, n, nh, L);
    }

    /* DNN input [ctx embeddings | t | u], u = S He (no behaviours: u = 0,
     * which with softmax is this engine's definition, README). */
    const int off_t = m->num_ctx * d, off_u = off_t + E, ld = m->in_dim;
    for (int i = 0; i < n; i++) {
        float *xi = s->in + (size_t)i * ld;
        for (int f = 0; f < m->num_ctx; f++) {
            int32_t v = req->ctx ? req->ctx[(size_t)i * m->num_ctx + f] : 0;
            memcpy(xi + f * d, m->ctx_emb[f] + (size_t)v * d, (size_t)d * sizeof(float));
        }
        memcpy(xi + off_t, req->cand[i], (size_t)E * sizeof(float));
        if (nh == 0) memset(xi + off_u, 0, (size_t)E * sizeof(float));
    }
    if (nh > 0) linear_gemm(n, E, nh, s->s, L, s->he, E, 0, 0.0f, s->in + off_u, ld);

    /* The hidden layers, the last with the output unit (a DNN of one
     * Linear: that alone). */
    const float *a = s->in;
    float *b = s->y0;
    const linear_layer *last = &m->dnn[m->nd - 1];
    for (int k = 0; k < m->nd - 1; k++) {
        if (dense_forward(m->dnn_d[k], s->ws, n, a, b) < 0)
            return ctr_fail(err, errlen, CTR_EINVAL, "dnn layer %d: %s failed", k,
                            dense_describe(m->dnn_d[k]));
        din_pass pk = {.nc = n, .nh = 1, .units = m->dnn[k].out, .z = b, .bias = m->dnn[k].b,
                       .out = prob, .ldo = 1};
        hidden_pass(pk, &m->dnn_act[k], k == m->nd - 2 ? last : NULL);
        a = b;
        b = b == s->y0 ? s->y1 : s->y0;
    }
    if (m->nd == 1) linear_forward(last, n, a, last->in, prob, 1);
    vmath_sigmoid(prob, n);

    if (req->explain) attn_explain(s->s, n, nh, L, s->pos, req->explain, 0);
    return CTR_OK;
}

static engine_cost din_cost(const void *impl, int nh) {
    const din_model *m = impl;
    const double E = m->E;
    double att_rest = 0, dnn = 0;
    for (int k = 1; k < m->na; k++) att_rest += (double)m->att[k].in * m->att[k].out;
    for (int k = 0; k < m->nd; k++) dnn += (double)m->dnn[k].in * m->dnn[k].out;
    const double H1 = m->att_units[0];
    engine_cost c;
    /* Folded: per pair t * h (E) and Wd (H1 E) and the rest of the MLP;
     * the pooling (E per behaviour) and the DNN per candidate. */
    c.folded = nh * (E + H1 * E + att_rest + E) + dnn;
    /* As trained: per pair the 4E-wide first layer and the rest, the
     * pooling, the DNN, and every candidate's copy of the history's item
     * vectors (W_mm) and its own. */
    c.unfolded = nh * (4 * E * H1 + att_rest + E) + dnn +
                 (double)m->iv.mm_in * m->iv.mm_out * (nh + 1);
    return c;
}

static const char *din_describe(const void *impl) {
    return dense_describe(((const din_model *)impl)->att_d[0]);
}

const arch_ops din_arch_ops = {
    .model_size = sizeof(din_model),
    .build = din_model_build,
    .prepare = din_model_prepare,
    .free = din_model_free,
    .item_vec_floats = din_vec_floats,
    .items_compute = din_items,
    .scratch_init = din_scratch_init,
    .scratch_free = din_scratch_free,
    .forward = din_forward,
    .cost = din_cost,
    .describe = din_describe,
};
