/*
 * qin_internal.h - QIN (Quadratic Interest Network, docs/MODEL_SPEC.md
 * section 3) inside the engine: its configuration, folded weights, scratch
 * and the pieces of its forward pass.  Not an API: everything outside core/ scores QIN through engine.h
 * (qin.c's qin_arch_ops).  The unit tests (tests/core/test_qin.c,
 * test_qin_load.c, test_gemm.c) and bench/bench_forward.c include it to
 * check or time one piece at a time against a naive version, on a model
 * loaded through engine.h (qin_model_of).
 *
 * Two files: qin_load.c loads the file and makes the folds (once per
 * model); qin.c computes item vectors and the forward pass (every request)
 * and holds the engine's entry points.  qin.c calls into qin_load.c, never
 * the other way.
 *
 * Three lifetimes, as engine.h has them:
 *   - qin_model: weights and the folds done once at load (summed row
 *     blocks, batch norm folded into the QNN, A = W_q^T W_k, B = W_o W_v,
 *     the first layer split).  Immutable once loaded, shared freely
 *     between threads.
 *   - item vectors: e, A e, B e, U e and V e for one item (the layouts
 *     below: A e, B e, V e in bf16 where the attention runs in bf16),
 *     computed once and reusable across candidates, requests and threads.
 *   - qin_scratch: one thread's activations, sized at init for the largest
 *     request; qin_forward allocates nothing.
 */
#ifndef CTR_QIN_INTERNAL_H
#define CTR_QIN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "arch.h"
#include "dense.h"
#include "itemvec.h"
#include "safetensors.h"

/* What a model file declares (and the loader checks every tensor against). */
typedef struct qin_config {
    char name[ENGINE_NAME_MAX];    /* model name, from metadata ("qin") */
    char version[ENGINE_NAME_MAX]; /* model version string, from metadata */
    int embedding_dim;            /* d: width of each categorical table (128) */
    int max_len;                  /* behaviours kept, most recent first (64) */
    int num_layers;               /* QNN layers (4) */
    int num_row;                  /* R: row blocks per QNN layer (4) */
    int batch_norm;               /* 1 when the QNN has batch norm */
    int item_vocab;               /* rows of E_item; ids 1..item_vocab-1 */
    int tag_vocab;                /* rows of E_tag; 0 is padding */
    int num_tags;                 /* tag slots per item (5) */
    int mm_in;                    /* multimodal embedding width (128) */
    int mm_out;                   /* W_mm output width (128) */
    int num_ctx;                  /* per-candidate context fields, in order */
    char ctx_name[ENGINE_MAX_CTX][ENGINE_NAME_MAX];
    int ctx_vocab[ENGINE_MAX_CTX];
    /* Derived. */
    int item_dim;                 /* E = 2 d + mm_out (384) */
    int attn_dim;                 /* 2 E (768) */
    int input_dim;                /* D = num_ctx d + 2 E (1024) */
} qin_config;

typedef struct qin_model qin_model;
typedef struct qin_scratch qin_scratch;

/* A QNN layer's int8x2 weights as the file carries them (dense_int8):
 * q (D x D), scale (D), balance (D). */
typedef struct qin_int8 {
    signed char *q;
    float *scale;
    float *balance;
} qin_int8;

/* Column parts of the QNN layers for a split request (engine_par). */
#define QIN_PARTS 2

struct qin_model {
    qin_config cfg;
    /* Embedding tables, row-major, 64-byte aligned. */
    float *ctx_emb[ENGINE_MAX_CTX]; /* ctx_vocab[f] x d */
    itemvec_tables iv;            /* E_item, E_tag, W_mm (itemvec.h) */
    /* Attention folds (computed in double at load). */
    float *attn_a;                /* E x E: A = W_q^T W_k */
    float *attn_b;                /* E x E: B = W_o W_v */
    float attn_scale;             /* 1 / sqrt(attn_dim) */
    /* QNN folds, per layer l: y = W_l x + b_l; z = x * y + c_l; PReLU. */
    float **qnn_w;                /* num_layers of D x D: diag(s) sum_r W_r */
    dense **qnn_dense;            /* num_layers: qnn_w prepared for the
                                     serving precision (dense.h), rows of
                                     stride qin_ldx */
    dense **qnn_part;             /* NULL, or num_layers x QIN_PARTS: part p
                                     of layer l (index l * QIN_PARTS + p) is
                                     rows p D / QIN_PARTS .. (p + 1) D /
                                     QIN_PARTS - 1 of qnn_w[l] (its output
                                     columns), prepared like qnn_dense */
    /* int8x2 weights the file carries (tools/convert.py --calibrate rounds
     * them with calibration data), per layer (dense_int8); NULL, or a
     * layer's q NULL: int8x2 rounds qnn_w to nearest at qin_model_prepare
     * instead.  int8 always rounds to nearest. */
    qin_int8 *qnn_int8x2;         /* NULL or num_layers */
    float **qnn_b;                /* num_layers of D: s * sum_r b_r */
    float **qnn_c;                /* num_layers of D: beta - mean * s */
    float *prelu;                 /* num_layers slopes */
    /* The first layer's product split by its input's parts (qin_load.c,
     * "the first layer"): y_1 = sum_f G_f[v_f] + U t + sum_j a_j V h_j,
     * with U t and V h cached in the item vectors. */
    int fold_first;               /* 1: layer 0's product from these parts */
    float *first_ctx[ENGINE_MAX_CTX]; /* ctx_vocab[f] x D: G_f = W_1[:, ctx f] E_f^T */
    float *first_u;               /* D x E: W_1[:, t] + W_1[:, pool] */
    float *first_v;               /* D x E: W_1[:, pool] B */
    float *fc_w;                  /* D */
    float fc_b;
    /* The attention's products against a request's history in bf16
     * (qin_model_prepare: precision bf16 or int8 on a CPU whose oneDNN
     * runs bf16 on AMX), the history padded to max_len:
     *   attn_score: scores T (A H)^T, max_len x E weights (A h rows);
     *   attn_pool:  S (B H), weights max_len x E (B h rows, in x out);
     *   attn_first: the first layer's S (V H), max_len x D (V h rows).
     * NULL: that product in fp32 (linear_gemm); attn_score and attn_pool
     * are made together. */
    dense *attn_score, *attn_pool, *attn_first;
    /* 1: item vectors carry the history's operands (A e, B e, V e) in
     * bf16, as the products above read them (qin_vec_*): set by
     * qin_model_prepare when it makes attn_score (and attn_first), so a
     * request copies half the bytes per behaviour instead of converting
     * fp32 ones.  0: the fp32 layout (fp32, int8x2, no AMX). */
    int vec_bf16;
};

struct qin_scratch {
    const qin_model *model;
    int max_cand;
    int ldx;                      /* row stride of x and y (D rounded to 16) */
    float *x;                     /* max_cand x ldx: QNN input/state */
    float *x2;                    /* max_cand x ldx: the next layer's state
                                     when a layer's columns are split */
    float *y;                     /* max_cand x ldx: GEMM output */
    float *s;                     /* max_cand x max_len: attention weights */
    float *ah;                    /* max_len x E: A h of the behaviours kept */
    float *bh;                    /* max_len x E: B h */
    float *vh;                    /* max_len x D: V h (first layer) */
    int *keep;                    /* max_len: the history positions kept */
    unsigned short *ah16, *bh16, *vh16; /* max_len x E, E, D: A h, B h and V h
                                     in bf16 (attn_score set); rows past
                                     the history: A h zero, the others
                                     finite */
    float *pt;                    /* max_cand x E: S (B H) (attn_score) */
    float *logit;                 /* max_cand */
    dense_ws *dws;                /* the QNN layers' workspace */
    dense_ws *pws[QIN_PARTS];     /* one per column part (pws[0] = dws) */
};

/* --- the item vector's layout ---------------------------------------------
 *
 * An item vector is qin_item_vec_floats floats, in one of two layouts:
 *   - fp32 (vec_bf16 0): [e | A e | B e | U e | V e], E, E, E, D and D
 *     floats;
 *   - bf16 (vec_bf16 1): [e | U e | h16], E and D floats, then h16: A e,
 *     B e and V e as 2 E + D bfloat16 values (each the fp32 value rounded
 *     to nearest even, as dense_bf16_rows does), stored in memory order,
 *     two to a float slot, then zeros up to a multiple of 16 floats.
 * The candidates' parts (e, U e) are fp32 in both.  A vector is read only
 * by the model (as prepared) that computed it; the engine's callers copy
 * vectors as opaque float arrays (memcpy), which keeps the bf16 pairs. */

/* Offset in floats of U e (D floats). */
static inline size_t qin_vec_u(const qin_model *m) {
    return (m->vec_bf16 ? 1 : 3) * (size_t)m->cfg.item_dim;
}
/* A e (fp32 layout only; E floats). */
static inline const float *qin_vec_a(const qin_model *m, const float *v) {
    return v + m->cfg.item_dim;
}
/* B e (fp32 layout only; E floats). */
static inline const float *qin_vec_b(const qin_model *m, const float *v) {
    return v + 2 * (size_t)m->cfg.item_dim;
}
/* V e (fp32 layout only; D floats). */
static inline const float *qin_vec_v(const qin_model *m, const float *v) {
    return v + 3 * (size_t)m->cfg.item_dim + m->cfg.input_dim;
}
/* h16 (bf16 layout only): A e at [0, E), B e at [E, 2 E), V e at
 * [2 E, 2 E + D). */
static inline const unsigned short *qin_vec_h16(const qin_model *m, const float *v) {
    return (const unsigned short *)(v + m->cfg.item_dim + m->cfg.input_dim);
}

/* Row stride of the QNN's activations: D rounded up to 16 floats. */
static inline int qin_ldx(const qin_config *c) { return (c->input_dim + 15) & ~15; }

/* The QIN model inside an engine model, for the tests and benchmarks of its
 * pieces; NULL when m is of another architecture.  Owned by m. */
static inline qin_model *qin_model_of(const engine_model *m) {
    return engine_model_schema(m)->arch == ENGINE_ARCH_QIN ? (qin_model *)engine_model_impl(m)
                                                           : NULL;
}

/* --- loading (qin_load.c) ------------------------------------------------ */

/* Builds m (zeroed, as the engine allocates it) from a parsed file whose
 * schema sc engine.c has read and checked: QIN's own metadata, every tensor
 * checked against the configuration, the folds.  CTR_OK, or CTR_EMODEL /
 * CTR_ENOMEM with a message; the QNN layers are made by qin_model_prepare
 * after it. */
int qin_model_build(qin_model *m, const st_file *f, const engine_schema *sc, char *err,
                    size_t errlen);
/* Frees what qin_model_build and qin_model_prepare made, and m. */
void qin_model_free(qin_model *m);

/* (Re)prepares the QNN layers from qnn_w with p (precision and backend;
 * ld_in/ld_out are set here).  The engine calls it at load (qin.c: fp32 on
 * OpenBLAS where the QNN_DENSE path of core/base/cpu.h is off); tests and
 * benchmarks call it again to compare backends, before the model is shared
 * and before scratches are made for it. */
int qin_model_prepare(qin_model *m, const dense_params *p, char *err, size_t errlen);

/* Also prepares each QNN layer's QIN_PARTS column parts (qnn_part) with p,
 * for requests split across threads; CTR_EINVAL when D is not a multiple
 * of 32 QIN_PARTS.  Call before scratches are made for the model. */
int qin_model_prepare_parts(qin_model *m, const dense_params *p, char *err, size_t errlen);

/* Splits the first layer's weight into first_ctx, first_u, first_v (in
 * double, each rounded once to float) and turns fold_first on.  Called by
 * the loader after the QNN folds.  CTR_OK or CTR_ENOMEM. */
int qin_fold_first_layer(qin_model *m, char *err, size_t errlen);

/* 1: the forward pass takes the first layer's product from the split parts
 * (the default), 0: from the full D x D product like the other layers.
 * Both give the same scores to float rounding; tests and benchmarks compare
 * them.  Call before the model is shared.  Returns the setting. */
int qin_model_fold_first(qin_model *m, int on);

/* --- item vectors and the forward pass (qin.c) --------------------------- */

/* Floats in one item vector (the layouts above): fp32 3 E + 2 D
 * (MicroLens: 3200 floats, 12.5 KiB); bf16 E + D + (2 E + D) / 2 rounded
 * up to 16 (MicroLens: 2304 floats, 9 KiB). */
size_t qin_item_vec_floats(const qin_model *m);

/* 1: the bf16 layout where qin_model_prepare allows it (the default), 0:
 * the fp32 layout, the history's operands converted to bf16 by each
 * request instead.  Both give the same scores, bit for bit; tests and
 * benchmarks compare them.  Call before the model is shared and before
 * any vector is computed for it.  Returns the setting. */
int qin_model_vec_bf16(qin_model *m, int on);

/* The item vectors of n items into out (n x qin_item_vec_floats,
 * contiguous; 64-byte aligned rows when out is).  A e, B e, U e and V e of
 * all n items are four sgemm calls: the cold-cache path of a request, where
 * a few hundred items miss at once.  Stops at the first bad item (its index
 * in *bad, when bad is non-NULL) with itemvec_check's status and message;
 * the engine checks the vectors for overflow (engine_items_compute). */
int qin_items_compute(const qin_model *m, int n, const itemvec_input *items, float *out,
                      int *bad, char *err, size_t errlen);

/* Scratch for requests of up to max_cand candidates; one per thread.
 * CTR_OK and *out, or CTR_ENOMEM / CTR_EINVAL. */
int qin_scratch_init(const qin_model *m, int max_cand, qin_scratch **out);
void qin_scratch_free(qin_scratch *s);

typedef struct qin_request {
    const float *const *hist;  /* item vectors of the behaviours, oldest
                                  first; NULL entries are padding */
    int num_hist;              /* any count; the last max_len are used */
    const float *const *cand;  /* item vectors of the candidates */
    const int32_t *ctx;        /* num_cand x num_ctx values, row-major;
                                  NULL means every field is padding (0) */
    int num_cand;              /* 0..max_cand of the scratch */
    const struct engine_par *par;  /* NULL: one thread; else the QNN layers'
                                  columns split across its threads when the
                                  model has column parts (engine.h) */
} qin_request;

/* Scores every candidate of req: prob[i] = P(click | user, cand[i]), on a
 * request engine_forward has checked (candidate count within the scratch
 * of this model, context values in their vocabularies, no NULL candidate).
 * An empty history (or all padding) gives pool = t, as the reference does.
 * Allocates nothing.  CTR_OK, or CTR_EINVAL when a dense layer fails. */
int qin_forward(const qin_model *m, qin_scratch *s, const qin_request *req,
                float *prob, char *err, size_t errlen);

/* What computes the QNN layers, e.g. "int8: oneDNN brg:avx512_core_vnni,
 * 46 row classes up to 256", for logs and benchmarks.  Valid until the
 * next qin_model_prepare. */
const char *qin_model_describe(const qin_model *m);

/* Pieces of the forward pass, exposed for the tests. */

/* Attention for n candidates whose item vectors t sit in rows of `t`
 * (stride ldt) against nh behaviours (ah, bh: nh x E, contiguous).
 * Writes pool rows (stride ldp) = sum_j relu(scale t.(A h_j)) B h_j + t and
 * leaves the weights in s (n x ld_s). */
void qin_attention(const qin_model *m, int n, const float *t, int ldt, int nh,
                   const float *ah, const float *bh, float *s, int lds,
                   float *pool, int ldp);

/* One folded QNN layer in place on x (n x D, stride qin_ldx), y as scratch,
 * ws a workspace for the model's layers (qin_scratch's dws).  CTR_OK, or
 * dense_forward's error. */
int qin_qnn_layer(const qin_model *m, dense_ws *ws, int layer, int n, float *x, float *y);

/* Output head: prob[i] = sigmoid(fc_w . x_i + fc_b). */
void qin_head(const qin_model *m, int n, const float *x, int ldx, float *logit,
              float *prob);

#endif
