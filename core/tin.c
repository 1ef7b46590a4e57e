/*
 * tin.c - TIN (Temporal Interest Network, the authors' TensorFlow 1 code,
 * model/tin/tin.py; docs/MODEL_SPEC.md section 5) behind the engine interface
 * (arch.h, engine.h).
 *
 * Model as trained, for a history of l behaviours (oldest first) and a
 * candidate t, H = item width + category width (128):
 *   e(i)  = [E_item[i] | E_cate[cate(i)]]          (ids from 0; 0 is an item)
 *   h~_k  = e(h_k) + P[l - k],  t~ = e(t) + P[0]   (position rows added)
 *   w     = softmax_k(t~ . h~_k / sqrt(H));  o = sum_k w_k h~_k  (l = 0: o = 0)
 *   u     = Dense_H(BN(o))                          (batch_normalization, eps 1e-3)
 *   z     = [u, t~, u * t~] -> BN b1 -> f1 sigmoid -> f2 sigmoid -> f3
 *   p     = sigmoid(z + item_b[t])
 *
 * Folds, exact, done once at load in double:
 *   - BN into hist_fcn_t: u = o K' + b'; since the weights w sum to 1,
 *     u = sum_k w_k (h~_k K') + b', and h~_k K' = e_k K' + P[l - k] K':
 *     e K' is part of the item vector, P K' a table made at load, so the
 *     per-candidate 128 x 128 product becomes a weighted sum of rows;
 *   - b1 into f1, whose input splits into [u | t~ | u * t~]: the t~ part,
 *     e K1t + P[0] K1t, is per item (item vector) plus a constant.
 *
 * Workload: histories up to 430 behaviours, a few hundred candidates; the
 * per-candidate work is two products over the history (scores, u) and a
 * 256 x 80 layer, so a request is a handful of small products
 * (linear_gemm) and the softmax.
 *
 * Item vector: [e (H) | e K' (H) | e K1t (F1) | item_b], padded to a
 * multiple of 16 floats.
 *
 * Precision (engine_params): f1 (on [u | u * t~], 2H -> F1) and f2 are
 * dense layers (dense.h), prepared at load in the model's precision; the
 * attention (scores, softmax, the weighted sum) and f3 (one unit) stay
 * fp32.  At the Amazon shapes the MLP is about 24k multiply-adds a
 * candidate, so what a precision saves there is small against the
 * conversions it adds (bench/README.md has the measurement).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "attn.h"
#include "dense.h"
#include "linear.h"
#include "modelfile.h"
#include "vmath.h"

#define TIN_BN_EPS 1e-3

typedef struct tin_model {
    int di, dc, H, F1, F2;
    int item_vocab, cate_vocab, max_len;
    float *item;                 /* item_vocab x di */
    float *cate;                 /* cate_vocab x dc */
    float *item_b;               /* item_vocab */
    float *pos;                  /* (max_len + 1) x H: P */
    float *kf;                   /* H x H ([in, out]): K', batch norm folded */
    float *bf;                   /* H: b' */
    float *pk;                   /* (max_len + 1) x H: P K' */
    float *k1;                   /* 3H x F1 ([in, out]): b1 folded into f1;
                                    rows [u | t~ | u * t~] */
    float *b1;                   /* F1: folded bias + P[0] K1t */
    float *k2, *b2;              /* F1 x F2, F2 */
    dense *f1;                   /* F1 x 2H ([out, in]): the u and u * t~
                                    rows of k1, in the serving precision */
    dense *f2;                   /* F2 x F1 ([out, in]): k2 transposed */
    size_t ws_bytes;
    float *k3;                   /* F2 */
    float b3;
    float scale;                 /* 1 / sqrt(H) */
    int vec_floats;
    /* Offsets in an item vector. */
    int off_ek, off_et, off_b;
} tin_model;

typedef struct tin_scratch {
    linear_bufs bufs;            /* owns the buffers below */
    int32_t *pos;                /* max_len */
    float *hs;                   /* max_len x H: h~ */
    float *g;                    /* max_len x H: h~ K' */
    float *tt;                   /* max_cand x H: t~ */
    float *s;                    /* max_cand x max_len: weights */
    float *x2;                   /* max_cand x 2H: [u | u * t~] */
    float *z1;                   /* max_cand x F1 */
    float *z2;                   /* max_cand x F2 */
    dense_ws *ws;                /* f1's and f2's workspace */
} tin_scratch;

/* --- loading ----------------------------------------------------------- */

static const char *const tin_names[] = {
    "pos", "item", "cate", "item_b",
    "batch_normalization/gamma", "batch_normalization/beta",
    "batch_normalization/moving_mean", "batch_normalization/moving_variance",
    "hist_fcn_t/kernel", "hist_fcn_t/bias",
    "b1/gamma", "b1/beta", "b1/moving_mean", "b1/moving_variance",
    "f1/kernel", "f1/bias", "f2/kernel", "f2/bias", "f3/kernel", "f3/bias",
};

static int tin_expected(const void *ctx, const char *name) {
    (void)ctx;
    for (size_t i = 0; i < sizeof tin_names / sizeof tin_names[0]; i++)
        if (!strcmp(name, tin_names[i])) return 1;
    return 0;
}

static void tin_free(void *impl) {
    tin_model *m = impl;
    if (!m) return;
    free(m->item);
    free(m->cate);
    free(m->item_b);
    free(m->pos);
    free(m->kf);
    free(m->bf);
    free(m->pk);
    free(m->k1);
    free(m->b1);
    free(m->k2);
    free(m->b2);
    free(m->k3);
    dense_free(m->f1);
    dense_free(m->f2);
    free(m);
}

/* f1 (its u and u * t~ rows) and f2 as dense layers in precision p: the
 * weights transposed to [out, in]. */
static int tin_prepare(void *impl, const engine_params *ep, char *err, size_t errlen) {
    tin_model *m = impl;
    const dense_precision p = ep->precision;
    const dense_backend k = ep->kernel;
    const int H = m->H, F1 = m->F1, F2 = m->F2;
    float *w1 = malloc((size_t)F1 * 2 * H * sizeof *w1), *w2 = malloc((size_t)F2 * F1 * sizeof *w2);
    int rc = CTR_OK;
    if (!w1 || !w2) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        goto done;
    }
    for (int o = 0; o < F1; o++)
        for (int i = 0; i < H; i++) {
            w1[(size_t)o * 2 * H + i] = m->k1[(size_t)i * F1 + o];
            w1[(size_t)o * 2 * H + H + i] = m->k1[(size_t)(2 * H + i) * F1 + o];
        }
    for (int o = 0; o < F2; o++)
        for (int i = 0; i < F1; i++) w2[(size_t)o * F1 + i] = m->k2[(size_t)i * F2 + o];
    dense_params dp = dense_default_params();
    dp.precision = p;
    dp.backend = k;
    char inner[256] = "";
    if ((rc = dense_init(w1, F1, 2 * H, &dp, &m->f1, inner, sizeof inner)) < 0 ||
        (rc = dense_init(w2, F2, F1, &dp, &m->f2, inner, sizeof inner)) < 0) {
        rc = ctr_fail(err, errlen, rc, "f1/f2, %s: %s", dense_precision_name(p), inner);
        goto done;
    }
    m->ws_bytes = dense_ws_size(m->f1) > dense_ws_size(m->f2) ? dense_ws_size(m->f1)
                                                               : dense_ws_size(m->f2);
done:
    free(w1);
    free(w2);
    return rc;
}

/* The folds of hist_fcn_t: its input's batch norm (s, sh) folded in,
 * u = (s o + sh) K + b = o (diag(s) K) + (sh K + b), into kf and bf; and
 * the position rows through it, P K', in double from the unrounded fold.
 * Each matrix is small (at most 384 x 128): plain loops. */
static int fold_hist(tin_model *m, const float *k, const float *b, const double *s,
                     const double *sh, char *err, size_t errlen) {
    const int H = m->H, np = m->max_len + 1;
    m->kf = linear_falloc((size_t)H * H);
    m->bf = linear_falloc((size_t)H);
    m->pk = linear_falloc((size_t)np * H);
    if (!m->kf || !m->bf || !m->pk) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    for (int o = 0; o < H; o++) {
        double acc = b[o];
        for (int i = 0; i < H; i++) {
            m->kf[(size_t)i * H + o] = (float)(s[i] * k[(size_t)i * H + o]);
            acc += sh[i] * k[(size_t)i * H + o];
        }
        m->bf[o] = (float)acc;
    }
    for (int p = 0; p < np; p++)
        for (int o = 0; o < H; o++) {
            double acc = 0;
            for (int i = 0; i < H; i++)
                acc += (double)m->pos[(size_t)p * H + i] * s[i] * k[(size_t)i * H + o];
            m->pk[(size_t)p * H + o] = (float)acc;
        }
    return CTR_OK;
}

/* The fold of f1: b1 (s, sh) folded in, f1(b1(x)) = x (diag(s) K1) + (sh K1
 * + bias), plus the constant P[0] K1t of the t~ rows, into k1 and b1. */
static int fold_f1(tin_model *m, const float *k1, const float *bias, const double *s,
                   const double *sh, char *err, size_t errlen) {
    const int H = m->H, F1 = m->F1;
    m->k1 = linear_falloc((size_t)3 * H * F1);
    m->b1 = linear_falloc((size_t)F1);
    if (!m->k1 || !m->b1) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    for (int o = 0; o < F1; o++) {
        double acc = bias[o];
        for (int i = 0; i < 3 * H; i++) {
            double w = s[i] * k1[(size_t)i * F1 + o];
            m->k1[(size_t)i * F1 + o] = (float)w;
            acc += sh[i] * k1[(size_t)i * F1 + o];
            if (i >= H && i < 2 * H) acc += (double)m->pos[i - H] * w;
        }
        m->b1[o] = (float)acc;
    }
    return CTR_OK;
}

/* The shapes from the metadata, checked against the schema. */
static int read_config(tin_model *m, const st_file *f, const engine_schema *sc, char *err,
                       size_t errlen) {
    int rc;
    if (sc->num_ctx != 0)
        return ctr_fail(err, errlen, CTR_EMODEL, "a tin model has no context fields");
    if ((rc = modelfile_meta_int(f, "item_dim", 1, 4096, &m->di, err, errlen)) < 0 ||
        (rc = modelfile_meta_int(f, "cate_dim", 1, 4096, &m->dc, err, errlen)) < 0 ||
        (rc = modelfile_meta_int(f, "f1_units", 1, 4096, &m->F1, err, errlen)) < 0 ||
        (rc = modelfile_meta_int(f, "f2_units", 1, 4096, &m->F2, err, errlen)) < 0)
        return rc;
    m->H = m->di + m->dc;
    m->item_vocab = sc->item_vocab;
    m->cate_vocab = sc->cate_vocab;
    m->max_len = sc->max_len;
    if ((long long)m->item_vocab * m->di > INT32_MAX ||
        (long long)m->cate_vocab * m->dc > INT32_MAX)
        return ctr_fail(err, errlen, CTR_EMODEL, "configuration too large");
    return modelfile_no_unexpected(f, tin_expected, NULL, err, errlen);
}

static int tin_build(void *impl, const st_file *f, const engine_schema *sc, char *err,
                     size_t errlen) {
    tin_model *m = impl;
    int rc;
    if ((rc = read_config(m, f, sc, err, errlen)) < 0) return rc;
    const int H = m->H, F1 = m->F1, F2 = m->F2, np = m->max_len + 1;
    float *k = NULL, *b = NULL, *k1 = NULL, *b1 = NULL, *b3 = NULL;
    double *s = malloc((size_t)3 * H * sizeof *s), *sh = malloc((size_t)3 * H * sizeof *sh);
    if (!s || !sh) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = modelfile_tensor(f, "pos", np, H, &m->pos, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "item", m->item_vocab, m->di, &m->item, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "cate", m->cate_vocab, m->dc, &m->cate, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "item_b", m->item_vocab, -1, &m->item_b, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "hist_fcn_t/kernel", H, H, &k, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "hist_fcn_t/bias", H, -1, &b, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "f1/kernel", 3 * H, F1, &k1, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "f1/bias", F1, -1, &b1, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "f2/kernel", F1, F2, &m->k2, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "f2/bias", F2, -1, &m->b2, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "f3/kernel", F2, 1, &m->k3, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "f3/bias", 1, -1, &b3, err, errlen)) < 0)
        goto done;
    m->b3 = b3[0];
    if ((rc = modelfile_batch_norm(f, "batch_normalization/", modelfile_bn_tf, H, TIN_BN_EPS, s,
                                   sh, err, errlen)) < 0 ||
        (rc = fold_hist(m, k, b, s, sh, err, errlen)) < 0 ||
        (rc = modelfile_batch_norm(f, "b1/", modelfile_bn_tf, 3 * H, TIN_BN_EPS, s, sh, err,
                                   errlen)) < 0 ||
        (rc = fold_f1(m, k1, b1, s, sh, err, errlen)) < 0)
        goto done;
    m->scale = (float)(1.0 / sqrt((double)H));
    m->off_ek = H;
    m->off_et = 2 * H;
    m->off_b = 2 * H + F1;
    m->vec_floats = (2 * H + F1 + 1 + 15) & ~15;
done:
    free(s);
    free(sh);
    free(k);
    free(b);
    free(k1);
    free(b1);
    free(b3);
    return rc;
}

/* --- item vectors ------------------------------------------------------ */

static size_t tin_vec_floats(const void *impl) { return (size_t)((const tin_model *)impl)->vec_floats; }

static int tin_items(const void *impl, int n, const engine_item *items, float *out, int *bad,
                     char *err, size_t errlen) {
    const tin_model *m = impl;
    const int H = m->H, ld = m->vec_floats;
    for (int i = 0; i < n; i++) {
        const engine_item *it = &items[i];
        int rc = CTR_OK;
        if (it->id < 0 || it->id >= m->item_vocab)
            rc = ctr_fail(err, errlen, CTR_ERANGE, "item_id %lld outside 0..%d",
                          (long long)it->id, m->item_vocab - 1);
        else if (it->cate < 0 || it->cate >= m->cate_vocab)
            rc = ctr_fail(err, errlen, CTR_ERANGE, "item %lld: cate_id %d outside 0..%d",
                          (long long)it->id, (int)it->cate, m->cate_vocab - 1);
        if (rc < 0) {
            if (bad) *bad = i;
            return rc;
        }
        float *v = out + (size_t)i * ld;
        memset(v, 0, (size_t)ld * sizeof *v);
        memcpy(v, m->item + (size_t)it->id * m->di, (size_t)m->di * sizeof *v);
        memcpy(v + m->di, m->cate + (size_t)it->cate * m->dc, (size_t)m->dc * sizeof *v);
        v[m->off_b] = m->item_b[it->id];
    }
    /* e K' and e K1t (the t~ rows of the folded f1) for all n at once. */
    linear_gemm(n, H, H, out, ld, m->kf, H, 0, 0.0f, out + m->off_ek, ld);
    linear_gemm(n, m->F1, H, out, ld, m->k1 + (size_t)H * m->F1, m->F1, 0, 0.0f,
                out + m->off_et, ld);
    return CTR_OK;
}

/* --- scratch ----------------------------------------------------------- */

static void tin_scratch_free(void *scratch) {
    tin_scratch *s = scratch;
    if (!s) return;
    linear_bufs_free(&s->bufs);
    dense_ws_free(s->ws);
    free(s);
}

static int tin_scratch_init(const void *impl, int max_cand, void **scratch) {
    const tin_model *m = impl;
    tin_scratch *s = calloc(1, sizeof *s);
    if (!s) return CTR_ENOMEM;
    const size_t L = (size_t)m->max_len, N = (size_t)max_cand, H = (size_t)m->H;
    linear_bufs *b = &s->bufs;
    s->pos = linear_bufs_ints(b, L);
    s->hs = linear_bufs_floats(b, L * H);
    s->g = linear_bufs_floats(b, L * H);
    s->tt = linear_bufs_floats(b, N * H);
    s->s = linear_bufs_floats(b, N * L);
    s->x2 = linear_bufs_floats(b, N * 2 * H);
    s->z1 = linear_bufs_floats(b, N * m->F1);
    s->z2 = linear_bufs_floats(b, N * m->F2);
    int rc = dense_ws_init(m->ws_bytes, &s->ws);
    if (b->failed || rc < 0) {
        tin_scratch_free(s);
        return rc < 0 ? rc : CTR_ENOMEM;
    }
    *scratch = s;
    return CTR_OK;
}

/* --- forward ----------------------------------------------------------- */

static int tin_forward(const void *impl, void *scratch, const engine_request *req, float *prob,
                       char *err, size_t errlen) {
    const tin_model *m = impl;
    tin_scratch *s = scratch;
    const int n = req->num_cand, H = m->H, F1 = m->F1, F2 = m->F2, L = m->max_len;

    /* The history: the window's known behaviours (engine.h), oldest
     * first; behaviour k of l gets position row l - k. */
    const int l = attn_window(req->hist, req->num_hist, L, s->pos);
    for (int k = 0; k < l; k++) {
        const float *v = req->hist[s->pos[k]];
        const float *p = m->pos + (size_t)(l - k) * H, *pk = m->pk + (size_t)(l - k) * H;
        float *restrict hs = s->hs + (size_t)k * H, *restrict g = s->g + (size_t)k * H;
        for (int j = 0; j < H; j++) {
            hs[j] = v[j] + p[j];
            g[j] = v[m->off_ek + j] + pk[j];
        }
    }
    for (int i = 0; i < n; i++) {
        const float *v = req->cand[i];
        float *restrict t = s->tt + (size_t)i * H;
        for (int j = 0; j < H; j++) t[j] = v[j] + m->pos[j];
    }

    /* w = softmax(T~ H~^T / sqrt(H)); u = w G + b' (l = 0: o = 0, u = b'). */
    float *u = s->x2;
    const int ld2 = 2 * H;
    if (l > 0) {
        linear_gemm(n, l, H, s->tt, H, s->hs, H, 1, 0.0f, s->s, L);
        for (int i = 0; i < n; i++) {
            float *row = s->s + (size_t)i * L;
            for (int k = 0; k < l; k++) row[k] *= m->scale;
        }
        attn_softmax_rows(s->s, n, l, L);
        linear_gemm(n, H, l, s->s, L, s->g, H, 0, 0.0f, u, ld2);
    } else {
        for (int i = 0; i < n; i++) memset(u + (size_t)i * ld2, 0, (size_t)H * sizeof *u);
    }
    for (int i = 0; i < n; i++) {
        float *restrict ui = u + (size_t)i * ld2;
        const float *restrict t = s->tt + (size_t)i * H;
        for (int j = 0; j < H; j++) {
            ui[j] += m->bf[j];
            ui[H + j] = ui[j] * t[j];
        }
    }

    /* f1 on [u | u * t~] (the t~ rows are in the item vector), f2, f3. */
    if (dense_forward(m->f1, s->ws, n, u, s->z1) < 0)
        return ctr_fail(err, errlen, CTR_EINVAL, "f1: %s failed", dense_describe(m->f1));
    for (int i = 0; i < n; i++) {
        float *restrict z = s->z1 + (size_t)i * F1;
        const float *restrict et = req->cand[i] + m->off_et;
        for (int o = 0; o < F1; o++) z[o] += et[o] + m->b1[o];
    }
    vmath_sigmoid(s->z1, n * F1);
    if (dense_forward(m->f2, s->ws, n, s->z1, s->z2) < 0)
        return ctr_fail(err, errlen, CTR_EINVAL, "f2: %s failed", dense_describe(m->f2));
    for (int i = 0; i < n; i++) {
        float *restrict z = s->z2 + (size_t)i * F2;
        for (int o = 0; o < F2; o++) z[o] += m->b2[o];
    }
    vmath_sigmoid(s->z2, n * F2);
    for (int i = 0; i < n; i++) {
        const float *restrict z = s->z2 + (size_t)i * F2;
        float acc = 0.0f;
        for (int o = 0; o < F2; o++) acc += z[o] * m->k3[o];
        prob[i] = acc + m->b3 + req->cand[i][m->off_b];
    }
    vmath_sigmoid(prob, n);

    if (req->explain) attn_explain(s->s, n, l, L, s->pos, req->explain, 0);
    return CTR_OK;
}

static engine_cost tin_cost(const void *impl, int nh) {
    const tin_model *m = impl;
    const double H = m->H, F1 = m->F1, F2 = m->F2;
    engine_cost c;
    /* Folded: scores and the weighted sum of h~ K' (H each per behaviour),
     * u * t~, f1 on [u | u * t~], f2, f3. */
    c.folded = 2 * nh * H + H + 2 * H * F1 + F1 * F2 + F2;
    /* As trained: scores and pooling (H each per behaviour), hist_fcn_t,
     * u * t~, f1 on all 3H inputs, f2, f3 (batch norms and position adds
     * are element-wise, left out of both). */
    c.unfolded = 2 * nh * H + H * H + H + 3 * H * F1 + F1 * F2 + F2;
    return c;
}

static const char *tin_describe(const void *impl) {
    return dense_describe(((const tin_model *)impl)->f1);
}

const arch_ops tin_arch_ops = {
    .model_size = sizeof(tin_model),
    .build = tin_build,
    .prepare = tin_prepare,
    .free = tin_free,
    .item_vec_floats = tin_vec_floats,
    .items_compute = tin_items,
    .scratch_init = tin_scratch_init,
    .scratch_free = tin_scratch_free,
    .forward = tin_forward,
    .cost = tin_cost,
    .describe = tin_describe,
};
