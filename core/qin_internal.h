/*
 * qin_internal.h - the engine's insides, shared by the core sources and the unit
 * tests (tests/core/), which check each piece against a naive version.
 * Not part of the API: server/ and proto/ use qin.h only.
 */
#ifndef CTR_QIN_INTERNAL_H
#define CTR_QIN_INTERNAL_H

#include "qin.h"
#include "safetensors.h"

/* Alignment of every weight and activation buffer (one cache line, and
 * enough for any SIMD width OpenBLAS picks). */
#define QIN_ALIGN 64

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
    float **qnn_packed;           /* the same packed for gemm_packed, or NULL
                                     (CPU without AVX-512F, D % 32 != 0) */
    int use_packed;               /* 1: QNN via gemm_packed, 0: OpenBLAS */
    float **qnn_b;                /* num_layers of D: s * sum_r b_r */
    float **qnn_c;                /* num_layers of D: beta - mean * s */
    float *prelu;                 /* num_layers slopes */
    float *fc_w;                  /* D */
    float fc_b;
};

struct qin_scratch {
    const qin_model *model;
    int max_cand;
    int ldx;                      /* row stride of x and y (D rounded to 16) */
    float *x;                     /* max_cand x ldx: QNN input/state */
    float *y;                     /* max_cand x ldx: GEMM output */
    float *s;                     /* max_cand x max_len: attention weights */
    float *ah;                    /* max_len x E: A h of the behaviours kept */
    float *bh;                    /* max_len x E: B h */
    float *logit;                 /* max_cand */
};

/* Chooses the QNN's GEMM: 1 the packed kernel (when the model has packed
 * weights), 0 OpenBLAS.  Returns the choice in force.  Call before the
 * model is shared between threads (tests and benchmarks compare both). */
int qin_model_use_packed(qin_model *m, int on);

/* Aligned allocation of n floats, zeroed; NULL on failure or overflow. */
float *qin_falloc(size_t n);

/* Builds a QIN model from a parsed model file (what qin_model_load_buffer
 * and the engine's QIN loader share). */
int qin_model_build(const st_file *f, qin_model **out, char *err, size_t errlen);

/* Pieces of the forward pass (qin.c), exposed for the tests. */

/* Attention for n candidates whose item vectors t sit in rows of `t`
 * (stride ldt) against nh behaviours (ah, bh: nh x E, contiguous).
 * Writes pool rows (stride ldp) = sum_j relu(scale t.(A h_j)) B h_j + t and
 * leaves the weights in s (n x ld_s). */
void qin_attention(const qin_model *m, int n, const float *t, int ldt, int nh,
                   const float *ah, const float *bh, float *s, int lds,
                   float *pool, int ldp);

/* One folded QNN layer in place on x (n x D, stride ldx), y as scratch. */
void qin_qnn_layer(const qin_model *m, int layer, int n, float *x, int ldx,
                   float *y);

/* Output head: prob[i] = sigmoid(fc_w . x_i + fc_b). */
void qin_head(const qin_model *m, int n, const float *x, int ldx, float *logit,
              float *prob);

#endif
