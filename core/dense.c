/*
 * dense.c - batched dense layers on oneDNN, and int8 on an AVX512_VNNI
 * kernel of our own (see dense.h): the API and a call's dispatch.  The
 * module's other files are listed in dense_internal.h.
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
#include "dense_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "linear.h"

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

/* 1 when text is name (lower case) in any case. */
static int name_is(const char *name, const char *text) {
    size_t i = 0;
    while (name[i] && (text[i] | 0x20) == name[i]) i++;
    return !name[i] && !text[i];
}

int dense_precision_parse(const char *text, dense_precision *out) {
    for (int p = 0; p < DENSE_PRECISION_COUNT; p++)
        if (name_is(dense_precision_name((dense_precision)p), text)) {
            *out = (dense_precision)p;
            return CTR_OK;
        }
    return CTR_EINVAL;
}

dense_params dense_default_params(void) {
    dense_params p = {DENSE_FP32, DENSE_BACKEND_AUTO, 0, 0, NULL};
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
    for (int b = 0; text && b < DENSE_BACKEND_COUNT; b++)
        if (name_is(dense_backend_name((dense_backend)b), text)) {
            *out = (dense_backend)b;
            return CTR_OK;
        }
    return CTR_EINVAL;
}

void *dense_aligned_bytes(size_t n) {
    n = (n + DENSE_ALIGN - 1) & ~(size_t)(DENSE_ALIGN - 1);
    void *p = aligned_alloc(DENSE_ALIGN, n ? n : DENSE_ALIGN);
    if (p) memset(p, 0, n ? n : DENSE_ALIGN);
    return p;
}

static void dense_packed_free(dense *d) {
    free(d->packed);
    free(d->wvnni);
    d->packed = NULL;
    d->wvnni = NULL;
}

/* Builds kernel b for the layer (its weights in b's layout). */
static int make_kernel(dense *d, dense_backend b, const float *w, const signed char *wq,
                       char *err, size_t errlen) {
    switch (b) {
    case DENSE_BACKEND_ONEDNN: return dense_onednn_make(d, w, wq, err, errlen);
    case DENSE_BACKEND_OPENBLAS:
        if (!(d->w = dense_aligned_bytes((size_t)d->in * d->out * sizeof(float)))) break;
        memcpy(d->w, w, (size_t)d->in * d->out * sizeof(float));
        return CTR_OK;
    case DENSE_BACKEND_PACKED:
        if (dense_is_int8(d->prec)) return dense_vnni_make(d, wq, err, errlen);
        if (!(d->packed = dense_aligned_bytes(gemm_packed_floats(d->in) * sizeof(float)))) break;
        gemm_pack(w, d->in, d->packed);
        return CTR_OK;
    default: return ctr_fail(err, errlen, CTR_EINVAL, "unknown backend");
    }
    return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory for the weights");
}

/* --- the layer ------------------------------------------------------------- */

/* A layer's struct with its shape and strides set and nothing planned
 * (every plan_us -1), or NULL when out of memory. */
static dense *dense_alloc(int out, int in, const dense_params *p, dense_precision prec,
                          dense_backend backend) {
    dense *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->in = in;
    d->out = out;
    d->ld_in = p->ld_in ? p->ld_in : in;
    d->ld_out = p->ld_out ? p->ld_out : out;
    d->prec = prec;
    d->backend = backend;
    for (int c = 0; c < DENSE_PLAN_CLASSES; c++)
        for (int b = 0; b < DENSE_BACKEND_COUNT; b++) d->plan_us[c][b] = -1;
    return d;
}

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
        (dense_is_int8(p.precision) && p.backend == DENSE_BACKEND_OPENBLAS))
        return ctr_fail(err, errlen, CTR_EINVAL, "%s does not run on that backend",
                        dense_precision_name(p.precision));
    if (dense_is_int8(p.precision) && p.backend == DENSE_BACKEND_PACKED &&
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
    linear_one_thread();

    dense *d = dense_alloc(out, in, &p, p.precision, p.backend);
    if (!d) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    dense_backend cand[DENSE_BACKEND_COUNT];
    int nc = 1;
    cand[0] = p.backend;
    if (p.backend == DENSE_BACKEND_AUTO) nc = dense_candidates(d->prec, out, in, cand);
    signed char *wq = NULL;
    int rc = CTR_OK;
    if (dense_is_int8(d->prec) &&
        (rc = dense_quantize_int8(d, w, p.int8, &wq, err, errlen)) < 0)
        goto fail;
    for (int k = 0; k < nc; k++)
        if ((rc = make_kernel(d, cand[k], w, wq, err, errlen)) < 0) goto fail;
    free(wq);
    wq = NULL;
    for (int c = 0; c < DENSE_PLAN_CLASSES; c++) d->pick[c] = cand[0];
    if (nc > 1) {
        if ((rc = dense_plan_layer(d, cand, nc, err, errlen)) < 0) goto fail;
        int used[DENSE_BACKEND_COUNT] = {0};
        for (int c = 0; c < DENSE_PLAN_CLASSES; c++) used[d->pick[c]] = 1;
        if (!used[DENSE_BACKEND_ONEDNN]) {
            dense_onednn_free(d);
            d->dst_bytes = d->pad_bytes = 0;
        }
        if (!used[DENSE_BACKEND_PACKED]) dense_packed_free(d);
    }
    /* int8x2 on the VNNI kernel: its 2m rows of output go through the
     * workspace's dst part before the two levels are added. */
    if (d->prec == DENSE_INT8X2 && d->dst_bytes < dense_round_up((size_t)DENSE_MAX_ROWS * d->out * 4))
        d->dst_bytes = dense_round_up((size_t)DENSE_MAX_ROWS * d->out * 4);
    dense_plan_describe(d);
    *dp = d;
    return CTR_OK;
fail:
    if (rc == CTR_ENOMEM && err && !*err) ctr_fail(err, errlen, rc, "out of memory");
    free(wq);
    dense_free(d);
    return rc;
}

int dense_rt_init(int out, int in, int b_out_in, const dense_params *params, dense **dp,
                  char *err, size_t errlen) {
    *dp = NULL;
    dense_params p = params ? *params : dense_default_params();
    if (in < 1 || out < 1 || (p.ld_in && p.ld_in < in) || (p.ld_out && p.ld_out < out))
        return ctr_fail(err, errlen, CTR_EINVAL, "dense %d x %d: bad shape", out, in);
    if (p.precision != DENSE_BF16 ||
        (p.backend != DENSE_BACKEND_AUTO && p.backend != DENSE_BACKEND_ONEDNN))
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "weights given per call: bf16 on oneDNN only");
    linear_one_thread();
    dense *d = dense_alloc(out, in, &p, DENSE_BF16, DENSE_BACKEND_ONEDNN);
    if (!d) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    d->rt = 1;
    for (int c = 0; c < DENSE_PLAN_CLASSES; c++) d->pick[c] = DENSE_BACKEND_ONEDNN;
    int rc = dense_onednn_make_rt(d, b_out_in, err, errlen);
    if (rc < 0) {
        if (rc == CTR_ENOMEM && err && !*err) ctr_fail(err, errlen, rc, "out of memory");
        dense_free(d);
        return rc;
    }
    dense_plan_describe(d);
    *dp = d;
    return CTR_OK;
}

void dense_free(dense *d) {
    if (!d) return;
    dense_onednn_free(d);
    dense_packed_free(d);
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
    return d->pick[dense_plan_class(n < DENSE_MAX_ROWS ? n : DENSE_MAX_ROWS)];
}

double dense_plan_us(const dense *d, int c, dense_backend b) {
    if (c < 0 || c >= DENSE_PLAN_CLASSES || b < 0 || b >= DENSE_BACKEND_COUNT) return -1;
    return d->plan_us[c][b];
}

size_t dense_ws_size(const dense *d) {
    return d->src_bytes + d->dst_bytes + d->pad_bytes +
           dense_round_up(DENSE_MAX_ROWS * (sizeof(float) + sizeof(int32_t))) +
           dense_round_up((size_t)d->in * sizeof(float));
}

dense_ws_parts dense_ws_parts_of(const dense *d, dense_ws *ws) {
    dense_ws_parts p;
    p.src = ws->buf;
    p.dst = p.src + d->src_bytes;
    p.pad = p.dst + d->dst_bytes;
    p.scale = (float *)(p.pad + d->pad_bytes);
    p.zero = (int32_t *)(p.scale + DENSE_MAX_ROWS);
    p.row = (float *)((unsigned char *)p.scale +
                      dense_round_up(DENSE_MAX_ROWS * (sizeof(float) + sizeof(int32_t))));
    return p;
}

/* m <= DENSE_MAX_ROWS rows on kernel b (built), then post (NULL: none). */
int dense_run_kernel(const dense *d, dense_backend b, dense_ws *ws, int m, const float *x,
                     float *y, const dense_post *post) {
    switch (b) {
    case DENSE_BACKEND_OPENBLAS:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, d->out, d->in, 1.0f, x, d->ld_in,
                    d->w, d->in, 0.0f, y, d->ld_out);
        break;
    case DENSE_BACKEND_PACKED:
        if (dense_is_int8(d->prec)) {
            dense_vnni_chunk(d, ws, m, x, y, post);
            return CTR_OK;
        }
        gemm_packed(m, d->in, x, d->ld_in, d->packed, y, d->ld_out);
        break;
    case DENSE_BACKEND_ONEDNN:
        linear_one_thread();
        return dense_onednn_chunk(d, ws, m, x, y, post);
    default: return CTR_EINVAL;
    }
    if (post) dense_post_rows(m, d->out, y, d->ld_out, post);
    return CTR_OK;
}

/* The chunks of DENSE_MAX_ROWS rows (int8x2: half as many, it runs two
 * kernel rows a row), each on the kernel its plan class chose. */
static int forward_chunks(const dense *d, dense_ws *ws, int n, const float *x, float *y,
                          const dense_post *post) {
    if (n <= 0) return CTR_OK;
    if (!ws || ws->size < dense_ws_size(d)) return CTR_EINVAL;
    const int chunk = d->prec == DENSE_INT8X2 ? DENSE_MAX_ROWS / 2 : DENSE_MAX_ROWS;
    for (int i0 = 0; i0 < n; i0 += chunk) {
        int m = n - i0 < chunk ? n - i0 : chunk;
        dense_post pc, *pp = NULL;
        if (post) {
            pc = *post;
            pc.res += (size_t)i0 * post->ld;
            pc.dst += (size_t)i0 * post->ld;
            pp = &pc;
        }
        int rc = dense_run_kernel(d, d->pick[dense_plan_class(m)], ws, m,
                                  x + (size_t)i0 * d->ld_in, y + (size_t)i0 * d->ld_out, pp);
        if (rc < 0) return rc;
    }
    return CTR_OK;
}

int dense_forward(const dense *d, dense_ws *ws, int n, const float *x, float *y) {
    if (d->rt) return CTR_EINVAL;
    return forward_chunks(d, ws, n, x, y, NULL);
}

int dense_forward_post(const dense *d, dense_ws *ws, int n, const float *x, float *y,
                       const dense_post *post) {
    if (d->rt) return CTR_EINVAL;
    return forward_chunks(d, ws, n, x, y, post);
}

int dense_rt_forward(const dense *d, dense_ws *ws, int n, const float *x,
                     const unsigned short *w, float *y) {
    if (!d->rt || !w) return CTR_EINVAL;
    if (n <= 0) return CTR_OK;
    if (!ws) return CTR_EINVAL;
    ws->wrt = w;
    int rc = forward_chunks(d, ws, n, x, y, NULL);
    ws->wrt = NULL;
    return rc;
}

void dense_bf16_rows(int n, int in, const float *x, int ldx, unsigned short *q, int ldq) {
    if (ldq == in) {
        dense_rows_to_bf16(n, in, x, ldx, q);
        return;
    }
    for (int i = 0; i < n; i++)
        dense_rows_to_bf16(1, in, x + (size_t)i * ldx, ldx, q + (size_t)i * ldq);
}
