/*
 * qin_internal.h - the engine's insides, shared by the core sources and the unit
 * tests (tests/core/), which check each piece against a naive version.
 * Not part of the API: server/ and proto/ use qin.h only.
 */
#ifndef CTR_QIN_INTERNAL_H
#define CTR_QIN_INTERNAL_H

#include "dense.h"
#include "qin.h"
#include "safetensors.h"

/* Alignment of every weight and activation buffer (one cache line, and
 * enough for any SIMD width OpenBLAS picks). */
#define QIN_ALIGN 64

/* Column parts of the QNN layers for a split request (engine_par). */
#define QIN_PARTS 2

struct qin_model {
    qin_config cfg;
    /* Embedding tables, row-major, 64-byte aligned. */
    float *ctx_emb[QIN_MAX_CTX];  /* ctx_vocab[f] x d */
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
    float **qnn_b;                /* num_layers of D: s * sum_r b_r */
    float **qnn_c;                /* num_layers of D: beta - mean * s */
    float *prelu;                 /* num_layers slopes */
    /* The first layer's product split by its input's parts (qin.c, "the
     * first layer"): y_1 = sum_f G_f[v_f] + U t + sum_j a_j V h_j, with U t
     * and V h cached in the item vectors. */
    int fold_first;               /* 1: layer 0's product from these parts */
    float *first_ctx[QIN_MAX_CTX];/* ctx_vocab[f] x D: G_f = W_1[:, ctx f] E_f^T */
    float *first_u;               /* D x E: W_1[:, t] + W_1[:, pool] */
    float *first_v;               /* D x E: W_1[:, pool] B */
    float *fc_w;                  /* D */
    float fc_b;
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
    float *logit;                 /* max_cand */
    dense_ws *dws;                /* the QNN layers' workspace */
    dense_ws *pws[QIN_PARTS];     /* one per column part (pws[0] = dws) */
};

/* Row stride of the QNN's activations: D rounded up to 16 floats. */
static inline int qin_ldx(const qin_config *c) { return (c->input_dim + 15) & ~15; }

/* (Re)prepares the QNN layers from qnn_w with p (precision and backend;
 * ld_in/ld_out are set here).  The model load calls it with fp32 and the
 * AUTO backend (OpenBLAS when CTR_QNN_OPENBLAS=1 is in the environment).
 * Call before the model is shared and before scratches are made for it;
 * tests and benchmarks use it to compare backends. */
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

/* Aligned allocation of n floats, zeroed; NULL on failure or overflow. */
float *qin_falloc(size_t n);

/* Builds a QIN model from a parsed model file, its QNN layers prepared in
 * `precision` on `kernel` (dense.h; what qin_model_load_buffer, in fp32 on
 * AUTO, and the engine's QIN loader share). */
int qin_model_build(const st_file *f, dense_precision precision, dense_backend kernel,
                    qin_model **out, char *err, size_t errlen);

/* Pieces of the forward pass (qin.c), exposed for the tests. */

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
