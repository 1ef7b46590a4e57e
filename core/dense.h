/*
 * dense.h - batched dense layers: y = x W^T for n rows at once, with the
 * weight W (out x in, [out, in] as PyTorch stores it) prepared once, at
 * model load, in the precision the model is served in.
 *
 * Shared by every architecture's dense products (QIN's QNN layers today; the
 * MLPs of the others).  What a layer does besides the product (bias, batch
 * norm, activation, residual) stays in the caller's own fused pass over y,
 * so this module is only the product.
 *
 * Precisions (dense_precision):
 *   fp32  exact: float32 weights and arithmetic (oneDNN, or the packed
 *         AVX-512 kernel of gemm.c);
 *   bf16  weights in bfloat16, the rows of x converted to bfloat16 per call
 *         (round to nearest even), float32 accumulation (oneDNN);
 *   int8  weights in int8 with one scale per output channel (max |W[o,:]| /
 *         127), each row of x quantised at run time to u8 over its own
 *         range (scale and zero point per row: (max - min) / 255, the range
 *         widened to hold 0), int32 accumulation, float32 out (oneDNN's
 *         u8 x s8 matmul, on AMX where the CPU has it, or our AVX512_VNNI
 *         kernel, dense_vnni.c; both compute the same integers and give
 *         the same bits; the zero point is taken out exactly in int32).  Asymmetric rows:
 *         on the demo model's validation set the largest score error was
 *         4x smaller than with symmetric rows (max |x| / 127), at the same
 *         cost (bench/README.md).
 *   int8x2 int8 as above, but each row of x is quantised twice: q1 as int8
 *         does, then the rounding residual x - s1 (q1 - z1) the same way
 *         (q2, s2, z2), and y = s1 (q1 - z1) W'^T + s2 (q2 - z2) W'^T, both
 *         as one product of 2n rows; so the activations' rounding, which
 *         dominates int8's error, all but goes and the error is about that
 *         of int8 weights alone.  The weights are balanced first: input
 *         column k of W is divided by f_k = sqrt(max_o |W[o, k]|) and x_k
 *         multiplied by it (exact in arithmetic; the weights' rounding
 *         spreads more evenly over the columns).  Twice int8's arithmetic
 *         for the same weight bytes: on AMX, where a product waits for the
 *         weights' bytes, well under twice int8's time (1.4x, QIN N = 64,
 *         bench/results/perf-2026-12-07.md); on the VNNI kernel about
 *         twice.
 * int8 and int8x2 round w to nearest at dense_init unless the caller
 * gives integers rounded beforehand (dense_int8, below: a model file's,
 * rounded with calibration data), which both then use as they are.
 * Only fp32 is exact; the error bounds of the others are measured by
 * tests/core/test_dense.c on the machine that runs the tests.  Which
 * kernel runs a call is the planner's choice (below) unless
 * dense_params.backend sets one.
 *
 * Usage:
 *
 *     dense_params p = dense_default_params();
 *     p.precision = DENSE_INT8;
 *     dense *d;  dense_init(w, out, in, &p, &d, err, sizeof err);   // at load
 *     dense_ws *ws;  dense_ws_init(dense_ws_size(d), &ws);          // per thread
 *     dense_forward(d, ws, n, x, y);                                 // per call
 *
 * Lifetimes: a dense is built once and then read-only, shared by every
 * thread.  A dense_ws is one thread's workspace (a oneDNN stream, conversion
 * buffers, oneDNN's scratchpad), sized at start for the largest layer it
 * will run; it also keeps the oneDNN memory objects of the shapes it has
 * run (made on a shape's first call, then pointed at each call's buffers).
 * dense_forward makes no allocation of its own after a shape's first call,
 * but oneDNN's execute does, inside the library (its argument map: 6
 * mallocs and frees per execute, counted); oneDNN 2.6's C API has no way
 * around it.
 *
 * Shape classes: oneDNN's fast matmul (brgemm) needs the row count fixed
 * when the primitive is made, so dense_init makes one primitive per class
 * of row counts (1..16, then multiples of 8 up to DENSE_MAX_ROWS) and a call
 * runs the smallest class that holds its rows (padding rows are computed
 * and dropped); more rows go in chunks of DENSE_MAX_ROWS.  No primitive is
 * made after dense_init.  All classes share one weight layout, reordered
 * once at init into the layout oneDNN prefers.
 *
 * Threads: every call runs on the calling thread only.  The service gets
 * its parallelism from its own threads (one request, or one slice of a
 * request, per core), so oneDNN's OpenMP runtime is held to one thread in
 * every thread that makes or runs a primitive (see dense.c, whose
 * companions dense_internal.h lists).
 *
 * Errors: negative ctr_status (status.h) with a message in the caller's
 * buffer (may be NULL).  Thread-safety: dense_init and dense_free are not
 * to be called concurrently on the same object; dense_forward is
 * thread-safe with one dense_ws per thread.
 */
#ifndef CTR_DENSE_H
#define CTR_DENSE_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/status.h"

/* name, text, exact, what it is */
#define DENSE_PRECISION_MAP(X)                                                          \
    X(FP32, "fp32", 1, "float32 weights and arithmetic (exact)")                       \
    X(BF16, "bf16", 0, "bfloat16 weights and activations, float32 accumulation")       \
    X(INT8, "int8", 0,                                                                 \
      "int8 weights (a scale per output channel), activations quantised per row at "   \
      "run time (scale and zero point), int32 accumulation")                            \
    X(INT8X2, "int8x2", 0,                                                             \
      "int8 weights (input columns balanced, a scale per output channel), each row of "  \
      "activations quantised twice (the row, then what its rounding left), int32 "        \
      "accumulation: about the error of int8 weights alone, for twice int8's arithmetic")

typedef enum dense_precision {
#define DENSE_PRECISION_ENUM(name, text, exact, what) DENSE_##name,
    DENSE_PRECISION_MAP(DENSE_PRECISION_ENUM)
#undef DENSE_PRECISION_ENUM
    DENSE_PRECISION_COUNT
} dense_precision;

/* "fp32", "bf16", "int8", "int8x2"; "unknown" otherwise.  Static strings. */
const char *dense_precision_name(dense_precision p);
/* One line saying what the precision computes.  Static string. */
const char *dense_precision_what(dense_precision p);
/* 1 for fp32 (exact), 0 for the others. */
int dense_precision_exact(dense_precision p);
/* Parses "fp32" | "bf16" | "int8" (any case).  CTR_OK or CTR_EINVAL. */
int dense_precision_parse(const char *text, dense_precision *out);

/* Which code computes the product: name, text, what it is. */
#define DENSE_BACKEND_MAP(X)                                                            \
    X(AUTO, "auto", "the fastest kernel that runs here, timed per row class at load")   \
    X(ONEDNN, "onednn", "oneDNN's matmul (AMX, AVX512-VNNI/BF16 or AVX-512 as the CPU has)") \
    X(PACKED, "packed", "this project's kernels: fp32 packed AVX-512, int8 AVX512_VNNI")  \
    X(OPENBLAS, "openblas", "fp32 only: OpenBLAS sgemm on the plain weight (the reference)")

typedef enum dense_backend {
#define DENSE_BACKEND_ENUM(name, text, what) DENSE_BACKEND_##name,
    DENSE_BACKEND_MAP(DENSE_BACKEND_ENUM)
#undef DENSE_BACKEND_ENUM
    DENSE_BACKEND_COUNT
} dense_backend;

/* "auto", "onednn", "packed", "openblas"; "unknown" otherwise.  Static. */
const char *dense_backend_name(dense_backend b);
/* Parses a backend name (any case).  CTR_OK or CTR_EINVAL. */
int dense_backend_parse(const char *text, dense_backend *out);

/* Largest row count of one oneDNN call; more rows go in chunks. */
#define DENSE_MAX_ROWS 256

/* The planner (AUTO).  At dense_init, every kernel that can run the
 * layer's precision and shape on this CPU (dense_candidates) is built and
 * timed on the layer's own weights at one row count per plan class (4, 16,
 * 64 and 256 rows for the classes 1-8, 9-32, 33-128 and 129-256), the
 * fastest kept per class (a kernel other than the first candidate must be
 * 3% faster to be taken: timings on a shared machine jitter) and the
 * others freed.  Layers of one shape, precision and strides share the
 * first one's plan for the process's life (QIN's layers, a reload), so the
 * timing runs once per shape: a few milliseconds to a few tens (fp32 at
 * 256 rows).  The plan is in dense_describe, dense_backend_for and
 * dense_plan_us.  A backend other than AUTO runs that kernel for every row
 * count. */
#define DENSE_PLAN_CLASSES 4

/* int8 weights rounded beforehand, for int8 and int8x2 in place of
 * rounding w to nearest at dense_init (tools/convert.py --calibrate rounds
 * them with calibration data, column by column, each column's rounding
 * error carried into the columns not yet rounded): W[o, k] / f_k ~
 * q[o][k] * scale[o], q in -127..127, f the input columns' balance.  int8
 * needs balance NULL (its rows are not balanced); int8x2 takes f from
 * balance (NULL: 1).  fp32 and bf16 ignore them.  Copied by dense_init. */
typedef struct dense_int8 {
    const signed char *q;        /* out x in, row-major */
    const float *scale;          /* out */
    const float *balance;        /* in, or NULL */
} dense_int8;

typedef struct dense_params {
    dense_precision precision;   /* DENSE_FP32 */
    dense_backend backend;       /* DENSE_BACKEND_AUTO */
    int ld_in;                   /* row stride of x in floats; 0: in */
    int ld_out;                  /* row stride of y in floats; 0: out */
    const dense_int8 *int8;      /* NULL: int8 weights rounded to nearest */
} dense_params;

dense_params dense_default_params(void);

typedef struct dense dense;
typedef struct dense_ws dense_ws;

/* Prepares w (out x in floats, row-major [out, in]; copied, the caller keeps
 * it) for the precision and backend of p (NULL: defaults).  On success *d
 * owns everything it needs (free with dense_free).  CTR_EINVAL for a
 * combination that cannot run (bf16 with the packed or OpenBLAS backend,
 * int8 with OpenBLAS, a packed kernel where the CPU or shape cannot use it, a
 * non-finite weight), CTR_ENOMEM, or CTR_EINVAL with oneDNN's reason. */
int dense_init(const float *w, int out, int in, const dense_params *p, dense **d,
               char *err, size_t errlen);
void dense_free(dense *d);

/* What the layer runs per row class, e.g. "int8: rows 1-8 AVX512_VNNI
 * kernel; rows 9-256 oneDNN brg:avx512_core_amx_int8 (planned)", the
 * precision followed by " (int8 weights given)" where dense_params.int8
 * gave them.  Static for the layer's life. */
const char *dense_describe(const dense *d);
/* The kernel a call of n rows runs (ONEDNN, PACKED or OPENBLAS; more than
 * DENSE_MAX_ROWS: the class of its chunks). */
dense_backend dense_backend_for(const dense *d, int n);
/* What the planner measured for class c (0..DENSE_PLAN_CLASSES-1) on kernel
 * b: microseconds a call at dense_plan_rows(c) rows; negative where b was
 * not timed (not a candidate, or not AUTO). */
double dense_plan_us(const dense *d, int c, dense_backend b);
/* The row count timed for class c, and the largest row count of the class. */
int dense_plan_rows(int c);
int dense_plan_top(int c);
/* The kernels AUTO chooses among for this precision and shape on this CPU,
 * the default first (fp32: oneDNN, packed where it runs; bf16: oneDNN;
 * int8: oneDNN, the VNNI kernel where it runs) into b (room for
 * DENSE_BACKEND_COUNT); returns how many. */
int dense_candidates(dense_precision p, int out, int in, dense_backend *b);
/* Which of n timings (microseconds, the default's first) the planner
 * takes: the smallest, unless it is less than 3% below the first's. */
int dense_plan_pick(const double *us, int n);
/* The instruction set oneDNN uses on this CPU (dnnl_get_effective_cpu_isa:
 * "avx512_core_amx", "avx512_core_bf16", ..., capped by the environment's
 * ONEDNN_MAX_CPU_ISA).  Static string. */
const char *dense_cpu_isa(void);
dense_precision dense_get_precision(const dense *d);
int dense_in(const dense *d);
int dense_out(const dense *d);

/* Bytes of workspace one call of d needs.  A thread that runs several
 * layers sizes its dense_ws by the largest. */
size_t dense_ws_size(const dense *d);

/* One thread's workspace of at least `bytes`.  CTR_OK, CTR_ENOMEM or
 * CTR_EINVAL (oneDNN stream). */
int dense_ws_init(size_t bytes, dense_ws **ws);
void dense_ws_free(dense_ws *ws);

/* y (n x out, row stride ld_out) = x (n x in, row stride ld_in) W^T, in the
 * layer's precision.  x is not changed.  n may be 0.  CTR_OK, CTR_EINVAL
 * when ws is smaller than dense_ws_size(d), or CTR_EINVAL when oneDNN
 * refuses to run (never seen; the message says why). */
int dense_forward(const dense *d, dense_ws *ws, int n, const float *x, float *y);

/* What a layer does after its product, elementwise, when it is a gated
 * residual (QIN's QNN layer: the batch norm folded, PReLU, the residual):
 * with p the row of x W^T and r the same row of res,
 *
 *     dst[o] = r[o] + prelu(r[o] (p[o] + bias[o]) + shift[o])
 *
 * where prelu(z) = z for z > 0 and slope z otherwise.  res and dst are n x
 * out with row stride ld; dst may be res (in place). */
typedef struct dense_post {
    const float *bias;   /* out floats */
    const float *shift;  /* out floats */
    float slope;         /* PReLU's slope below 0 */
    const float *res;    /* n x out, stride ld */
    float *dst;          /* n x out, stride ld */
    int ld;
} dense_post;

/* dense_forward followed by post, in one pass where the kernel allows:
 * int8 and int8x2 apply it while turning the int32 sums into floats (one
 * pass over the layer's output instead of two), the VNNI kernel in its
 * registers; fp32 and bf16 after each chunk's product.  y (n x out, row
 * stride ld_out) is scratch the call may use (its contents after the call
 * are unspecified).  x may be res or dst (a row of x is read before the
 * same row of dst is written).  Same results, bit for bit, as
 * dense_forward then dense_post_rows.  Returns as dense_forward. */
int dense_forward_post(const dense *d, dense_ws *ws, int n, const float *x, float *y,
                       const dense_post *post);

/* post alone on n rows of products p (out floats each, stride ldp). */
void dense_post_rows(int n, int out, const float *p, int ldp, const dense_post *post);

/* Products whose second operand changes with every call (attention against
 * a request's history) but whose shape does not (the history padded to its
 * longest): y (n x out, stride ld_out) = x (n x in, stride ld_in) W^T,
 * with W given to each call in bfloat16, out x in rows when b_out_in, else
 * in x out rows (then y = x W), x rounded to bfloat16 per call, float32
 * accumulation and output, on oneDNN's bf16 matmul (AMX where the CPU has
 * it: at the attention's shapes 4-5x its fp32 sgemm, bench_forward), one
 * primitive per row class as dense_init makes.  p: precision DENSE_BF16,
 * backend AUTO or ONEDNN, strides as dense_init; CTR_EINVAL otherwise.
 * The layer works with dense_ws_size, dense_ws_init, dense_describe and
 * dense_free like the others; dense_forward refuses it. */
int dense_rt_init(int out, int in, int b_out_in, const dense_params *p, dense **d, char *err,
                  size_t errlen);
/* y = x W^T (or x W) for n rows, W (bf16, as dense_rt_init says) read
 * during the call only.  Returns as dense_forward. */
int dense_rt_forward(const dense *d, dense_ws *ws, int n, const float *x,
                     const unsigned short *w, float *y);

/* Rows of x (n x in, stride ldx) rounded to bfloat16 (to nearest even) into
 * q (stride ldq), on the fastest conversion this CPU has. */
void dense_bf16_rows(int n, int in, const float *x, int ldx, unsigned short *q, int ldq);

/* Products whose shapes are known only at run time and whose operands
 * change with every request (attention) have no weight to prepare: they
 * go through linear_gemm (linear.h), the one run-time-shape sgemm. */

/* 1 when this CPU and an out x in weight can run the int8 VNNI kernel
 * (AVX512_VNNI and BW, out a multiple of 32, in of 4). */
int dense_vnni_supported(int out, int in);

/* Pieces exposed for the tests (tests/core/test_dense.c). */

/* bfloat16 of f, rounded to nearest even (what the bf16 path feeds oneDNN). */
unsigned short dense_bf16_round(float f);

/* One row x (in floats) quantised for the int8 path: with lo = min(x, 0),
 * hi = max(x, 0), scale = (hi - lo) / 255 and *zero = round(-lo / scale),
 * q[k] = clamp(round(x[k] / scale) + zero, 0, 255), so x[k] ~ scale (q[k] -
 * zero).  An all-zero row gives scale 1, zero 0.  Returns scale. */
float dense_quantize_row(const float *x, int in, unsigned char *q, int32_t *zero);

#endif
