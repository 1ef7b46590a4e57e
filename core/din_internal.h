/*
 * din_internal.h - DIN (docs/MODEL_SPEC.md section 4) inside the engine:
 * its folded weights and the two halves that share them.  Not an API:
 * everything outside core/ scores DIN through engine.h (din.c's
 * din_arch_ops).
 *
 * Two files, as QIN's: din_load.c loads the file and makes the folds (once
 * per model; din.c's opening comment has them); din.c computes item
 * vectors and the forward pass (every request) and holds the engine's
 * entry points.  din.c calls into din_load.c, never the other way.
 *
 * A din_model is immutable once loaded and prepared, shared freely between
 * threads.
 */
#ifndef CTR_DIN_INTERNAL_H
#define CTR_DIN_INTERNAL_H

#include <stddef.h>

#include "arch.h"
#include "dense.h"
#include "itemvec.h"
#include "linear.h"
#include "safetensors.h"

#define DIN_MAX_LAYERS 8
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

/* arch_ops.build: reads and checks every tensor of f for schema sc, folds
 * them into impl (a zeroed din_model).  CTR_OK, or CTR_EMODEL /
 * CTR_ENOMEM with a message naming the key. */
int din_model_build(void *impl, const st_file *f, const engine_schema *sc, char *err,
                    size_t errlen);
/* arch_ops.prepare: the hidden layers' weights in p's precision and
 * kernel (dense.h). */
int din_model_prepare(void *impl, const engine_params *p, char *err, size_t errlen);
/* arch_ops.free: everything build and prepare made, and impl. */
void din_model_free(void *impl);

#endif
