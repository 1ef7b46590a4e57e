/*
 * qin.h - the QIN (Quadratic Interest Network) scoring engine.
 *
 * Computes, for one user and a batch of candidate items, the click
 * probability the trained QIN gives (../MODEL_SPEC section 3), to 1e-5 of the
 * PyTorch reference, at a fraction of the training code's arithmetic.
 *
 * Usage:
 *
 *     qin_model *m;  char err[256];
 *     if (qin_model_load("model.safetensors", &m, err, sizeof err) < 0) ...
 *     qin_scratch *s; qin_scratch_init(m, 256, &s);          // one per thread
 *     float *vec = qin_item_vec_alloc(m);                     // one per item
 *     qin_item_compute(m, &(qin_item_input){...}, vec, err, sizeof err);
 *     qin_forward(m, s, &(qin_request){...}, probs, err, sizeof err);
 *
 * Three lifetimes, three objects:
 *   - qin_model: weights and the folds done once at load (summed row blocks,
 *     batch norm folded into the QNN, A = W_q^T W_k, B = W_o W_v).  Immutable
 *     after load and shared freely between threads.
 *   - item vectors: [e | A e | B e | U e | V e] for one item (the attention's
 *     and the first QNN layer's item-side parts), computed once and reusable
 *     across candidates, requests and threads; callers cache them (they depend
 *     on the model, so a cache must be keyed by model too).
 *   - qin_scratch: one thread's activations, sized at init for the largest
 *     request allowed.  qin_forward allocates nothing.
 *
 * Defined behaviour at the edges (all documented in README.md too):
 *   - empty history (or all padding): pool = t, as the reference gives;
 *   - history longer than max_len: only the most recent max_len are used;
 *   - a NULL history entry is padding (callers map id 0 and ids they cannot
 *     resolve, e.g. outside the vocabulary, to NULL);
 *   - all-padding tags: the tag part of the item vector is zero;
 *   - item id outside 1..item_vocab-1, tag id outside 0..tag_vocab-1, or a
 *     context value outside 0..vocab-1: CTR_ERANGE, nothing is scored.
 *
 * All functions are thread-safe as long as each thread passes its own
 * qin_scratch.  Errors: negative ctr_status (status.h) and a message in the
 * caller's buffer (which may be NULL).
 */
#ifndef CTR_QIN_H
#define CTR_QIN_H

#include <stddef.h>
#include <stdint.h>

#include "dense.h"
#include "itemvec.h"
#include "core/base/status.h"

#define QIN_MAX_CTX 16        /* context fields a model may declare */
#define QIN_NAME_MAX 64

/* What a model file declares (and the loader checks every tensor against). */
typedef struct qin_config {
    char name[QIN_NAME_MAX];      /* model name, from metadata ("qin") */
    char version[QIN_NAME_MAX];   /* model version string, from metadata */
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
    char ctx_name[QIN_MAX_CTX][QIN_NAME_MAX];
    int ctx_vocab[QIN_MAX_CTX];
    /* Derived. */
    int item_dim;                 /* E = 2 d + mm_out (384) */
    int attn_dim;                 /* 2 E (768) */
    int input_dim;                /* D = num_ctx d + 2 E (1024) */
    /* How it is served, not what the file says. */
    dense_precision precision;    /* of the QNN layers: fp32 after load, then
                                     what qin_model_set_precision set */
} qin_config;

typedef struct qin_model qin_model;
typedef struct qin_scratch qin_scratch;

/* Loads and checks a model file (safetensors, see README "Model file").
 * On success *out owns the model (free with qin_model_free).  Refuses, with
 * a message naming the problem, a truncated/corrupt file, a tensor of the
 * wrong dtype or shape, a missing tensor, or a configuration out of bounds.
 * Never reads past the file.  Also sets OpenBLAS to one thread (see
 * qin_load.c), and prepares the QNN layers in fp32 (dense.h: oneDNN, and the
 * packed AVX-512 kernel of gemm.h for small batches where the CPU has it;
 * the environment variable CTR_QNN_OPENBLAS=1 keeps OpenBLAS for every
 * product). */
int qin_model_load(const char *path, qin_model **out, char *err, size_t errlen);

/* Same, from a buffer the caller keeps ownership of (fuzzing, tests). */
int qin_model_load_buffer(const void *buf, size_t len, qin_model **out,
                          char *err, size_t errlen);

void qin_model_free(qin_model *m);

/* The model's configuration; valid as long as the model.  Thread-safe. */
const qin_config *qin_model_config(const qin_model *m);

/* Serves the QNN layers in precision p from now on (dense.h; the model
 * loads in fp32, the exact one).  bf16 and int8 are not exact: their error
 * against fp32 is measured in bench/README.md and bounded by the tests.
 * Call once after loading, before the model is shared and before any
 * qin_scratch is made for it (a scratch sized for another precision is
 * refused by qin_forward).  CTR_OK; on error (message in err) the model
 * keeps its previous precision. */
int qin_model_set_precision(qin_model *m, dense_precision p, char *err, size_t errlen);

/* The precision the QNN layers run in.  Thread-safe. */
dense_precision qin_model_precision(const qin_model *m);

/* What computes the QNN layers, e.g. "int8: oneDNN brg:avx512_core_vnni,
 * 46 row classes up to 256", for logs and benchmarks.  Valid until the
 * next qin_model_set_precision. */
const char *qin_model_describe(const qin_model *m);

/* --- Item vectors ------------------------------------------------------ */

/* {id (1..item_vocab-1), tags (num_tags ids; fewer: the rest are padding),
 * num_tags, mm (mm_in floats; NULL means all zeros)}: the struct of
 * itemvec.h, shared with DIN. */
typedef itemvec_input qin_item_input;

/* Floats in one item vector: [e | A e | B e | U e | V e], the first three
 * item_dim floats each, the last two input_dim (D) each (MicroLens: 3200
 * floats, 12.5 KiB). */
size_t qin_item_vec_floats(const qin_model *m);

/* A 64-byte aligned buffer for one item vector; free with free(). */
float *qin_item_vec_alloc(const qin_model *m);

/* Computes the item vector of `item` into vec (qin_item_vec_floats floats).
 * CTR_ERANGE for an id or tag outside the vocabulary, CTR_EINVAL for a
 * non-finite multimodal value or a vector that overflows (finite features
 * too large for the model's products): a vector with a non-finite entry is
 * never returned as good. */
int qin_item_compute(const qin_model *m, const qin_item_input *item, float *vec,
                     char *err, size_t errlen);

/* The item vectors of n items at once into out (n x qin_item_vec_floats,
 * contiguous; out + i * qin_item_vec_floats(m) is item i's vector, 64-byte
 * aligned when out is).  Same values as qin_item_compute item by item, but
 * A e and B e of all n items are two sgemm calls instead of 2n sgemv: the
 * cold-cache path of a request, where a few hundred items miss at once.
 * Stops at the first bad item (its index in *bad, when bad is non-NULL)
 * with qin_item_compute's status and message. */
int qin_items_compute(const qin_model *m, int n, const qin_item_input *items, float *out,
                      int *bad, char *err, size_t errlen);

/* --- The model's request rules, stated once -------------------------- */

/* Checks n candidates of a request: ids in 1..item_vocab-1 and, when ctx
 * (n x num_ctx) is non-NULL, each context value in its vocabulary.
 * CTR_OK, or CTR_ERANGE with a message naming the first bad field
 * ("candidates[3].item_id: ..."), as an API error would.  Thread-safe. */
int qin_request_check(const qin_config *c, const int64_t *cand_id, const int32_t *ctx, int n,
                      char *err, size_t errlen);

/* 1 when a history id can have an item vector; other ids (0, outside the
 * vocabulary) are padding. */
int qin_history_usable(const qin_config *c, int64_t id);

/* Floating-point operations the forward pass spends on one candidate
 * (folded model, full history): for splitting and deadline estimates. */
double qin_candidate_flops(const qin_config *c);

/* --- Scoring ----------------------------------------------------------- */

/* Scratch for requests of up to max_cand candidates; one per thread.
 * Returns CTR_OK and *out, or CTR_ENOMEM / CTR_EINVAL. */
int qin_scratch_init(const qin_model *m, int max_cand, qin_scratch **out);
void qin_scratch_free(qin_scratch *s);
int qin_scratch_max_cand(const qin_scratch *s);

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

/* Scores every candidate of req: prob[i] = P(click | user, cand[i]).
 * The scratch must come from qin_scratch_init with this model.
 * CTR_ETOOMANY if num_cand exceeds the scratch, CTR_ERANGE for a context
 * value outside its vocabulary.  Allocates nothing.  A score may still be
 * NaN when finite item vectors overflow inside the pass (huge but finite
 * history values): callers check each score with isfinite. */
int qin_forward(const qin_model *m, qin_scratch *s, const qin_request *req,
                float *prob, char *err, size_t errlen);

#endif
