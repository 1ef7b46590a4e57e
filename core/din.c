/*
 * din.c - DIN (Deep Interest Network, the WWW 2025 challenge baseline on
 * FuxiCTR's DIN_Attention; docs/MODEL_SPEC.md section 4) behind the engine
 * interface (arch.h, engine.h).
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

#include "arch.h"
#include "attn.h"
#include "core/base/cpu.h"
#include "dense.h"
#include "itemvec.h"
#include "linear.h"
#include "modelfile.h"
#include "vmath.h"

#define P "embedding_layer.embedding_layer."
#define DIN_MAX_LAYERS 8
#define DIN_BN_EPS 1e-5
#define DIN_DICE_EPS 1e-9
#define DIN_DICE_CHUNK 256
/* Pair rows per block of the attention MLP (whole candidates; one at a
 * history of 64 or more).  At MicroLens shapes in bf16 on AMX, N = 64,
 * history 64, one thread: 64 rows 2.23 ms, 128 rows 2.36 ms, 256 rows
 * 2.62 ms (fastest calls): a smaller block keeps a layer's output (64 x
 * 512 floats, 128 KB) nearer the core for the pass that follows, and
 * oneDNN's AMX products run as fast per row at 64 rows as at 256. */
#ifndef DIN_PAIR_ROWS
#define DIN_PAIR_ROWS 64
#endif

/* The activation after a hidden layer: ReLU, or Dice with its folded
 * batch norm: y = x (alpha + (1 - alpha) sigmoid(x scale + shift)). */
typedef struct din_act {
    int dice;
    float *alpha, *scale, *shift;   /* units each, when dice */
} din_act;

typedef struct din_model {
    int d, E, num_ctx;
    int ctx_vocab[ENGINE_MAX_CTX];
    float *ctx_emb[ENGINE_MAX_CTX];  /* ctx_vocab[f] x d */
    itemvec_tables iv;
    int max_len, softmax;
    /* Attention MLP: na Linear layers, na - 1 hidden (units[0..na-2]). */
    int na, att_units[DIN_MAX_LAYERS];
    float *w_t;                      /* H1 x E: Wa + Wc */
    float *w_h;                      /* H1 x E: Wb - Wc */
    float *w_d;                      /* H1 x E: Wd */
    float *b1;                       /* H1 */
    linear_layer att[DIN_MAX_LAYERS];  /* [1..na-1]; [0] is the split above */
    din_act att_act[DIN_MAX_LAYERS];   /* after layers 0..na-2 */
    /* Main network: nd Linear layers, batch norm folded. */
    int nd, in_dim;
    linear_layer dnn[DIN_MAX_LAYERS];
    din_act dnn_act[DIN_MAX_LAYERS];
    /* The hidden layers' weights prepared in the serving precision:
     * att_d[0] is Wd (H1 x E), att_d[k] att[k]'s (k = 1..na-2), dnn_d[k]
     * dnn[k]'s (k = 0..nd-2).  The one-unit output layers stay fp32. */
    dense_precision precision;
    dense_backend kernel;            /* engine_params.kernel */
    dense *att_d[DIN_MAX_LAYERS];
    dense *dnn_d[DIN_MAX_LAYERS];
    size_t ws_bytes;                 /* the largest dense_ws_size */
    int max_width;                   /* widest hidden layer of either net */
    int vec_floats;
    int pair_rows;
} din_model;

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

static void act_free(din_act *a) {
    free(a->alpha);
    free(a->scale);
    free(a->shift);
}

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

/* --- loading ----------------------------------------------------------- */

typedef struct din_names {
    const din_model *m;
    const engine_schema *sc;
    int att_dice, dnn_dice, dnn_bn;
} din_names;

static int din_expected(const void *ctx, const char *name) {
    const din_names *nm = ctx;
    const din_model *m = nm->m;
    char buf[160];
    for (int f = 0; f < nm->sc->num_ctx; f++)
        if (!strcmp(name, modelfile_name(buf, sizeof buf, P "embedding_layers.%s.weight",
                                         nm->sc->ctx_name[f])))
            return 1;
    if (!strcmp(name, P "embedding_layers.item_id.weight") ||
        !strcmp(name, P "embedding_layers.item_tags.weight") ||
        !strcmp(name, P "feature_encoders.item_emb_d128.weight"))
        return 1;
    static const char *const lin[] = {"weight", "bias"};
    static const char *const dice[] = {"dice.alpha", "dice.running_mean", "dice.running_var"};
    static const char *const bn[] = {"bn.weight", "bn.bias", "bn.running_mean",
                                     "bn.running_var"};
    for (int net = 0; net < 2; net++) {
        const char *pre = net ? "dnn" : "attention";
        int nl = net ? m->nd : m->na;
        for (int k = 0; k < nl; k++) {
            for (int i = 0; i < 2; i++)
                if (!strcmp(name, modelfile_name(buf, sizeof buf, "%s.%d.%s", pre, k, lin[i])))
                    return 1;
            if (k == nl - 1) continue;
            if (net ? nm->dnn_dice : nm->att_dice)
                for (int i = 0; i < 3; i++)
                    if (!strcmp(name, modelfile_name(buf, sizeof buf, "%s.%d.%s", pre, k, dice[i])))
                        return 1;
            if (net && nm->dnn_bn)
                for (int i = 0; i < 4; i++)
                    if (!strcmp(name, modelfile_name(buf, sizeof buf, "dnn.%d.%s", k, bn[i])))
                        return 1;
        }
    }
    return 0;
}

/* Dice after layer k of a net: alpha, and its batch norm (no affine
 * part) as the scale and shift inside the sigmoid. */
static int load_dice(const st_file *f, const char *pre, int k, int units, din_act *a, char *err,
                     size_t errlen) {
    static const char *const stats[4] = {NULL, NULL, "running_mean", "running_var"};
    char name[96];
    double *sc = malloc((size_t)units * sizeof *sc), *sh = malloc((size_t)units * sizeof *sh);
    int rc;
    a->dice = 1;
    a->scale = linear_falloc((size_t)units);
    a->shift = linear_falloc((size_t)units);
    if (!sc || !sh || !a->scale || !a->shift) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = modelfile_tensor(f, modelfile_name(name, sizeof name, "%s.%d.dice.alpha", pre, k),
                               units, -1, &a->alpha, err, errlen)) < 0 ||
        (rc = modelfile_batch_norm(f, modelfile_name(name, sizeof name, "%s.%d.dice.", pre, k),
                                   stats, units, DIN_DICE_EPS, sc, sh, err, errlen)) < 0)
        goto done;
    for (int i = 0; i < units; i++) {
        a->scale[i] = (float)sc[i];
        a->shift[i] = (float)sh[i];
    }
done:
    free(sc);
    free(sh);
    return rc;
}

/* Loads Linear k of a net into l, folding "dnn.<k>.bn.*" when bn:
 * W' = diag(s) W, b' = s b + shift. */
static int load_linear(const st_file *f, const char *pre, int k, int in, int out, int bn,
                       linear_layer *l, char *err, size_t errlen) {
    char name[96];
    int rc;
    l->in = in;
    l->out = out;
    if ((rc = modelfile_tensor(f, modelfile_name(name, sizeof name, "%s.%d.weight", pre, k), out,
                               in, &l->w, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, modelfile_name(name, sizeof name, "%s.%d.bias", pre, k), out, -1,
                               &l->b, err, errlen)) < 0)
        return rc;
    if (!bn) return CTR_OK;
    double *s = malloc((size_t)out * sizeof *s), *sh = malloc((size_t)out * sizeof *sh);
    if (!s || !sh)
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    else
        rc = modelfile_batch_norm(f, modelfile_name(name, sizeof name, "%s.%d.bn.", pre, k),
                                  modelfile_bn_torch, out, DIN_BN_EPS, s, sh, err, errlen);
    for (int o = 0; o < out && rc == CTR_OK; o++) {
        for (int i = 0; i < in; i++)
            l->w[(size_t)o * in + i] = (float)(s[o] * l->w[(size_t)o * in + i]);
        l->b[o] = (float)(s[o] * l->b[o] + sh[o]);
    }
    free(s);
    free(sh);
    return rc;
}

/* Splits attention layer 0 (H1 x 4E) into w_t, w_h, w_d and b1. */
static int load_first(const st_file *f, din_model *m, char *err, size_t errlen) {
    const int E = m->E, H1 = m->att_units[0];
    float *w = NULL;
    int rc;
    if ((rc = modelfile_tensor(f, "attention.0.weight", H1, 4 * E, &w, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "attention.0.bias", H1, -1, &m->b1, err, errlen)) < 0)
        goto done;
    m->w_t = linear_falloc((size_t)H1 * E);
    m->w_h = linear_falloc((size_t)H1 * E);
    m->w_d = linear_falloc((size_t)H1 * E);
    if (!m->w_t || !m->w_h || !m->w_d) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        goto done;
    }
    for (int o = 0; o < H1; o++) {
        const float *row = w + (size_t)o * 4 * E;
        for (int i = 0; i < E; i++) {
            double wa = row[i], wb = row[E + i], wc = row[2 * E + i];
            m->w_t[(size_t)o * E + i] = (float)(wa + wc);
            m->w_h[(size_t)o * E + i] = (float)(wb - wc);
            m->w_d[(size_t)o * E + i] = row[3 * E + i];
        }
    }
done:
    free(w);
    return rc;
}

static int act_kind(const st_file *f, const char *key, int *dice, char *err, size_t errlen) {
    const char *v = st_meta_get(f, key);
    if (v && (!strcmp(v, "relu") || !strcmp(v, "dice"))) {
        *dice = !strcmp(v, "dice");
        return CTR_OK;
    }
    return ctr_fail(err, errlen, CTR_EMODEL, "metadata \"%s\" is \"%s\", expected relu or dice",
                    key, v ? v : "(none)");
}

static void din_free(void *impl) {
    din_model *m = impl;
    if (!m) return;
    for (int f = 0; f < ENGINE_MAX_CTX; f++) free(m->ctx_emb[f]);
    itemvec_free(&m->iv);
    free(m->w_t);
    free(m->w_h);
    free(m->w_d);
    free(m->b1);
    for (int k = 0; k < DIN_MAX_LAYERS; k++) {
        dense_free(m->att_d[k]);
        dense_free(m->dnn_d[k]);
        linear_layer_free(&m->att[k]);
        linear_layer_free(&m->dnn[k]);
        act_free(&m->att_act[k]);
        act_free(&m->dnn_act[k]);
    }
    free(m);
}

static int din_build(void *impl, const st_file *f, const engine_schema *sc, char *err,
                     size_t errlen) {
    din_model *m = impl;
    int rc, mm_out, au[DIN_MAX_LAYERS], du[DIN_MAX_LAYERS], nau, ndu;
    din_names nm = {m, sc, 0, 0, 0};
    if ((rc = modelfile_meta_int(f, "embedding_dim", 1, 4096, &m->d, err, errlen)) < 0 ||
        (rc = modelfile_meta_int(f, "mm_out", 1, 4096, &mm_out, err, errlen)) < 0 ||
        (rc = modelfile_meta_ints(f, "attention_units", DIN_MAX_LAYERS - 1, 1, 16384, au, &nau,
                                  err, errlen)) < 0 ||
        (rc = modelfile_meta_ints(f, "dnn_units", DIN_MAX_LAYERS - 1, 1, 16384, du, &ndu, err,
                                  errlen)) < 0 ||
        (rc = act_kind(f, "attention_activation", &nm.att_dice, err, errlen)) < 0 ||
        (rc = act_kind(f, "dnn_activation", &nm.dnn_dice, err, errlen)) < 0 ||
        (rc = modelfile_meta_int(f, "dnn_batch_norm", 0, 1, &nm.dnn_bn, err, errlen)) < 0 ||
        (rc = modelfile_meta_int(f, "softmax", 0, 1, &m->softmax, err, errlen)) < 0)
        return rc;
    if (nau < 1)
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata \"attention_units\": at least one hidden layer");
    const int d = m->d, E = 2 * d + mm_out;
    m->E = E;
    m->num_ctx = sc->num_ctx;
    m->max_len = sc->max_len;
    m->in_dim = sc->num_ctx * d + 2 * E;
    m->na = nau + 1;
    m->nd = ndu + 1;
    m->max_width = 1;
    for (int k = 0; k < nau; k++) {
        m->att_units[k] = au[k];
        if (au[k] > m->max_width) m->max_width = au[k];
    }
    m->att_units[nau] = 1;
    for (int k = 0; k < ndu; k++)
        if (du[k] > m->max_width) m->max_width = du[k];
    if ((long long)sc->item_vocab * d > INT32_MAX || (long long)sc->tag_vocab * d > INT32_MAX ||
        (long long)au[0] * 4 * E > INT32_MAX || m->in_dim > 65536)
        return ctr_fail(err, errlen, CTR_EMODEL, "configuration too large");

    if ((rc = modelfile_no_unexpected(f, din_expected, &nm, err, errlen)) < 0) return rc;
    char name[160];
    for (int i = 0; i < sc->num_ctx; i++) {
        m->ctx_vocab[i] = sc->ctx_vocab[i];
        if ((rc = modelfile_tensor(
                 f, modelfile_name(name, sizeof name, P "embedding_layers.%s.weight",
                                   sc->ctx_name[i]),
                 sc->ctx_vocab[i], d, &m->ctx_emb[i], err, errlen)) < 0)
            return rc;
    }
    m->iv = (itemvec_tables){.d = d, .item_vocab = sc->item_vocab, .tag_vocab = sc->tag_vocab,
                             .num_tags = sc->num_tags, .mm_in = sc->mm_dim, .mm_out = mm_out};
    if ((rc = itemvec_load(&m->iv, f, err, errlen)) < 0) return rc;

    if ((rc = load_first(f, m, err, errlen)) < 0) return rc;
    for (int k = 1; k < m->na; k++)
        if ((rc = load_linear(f, "attention", k, m->att_units[k - 1], m->att_units[k], 0,
                              &m->att[k], err, errlen)) < 0)
            return rc;
    for (int k = 0; k < nau; k++)
        if (nm.att_dice && (rc = load_dice(f, "attention", k, au[k], &m->att_act[k], err,
                                           errlen)) < 0)
            return rc;
    for (int k = 0; k < m->nd; k++) {
        int in = k ? du[k - 1] : m->in_dim, out = k < ndu ? du[k] : 1;
        if ((rc = load_linear(f, "dnn", k, in, out, nm.dnn_bn && k < ndu, &m->dnn[k], err,
                              errlen)) < 0)
            return rc;
        if (k < ndu && nm.dnn_dice &&
            (rc = load_dice(f, "dnn", k, out, &m->dnn_act[k], err, errlen)) < 0)
            return rc;
    }
    m->vec_floats = (E + 2 * au[0] + 15) & ~15;
    m->pair_rows = DIN_PAIR_ROWS;
    return CTR_OK;
}

/* Prepares one hidden layer's weight w (out x in) in precision p. */
static int din_dense(din_model *m, const char *what, int k, const float *w, int out, int in,
                     dense **d, char *err, size_t errlen) {
    dense_params dp = dense_default_params();
    dp.precision = m->precision;
    dp.backend = m->kernel;
    char inner[256] = "";
    int rc = dense_init(w, out, in, &dp, d, inner, sizeof inner);
    if (rc < 0)
        return ctr_fail(err, errlen, rc, "%s layer %d, %s: %s", what, k,
                        dense_precision_name(m->precision), inner);
    if (dense_ws_size(*d) > m->ws_bytes) m->ws_bytes = dense_ws_size(*d);
    return CTR_OK;
}

static int din_prepare(void *impl, const engine_params *p, char *err, size_t errlen) {
    din_model *m = impl;
    int rc;
    m->precision = p->precision;
    m->kernel = p->kernel;
    if ((rc = din_dense(m, "attention", 0, m->w_d, m->att_units[0], m->E, &m->att_d[0], err,
                        errlen)) < 0)
        return rc;
    for (int k = 1; k < m->na - 1; k++)
        if ((rc = din_dense(m, "attention", k, m->att[k].w, m->att[k].out, m->att[k].in,
                            &m->att_d[k], err, errlen)) < 0)
            return rc;
    for (int k = 0; k < m->nd - 1; k++)
        if ((rc = din_dense(m, "dnn", k, m->dnn[k].w, m->dnn[k].out, m->dnn[k].in, &m->dnn_d[k],
                            err, errlen)) < 0)
            return rc;
    return CTR_OK;
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
    .build = din_build,
    .prepare = din_prepare,
    .free = din_free,
    .item_vec_floats = din_vec_floats,
    .items_compute = din_items,
    .scratch_init = din_scratch_init,
    .scratch_free = din_scratch_free,
    .forward = din_forward,
    .cost = din_cost,
    .describe = din_describe,
};
