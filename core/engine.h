/*
 * engine.h - one scoring engine for the three architectures the service
 * runs: QIN, DIN and TIN (docs/MODEL_SPEC.md sections 2-5).  ctr-score and
 * ctr-load use it for every model; it is what a multi-model server holds
 * per model.
 *
 * Usage:
 *
 *     engine_model *m;  char err[256];
 *     if (engine_model_load("model.safetensors", &m, err, sizeof err) < 0) ...
 *     const engine_schema *sc = engine_model_schema(m);  // what to feed it
 *     engine_scratch *s; engine_scratch_init(m, 256, &s);  // one per thread
 *     float *vecs = ...;  // n x engine_item_vec_floats(m), 64-byte aligned
 *     engine_items_compute(m, n, items, vecs, NULL, err, sizeof err);
 *     engine_request_check(m, cand_ids, ctx, n, err, sizeof err);  // 422
 *     engine_forward(m, s, &(engine_request){...}, probs, err, sizeof err);
 *
 * The file's metadata names the architecture ("arch": qin, din or tin) and
 * the feature schema the model reads (engine_schema); the loader checks
 * every tensor of the architecture against it (tools/README.md "Model
 * file").  Three lifetimes:
 *   - engine_model: weights and the folds done once at load; immutable and
 *     shared freely between threads;
 *   - item vectors: computed once per item, reusable across candidates,
 *     requests and threads (a cache must be keyed by model too);
 *   - engine_scratch: one thread's activations, sized at init for the
 *     largest request; engine_forward allocates nothing.
 *
 * Histories (engine_request.hist) are item vectors, oldest first; a NULL
 * entry stands for an id that is padding or that has no features.  Of a
 * longer history only the last max_len entries count.  Then, per
 * architecture (docs/BEHAVIOUR.md):
 *   - QIN, DIN: NULL entries are padding (mask 0) and contribute nothing;
 *   - TIN: ids start at 0 and id 0 is a real item, so there is no padding
 *     id; NULL entries (ids without features) are left out and the others
 *     form the history (positions count the kept ones).
 *
 * Explanations: engine_request.explain, when set, receives for each
 * candidate the k behaviours with the largest attention weight in
 * absolute value (ties: the more recent first), as positions in
 * engine_request.hist and their weights:
 *   - QIN: a_j = relu(m_j (A h_j) . t / sqrt(2E)), the unnormalised score
 *     that multiplies B h_j in the pool;
 *   - DIN: s_j, the attention MLP's output that multiplies h_j in u (after
 *     the softmax when the model has it); it can be negative without it;
 *   - TIN: w_k, the softmax weight (the weights of a candidate sum to 1).
 * Fewer behaviours than k: the rest of the row is position -1, weight 0.
 *
 * All functions are thread-safe as long as each thread passes its own
 * scratch.  Errors: negative ctr_status (status.h) and a message in the
 * caller's buffer (which may be NULL).
 */
#ifndef CTR_ENGINE_H
#define CTR_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "dense.h"
#include "itemvec.h"
#include "core/base/status.h"

#define ENGINE_ARCH_MAP(X)                                                    \
    X(QIN, "qin")                                                             \
    X(DIN, "din")                                                             \
    X(TIN, "tin")

typedef enum engine_arch {
#define ENGINE_ARCH_ENUM(name, str) ENGINE_ARCH_##name,
    ENGINE_ARCH_MAP(ENGINE_ARCH_ENUM)
#undef ENGINE_ARCH_ENUM
    ENGINE_ARCH_COUNT
} engine_arch;

/* "qin", "din", "tin"; "unknown" for anything else.  Thread-safe. */
const char *engine_arch_name(int arch);

#define ENGINE_MAX_CTX 16
#define ENGINE_NAME_MAX 64

/* What a model reads: the request and feature-store rules follow from it. */
typedef struct engine_schema {
    engine_arch arch;
    char name[ENGINE_NAME_MAX];     /* from metadata */
    char version[ENGINE_NAME_MAX];
    int max_len;                    /* history entries used (most recent) */
    /* Item fields.  An item id is valid in item_id_min..item_vocab-1. */
    int item_id_min;                /* 1 (0 is padding: QIN, DIN) or 0 (TIN) */
    int item_vocab;
    int num_tags;                   /* tag slots; 0: the model reads no tags */
    int tag_vocab;                  /* tag ids 0..tag_vocab-1, 0 is padding */
    int mm_dim;                     /* dense vector width; 0: none */
    int cate_vocab;                 /* category ids 0..cate_vocab-1; 0: none */
    /* Per-candidate context fields, model order (missing = 0, padding). */
    int num_ctx;
    char ctx_name[ENGINE_MAX_CTX][ENGINE_NAME_MAX];
    int ctx_vocab[ENGINE_MAX_CTX];
} engine_schema;

typedef struct engine_model engine_model;
typedef struct engine_scratch engine_scratch;

/* One item's features, as the feature store or a JSON line gives them;
 * each architecture reads the fields its schema names (QIN, DIN: id, tags,
 * mm; TIN: id, cate) and ignores the others. */
typedef struct engine_item {
    int64_t id;
    const int32_t *tags;    /* num_tags tag ids; fewer than the model's
                               slots: the rest are padding */
    int num_tags;
    const float *mm;        /* mm_dim floats; NULL means all zeros */
    int32_t cate;           /* category id */
} engine_item;

/* The fields of item that itemvec.h reads. */
static inline itemvec_input engine_item_base(const engine_item *item) {
    return (itemvec_input){item->id, item->tags, item->num_tags, item->mm};
}

/* How a model is served, decided at load.
 *
 * precision: the arithmetic of the model's dense layers (dense.h): the QNN
 * layers of QIN, the attention MLP and main MLP of DIN, the MLP of TIN.
 * Their weights are prepared once, at load, in that precision.  DENSE_FP32
 * is exact (1e-5 against the trained model); DENSE_BF16 and DENSE_INT8 are
 * not, and their error against fp32 is bounded by the tests and measured
 * in bench/README.md.  Everything else (item vectors, attention scores and
 * pooling, heads) stays fp32 in every precision, except QIN's attention
 * products against the history, in bf16 on AMX for bf16 and int8
 * (docs/PRECISION.md). */
typedef struct engine_params {
    dense_precision precision;      /* DENSE_FP32 */
    dense_backend kernel;           /* DENSE_BACKEND_AUTO: per layer shape
                                       and row class, the fastest kernel
                                       on this CPU, timed at load (dense.h);
                                       another: that kernel for every layer
                                       (CTR_EINVAL at load where it cannot
                                       run one) */
    int column_parts;               /* 1 (default) or 2: also prepare each
                                       QIN layer's weight in two halves of
                                       its output columns, so that a request
                                       given an engine_par splits every layer
                                       across two threads, each multiplying
                                       by its own half of the weights (which
                                       then stays in that core's cache);
                                       the weights' memory doubles */
} engine_params;

engine_params engine_default_params(void);

/* Loads and checks a model file of any architecture, prepared as p says
 * (NULL: engine_default_params()).  On success *out owns the model (free
 * with engine_model_free).  Refuses, with a message naming the problem, a
 * truncated or corrupt file, an unknown format or architecture, metadata
 * out of bounds, and a tensor missing, unexpected, of the wrong dtype or
 * shape, or not finite; CTR_EINVAL when the precision cannot run here
 * (oneDNN's reason in the message).  Sets OpenBLAS to one thread. */
int engine_model_load_with(const char *path, const engine_params *p, engine_model **out,
                           char *err, size_t errlen);
int engine_model_load_buffer_with(const void *buf, size_t len, const engine_params *p,
                                  engine_model **out, char *err, size_t errlen);
/* The same in fp32 (the defaults). */
int engine_model_load(const char *path, engine_model **out, char *err, size_t errlen);
int engine_model_load_buffer(const void *buf, size_t len, engine_model **out, char *err,
                             size_t errlen);
void engine_model_free(engine_model *m);

/* Valid as long as the model.  Thread-safe. */
const engine_schema *engine_model_schema(const engine_model *m);

/* The precision the model's dense layers run in.  Thread-safe. */
dense_precision engine_model_precision(const engine_model *m);
/* The kernel setting it was loaded with (AUTO unless set).  Thread-safe. */
dense_backend engine_model_kernel(const engine_model *m);
/* 2 when a request given an engine_par splits the model's layers by
 * columns (a QIN loaded with column_parts 2 whose width allows it), else 1.
 * Thread-safe. */
int engine_model_column_parts(const engine_model *m);

/* What computes the model's largest dense layer, per row class, e.g.
 * "int8: rows 1-8 AVX512_VNNI kernel (8 x 32 blocks); rows 9-256 oneDNN
 * brg:avx512_core_amx_int8 (planned)", for logs, /v1/models and
 * benchmarks (dense_describe).  Valid as long as the model. */
const char *engine_model_describe(const engine_model *m);

/* The precision's name ("fp32", "bf16", "int8", "int8x2"; "unknown"
 * otherwise) and
 * whether it is exact: dense_precision_name and dense_precision_exact.
 * engine_precision_parse reads a name (any case) into *out: CTR_OK, or
 * CTR_EINVAL with a message listing the names. */
int engine_precision_parse(const char *text, dense_precision *out, char *err, size_t errlen);

/* --- Item vectors ------------------------------------------------------ */

/* Floats in one item vector: QIN 3E + 2D ([e | A e | B e | U e | V e]:
 * the attention's and the first QNN layer's item-side parts), or, where
 * its attention runs in bf16 (bf16 and int8 on AMX), E + D + (2E + D) / 2
 * rounded up to 16 (A e, B e and V e as bfloat16 values packed two to a
 * float slot); DIN and TIN pad theirs to a multiple of 16, so vectors laid
 * end to end in a 64-byte aligned buffer each stay aligned.  So the count
 * depends on the model as loaded (precision and host), and a vector is
 * read only by the model that computed it; copy vectors as opaque bytes
 * (memcpy), never through float arithmetic. */
size_t engine_item_vec_floats(const engine_model *m);

/* A 64-byte aligned, zeroed buffer for n item vectors; free with free(). */
float *engine_item_vecs_alloc(const engine_model *m, int n);

/* The vectors of n items into out (n x engine_item_vec_floats, 64-byte
 * aligned).  Checks each item against the schema: id outside the items
 * (CTR_ERANGE), a tag or category outside its vocabulary (CTR_ERANGE), too
 * many tags or a non-finite value (CTR_EINVAL); then each vector, every
 * architecture alike: one with an infinite or NaN entry (finite features
 * can overflow, e.g. 3e38 in the embedding) is CTR_EINVAL ("its vector
 * overflows"), since it would poison every score it touches.  Stops at the
 * first bad item (its index in *bad when bad is non-NULL); the vectors of
 * the items before it are then unspecified (compute them again). */
int engine_items_compute(const engine_model *m, int n, const engine_item *items, float *out,
                         int *bad, char *err, size_t errlen);

/* --- Requests ---------------------------------------------------------- */

/* The request rules, stated once for every caller: each candidate id in
 * item_id_min..item_vocab-1 and each context value (n x num_ctx, row-major;
 * NULL: all padding) in 0..vocab-1.  CTR_ERANGE with a message naming the
 * first offender as candidates[i].field. */
int engine_request_check(const engine_model *m, const int64_t *cand_id, const int32_t *ctx,
                         int n, char *err, size_t errlen);

/* The model's rules for one item's ids, as a feature file or the feature
 * store gives them: id in item_id_min..item_vocab-1 (below it: "not an
 * item id"), each tag in 0..tag_vocab-1 (a model that reads tags), the
 * category in 0..cate_vocab-1 (a model that reads one).  CTR_OK, or
 * CTR_ERANGE with a message naming the field as a JSON line spells it
 * ("item_id: 60 is outside the model's item vocabulary (1..59)",
 * "item_tags[0]: ...", "cate_id: ...").  Thread-safe. */
int engine_item_check(const engine_model *m, const engine_item *item, char *err, size_t errlen);

/* 1 when id may stand in a history (in item_id_min..item_vocab-1); other
 * ids are padding (QIN, DIN) or left out (TIN). */
int engine_history_id_ok(const engine_model *m, int64_t id);

/* Scratch for requests of up to max_cand candidates; one per thread.
 * CTR_OK and *out, or CTR_ENOMEM / CTR_EINVAL.  engine_scratch_free may
 * come after the model's engine_model_free (a server's threads drop their
 * scratch of a reloaded model lazily). */
int engine_scratch_init(const engine_model *m, int max_cand, engine_scratch **out);
void engine_scratch_free(engine_scratch *s);

typedef struct engine_explain {
    int k;                  /* behaviours per candidate (>= 1) */
    int32_t *pos;           /* num_cand x k: positions in hist, or -1 */
    float *weight;          /* num_cand x k */
} engine_explain;

/* Fork-join for one request's layers (engine_request.par): run(ctx, fn,
 * arg, nparts) calls fn(arg, part, nparts) once for every part in
 * 0..nparts-1, on any threads, the caller's included, and returns when all
 * have returned.  The server hands its scoring pool (server/pool.h). */
typedef void (*engine_part_fn)(void *arg, int part, int nparts);
typedef struct engine_par {
    void (*run)(void *ctx, engine_part_fn fn, void *arg, int nparts);
    void *ctx;
    int min_rows;                   /* requests of fewer candidates stay on
                                       the caller's thread */
} engine_par;

typedef struct engine_request {
    const float *const *hist;   /* item vectors, oldest first; NULL entries
                                   as described above */
    int num_hist;               /* any count; the last max_len are used */
    const float *const *cand;   /* item vectors of the candidates */
    const int32_t *ctx;         /* num_cand x num_ctx, row-major; NULL:
                                   every field is padding (0) */
    int num_cand;               /* 0..max_cand of the scratch */
    engine_explain *explain;    /* NULL: no explanation (costs nothing) */
    const engine_par *par;      /* NULL: the caller's thread only; else,
                                   with a model loaded with column_parts 2
                                   (QIN), each layer's output columns split
                                   across par's threads, the caller's
                                   included; the same scores either way */
} engine_request;

/* prob[i] = P(click | user, cand[i]) for every candidate.  CTR_ETOOMANY
 * beyond the scratch, CTR_ERANGE for a context value outside its
 * vocabulary, CTR_EINVAL for a NULL candidate, a scratch of another model
 * or explain->k < 1.  Allocates nothing. */
int engine_forward(const engine_model *m, engine_scratch *s, const engine_request *req,
                   float *prob, char *err, size_t errlen);

/* Runs the model once at a spread of request sizes (1..8 candidates, then
 * powers of two up to max_cand, each with a full history and with one
 * behaviour; at most 256) on dummy items, so that the dense-product library's
 * just-in-time kernels (oneDNN compiles one on the first product of each
 * kind) are built before the first real request instead of during it.
 * The kernels are process-wide, so one call on any thread warms every
 * thread.  Takes up to a few hundred milliseconds (DIN at MicroLens
 * shapes); allocates and frees its own scratch.  CTR_OK or the first
 * error (CTR_ENOMEM).  Thread-safe. */
int engine_warmup(const engine_model *m, int max_cand, char *err, size_t errlen);

/* Runs a few dummy requests (1, 16 and 64 candidates, within the
 * scratch's size) on the calling thread with its scratch
 * s, so that the thread's first real request does not pay for what a
 * thread pays once: the CPU's AMX state (Linux traps a thread's first
 * AMX instruction to give it room), the scratch's pages, oneDNN's
 * per-thread state.  A server calls it on each of its threads at start.
 * A few milliseconds at MicroLens size.  CTR_OK or the first error. */
int engine_warmup_thread(const engine_model *m, engine_scratch *s, char *err, size_t errlen);

/* Multiply-adds per candidate for a history of nh behaviours (the item
 * vectors already computed, as a warm cache has them): what the folded
 * engine does, and what the training code's graph does unfolded. */
typedef struct engine_cost {
    double folded;
    double unfolded;
} engine_cost;
engine_cost engine_model_cost(const engine_model *m, int nh);

#endif
