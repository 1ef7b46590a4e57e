/*
 * dense.c - batched dense layers on oneDNN, and int8 on an AVX512_VNNI
 * kernel of our own (see dense.h).
 *
 * Workload: n = 1..512 rows (a request's candidates) against weights of a
 * few hundred to a few thousand columns (MicroLens QNN: 1024 x 1024, four
 * layers, 16 MB in fp32, 8 MB in bf16, 4 MB in int8).  On the machines this
 * runs on, one core streams weights from the last-level cache at about
 * 12 GB/s, so at small n the weight bytes set the time and at large n the
 * arithmetic rate of the precision does (bench/README.md has both).
 *
 * Everything that can be decided before a request is decided in dense_init:
 * the weights are quantised or rounded and reordered into oneDNN's blocked
 * layout once, and one matmul primitive is made per class of row counts
 * (classes, below).  A call only converts its rows when the precision needs
 * it, runs one primitive per chunk and, for int8, rescales the int32 sums.
 * Which kernel runs is measured, not assumed (the planner, below): on a CPU
 * with AMX, oneDNN's int8 and bf16 matmuls run there and leave every
 * AVX-512 kernel behind from a few rows on; without AMX, our VNNI kernel
 * was level with oneDNN's or ahead; the packed fp32 kernel wins at a few
 * rows only.  Each of these changes with the CPU, so each layer shape is
 * timed once on the host that serves it.
 *
 * Threads.  Debian's oneDNN is built on OpenMP: a primitive made in a
 * thread whose OpenMP limit is the number of cores splits every call over
 * an OpenMP team of that size, on top of the service's own threads.  So
 * every thread that makes or runs a primitive here first sets its own
 * OpenMP limit to 1 (omp_set_num_threads is per thread in libgomp), and the
 * primitives are made with one thread in mind; a call then runs entirely on
 * its caller's thread and no OpenMP thread is ever started
 * (tests/core/test_dense.c checks that the thread count stays put).
 */
#include "dense.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <oneapi/dnnl/dnnl.h>

#include "core/base/cpu.h"
#include "gemm.h"
#include "linear.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DENSE_X86 1
#endif

/* One OpenMP thread for oneDNN in the calling thread (linear.h). */
#define one_thread linear_one_thread

#define ALIGN 64
/* Row-count classes: 1..16, then 24, 32, ..., DENSE_MAX_ROWS. */
#define NCLASS (16 + (DENSE_MAX_ROWS - 16) / 8)

static int class_rows(int c) { return c < 16 ? c + 1 : 16 + 8 * (c - 15); }
static int class_of(int m) { return m <= 16 ? m - 1 : 15 + (m - 16 + 7) / 8; }

typedef struct dense_class {
    dnnl_primitive_t prim;
    dnnl_memory_desc_t src_md, dst_md, pad_md;
    size_t pad_bytes;               /* oneDNN's scratchpad for one call */
} dense_class;

struct dense {
    int in, out, ld_in, ld_out;
    dense_precision prec;
    dense_backend backend;          /* as asked */
    /* The kernel each plan class runs (never AUTO), and what the planner
     * measured (microseconds a call, < 0: not timed). */
    dense_backend pick[DENSE_PLAN_CLASSES];
    double plan_us[DENSE_PLAN_CLASSES][DENSE_BACKEND_COUNT];
    float *w;                       /* OPENBLAS: plain copy, out x in */
    float *packed;                  /* packed-kernel weights, or NULL */
    signed char *wvnni;             /* int8 PACKED: Wq in blocks of 32
                                       output channels, 4 inputs a group
                                       (vnni_layout), or NULL */
    void *wq;                       /* oneDNN weights in its layout, or NULL */
    dnnl_memory_desc_t w_md;
    dnnl_memory_t w_mem;            /* over wq; read-only after init */
    float *wscale;                  /* int8: out scales, max |W[o,:]| / 127 */
    float *colscale;                /* int8x2: f_k, x_k's factor (in) */
    int32_t *colsum;                /* int8: sum_k Wq[o][k] */
    dense_class cls[NCLASS];
    int ncls;                       /* classes made (0 without oneDNN) */
    size_t src_bytes, dst_bytes, pad_bytes;  /* workspace parts */
    char impl[64];                  /* oneDNN's implementation, or "" */
    char what[320];
};

/* oneDNN memory objects of one call's shapes, kept by the workspace and
 * pointed at each call's buffers (dnnl_memory_set_data_handle), so a call
 * does not create and destroy three of them (a malloc and a free each):
 * layers of one shape (QIN's) share an entry. */
#define WS_MEMS 16
typedef struct ws_mem {
    dnnl_memory_desc_t src_md, dst_md, pad_md;
    dnnl_memory_t src, dst, pad;   /* pad: a scratchpad of pad_bytes, or NULL */
    size_t pad_bytes;
} ws_mem;

struct dense_ws {
    dnnl_stream_t stream;
    unsigned char *buf;
    size_t size;
    ws_mem mem[WS_MEMS];
    int nmem, next;                /* entries made; the one to replace next */
};

/* --- precisions ---------------------------------------------------------- */

const char *dense_precision_name(dense_precision p) {
    switch (p) {
#define DENSE_PRECISION_NAME(name, text, exact, what) case DENSE_##name: return text;
        DENSE_PRECISION_MAP(DENSE_PRECISION_NAME)
#undef DENSE_PRECISION_NAME
    default: return "unknown";
    }
}

const char *dense_precision_what(dense_precision p) {
    switch (p) {
#define DENSE_PRECISION_WHAT(name, text, exact, what) case DENSE_##name: return what;
        DENSE_PRECISION_MAP(DENSE_PRECISION_WHAT)
#undef DENSE_PRECISION_WHAT
    default: return "unknown";
    }
}

int dense_precision_exact(dense_precision p) {
    switch (p) {
#define DENSE_PRECISION_EXACT(name, text, exact, what) case DENSE_##name: return exact;
        DENSE_PRECISION_MAP(DENSE_PRECISION_EXACT)
#undef DENSE_PRECISION_EXACT
    default: return 0;
    }
}

int dense_precision_parse(const char *text, dense_precision *out) {
    for (int p = 0; p < DENSE_PRECISION_COUNT; p++) {
        const char *name = dense_precision_name((dense_precision)p);
        size_t i = 0;
        while (name[i] && (text[i] | 0x20) == name[i]) i++;
        if (!name[i] && !text[i]) {
            *out = (dense_precision)p;
            return CTR_OK;
        }
    }
    return CTR_EINVAL;
}

/* The precisions with int8 weights and u8 rows. */
static int is_int8(dense_precision p) { return p == DENSE_INT8 || p == DENSE_INT8X2; }

dense_params dense_default_params(void) {
    dense_params p = {DENSE_FP32, DENSE_BACKEND_AUTO, 0, 0};
    return p;
}

const char *dense_backend_name(dense_backend b) {
    switch (b) {
#define DENSE_BACKEND_NAME(name, text, what) case DENSE_BACKEND_##name: return text;
        DENSE_BACKEND_MAP(DENSE_BACKEND_NAME)
#undef DENSE_BACKEND_NAME
    default: return "unknown";
    }
}

int dense_backend_parse(const char *text, dense_backend *out) {
    for (int b = 0; text && b < DENSE_BACKEND_COUNT; b++) {
        const char *name = dense_backend_name((dense_backend)b);
        size_t i = 0;
        while (name[i] && (text[i] | 0x20) == name[i]) i++;
        if (!name[i] && !text[i]) {
            *out = (dense_backend)b;
            return CTR_OK;
        }
    }
    return CTR_EINVAL;
}

/* --- conversions ------------------------------------------------------- */

unsigned short dense_bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u); /* to nearest, ties to even */
    return (unsigned short)(u >> 16);
}

/* Rows of x (stride ldx) into bfloat16 rows of `in` (contiguous).  Cloned
 * for AVX-512 like the other per-element loops here (the baseline build
 * runs them 4 floats at a time). */
CTR_CLONES static void to_bf16(int n, int in, const float *x, int ldx, unsigned short *q) {
    for (int i = 0; i < n; i++) {
        const float *restrict xi = x + (size_t)i * ldx;
        unsigned short *restrict qi = q + (size_t)i * in;
        for (int k = 0; k < in; k++) {
            uint32_t u;
            memcpy(&u, &xi[k], sizeof u);
            qi[k] = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
    }
}

#ifdef DENSE_X86
/* The same with AVX512_BF16's conversion (32 floats an instruction, round
 * to nearest even as above; it reads denormal inputs as zero, which moves
 * a value by less than 2^-126).  The conversion was a tenth of DIN's bf16
 * forward pass on the AVX-512F loop (perf, N = 64). */
__attribute__((target("avx512f,avx512bf16"))) static void
to_bf16_avx512bf16(int n, int in, const float *x, int ldx, unsigned short *q) {
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * ldx;
        unsigned short *qi = q + (size_t)i * in;
        int k = 0;
        for (; k + 32 <= in; k += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(xi + k + 16), _mm512_loadu_ps(xi + k));
            _mm512_storeu_si512((void *)(qi + k), (__m512i)v);
        }
        for (; k < in; k++) qi[k] = dense_bf16_round(xi[k]);
    }
}
#endif

/* Rows of x into bfloat16 on the fastest conversion this CPU has. */
static void rows_to_bf16(int n, int in, const float *x, int ldx, unsigned short *q) {
#ifdef DENSE_X86
    if (cpu_has(CPU_AVX512BF16)) {
        to_bf16_avx512bf16(n, in, x, ldx, q);
        return;
    }
#endif
    to_bf16(n, in, x, ldx, q);
}

static float row_absmax(const float *x, int in) {
    float m = 0.0f;
    for (int k = 0; k < in; k++) {
        float a = fabsf(x[k]);
        m = a > m ? a : m;
    }
    return m;
}

/* The row's range, widened to hold 0 so that the zero point is 0..255
 * (and z * column sum stays far inside int32): scale = (hi - lo) / 255,
 * zero = round(-lo / scale); an all-zero row gets scale 1, zero 0. */
static void row_range(float lo, float hi, float *scale, float *inv, int32_t *zero) {
    lo = lo < 0.0f ? lo : 0.0f;
    hi = hi > 0.0f ? hi : 0.0f;
    if (hi - lo > 0.0f) {
        *scale = (hi - lo) / 255.0f;
        *inv = 255.0f / (hi - lo);
        *zero = (int32_t)nearbyintf(-lo * *inv);
    } else {
        *scale = 1.0f;
        *inv = 0.0f;
        *zero = 0;
    }
}

static float quantize_row_scalar(const float *x, int in, unsigned char *q, int32_t *zero) {
    float lo = 0.0f, hi = 0.0f, scale, inv;
    for (int k = 0; k < in; k++) {
        lo = x[k] < lo ? x[k] : lo;
        hi = x[k] > hi ? x[k] : hi;
    }
    row_range(lo, hi, &scale, &inv, zero);
    for (int k = 0; k < in; k++) {
        float v = nearbyintf(x[k] * inv) + (float)*zero;
        q[k] = (unsigned char)(v > 255.0f ? 255.0f : (v < 0.0f ? 0.0f : v));
    }
    return scale;
}

#ifdef DENSE_X86
/* The same, 16 at a time (cvtps rounds to nearest even, as nearbyintf does
 * in the default rounding mode, so both give the same bytes). */
__attribute__((target("avx512f"))) static float quantize_row_avx512(const float *x, int in,
                                                                     unsigned char *q,
                                                                     int32_t *zero) {
    int k = 0;
    __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps();
    for (; k + 16 <= in; k += 16) {
        __m512 v = _mm512_loadu_ps(x + k);
        vlo = _mm512_min_ps(vlo, v);
        vhi = _mm512_max_ps(vhi, v);
    }
    float lo = _mm512_reduce_min_ps(vlo), hi = _mm512_reduce_max_ps(vhi), scale, inv;
    for (; k < in; k++) {
        lo = x[k] < lo ? x[k] : lo;
        hi = x[k] > hi ? x[k] : hi;
    }
    row_range(lo, hi, &scale, &inv, zero);
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i z = _mm512_set1_epi32(*zero), top = _mm512_set1_epi32(255),
                  bottom = _mm512_setzero_si512();
    for (k = 0; k + 16 <= in; k += 16) {
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), vinv));
        v = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(v, z), bottom), top);
        _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(v));
    }
    for (; k < in; k++) {
        float v = nearbyintf(x[k] * inv) + (float)*zero;
        q[k] = (unsigned char)(v > 255.0f ? 255.0f : (v < 0.0f ? 0.0f : v));
    }
    return scale;
}
#endif

float dense_quantize_row(const float *x, int in, unsigned char *q, int32_t *zero) {
#ifdef DENSE_X86
    if (cpu_has(CPU_AVX512F)) return quantize_row_avx512(x, in, q, zero);
#endif
    return quantize_row_scalar(x, in, q, zero);
}

/* --- oneDNN plumbing ----------------------------------------------------- */

static dnnl_engine_t engine;
static dnnl_status_t engine_status = dnnl_runtime_error;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;

static void engine_make(void) { engine_status = dnnl_engine_create(&engine, dnnl_cpu, 0); }

/* The process's CPU engine, made on first use and kept for the process's
 * life (every primitive and memory object refers to it). */
static dnnl_engine_t engine_get(void) {
    pthread_once(&engine_once, engine_make);
    return engine_status == dnnl_success ? engine : NULL;
}

static int dnnl_fail(char *err, size_t errlen, dnnl_status_t st, const char *what) {
    static const char *names[] = {"success", "out_of_memory", "invalid_arguments",
                                  "unimplemented", "iterator_ends", "runtime_error",
                                  "not_required"};
    const char *n = (unsigned)st < sizeof names / sizeof *names ? names[st] : "unknown";
    return ctr_fail(err, errlen, st == dnnl_out_of_memory ? CTR_ENOMEM : CTR_EINVAL,
                    "oneDNN: %s: %s", what, n);
}

static void *aligned_bytes(size_t n) {
    n = (n + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    void *p = aligned_alloc(ALIGN, n ? n : ALIGN);
    if (p) memset(p, 0, n ? n : ALIGN);
    return p;
}

static size_t round_up(size_t n) { return (n + ALIGN - 1) & ~(size_t)(ALIGN - 1); }

/* Data types of the three operands. */
static void types(dense_precision p, dnnl_data_type_t *src, dnnl_data_type_t *wei,
                  dnnl_data_type_t *dst) {
    switch (p) {
    case DENSE_BF16: *src = *wei = dnnl_bf16; *dst = dnnl_f32; break;
    case DENSE_INT8:
    case DENSE_INT8X2: *src = dnnl_u8; *wei = dnnl_s8; *dst = dnnl_s32; break;
    default: *src = *wei = *dst = dnnl_f32; break;
    }
}

/* Row strides of the primitive's src and dst: always the rows' own widths
 * (oneDNN 2.6 runs wider strides on its slower gemm:jit path, which packs
 * the weights again on every call).  fp32 reads the caller's x and writes
 * the caller's y in place when their strides are these; otherwise, and for
 * bf16 and int8 which convert their rows first, through the workspace. */
static int src_stride(const dense *d) { return d->in; }
static int dst_stride(const dense *d) { return d->out; }

/* Makes the primitive of class c; wmd is "any" for the first one (oneDNN
 * picks the layout) and that layout for the rest. */
static int make_class(dense *d, int c, const dnnl_memory_desc_t *wmd, char *err,
                      size_t errlen) {
    dnnl_data_type_t st, wt, dt;
    types(d->prec, &st, &wt, &dt);
    const int rows = class_rows(c);
    dnnl_dims_t sdims = {rows, d->in}, ddims = {rows, d->out};
    dnnl_dims_t sstr = {src_stride(d), 1}, dstr = {dst_stride(d), 1};
    dnnl_memory_desc_t smd, dmd;
    dnnl_matmul_desc_t mm;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s;
    int rc = CTR_OK;
    if ((s = dnnl_memory_desc_init_by_strides(&smd, 2, sdims, st, sstr)) ||
        (s = dnnl_memory_desc_init_by_strides(&dmd, 2, ddims, dt, dstr)) ||
        (s = dnnl_matmul_desc_init(&mm, &smd, wmd, NULL, &dmd)) ||
        (s = dnnl_primitive_attr_create(&attr)) ||
        (s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user)) ||
        (s = dnnl_primitive_desc_create(&pd, &mm, attr, engine_get(), NULL)) ||
        (s = dnnl_primitive_create(&d->cls[c].prim, pd))) {
        char what[64];
        snprintf(what, sizeof what, "matmul %dx%d by %dx%d", rows, d->in, d->in, d->out);
        rc = dnnl_fail(err, errlen, s, what);
        goto done;
    }
    dense_class *k = &d->cls[c];
    k->src_md = smd;
    k->dst_md = dmd;
    const dnnl_memory_desc_t *pad = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    k->pad_bytes = pad ? dnnl_memory_desc_get_size(pad) : 0;
    if (pad) k->pad_md = *pad;
    if (wmd->format_kind == dnnl_format_kind_any) {
        d->w_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        const char *impl = "?";
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
        snprintf(d->impl, sizeof d->impl, "%s", impl);
    }
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return rc;
}

/* Reorders the plain weight (dims in x out, element (k, o) at o * in + k,
 * of type t) into d->wq, d->w_md's layout. */
static int reorder_weights(dense *d, const void *plain, dnnl_data_type_t t, char *err,
                           size_t errlen) {
    dnnl_dims_t dims = {d->in, d->out};
    dnnl_memory_desc_t pmd;
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t r = NULL;
    dnnl_memory_t from = NULL;
    dnnl_stream_t stream = NULL;
    dnnl_status_t s;
    int rc = CTR_OK;
    if (!(d->wq = aligned_bytes(dnnl_memory_desc_get_size(&d->w_md))))
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory for weights");
    if ((s = dnnl_memory_desc_init_by_tag(&pmd, 2, dims, t, dnnl_ba)) ||
        (s = dnnl_memory_create(&from, &pmd, engine_get(), (void *)plain)) ||
        (s = dnnl_memory_create(&d->w_mem, &d->w_md, engine_get(), d->wq)) ||
        (s = dnnl_reorder_primitive_desc_create(&rpd, &pmd, engine_get(), &d->w_md,
                                                engine_get(), NULL)) ||
        (s = dnnl_primitive_create(&r, rpd)) ||
        (s = dnnl_stream_create(&stream, engine_get(), dnnl_stream_default_flags))) {
        rc = dnnl_fail(err, errlen, s, "weight reorder");
        goto done;
    }
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, d->w_mem}};
    if ((s = dnnl_primitive_execute(r, stream, 2, args)) || (s = dnnl_stream_wait(stream)))
        rc = dnnl_fail(err, errlen, s, "weight reorder");
done:
    if (stream) dnnl_stream_destroy(stream);
    if (r) dnnl_primitive_destroy(r);
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    if (from) dnnl_memory_destroy(from);
    return rc;
}

/* int8 weights, per output channel: scale = max |W[o,:]| / 127 and Wq =
 * round(W / scale) in -127..127; colsum[o] = sum_k Wq[o][k], which a row's
 * zero point z adds z times to its sums. */
static void quantize_weights(const float *w, int out, int in, signed char *wq, float *wscale,
                             int32_t *colsum) {
    for (int o = 0; o < out; o++) {
        const float *row = w + (size_t)o * in;
        float m = row_absmax(row, in);
        float inv = m > 0.0f ? 127.0f / m : 0.0f;
        int32_t sum = 0;
        for (int k = 0; k < in; k++) {
            float v = nearbyintf(row[k] * inv);
            v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
            wq[(size_t)o * in + k] = (signed char)v;
            sum += (int32_t)v;
        }
        wscale[o] = m > 0.0f ? m / 127.0f : 0.0f;
        colsum[o] = sum;
    }
}

/* The int8 weights, once for every kernel of the layer: Wq (out x in, a
 * buffer the caller frees), and d->wscale and d->colsum; int8x2 balances
 * the columns first (f_k = sqrt(max_o |W[o, k]|), W[:, k] / f_k, kept in
 * d->colscale for the rows). */
static int quantize_int8(dense *d, const float *w, signed char **wq, char *err, size_t errlen) {
    const int in = d->in, out = d->out;
    *wq = malloc((size_t)in * out);
    d->wscale = aligned_bytes((size_t)out * sizeof *d->wscale);
    d->colsum = aligned_bytes((size_t)out * sizeof *d->colsum);
    float *wb = NULL;
    if (d->prec == DENSE_INT8X2) {
        d->colscale = aligned_bytes((size_t)in * sizeof *d->colscale);
        wb = malloc((size_t)in * out * sizeof *wb);
    }
    if (!*wq || !d->wscale || !d->colsum || (d->prec == DENSE_INT8X2 && (!d->colscale || !wb))) {
        free(wb);
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory for int8 weights");
    }
    if (wb) {
        for (int k = 0; k < in; k++) d->colscale[k] = 0.0f;
        for (int o = 0; o < out; o++)
            for (int k = 0; k < in; k++) {
                float a = fabsf(w[(size_t)o * in + k]);
                d->colscale[k] = a > d->colscale[k] ? a : d->colscale[k];
            }
        for (int k = 0; k < in; k++)
            d->colscale[k] = d->colscale[k] > 0.0f ? sqrtf(d->colscale[k]) : 1.0f;
        for (int o = 0; o < out; o++)
            for (int k = 0; k < in; k++)
                wb[(size_t)o * in + k] = w[(size_t)o * in + k] / d->colscale[k];
        w = wb;
    }
    quantize_weights(w, out, in, *wq, d->wscale, d->colsum);
    free(wb);
    return CTR_OK;
}

/* oneDNN's primitives for every row class and the weights in their layout:
 * w (fp32, bf16) or wq (int8, quantize_int8). */
static int make_onednn(dense *d, const float *w, const signed char *wq, char *err,
                       size_t errlen) {
    if (!engine_get()) return ctr_fail(err, errlen, CTR_EINVAL, "oneDNN: no CPU engine");
    dnnl_data_type_t st, wt, dt;
    types(d->prec, &st, &wt, &dt);
    dnnl_dims_t wdims = {d->in, d->out};
    dnnl_memory_desc_t any;
    dnnl_status_t s = dnnl_memory_desc_init_by_tag(&any, 2, wdims, wt, dnnl_format_tag_any);
    if (s) return dnnl_fail(err, errlen, s, "weights");
    int rc;
    /* The largest class picks the weight layout; the others must take it. */
    if ((rc = make_class(d, NCLASS - 1, &any, err, errlen)) < 0) return rc;
    d->ncls = NCLASS;
    for (int c = 0; c < NCLASS - 1; c++)
        if ((rc = make_class(d, c, &d->w_md, err, errlen)) < 0) return rc;
    if (is_int8(d->prec)) rc = reorder_weights(d, wq, dnnl_s8, err, errlen);
    else rc = reorder_weights(d, w, dnnl_f32, err, errlen); /* bf16: rounds to nearest even */
    if (rc < 0) return rc;
    size_t esz = d->prec == DENSE_FP32 ? 4 : (d->prec == DENSE_BF16 ? 2 : 1); /* int8s: 1 */
    size_t src = round_up((size_t)DENSE_MAX_ROWS * src_stride(d) * esz);
    if (src > d->src_bytes) d->src_bytes = src;
    d->dst_bytes = round_up((size_t)DENSE_MAX_ROWS * dst_stride(d) * 4);
    for (int c = 0; c < NCLASS; c++)
        if (d->cls[c].pad_bytes > d->pad_bytes) d->pad_bytes = d->cls[c].pad_bytes;
    d->pad_bytes = round_up(d->pad_bytes);
    return CTR_OK;
}

/* --- int8 on our own VNNI kernel ------------------------------------------------
 *
 * The same arithmetic as oneDNN's u8 x s8 path (rows quantised by
 * dense_quantize_row, weights by quantize_int8, the zero point taken out in
 * int32), computed by a small AVX512_VNNI kernel: 8 rows x 32 output
 * channels a block, 16 accumulators in registers (vpdpbusd issues two a
 * cycle on this CPU and has a latency of several: 16 independent chains
 * keep both ports busy; bench_isa), the 32 channels' weights of a block
 * (32 x in bytes, 32 KB at in = 1024) reused from L1 by every row block,
 * and the int32 sums turned into floats in registers (no int32 buffer).
 *
 * Weight layout (vnni_layout): for output block b (channels 32 b .. 32 b +
 * 31) and input group g (inputs 4 g .. 4 g + 3), 128 bytes: channel c's four
 * weights at 4 c (c = 0..31). */

static int vnni_shape_ok(int out, int in) { return out % 32 == 0 && in % 4 == 0; }

static void vnni_layout(const signed char *wq, int out, int in, signed char *p) {
    for (int b = 0; b < out / 32; b++)
        for (int g = 0; g < in / 4; g++)
            for (int c = 0; c < 32; c++)
                for (int j = 0; j < 4; j++)
                    p[(((size_t)b * (in / 4) + g) * 32 + c) * 4 + j] =
                        wq[(size_t)(32 * b + c) * in + 4 * g + j];
}

#ifdef DENSE_X86
/* acc += u8 b x s8 w, four products a lane.  As inline assembly: GCC 12
 * compiles _mm512_dpbusd_epi32 without tying the accumulator to the
 * output, and with 16 accumulators live it copies and spills them every
 * step (measured: half the instruction's rate in bench_isa's 24-chain
 * loop); the constraint "+v" keeps each accumulator in its register. */
#define VNNI_DPBUSD(acc, b, w) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(b), "v"(w))

/* R (1..8) rows of q (u8, stride in) by one 32-channel block w: y (stride
 * ldy) = (sum - zero_r colsum) scale_r wscale, R known at compile time
 * where it is inlined. */
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline void
vnni_block(const int R, int in, const unsigned char *q, const signed char *w,
           const int32_t *colsum, const float *wscale, const float *rscale, const int32_t *rzero,
           float *y, int ldy) {
    __m512i acc[8][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    for (int g = 0; g < in / 4; g++) {
        const __m512i w0 = _mm512_load_si512(w + (size_t)g * 128);
        const __m512i w1 = _mm512_load_si512(w + (size_t)g * 128 + 64);
        for (int r = 0; r < R; r++) {
            int32_t v;
            memcpy(&v, q + (size_t)r * in + 4 * g, sizeof v);
            const __m512i b = _mm512_set1_epi32(v);
            VNNI_DPBUSD(acc[r][0], b, w0);
            VNNI_DPBUSD(acc[r][1], b, w1);
        }
    }
    const __m512i cs0 = _mm512_loadu_si512(colsum), cs1 = _mm512_loadu_si512(colsum + 16);
    const __m512 ws0 = _mm512_loadu_ps(wscale), ws1 = _mm512_loadu_ps(wscale + 16);
    for (int r = 0; r < R; r++) {
        const __m512i z = _mm512_set1_epi32(rzero[r]);
        const __m512 s = _mm512_set1_ps(rscale[r]);
        __m512i a0 = _mm512_sub_epi32(acc[r][0], _mm512_mullo_epi32(z, cs0));
        __m512i a1 = _mm512_sub_epi32(acc[r][1], _mm512_mullo_epi32(z, cs1));
        _mm512_storeu_ps(y + (size_t)r * ldy,
                         _mm512_mul_ps(_mm512_cvtepi32_ps(a0), _mm512_mul_ps(s, ws0)));
        _mm512_storeu_ps(y + (size_t)r * ldy + 16,
                         _mm512_mul_ps(_mm512_cvtepi32_ps(a1), _mm512_mul_ps(s, ws1)));
    }
}

/* m rows (quantised in q, stride in) through every output block. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
vnni_rows(const dense *d, int m, const unsigned char *q, const float *rscale,
          const int32_t *rzero, float *y, int ldy) {
    const int in = d->in;
    for (int b = 0; b < d->out / 32; b++) {
        const signed char *w = d->wvnni + (size_t)b * (in / 4) * 128;
        const int32_t *cs = d->colsum + 32 * b;
        const float *ws = d->wscale + 32 * b;
        for (int r = 0; r < m; r += 8) {
            const unsigned char *qr = q + (size_t)r * in;
            float *yr = y + (size_t)r * ldy + 32 * b;
            switch (m - r < 8 ? m - r : 8) {
#define VNNI_CASE(R)                                                                          \
    case R: vnni_block(R, in, qr, w, cs, ws, rscale + r, rzero + r, yr, ldy); break;
                VNNI_CASE(1) VNNI_CASE(2) VNNI_CASE(3) VNNI_CASE(4)
                VNNI_CASE(5) VNNI_CASE(6) VNNI_CASE(7) VNNI_CASE(8)
#undef VNNI_CASE
            }
        }
    }
}
#endif

int dense_vnni_supported(int out, int in) {
#ifdef DENSE_X86
    return vnni_shape_ok(out, in) && cpu_has(CPU_AVX512VNNI) && cpu_has(CPU_AVX512BW);
#else
    (void)out;
    (void)in;
    return 0;
#endif
}

/* The int8 weights (quantize_int8) in vnni_layout, and the workspace: the
 * quantised rows, their scales and zero points. */
static int make_vnni(dense *d, const signed char *wq, char *err, size_t errlen) {
    if (!(d->wvnni = aligned_bytes((size_t)d->in * d->out)))
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory for int8 weights");
    vnni_layout(wq, d->out, d->in, d->wvnni);
    size_t src = round_up((size_t)DENSE_MAX_ROWS * d->in);
    if (src > d->src_bytes) d->src_bytes = src;
    return CTR_OK;
}

static void free_onednn(dense *d) {
    for (int c = 0; c < NCLASS; c++)
        if (d->cls[c].prim) dnnl_primitive_destroy(d->cls[c].prim);
    memset(d->cls, 0, sizeof d->cls);
    d->ncls = 0;
    if (d->w_mem) dnnl_memory_destroy(d->w_mem);
    d->w_mem = NULL;
    free(d->wq);
    d->wq = NULL;
    d->impl[0] = 0;
}

static void free_packed(dense *d) {
    free(d->packed);
    free(d->wvnni);
    d->packed = NULL;
    d->wvnni = NULL;
}

/* Builds kernel b for the layer (its weights in b's layout). */
static int make_kernel(dense *d, dense_backend b, const float *w, const signed char *wq,
                       char *err, size_t errlen) {
    switch (b) {
    case DENSE_BACKEND_ONEDNN: return make_onednn(d, w, wq, err, errlen);
    case DENSE_BACKEND_OPENBLAS:
        if (!(d->w = aligned_bytes((size_t)d->in * d->out * sizeof(float)))) break;
        memcpy(d->w, w, (size_t)d->in * d->out * sizeof(float));
        return CTR_OK;
    case DENSE_BACKEND_PACKED:
        if (is_int8(d->prec)) return make_vnni(d, wq, err, errlen);
        if (!(d->packed = aligned_bytes(gemm_packed_floats(d->in) * sizeof(float)))) break;
        gemm_pack(w, d->in, d->packed);
        return CTR_OK;
    default: return ctr_fail(err, errlen, CTR_EINVAL, "unknown backend");
    }
    return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory for the weights");
}

/* --- the planner ------------------------------------------------------------ */

static const int plan_rows[DENSE_PLAN_CLASSES] = {4, 16, 64, 256};
static const int plan_top[DENSE_PLAN_CLASSES] = {8, 32, 128, DENSE_MAX_ROWS};

int dense_plan_rows(int c) { return c >= 0 && c < DENSE_PLAN_CLASSES ? plan_rows[c] : 0; }
int dense_plan_top(int c) { return c >= 0 && c < DENSE_PLAN_CLASSES ? plan_top[c] : 0; }

static int plan_class(int m) {
    int c = 0;
    while (c < DENSE_PLAN_CLASSES - 1 && m > plan_top[c]) c++;
    return c;
}

int dense_candidates(dense_precision p, int out, int in, dense_backend *b) {
    int n = 0;
    b[n++] = DENSE_BACKEND_ONEDNN;
    if (p == DENSE_FP32 && in == out && gemm_packed_supported(in)) b[n++] = DENSE_BACKEND_PACKED;
    if (is_int8(p) && dense_vnni_supported(out, in)) b[n++] = DENSE_BACKEND_PACKED;
    return n;
}

int dense_plan_pick(const double *us, int n) {
    int best = 0;
    for (int k = 1; k < n; k++)
        if (us[k] >= 0 && (us[best] < 0 || us[k] < us[best])) best = k;
    /* The default stays unless beaten by 3%: jitter does not flip it. */
    if (best != 0 && us[0] >= 0 && us[best] > 0.97 * us[0]) best = 0;
    return best;
}

const char *dense_cpu_isa(void) {
    switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "unknown";
    }
}

/* Plans of the shapes already timed, for the process's life: a layer of
 * the same precision, shape and strides takes the first one's choice (the
 * weights' values do not change which kernel is faster). */
typedef struct plan_entry {
    int prec, in, out, ld_in, ld_out;
    dense_backend pick[DENSE_PLAN_CLASSES];
    double us[DENSE_PLAN_CLASSES][DENSE_BACKEND_COUNT];
} plan_entry;

#define PLAN_CACHE 64
static plan_entry plan_cache[PLAN_CACHE];
static int plan_cached;
static pthread_mutex_t plan_mu = PTHREAD_MUTEX_INITIALIZER;

static int run_kernel(const dense *d, dense_backend b, dense_ws *ws, int m, const float *x,
                      float *y);

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

/* Times the candidates cand[0..nc-1] per plan class on random rows and
 * fills d->pick and d->plan_us: each kernel run once to warm it (oneDNN's
 * first call, the weights into cache), then the fastest of a few calls,
 * kernels interleaved call by call (the order rotated) so that a burst of
 * load from elsewhere falls on all alike. */
static int plan_time(dense *d, const dense_backend *cand, int nc, char *err, size_t errlen) {
    const int n = DENSE_MAX_ROWS;
    float *x = aligned_bytes((size_t)n * d->ld_in * sizeof *x),
          *y = aligned_bytes((size_t)n * d->ld_out * sizeof *y);
    dense_ws *ws = NULL;
    int rc = CTR_ENOMEM;
    if (!x || !y || (rc = dense_ws_init(dense_ws_size(d), &ws)) < 0) {
        free(x);
        free(y);
        return ctr_fail(err, errlen, rc, "planner: no workspace");
    }
    uint64_t r = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < (size_t)n * d->ld_in; i++) {
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((double)(r >> 40) / 16777216.0) * 2.0f - 1.0f;
    }
    /* int8x2 runs two kernel rows a row: its calls stop at half the rows. */
    const int most = d->prec == DENSE_INT8X2 ? DENSE_MAX_ROWS / 2 : DENSE_MAX_ROWS;
    for (int c = 0; c < DENSE_PLAN_CLASSES && rc == CTR_OK; c++) {
        const int rows = plan_rows[c] < most ? plan_rows[c] : most, reps = rows <= 64 ? 7 : 3;
        double best[DENSE_BACKEND_COUNT];
        for (int k = 0; k < nc && rc == CTR_OK; k++) {
            best[k] = -1;
            rc = run_kernel(d, cand[k], ws, rows, x, y);
        }
        for (int i = 0; i < reps && rc == CTR_OK; i++)
            for (int j = 0; j < nc && rc == CTR_OK; j++) {
                const int k = (i + j) % nc;
                double t0 = now_us();
                rc = run_kernel(d, cand[k], ws, rows, x, y);
                double t = now_us() - t0;
                if (best[k] < 0 || t < best[k]) best[k] = t;
            }
        if (rc < 0) break;
        d->pick[c] = cand[dense_plan_pick(best, nc)];
        for (int k = 0; k < nc; k++) d->plan_us[c][cand[k]] = best[k];
    }
    dense_ws_free(ws);
    free(x);
    free(y);
    if (rc < 0) return ctr_fail(err, errlen, rc, "planner: a kernel failed to run");
    return CTR_OK;
}

/* d->pick and d->plan_us for AUTO: from the cache, or timed and cached. */
static int plan(dense *d, const dense_backend *cand, int nc, char *err, size_t errlen) {
    pthread_mutex_lock(&plan_mu);
    int rc = CTR_OK;
    for (int i = 0; i < plan_cached; i++) {
        const plan_entry *e = &plan_cache[i];
        if (e->prec == (int)d->prec && e->in == d->in && e->out == d->out &&
            e->ld_in == d->ld_in && e->ld_out == d->ld_out) {
            memcpy(d->pick, e->pick, sizeof d->pick);
            memcpy(d->plan_us, e->us, sizeof d->plan_us);
            goto done;
        }
    }
    if ((rc = plan_time(d, cand, nc, err, errlen)) < 0) goto done;
    if (plan_cached < PLAN_CACHE) {
        plan_entry *e = &plan_cache[plan_cached++];
        *e = (plan_entry){(int)d->prec, d->in, d->out, d->ld_in, d->ld_out, {0}, {{0}}};
        memcpy(e->pick, d->pick, sizeof e->pick);
        memcpy(e->us, d->plan_us, sizeof e->us);
    }
done:
    pthread_mutex_unlock(&plan_mu);
    return rc;
}

/* The kernel's name in dense_describe. */
static const char *kernel_name(const dense *d, dense_backend b, char *buf, size_t len) {
    switch (b) {
    case DENSE_BACKEND_ONEDNN: snprintf(buf, len, "oneDNN %s", d->impl); break;
    case DENSE_BACKEND_OPENBLAS: snprintf(buf, len, "OpenBLAS sgemm"); break;
    case DENSE_BACKEND_PACKED:
        snprintf(buf, len, is_int8(d->prec) ? "AVX512_VNNI kernel (8 x 32 blocks)"
                                                 : "packed AVX-512 kernel");
        break;
    default: snprintf(buf, len, "?"); break;
    }
    return buf;
}

/* "int8: rows 1-8 <kernel>; rows 9-256 <kernel> (planned)". */
static void describe(dense *d) {
    size_t len = (size_t)snprintf(d->what, sizeof d->what, "%s: ", dense_precision_name(d->prec));
    for (int c = 0; c < DENSE_PLAN_CLASSES && len < sizeof d->what;) {
        int e = c;
        while (e + 1 < DENSE_PLAN_CLASSES && d->pick[e + 1] == d->pick[c]) e++;
        char name[96];
        kernel_name(d, d->pick[c], name, sizeof name);
        if (c == 0 && e == DENSE_PLAN_CLASSES - 1)
            len += (size_t)snprintf(d->what + len, sizeof d->what - len, "%s", name);
        else
            len += (size_t)snprintf(d->what + len, sizeof d->what - len, "%srows %d-%d %s",
                                    c ? "; " : "", c ? plan_top[c - 1] + 1 : 1, plan_top[e],
                                    name);
        c = e + 1;
    }
    if (len < sizeof d->what)
        snprintf(d->what + len, sizeof d->what - len, " (%s)",
                 d->backend == DENSE_BACKEND_AUTO ? "planned" : "set");
}

/* --- the layer ------------------------------------------------------------- */

int dense_init(const float *w, int out, int in, const dense_params *params, dense **dp,
               char *err, size_t errlen) {
    *dp = NULL;
    dense_params p = params ? *params : dense_default_params();
    if (in < 1 || out < 1 || (p.ld_in && p.ld_in < in) || (p.ld_out && p.ld_out < out) ||
        p.precision < 0 || p.precision >= DENSE_PRECISION_COUNT || p.backend < 0 ||
        p.backend >= DENSE_BACKEND_COUNT)
        return ctr_fail(err, errlen, CTR_EINVAL, "dense %d x %d: bad shape or parameters", out,
                        in);
    if ((p.precision == DENSE_BF16 &&
         (p.backend == DENSE_BACKEND_PACKED || p.backend == DENSE_BACKEND_OPENBLAS)) ||
        (is_int8(p.precision) && p.backend == DENSE_BACKEND_OPENBLAS))
        return ctr_fail(err, errlen, CTR_EINVAL, "%s does not run on that backend",
                        dense_precision_name(p.precision));
    if (is_int8(p.precision) && p.backend == DENSE_BACKEND_PACKED &&
        !dense_vnni_supported(out, in))
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "the int8 VNNI kernel needs AVX512_VNNI, a multiple of 32 outputs and "
                        "of 4 inputs (here %d x %d)", out, in);
    if (p.precision == DENSE_FP32 && p.backend == DENSE_BACKEND_PACKED &&
        !(in == out && gemm_packed_supported(in)))
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "the packed kernel needs AVX-512F and a square weight of a multiple "
                        "of 32 (here %d x %d)", out, in);
    for (size_t i = 0; i < (size_t)in * out; i++)
        if (!isfinite(w[i])) return ctr_fail(err, errlen, CTR_EINVAL, "non-finite weight");
    one_thread();

    dense *d = calloc(1, sizeof *d);
    if (!d) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    d->in = in;
    d->out = out;
    d->ld_in = p.ld_in ? p.ld_in : in;
    d->ld_out = p.ld_out ? p.ld_out : out;
    d->prec = p.precision;
    d->backend = p.backend;
    for (int c = 0; c < DENSE_PLAN_CLASSES; c++)
        for (int b = 0; b < DENSE_BACKEND_COUNT; b++) d->plan_us[c][b] = -1;
    dense_backend cand[DENSE_BACKEND_COUNT];
    int nc = 1;
    cand[0] = p.backend;
    if (p.backend == DENSE_BACKEND_AUTO) nc = dense_candidates(d->prec, out, in, cand);
    signed char *wq = NULL;
    int rc = CTR_OK;
    if (is_int8(d->prec) && (rc = quantize_int8(d, w, &wq, err, errlen)) < 0) goto fail;
    for (int k = 0; k < nc; k++)
        if ((rc = make_kernel(d, cand[k], w, wq, err, errlen)) < 0) goto fail;
    free(wq);
    wq = NULL;
    for (int c = 0; c < DENSE_PLAN_CLASSES; c++) d->pick[c] = cand[0];
    if (nc > 1) {
        if ((rc = plan(d, cand, nc, err, errlen)) < 0) goto fail;
        int used[DENSE_BACKEND_COUNT] = {0};
        for (int c = 0; c < DENSE_PLAN_CLASSES; c++) used[d->pick[c]] = 1;
        if (!used[DENSE_BACKEND_ONEDNN]) {
            free_onednn(d);
            d->dst_bytes = d->pad_bytes = 0;
        }
        if (!used[DENSE_BACKEND_PACKED]) free_packed(d);
    }
    /* int8x2 on the VNNI kernel: its 2m rows of output go through the
     * workspace's dst part before the two levels are added. */
    if (d->prec == DENSE_INT8X2 && d->dst_bytes < round_up((size_t)DENSE_MAX_ROWS * d->out * 4))
        d->dst_bytes = round_up((size_t)DENSE_MAX_ROWS * d->out * 4);
    describe(d);
    *dp = d;
    return CTR_OK;
fail:
    if (rc == CTR_ENOMEM && err && !*err) ctr_fail(err, errlen, rc, "out of memory");
    free(wq);
    dense_free(d);
    return rc;
}

void dense_free(dense *d) {
    if (!d) return;
    free_onednn(d);
    free_packed(d);
    free(d->w);
    free(d->wscale);
    free(d->colscale);
    free(d->colsum);
    free(d);
}

const char *dense_describe(const dense *d) { return d->what; }
dense_precision dense_get_precision(const dense *d) { return d->prec; }
int dense_in(const dense *d) { return d->in; }
int dense_out(const dense *d) { return d->out; }

dense_backend dense_backend_for(const dense *d, int n) {
    return d->pick[plan_class(n < DENSE_MAX_ROWS ? n : DENSE_MAX_ROWS)];
}

double dense_plan_us(const dense *d, int c, dense_backend b) {
    if (c < 0 || c >= DENSE_PLAN_CLASSES || b < 0 || b >= DENSE_BACKEND_COUNT) return -1;
    return d->plan_us[c][b];
}

size_t dense_ws_size(const dense *d) {
    return d->src_bytes + d->dst_bytes + d->pad_bytes +
           round_up(DENSE_MAX_ROWS * (sizeof(float) + sizeof(int32_t))) +
           round_up((size_t)d->in * sizeof(float));
}

/* The parts of a call's workspace: the kernel's rows (src), oneDNN's
 * output (dst) and scratchpad (pad), the rows' scales and zero points,
 * and one row of floats (int8x2's residual). */
typedef struct ws_parts {
    unsigned char *src, *dst, *pad;
    float *scale;
    int32_t *zero;
    float *row;
} ws_parts;

static ws_parts parts_of(const dense *d, dense_ws *ws) {
    ws_parts p;
    p.src = ws->buf;
    p.dst = p.src + d->src_bytes;
    p.pad = p.dst + d->dst_bytes;
    p.scale = (float *)(p.pad + d->pad_bytes);
    p.zero = (int32_t *)(p.scale + DENSE_MAX_ROWS);
    p.row = (float *)((unsigned char *)p.scale +
                      round_up(DENSE_MAX_ROWS * (sizeof(float) + sizeof(int32_t))));
    return p;
}

/* Rows of x (m, stride ld_in) quantised for the kernel into q: int8, one
 * row each (scales and zero points in scale[i], zero[i]); int8x2, x * f
 * into rows 0..m-1 and its rounding residual into rows m..2m-1. */
static void quantize_rows(const dense *d, int m, const float *x, unsigned char *q, float *scale,
                          int32_t *zero, float *row) {
    const int in = d->in;
    for (int i = 0; i < m; i++) {
        const float *xi = x + (size_t)i * d->ld_in;
        if (d->prec != DENSE_INT8X2) {
            scale[i] = dense_quantize_row(xi, in, q + (size_t)i * in, &zero[i]);
            continue;
        }
        for (int k = 0; k < in; k++) row[k] = xi[k] * d->colscale[k];
        unsigned char *q1 = q + (size_t)i * in, *q2 = q + (size_t)(m + i) * in;
        const float s1 = scale[i] = dense_quantize_row(row, in, q1, &zero[i]);
        const int32_t z1 = zero[i];
        for (int k = 0; k < in; k++) row[k] -= s1 * (float)((int32_t)q1[k] - z1);
        scale[m + i] = dense_quantize_row(row, in, q2, &zero[m + i]);
    }
}
int dense_ws_init(size_t bytes, dense_ws **out) {
    *out = NULL;
    dense_ws *ws = calloc(1, sizeof *ws);
    if (!ws) return CTR_ENOMEM;
    ws->size = round_up(bytes);
    if (!(ws->buf = aligned_bytes(ws->size))) {
        free(ws);
        return CTR_ENOMEM;
    }
    if (!engine_get() ||
        dnnl_stream_create(&ws->stream, engine_get(), dnnl_stream_default_flags) != dnnl_success) {
        free(ws->buf);
        free(ws);
        return CTR_EINVAL;
    }
    *out = ws;
    return CTR_OK;
}

static void ws_mem_free(ws_mem *e) {
    if (e->src) dnnl_memory_destroy(e->src);
    if (e->dst) dnnl_memory_destroy(e->dst);
    if (e->pad) dnnl_memory_destroy(e->pad);
    memset(e, 0, sizeof *e);
}

void dense_ws_free(dense_ws *ws) {
    if (!ws) return;
    for (int i = 0; i < ws->nmem; i++) ws_mem_free(&ws->mem[i]);
    if (ws->stream) dnnl_stream_destroy(ws->stream);
    free(ws->buf);
    free(ws);
}

/* --- a call ---------------------------------------------------------------- */

/* Runs class c on src and dst (laid out as the class's descriptors say). */
/* The workspace's memory objects for class k's shapes: found, or made
 * (the oldest entry replaced), once per shape and workspace. */
static ws_mem *ws_mem_for(dense_ws *ws, const dense_class *k) {
    for (int i = 0; i < ws->nmem; i++) {
        ws_mem *e = &ws->mem[i];
        if (e->pad_bytes == k->pad_bytes && dnnl_memory_desc_equal(&e->src_md, &k->src_md) &&
            dnnl_memory_desc_equal(&e->dst_md, &k->dst_md) &&
            (!k->pad_bytes || dnnl_memory_desc_equal(&e->pad_md, &k->pad_md)))
            return e;
    }
    ws_mem *e = &ws->mem[ws->nmem < WS_MEMS ? ws->nmem++ : ws->next];
    if (ws->nmem == WS_MEMS) ws->next = (ws->next + 1) % WS_MEMS;
    ws_mem_free(e);
    if (dnnl_memory_create(&e->src, &k->src_md, engine_get(), DNNL_MEMORY_NONE) ||
        dnnl_memory_create(&e->dst, &k->dst_md, engine_get(), DNNL_MEMORY_NONE) ||
        (k->pad_bytes &&
         dnnl_memory_create(&e->pad, &k->pad_md, engine_get(), DNNL_MEMORY_NONE))) {
        ws_mem_free(e);
        return NULL;
    }
    e->src_md = k->src_md;
    e->dst_md = k->dst_md;
    e->pad_md = k->pad_md;
    e->pad_bytes = k->pad_bytes;
    return e;
}

static int run_class(const dense *d, const dense_class *k, dense_ws *ws, void *src, void *dst,
                     void *pad) {
    ws_mem *e = ws_mem_for(ws, k);
    if (!e) return CTR_ENOMEM;
    dnnl_status_t s;
    if ((s = dnnl_memory_set_data_handle(e->src, src)) == dnnl_success &&
        (s = dnnl_memory_set_data_handle(e->dst, dst)) == dnnl_success &&
        (!e->pad || (s = dnnl_memory_set_data_handle(e->pad, pad)) == dnnl_success)) {
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, e->src}, {DNNL_ARG_WEIGHTS, d->w_mem},
                                   {DNNL_ARG_DST, e->dst}, {DNNL_ARG_SCRATCHPAD, e->pad}};
        s = dnnl_primitive_execute(k->prim, ws->stream, e->pad ? 4 : 3, args);
    }
    return s == dnnl_success ? CTR_OK : CTR_EINVAL;
}

/* y = (sum - z_i colsum) * row scale * channel scale for m rows of int32
 * sums (stride out): the zero point taken out exactly, in int32 (both terms
 * are below 2^26 in magnitude), then one rounding to float. */
CTR_CLONES static void
dequantize(int m, int out, const int32_t *acc, const int32_t *restrict colsum,
           const float *rscale, const int32_t *rzero, const float *restrict cscale, float *y,
           int ldy, int add) {
    for (int i = 0; i < m; i++) {
        const int32_t *restrict a = acc + (size_t)i * out;
        float *restrict yi = y + (size_t)i * ldy;
        const float si = rscale[i];
        const int32_t zi = rzero[i];
        if (add)
            for (int o = 0; o < out; o++)
                yi[o] += (float)(a[o] - zi * colsum[o]) * (si * cscale[o]);
        else
            for (int o = 0; o < out; o++)
                yi[o] = (float)(a[o] - zi * colsum[o]) * (si * cscale[o]);
    }
}

/* m <= DENSE_MAX_ROWS rows through oneDNN. */
static int chunk_onednn(const dense *d, dense_ws *ws, int m, const float *x, float *y) {
    const int kr = d->prec == DENSE_INT8X2 ? 2 * m : m; /* the kernel's rows */
    const dense_class *k = &d->cls[class_of(kr)];
    const int rows = class_rows(class_of(kr));
    const ws_parts wp = parts_of(d, ws);
    unsigned char *src = wp.src, *dst = wp.dst, *pad = wp.pad;
    float *scale = wp.scale;
    int32_t *zero = wp.zero;
    int rc;
    /* Rows the class computes beyond m hold whatever an earlier call left
     * (finite values, zero at first); their results are dropped. */
    const int tight_in = d->ld_in == d->in, tight_out = d->ld_out == d->out;
    switch (d->prec) {
    case DENSE_FP32:
    case DENSE_BF16: {
        void *s_ = src;
        if (d->prec == DENSE_BF16)
            rows_to_bf16(m, d->in, x, d->ld_in, (unsigned short *)src);
        else if (rows == m && tight_in)
            s_ = (void *)x;
        else
            for (int i = 0; i < m; i++)
                memcpy((float *)src + (size_t)i * d->in, x + (size_t)i * d->ld_in,
                       (size_t)d->in * sizeof(float));
        if (rows == m && tight_out) return run_class(d, k, ws, s_, y, pad);
        if ((rc = run_class(d, k, ws, s_, dst, pad)) < 0) return rc;
        for (int i = 0; i < m; i++)
            memcpy(y + (size_t)i * d->ld_out, (float *)dst + (size_t)i * d->out,
                   (size_t)d->out * sizeof(float));
        return CTR_OK;
    }
    case DENSE_INT8:
    case DENSE_INT8X2:
        quantize_rows(d, m, x, src, scale, zero, wp.row);
        if ((rc = run_class(d, k, ws, src, dst, pad)) < 0) return rc;
        dequantize(m, d->out, (const int32_t *)dst, d->colsum, scale, zero, d->wscale, y,
                   d->ld_out, 0);
        if (kr > m) /* int8x2: the residual's rows added */
            dequantize(m, d->out, (const int32_t *)dst + (size_t)m * d->out, d->colsum,
                       scale + m, zero + m, d->wscale, y, d->ld_out, 1);
        return CTR_OK;
    default:
        return CTR_EINVAL;
    }
}

/* m <= DENSE_MAX_ROWS rows on the int8 VNNI kernel. */
static void chunk_vnni(const dense *d, dense_ws *ws, int m, const float *x, float *y) {
#ifdef DENSE_X86
    const ws_parts wp = parts_of(d, ws);
    quantize_rows(d, m, x, wp.src, wp.scale, wp.zero, wp.row);
    if (d->prec != DENSE_INT8X2) {
        vnni_rows(d, m, wp.src, wp.scale, wp.zero, y, d->ld_out);
        return;
    }
    /* int8x2: both levels' rows, then their sum. */
    float *t = (float *)wp.dst;
    vnni_rows(d, 2 * m, wp.src, wp.scale, wp.zero, t, d->out);
    for (int i = 0; i < m; i++) {
        float *restrict yi = y + (size_t)i * d->ld_out;
        const float *restrict a = t + (size_t)i * d->out, *restrict b = a + (size_t)m * d->out;
        for (int o = 0; o < d->out; o++) yi[o] = a[o] + b[o];
    }
#else
    (void)d, (void)ws, (void)m, (void)x, (void)y;
#endif
}

/* m <= DENSE_MAX_ROWS rows on kernel b (built). */
static int run_kernel(const dense *d, dense_backend b, dense_ws *ws, int m, const float *x,
                      float *y) {
    switch (b) {
    case DENSE_BACKEND_OPENBLAS:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, d->out, d->in, 1.0f, x, d->ld_in,
                    d->w, d->in, 0.0f, y, d->ld_out);
        return CTR_OK;
    case DENSE_BACKEND_PACKED:
        if (is_int8(d->prec)) chunk_vnni(d, ws, m, x, y);
        else gemm_packed(m, d->in, x, d->ld_in, d->packed, y, d->ld_out);
        return CTR_OK;
    case DENSE_BACKEND_ONEDNN:
        one_thread();
        return chunk_onednn(d, ws, m, x, y);
    default: return CTR_EINVAL;
    }
}

int dense_forward(const dense *d, dense_ws *ws, int n, const float *x, float *y) {
    if (n <= 0) return CTR_OK;
    if (!ws || ws->size < dense_ws_size(d)) return CTR_EINVAL;
    /* int8x2 runs two kernel rows a row. */
    const int chunk = d->prec == DENSE_INT8X2 ? DENSE_MAX_ROWS / 2 : DENSE_MAX_ROWS;
    for (int i0 = 0; i0 < n; i0 += chunk) {
        int m = n - i0 < chunk ? n - i0 : chunk;
        int rc = run_kernel(d, d->pick[plan_class(m)], ws, m, x + (size_t)i0 * d->ld_in,
                            y + (size_t)i0 * d->ld_out);
        if (rc < 0) return rc;
    }
    return CTR_OK;
}
