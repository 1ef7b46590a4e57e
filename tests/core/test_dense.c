/* test_dense.c - the dense layers of every precision and backend against a
 * naive double-precision product, on this machine's CPU (math libraries
 * have shipped silent wrong results for some CPUs, oneDNN's int8 and bf16
 * kernels among them):
 *   - fp32 on each backend within float rounding of the exact product;
 *   - bf16 exactly what it claims (the product of the bf16-rounded inputs,
 *     within float accumulation) and within its own bound of fp32;
 *   - int8 exactly what it claims (the integer product of the quantised
 *     inputs is exact) and within its own bound of fp32;
 * for row counts around every shape class, odd shapes and row strides
 * wider than the rows; plus the row quantiser, the bf16 rounding, the
 * refusals, that no call starts a thread, and that a layer's gated
 * residual fused into the call (dense_forward_post) is the same bits as
 * the product followed by the pass, and the bf16 products whose weights
 * come with each call (dense_rt: the attention's) what bf16 claims.
 *
 * The planner (dense.h, AUTO): every kernel it may pick for a precision on
 * this CPU is checked as above on its own, the int8 kernels give the same
 * bits as each other, the pick follows the planner's own timings, and
 * oneDNN's instruction set is what the CPU and the environment allow.
 * tests/run.sh runs these again with oneDNN held below AMX
 * (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, argument "plan"), so both routes
 * are checked on a host that has AMX; on a host without it the capped run
 * is the same as the first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dense.h"
#include "core/dense_internal.h"
#include "core/gemm.h"
#include "core/linear.h"

static uint64_t rng = 12345;
static float uni(void) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(rng >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

static float *falloc(size_t n) {
    float *p = aligned_alloc(64, ((n * sizeof(float)) + 63) & ~(size_t)63);
    assert_non_null(p);
    return p;
}

static float bf16_value(float f) {
    uint32_t u = (uint32_t)dense_bf16_round(f) << 16;
    float r;
    memcpy(&r, &u, sizeof r);
    return r;
}

/* One operand as each precision sees it: a row of x, or a row of W (one
 * output channel), as given, rounded to bfloat16, and quantised as dense.h
 * says: a weight row symmetric (scale max |w| / 127, q in -127..127), a row
 * of x over its range with a zero point (q - zero in the u8 range).  q holds
 * the integer the product uses (q - zero for x) and e the rounding left,
 * v = scale (q + e). */
typedef struct operand {
    double *v, *b, *q, *e;
    double scale;
} operand;

static void operand_make(operand *op, const float *v, int in, int is_x) {
    op->v = malloc((size_t)in * sizeof(double));
    op->b = malloc((size_t)in * sizeof(double));
    op->q = malloc((size_t)in * sizeof(double));
    op->e = malloc((size_t)in * sizeof(double));
    float lo = 0, hi = 0, inv, zero = 0;
    for (int k = 0; k < in; k++) {
        lo = v[k] < lo ? v[k] : lo;
        hi = v[k] > hi ? v[k] : hi;
    }
    if (is_x) {
        inv = hi - lo > 0 ? 255.0f / (hi - lo) : 0.0f;
        op->scale = hi - lo > 0 ? (hi - lo) / 255.0f : 1.0;
        zero = nearbyintf(-lo * inv);
    } else {
        float m = hi > -lo ? hi : -lo;
        inv = m > 0 ? 127.0f / m : 0.0f;
        op->scale = m / 127.0f;
    }
    for (int k = 0; k < in; k++) {
        op->v[k] = v[k];
        op->b[k] = bf16_value(v[k]);
        float q = nearbyintf(v[k] * inv) + zero;
        if (is_x) q = q > 255 ? 255 : (q < 0 ? 0 : q);
        op->q[k] = q - zero;
        op->e[k] = op->scale > 0 ? v[k] / op->scale - op->q[k] : 0;
    }
}

static void operand_free(operand *op) {
    free(op->v);
    free(op->b);
    free(op->q);
    free(op->e);
}

/* What the precision should give for x . w, in double, and how far the
 * layer may be from it: `claim` is the product of the inputs as the
 * precision rounds them (checks that the library computes what it says),
 * `exact` the product of the float inputs (the precision's own bound). */
typedef struct expect {
    double claim, claim_tol, exact, exact_tol;
} expect;

/* int8x2's bound on x . w (dense.h): its weights are W / f rounded per
 * row (step sw, half a step off at most, times f_k on x_k), and its rows
 * keep a residual of half a step of the second level (s1 / 255 / 2 at
 * most, on W / f); a few float roundings of each level's sum. */
static double int8x2_bound(const double *x, const double *w, const double *f, int in) {
    double wm = 0, lo = 0, hi = 0, xabs = 0, wabs = 0, sabs = 0;
    for (int k = 0; k < in; k++) {
        double wb = w[k] / f[k], xb = x[k] * f[k];
        wm = fabs(wb) > wm ? fabs(wb) : wm;
        lo = xb < lo ? xb : lo;
        hi = xb > hi ? xb : hi;
        xabs += fabs(xb);
        wabs += fabs(wb);
        sabs += fabs(x[k] * w[k]);
    }
    const double sw = wm / 127, s1 = (hi - lo) / 255;
    return 0.5 * sw * xabs * 1.01 + (0.5 * s1 / 255 * 1.01) * (wabs + 0.5 * sw * in) +
           1e-6 * (sabs + sw * xabs) + 1e-30;
}

static expect expected(dense_precision p, const operand *x, const operand *w, int in) {
    expect e = {0, 0, 0, 0};
    double sabs = 0, babs = 0, bsum = 0, qsum = 0;
    for (int k = 0; k < in; k++) {
        double t = x->v[k] * w->v[k], tb = x->b[k] * w->b[k];
        e.exact += t;
        sabs += fabs(t);
        bsum += tb;
        babs += fabs(tb);
        qsum += x->q[k] * w->q[k];
    }
    /* float accumulation: a few ulps of the sum of magnitudes */
    const double acc = 4e-7 * (1 + log2(in));
    if (p == DENSE_FP32) {
        e.claim = e.exact;
        e.claim_tol = e.exact_tol = acc * sabs + 1e-30;
    } else if (p == DENSE_BF16) {
        e.claim = bsum;
        e.claim_tol = acc * babs + 1e-30;
        /* each input rounded to 8 significant bits: relative error <= 2^-9
         * each, so <= 2^-8 + 2^-18 per product */
        e.exact_tol = sabs * (1.0 / 256 + 1.0 / 262144) + e.claim_tol;
    } else {
        /* The int32 sum of the quantised values is exact; only the final
         * scaling rounds (a few float roundings of sums below 2^26). */
        e.claim = qsum * x->scale * w->scale;
        double qabs = 0, bound = 0;
        for (int k = 0; k < in; k++) {
            qabs += fabs(x->q[k] * w->q[k]);
            /* x w - sx sw qx qw = sx sw (qx ew + ex qw + ex ew), |ew| <= 1/2 */
            bound += 0.5 * fabs(x->q[k]) + fabs(x->e[k]) * (fabs(w->q[k]) + 0.5);
        }
        e.claim_tol = 4e-7 * qabs * x->scale * w->scale + 1e-30;
        e.exact_tol = 1.01 * x->scale * w->scale * bound + e.claim_tol;
    }
    return e;
}

/* Runs d on n random rows (strides ld_in, ld_out) and checks every output
 * against `expected`; the padding of y and x itself must stay as they were. */
static void check_layer(dense *d, dense_ws *ws, const operand *wo, int n, int ld_in, int ld_out,
                        double *worst_claim, double *worst_exact) {
    const int in = dense_in(d), out = dense_out(d);
    const dense_precision p = dense_get_precision(d);
    /* int8x2's column balance, f_k = sqrt(max_o |W[o, k]|), as dense.h says */
    double *f = calloc((size_t)in, sizeof *f);
    for (int o = 0; o < out; o++)
        for (int k = 0; k < in; k++) f[k] = fabs(wo[o].v[k]) > f[k] ? fabs(wo[o].v[k]) : f[k];
    for (int k = 0; k < in; k++) f[k] = f[k] > 0 ? (double)sqrtf((float)f[k]) : 1.0;
    float *x = falloc((size_t)(n ? n : 1) * ld_in), *x_copy = falloc((size_t)(n ? n : 1) * ld_in),
          *y = falloc((size_t)(n ? n : 1) * ld_out);
    for (int i = 0; i < n * ld_in; i++) x[i] = uni() * (1.0f + (float)(i % 7));
    if (n > 2)
        for (int k = 0; k < in; k++) x[(size_t)2 * ld_in + k] = 0.0f; /* an all-zero row */
    memcpy(x_copy, x, (size_t)n * ld_in * sizeof *x);
    for (int i = 0; i < n * ld_out; i++) y[i] = 12345.0f;
    assert_int_equal(dense_forward(d, ws, n, x, y), CTR_OK);
    assert_memory_equal(x, x_copy, (size_t)n * ld_in * sizeof *x);
    for (int i = 0; i < n; i++) {
        operand xo;
        operand_make(&xo, x + (size_t)i * ld_in, in, 1);
        for (int o = 0; o < out; o++) {
            expect e = expected(p, &xo, &wo[o], in);
            if (p == DENSE_INT8X2) { /* only its bound against the exact product */
                e.claim = e.exact;
                e.claim_tol = e.exact_tol = int8x2_bound(xo.v, wo[o].v, f, in);
            }
            double got = y[(size_t)i * ld_out + o];
            double dc = fabs(got - e.claim), de = fabs(got - e.exact);
            if (dc > e.claim_tol || de > e.exact_tol)
                fail_msg("%s n=%d y[%d][%d] = %.9g: claim %.9g (off %.3g, tol %.3g), exact "
                         "%.9g (off %.3g, tol %.3g)", dense_describe(d), n, i, o, got, e.claim,
                         dc, e.claim_tol, e.exact, de, e.exact_tol);
            if (dc / e.claim_tol > *worst_claim) *worst_claim = dc / e.claim_tol;
            if (de / e.exact_tol > *worst_exact) *worst_exact = de / e.exact_tol;
        }
        operand_free(&xo);
        for (int o = out; o < ld_out; o++)
            if (y[(size_t)i * ld_out + o] != 12345.0f)
                fail_msg("%s n=%d: y[%d][%d] past the row was written", dense_describe(d), n, i, o);
    }
    free(x); free(x_copy); free(y); free(f);
}

/* Row counts around oneDNN's shape classes (1..16, multiples of 8, chunks
 * of DENSE_MAX_ROWS) and the planner's classes (8 | 9, 32 | 33, 128 | 129). */
static const int counts[] = {0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 23, 24, 25, 32, 33, 47, 48, 49,
                             64, 65, 100, 128, 129, 255, 256, 257, 300};

static void run_shapes(dense_precision p, dense_backend b) {
    static const int shapes[][2] = {{32, 32}, {160, 160}, {48, 80}, {37, 100}, {1024, 1024}};
    char err[256];
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const int out = shapes[s][0], in = shapes[s][1];
        if (b == DENSE_BACKEND_PACKED && p == DENSE_FP32 &&
            (in != out || !gemm_packed_supported(in)))
            continue;
        if (b == DENSE_BACKEND_PACKED && (p == DENSE_INT8 || p == DENSE_INT8X2) &&
            !dense_vnni_supported(out, in))
            continue;
        float *w = falloc((size_t)out * in);
        for (int i = 0; i < out * in; i++) w[i] = uni() / sqrtf((float)in);
        for (int k = 0; k < in; k++) w[k] = 0.0f; /* an all-zero output channel */
        operand *wo = malloc((size_t)out * sizeof *wo);
        for (int o = 0; o < out; o++) operand_make(&wo[o], w + (size_t)o * in, in, 0);
        for (int padded = 0; padded < 2; padded++) {
            dense_params dp = dense_default_params();
            dp.precision = p;
            dp.backend = b;
            dp.ld_in = padded ? in + 16 : 0;
            dp.ld_out = padded ? out + 5 : 0;
            dense *d;
            if (dense_init(w, out, in, &dp, &d, err, sizeof err) < 0) fail_msg("%s", err);
            dense_ws *ws;
            assert_int_equal(dense_ws_init(dense_ws_size(d), &ws), CTR_OK);
            double wc = 0, we = 0;
            for (size_t c = 0; c < sizeof counts / sizeof *counts; c++) {
                /* the largest shape at a few counts only, for time */
                if (in == 1024 && counts[c] != 1 && counts[c] != 17 && counts[c] != 64 &&
                    counts[c] != 65)
                    continue;
                check_layer(d, ws, wo, counts[c], padded ? in + 16 : in, padded ? out + 5 : out,
                            &wc, &we);
            }
            printf("%-60s %4dx%-4d ld %s: worst error / bound: %.2f (own claim), %.2f (exact "
                   "product)\n", dense_describe(d), out, in, padded ? "padded" : "tight", wc, we);
            dense_ws_free(ws);
            dense_free(d);
        }
        for (int o = 0; o < out; o++) operand_free(&wo[o]);
        free(wo);
        free(w);
    }
}

static void test_fp32_auto(void **state) { (void)state; run_shapes(DENSE_FP32, DENSE_BACKEND_AUTO); }
static void test_fp32_onednn(void **state) { (void)state; run_shapes(DENSE_FP32, DENSE_BACKEND_ONEDNN); }
static void test_fp32_packed(void **state) { (void)state; run_shapes(DENSE_FP32, DENSE_BACKEND_PACKED); }
static void test_fp32_openblas(void **state) { (void)state; run_shapes(DENSE_FP32, DENSE_BACKEND_OPENBLAS); }
static void test_bf16(void **state) { (void)state; run_shapes(DENSE_BF16, DENSE_BACKEND_AUTO); }
static void test_int8(void **state) { (void)state; run_shapes(DENSE_INT8, DENSE_BACKEND_AUTO); }
static void test_int8x2(void **state) { (void)state; run_shapes(DENSE_INT8X2, DENSE_BACKEND_AUTO); }
static void test_int8_onednn(void **state) { (void)state; run_shapes(DENSE_INT8, DENSE_BACKEND_ONEDNN); }
static void test_int8_vnni(void **state) {
    (void)state;
    if (!dense_vnni_supported(32, 32)) skip(); /* no AVX512_VNNI on this CPU */
    run_shapes(DENSE_INT8, DENSE_BACKEND_PACKED);
}

static void test_precision_names(void **state) {
    (void)state;
    dense_precision p;
    for (int i = 0; i < DENSE_PRECISION_COUNT; i++) {
        assert_int_equal(dense_precision_parse(dense_precision_name(i), &p), CTR_OK);
        assert_int_equal(p, i);
    }
    assert_int_equal(dense_precision_parse("INT8", &p), CTR_OK);
    assert_int_equal(p, DENSE_INT8);
    assert_int_equal(dense_precision_parse("int", &p), CTR_EINVAL);
    assert_int_equal(dense_precision_parse("fp32x", &p), CTR_EINVAL);
    assert_int_equal(dense_precision_parse("", &p), CTR_EINVAL);
    assert_true(dense_precision_exact(DENSE_FP32));
    assert_false(dense_precision_exact(DENSE_BF16));
    assert_false(dense_precision_exact(DENSE_INT8));
    assert_string_equal(dense_precision_name(DENSE_BF16), "bf16");
}

static void test_bf16_rounding(void **state) {
    (void)state;
    assert_int_equal(dense_bf16_round(1.0f), 0x3f80);
    assert_int_equal(dense_bf16_round(-2.0f), 0xc000);
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (down) */
    assert_int_equal(dense_bf16_round(1.0f + 1.0f / 256), 0x3f80);
    /* 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: up to even */
    assert_int_equal(dense_bf16_round(1.0f + 3.0f / 256), 0x3f82);
    assert_int_equal(dense_bf16_round(1.0f + 1.0f / 256 + 1.0f / 65536), 0x3f81);
    for (int i = 0; i < 10000; i++) {
        float f = uni() * 1000.0f;
        float r = bf16_value(f);
        assert_true(fabsf(r - f) <= fabsf(f) / 256.0f);
    }
}

/* One length's checks: the range, the zero point, every byte against the
 * formula (the AVX-512 loops take 64 and 16 values a step, then a scalar
 * tail: lengths of every kind). */
static void quantize_row_len(int in) {
    float x[1100];
    unsigned char q[1100];
    int32_t zero;
    for (int k = 0; k < in; k++) x[k] = uni() * 3.0f;
    x[11] = -4.5f; /* the range: -4.5 .. 3.5 */
    x[in - 7] = 3.5f;
    float s = dense_quantize_row(x, in, q, &zero);
    assert_true(fabsf(s - 8.0f / 255.0f) < 1e-7f);
    assert_int_equal(zero, (int)nearbyintf(4.5f * 255.0f / 8.0f));
    assert_int_equal(q[11], 0);
    assert_int_equal(q[in - 7], 255);
    for (int k = 0; k < in; k++) {
        int want = (int)nearbyintf(x[k] * (255.0f / 8.0f)) + zero;
        want = want < 0 ? 0 : (want > 255 ? 255 : want);
        assert_int_equal(q[k], want);
        assert_true(fabsf(((int)q[k] - zero) * s - x[k]) <= 0.5f * s + 1e-6f);
    }
    /* One sign only: the range still holds 0 (zero point 0 or 255). */
    for (int k = 0; k < in; k++) x[k] = 1.0f + fabsf(uni());
    s = dense_quantize_row(x, in, q, &zero);
    assert_int_equal(zero, 0);
    for (int k = 0; k < in; k++) x[k] = -x[k];
    s = dense_quantize_row(x, in, q, &zero);
    assert_int_equal(zero, 255);
    memset(x, 0, sizeof x);
    s = dense_quantize_row(x, in, q, &zero);
    assert_true(s == 1.0f);
    assert_int_equal(zero, 0);
    for (int k = 0; k < in; k++) assert_int_equal(q[k], 0);
}

static void test_quantize_row(void **state) {
    (void)state;
    static const int lens[] = {37, 64, 80, 141, 1024, 1029};
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) quantize_row_len(lens[i]);
}

/* The quantiser of a call's rows (several rows at once, their scales
 * computed together) gives each row the bytes, scale and zero point
 * dense_quantize_row gives it alone: rows of mixed ranges (both signs, one
 * sign, all zero) in batches of every size, tight and padded strides. */
static void test_quantize_rows(void **state) {
    (void)state;
    static const int ins[] = {37, 256, 1024};
    static const int ms[] = {1, 7, 8, 13, 64};
    for (size_t a = 0; a < sizeof ins / sizeof *ins; a++)
        for (int padded = 0; padded < 2; padded++) {
            const int in = ins[a], ld = in + (padded ? 5 : 0), M = 64;
            float *w = calloc((size_t)32 * in, sizeof *w), *x = calloc((size_t)M * ld, sizeof *x),
                  scale[64], row[1024];
            unsigned char *q = malloc((size_t)M * in), *want = malloc((size_t)in);
            int32_t zero[64];
            assert_non_null(w);
            assert_non_null(x);
            for (int k = 0; k < 32 * in; k++) w[k] = uni();
            dense_params p = dense_default_params();
            p.precision = DENSE_INT8;
            p.backend = DENSE_BACKEND_ONEDNN; /* no planning: only the rows matter here */
            p.ld_in = ld;
            dense *d;
            assert_int_equal(dense_init(w, 32, in, &p, &d, NULL, 0), CTR_OK);
            for (int i = 0; i < M; i++)
                for (int k = 0; k < in; k++) {
                    float v = uni() * (float)(1 + i % 5);
                    x[(size_t)i * ld + k] = i % 7 == 3 ? 0.0f : (i % 7 == 4 ? fabsf(v)
                                                          : (i % 7 == 5 ? -fabsf(v) : v));
                }
            for (size_t b = 0; b < sizeof ms / sizeof *ms; b++) {
                const int m = ms[b];
                dense_quantize_rows(d, m, x, q, scale, zero, row);
                for (int i = 0; i < m; i++) {
                    int32_t z;
                    float s = dense_quantize_row(x + (size_t)i * ld, in, want, &z);
                    assert_true(s == scale[i]);
                    assert_int_equal(z, zero[i]);
                    assert_memory_equal(want, q + (size_t)i * in, (size_t)in);
                }
            }
            dense_free(d);
            free(w);
            free(x);
            free(q);
            free(want);
        }
}

static void test_refusals(void **state) {
    (void)state;
    float w[64 * 48];
    for (int i = 0; i < 64 * 48; i++) w[i] = uni();
    dense *d;
    char err[256];
    dense_params dp = dense_default_params();
    dp.precision = DENSE_INT8;
    dp.backend = DENSE_BACKEND_OPENBLAS;
    assert_int_equal(dense_init(w, 64, 48, &dp, &d, err, sizeof err), CTR_EINVAL);
    assert_non_null(strstr(err, "does not run on that backend"));
    dp.backend = DENSE_BACKEND_PACKED; /* int8 kernel: 64 outputs, 48 inputs fit; 60 do not */
    if (dense_vnni_supported(64, 48)) {
        assert_int_equal(dense_init(w, 60, 48, &dp, &d, err, sizeof err), CTR_EINVAL);
        assert_non_null(strstr(err, "multiple of 32"));
    }
    dp = dense_default_params();
    dp.backend = DENSE_BACKEND_PACKED; /* not square */
    assert_int_equal(dense_init(w, 64, 48, &dp, &d, err, sizeof err), CTR_EINVAL);
    dp = dense_default_params();
    dp.ld_in = 10; /* shorter than a row */
    assert_int_equal(dense_init(w, 64, 48, &dp, &d, err, sizeof err), CTR_EINVAL);
    w[100] = NAN;
    assert_int_equal(dense_init(w, 64, 48, NULL, &d, err, sizeof err), CTR_EINVAL);
    w[100] = 0.5f;
    /* A workspace too small for the layer is refused, not overrun. */
    dp = dense_default_params();
    dp.precision = DENSE_INT8;
    assert_int_equal(dense_init(w, 64, 48, &dp, &d, err, sizeof err), CTR_OK);
    dense_ws *ws;
    assert_int_equal(dense_ws_init(64, &ws), CTR_OK);
    float x[48] = {1}, y[64];
    assert_int_equal(dense_forward(d, ws, 1, x, y), CTR_EINVAL);
    assert_int_equal(dense_forward(d, ws, 0, x, y), CTR_OK);
    dense_ws_free(ws);
    dense_free(d);
}

/* --- threads ------------------------------------------------------------ */

static int thread_count(void) {
    DIR *dir = opendir("/proc/self/task");
    if (!dir) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(dir));) n += e->d_name[0] != '.';
    closedir(dir);
    return n;
}

typedef struct run_arg {
    dense *d;
    int threads_after;
} run_arg;

static void *run_in_thread(void *p) {
    run_arg *a = p;
    dense_ws *ws;
    if (dense_ws_init(dense_ws_size(a->d), &ws) < 0) return NULL;
    const int n = 256, in = dense_in(a->d), out = dense_out(a->d);
    float *x = falloc((size_t)n * in), *y = falloc((size_t)n * out);
    for (int i = 0; i < n * in; i++) x[i] = uni();
    dense_forward(a->d, ws, n, x, y);
    linear_gemm(n, n, in, x, in, x, in, 1, 0.0f, y, n); /* x x^T: n x n <= n x out */
    a->threads_after = thread_count();
    free(x); free(y);
    dense_ws_free(ws);
    return NULL;
}

/* oneDNN here runs on OpenMP, whose default team is one thread per core:
 * dense.h promises that a call runs on its caller's thread only, in the
 * thread that made the layer and in any other. */
static void *noop(void *arg) { return arg; }

static void test_one_thread_per_call(void **state) {
    (void)state;
    /* A thread started and joined first: ThreadSanitizer's runtime starts
     * a background thread of its own at the process's first
     * pthread_create, which must not count as the call's. */
    pthread_t t0;
    assert_int_equal(pthread_create(&t0, NULL, noop, NULL), 0);
    pthread_join(t0, NULL);
    const int D = 512;
    float *w = falloc((size_t)D * D);
    for (int i = 0; i < D * D; i++) w[i] = uni();
    char err[256];
    for (int p = 0; p < DENSE_PRECISION_COUNT; p++) {
        dense_params dp = dense_default_params();
        dp.precision = p;
        dp.backend = DENSE_BACKEND_ONEDNN;
        int before = thread_count();
        dense *d;
        if (dense_init(w, D, D, &dp, &d, err, sizeof err) < 0) fail_msg("%s", err);
        run_arg a = {d, 0};
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, run_in_thread, &a), 0);
        pthread_join(t, NULL);
        /* The test's own thread is the one extra. At most: a thread
         * joined just before (t0, the last round's) can still be counted
         * in /proc until the kernel reaps it, so the count may drop. */
        if (a.threads_after > before + 1)
            fail_msg("%s: %d threads during a call, %d before", dense_describe(d),
                     a.threads_after, before);
        dense_free(d);
    }
    free(w);
}

/* --- the planner ------------------------------------------------------------ */

/* Every kernel AUTO may pick, forced, against the exact product. */
static void test_candidates_exact(void **state) {
    (void)state;
    for (int p = 0; p < DENSE_PRECISION_COUNT; p++) {
        dense_backend cand[DENSE_BACKEND_COUNT];
        int nc = dense_candidates(p, 1024, 1024, cand);
        assert_true(nc >= 1);
        assert_int_equal(cand[0], DENSE_BACKEND_ONEDNN);
        for (int k = 0; k < nc; k++) run_shapes(p, cand[k]);
    }
}

/* The int8 kernels compute the same integers and scale them the same way:
 * their outputs are the same bits, at every row count. */
static void int8_kernels_agree(dense_precision prec) {
    const int out = 256, in = 320, n = 300;
    dense_backend cand[DENSE_BACKEND_COUNT];
    int nc = dense_candidates(prec, out, in, cand);
    if (nc < 2) skip(); /* one int8 kernel on this CPU */
    float *w = falloc((size_t)out * in), *x = falloc((size_t)n * in);
    float *y[DENSE_BACKEND_COUNT];
    for (int i = 0; i < out * in; i++) w[i] = uni();
    for (int i = 0; i < n * in; i++) x[i] = uni() * 3.0f;
    char err[256];
    static const int rows[] = {1, 5, 8, 9, 33, 64, 129, 256, 300};
    for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
        for (int k = 0; k < nc; k++) {
            dense_params dp = dense_default_params();
            dp.precision = prec;
            dp.backend = cand[k];
            dense *d;
            dense_ws *ws;
            if (dense_init(w, out, in, &dp, &d, err, sizeof err) < 0) fail_msg("%s", err);
            assert_int_equal(dense_ws_init(dense_ws_size(d), &ws), CTR_OK);
            y[k] = falloc((size_t)n * out);
            assert_int_equal(dense_forward(d, ws, rows[r], x, y[k]), CTR_OK);
            if (k > 0 && memcmp(y[0], y[k], (size_t)rows[r] * out * sizeof(float)) != 0)
                fail_msg("%d rows: %s and %s differ", rows[r], dense_backend_name(cand[0]),
                         dense_backend_name(cand[k]));
            dense_ws_free(ws);
            dense_free(d);
        }
        for (int k = 0; k < nc; k++) free(y[k]);
    }
    free(w);
    free(x);
}

/* int8 weights given to dense_init (dense_params.int8: what a model file
 * rounded with calibration data carries) are the integers the product
 * uses, on every kernel that runs the precision here: rows of integers
 * from 0 to 255 quantise exactly (scale 1, zero point 0; int8x2 with every
 * column's balance 2: scale 2, and the second level is all zero), so the
 * result is the integer product times the scales, to the bit.  The
 * integers differ from round-to-nearest's (every weight near a tie
 * rounded the other way), so a kernel that rounded w itself would fail.
 * int8 with a balance, an integer -128 and a negative scale are refused. */
static void given_int8(dense_precision prec, dense_backend b) {
    enum { OUT = 64, IN = 40, N = 33 };
    float *w = falloc((size_t)OUT * IN), *x = falloc((size_t)N * IN), *y = falloc((size_t)N * OUT);
    signed char q[OUT * IN];
    float scale[OUT], bal[IN];
    const float f = prec == DENSE_INT8X2 ? 2.0f : 1.0f;
    for (int k = 0; k < IN; k++) bal[k] = f;
    int flipped = 0;
    for (int o = 0; o < OUT; o++) {
        float m = 0.0f;
        for (int k = 0; k < IN; k++) {
            w[o * IN + k] = uni() * 0.3f;
            m = fmaxf(m, fabsf(w[o * IN + k] / f));
        }
        scale[o] = m / 127.0f;
        for (int k = 0; k < IN; k++) {
            float v = w[o * IN + k] / f / scale[o], r = nearbyintf(v);
            if (fabsf(v - r) > 0.4f && fabsf(r) < 127.0f) {
                r += v > r ? 1.0f : -1.0f;
                flipped++;
            }
            q[o * IN + k] = (signed char)r;
        }
    }
    assert_true(flipped > OUT * IN / 10);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < IN; k++)
            x[i * IN + k] = k == 0 ? 0.0f : k == 1 ? 255.0f : (float)((i * 37 + k * 11) % 256);
    dense_int8 g = {q, scale, prec == DENSE_INT8X2 ? bal : NULL};
    dense_params dp = dense_default_params();
    dp.precision = prec;
    dp.backend = b;
    dp.int8 = &g;
    dense *d;
    dense_ws *ws;
    char err[256];
    if (dense_init(w, OUT, IN, &dp, &d, err, sizeof err) < 0) fail_msg("%s", err);
    assert_non_null(strstr(dense_describe(d), "(int8 weights given)"));
    assert_int_equal(dense_ws_init(dense_ws_size(d), &ws), CTR_OK);
    for (int n = 1; n <= N; n += 8) {
        assert_int_equal(dense_forward(d, ws, n, x, y), CTR_OK);
        for (int i = 0; i < n; i++)
            for (int o = 0; o < OUT; o++) {
                int32_t acc = 0;
                for (int k = 0; k < IN; k++) acc += q[o * IN + k] * (int32_t)x[i * IN + k];
                const float want = (float)acc * (f * scale[o]);
                if (y[i * OUT + o] != want)
                    fail_msg("%s, %d rows: y[%d][%d] = %.9g, the given integers make %.9g",
                             dense_describe(d), n, i, o, y[i * OUT + o], want);
            }
    }
    dense_ws_free(ws);
    dense_free(d);
    if (prec == DENSE_INT8 && b == DENSE_BACKEND_AUTO) {
        g.balance = bal;
        assert_int_equal(dense_init(w, OUT, IN, &dp, &d, err, sizeof err), CTR_EINVAL);
        assert_non_null(strstr(err, "int8x2"));
        g.balance = NULL;
        q[5] = -128;
        assert_int_equal(dense_init(w, OUT, IN, &dp, &d, err, sizeof err), CTR_EINVAL);
        assert_non_null(strstr(err, "-127..127"));
        q[5] = 0;
        scale[3] = -1.0f;
        assert_int_equal(dense_init(w, OUT, IN, &dp, &d, err, sizeof err), CTR_EINVAL);
        assert_non_null(strstr(err, "scale"));
    }
    free(w);
    free(x);
    free(y);
}

static void test_given_int8(void **state) {
    (void)state;
    for (int p = DENSE_INT8; p <= DENSE_INT8X2; p++) {
        dense_backend cand[DENSE_BACKEND_COUNT];
        int nc = dense_candidates((dense_precision)p, 64, 40, cand);
        given_int8((dense_precision)p, DENSE_BACKEND_AUTO);
        for (int c = 0; c < nc; c++) given_int8((dense_precision)p, cand[c]);
    }
}

static void test_int8_kernels_agree(void **state) {
    (void)state;
    int8_kernels_agree(DENSE_INT8);
    int8_kernels_agree(DENSE_INT8X2);
}

/* The gated residual (dense_post) done inside the call is the same bits as
 * dense_forward followed by dense_post_rows, on every kernel the planner
 * may pick (and OpenBLAS for fp32), at row counts around the classes and
 * the chunk size, with padded rows, into another buffer and in place
 * (dst = res = x, as QIN's layers run). */
static void post_matches(dense_precision prec, dense_backend b) {
    const int D = 256, ld = 272, n = 300;
    float *w = falloc((size_t)D * D), *x = falloc((size_t)n * ld), *bias = falloc(D),
          *shift = falloc(D);
    float *y = falloc((size_t)n * ld), *ref = falloc((size_t)n * ld), *got = falloc((size_t)n * ld);
    for (int i = 0; i < D * D; i++) w[i] = uni() * 0.1f;
    for (int i = 0; i < n * ld; i++) x[i] = uni() * 2.0f;
    for (int o = 0; o < D; o++) bias[o] = uni(), shift[o] = uni();
    dense_params dp = dense_default_params();
    dp.precision = prec;
    dp.backend = b;
    dp.ld_in = dp.ld_out = ld;
    dense *d;
    dense_ws *ws;
    char err[256];
    if (dense_init(w, D, D, &dp, &d, err, sizeof err) < 0) fail_msg("%s", err);
    assert_int_equal(dense_ws_init(dense_ws_size(d), &ws), CTR_OK);
    static const int rows[] = {1, 5, 8, 9, 33, 64, 128, 129, 256, 300};
    for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
        const int m = rows[r];
        for (int inplace = 0; inplace < 2; inplace++) {
            /* reference: the product, then the pass */
            memcpy(ref, x, (size_t)n * ld * sizeof(float));
            assert_int_equal(dense_forward(d, ws, m, ref, y), CTR_OK);
            float *rdst = inplace ? ref : falloc((size_t)n * ld);
            dense_post p = {bias, shift, 0.25f, ref, rdst, ld};
            dense_post_rows(m, D, y, ld, &p);
            /* fused */
            memcpy(got, x, (size_t)n * ld * sizeof(float));
            float *gdst = inplace ? got : falloc((size_t)n * ld);
            dense_post q = {bias, shift, 0.25f, got, gdst, ld};
            assert_int_equal(dense_forward_post(d, ws, m, got, y, &q), CTR_OK);
            for (int i = 0; i < m; i++)
                if (memcmp(rdst + (size_t)i * ld, gdst + (size_t)i * ld, D * sizeof(float)))
                    fail_msg("%s, %d rows, %s: row %d differs", dense_describe(d), m,
                             inplace ? "in place" : "apart", i);
            if (!inplace) free(rdst), free(gdst);
        }
    }
    dense_ws_free(ws);
    dense_free(d);
    free(w), free(x), free(bias), free(shift), free(y), free(ref), free(got);
}

/* Weights given per call (dense_rt): exactly what bf16 claims, the product
 * of the bf16-rounded operands within float accumulation, for W as out x in
 * rows and as in x out rows, strided x and y, row counts around the
 * classes and past a chunk; W changed between calls is used as given. */
static void rt_check(int out, int in, int b_out_in) {
    const int n = 300, ldx = in + 5, ldy = out + 3;
    float *x = falloc((size_t)n * ldx), *y = falloc((size_t)n * ldy), *wf = falloc((size_t)out * in);
    unsigned short *w = aligned_alloc(64, ((size_t)out * in * 2 + 63) & ~(size_t)63);
    assert_non_null(w);
    for (int i = 0; i < n * ldx; i++) x[i] = uni() * 3.0f;
    dense_params dp = dense_default_params();
    dp.precision = DENSE_BF16;
    dp.ld_in = ldx;
    dp.ld_out = ldy;
    dense *d;
    dense_ws *ws;
    char err[256];
    if (dense_rt_init(out, in, b_out_in, &dp, &d, err, sizeof err) < 0) {
        /* oneDNN has bf16 matmuls from AVX-512 on; QIN uses them on AMX only */
        if (!strstr(dense_cpu_isa(), "avx512_core")) skip();
        fail_msg("%s", err);
    }
    assert_int_equal(dense_ws_init(dense_ws_size(d), &ws), CTR_OK);
    assert_int_equal(dense_forward(d, ws, 1, x, y), CTR_EINVAL); /* needs its weights */
    static const int rows[] = {1, 7, 16, 17, 64, 129, 256, 300};
    double worst = 0;
    for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
        for (int i = 0; i < out * in; i++) { /* new weights every call */
            wf[i] = uni();
            w[i] = dense_bf16_round(wf[i]);
        }
        const int m = rows[r];
        assert_int_equal(dense_rt_forward(d, ws, m, x, w, y), CTR_OK);
        for (int i = 0; i < m; i++)
            for (int o = 0; o < out; o++) {
                double ref = 0, mag = 0;
                for (int k = 0; k < in; k++) {
                    /* element (k, o) of the in x out operand */
                    const size_t at = b_out_in ? (size_t)o * in + k : (size_t)k * out + o;
                    double a = bf16_value(x[(size_t)i * ldx + k]), b = bf16_value(wf[at]);
                    ref += a * b;
                    mag += fabs(a * b);
                }
                const double e = fabs(y[(size_t)i * ldy + o] - ref), bound = in * 1.2e-7 * mag + 1e-30;
                if (e / bound > worst) worst = e / bound;
                if (e > bound)
                    fail_msg("%s %d x %d (%s), %d rows: y[%d][%d] %.9g, exact %.9g", dense_describe(d),
                             out, in, b_out_in ? "out x in" : "in x out", m, i, o,
                             (double)y[(size_t)i * ldy + o], ref);
            }
    }
    printf("%-60s %4dx%-4d %s: worst error / bound %.2f\n", dense_describe(d), out, in,
           b_out_in ? "out x in" : "in x out", worst);
    dense_ws_free(ws);
    dense_free(d);
    free(x), free(y), free(wf), free(w);
}

static void test_rt(void **state) {
    (void)state;
    rt_check(64, 384, 1);   /* QIN's attention scores: T (A H)^T */
    rt_check(384, 64, 0);   /* pooling: S (B H) */
    rt_check(96, 64, 0);    /* the first layer's S (V H), narrower */
    rt_check(40, 36, 1);    /* odd shapes */
    dense *d;
    dense_params dp = dense_default_params();
    dp.precision = DENSE_INT8;
    assert_int_equal(dense_rt_init(8, 8, 1, &dp, &d, NULL, 0), CTR_EINVAL);
}

static void test_post_fused(void **state) {
    (void)state;
    for (int p = 0; p < DENSE_PRECISION_COUNT; p++) {
        dense_backend cand[DENSE_BACKEND_COUNT];
        int nc = dense_candidates(p, 256, 256, cand);
        for (int k = 0; k < nc; k++) post_matches(p, cand[k]);
        post_matches(p, DENSE_BACKEND_AUTO);
    }
    post_matches(DENSE_FP32, DENSE_BACKEND_OPENBLAS);
}

static void test_plan_pick(void **state) {
    (void)state;
    double a[] = {10.0, 9.0, 8.0};
    assert_int_equal(dense_plan_pick(a, 3), 2);
    double b[] = {10.0, 9.8};       /* 2% faster: the default stays */
    assert_int_equal(dense_plan_pick(b, 2), 0);
    double c[] = {10.0, 9.6};       /* 4% faster: taken */
    assert_int_equal(dense_plan_pick(c, 2), 1);
    double d[] = {10.0, -1.0, 12.0}; /* not timed, slower */
    assert_int_equal(dense_plan_pick(d, 3), 0);
    double e[] = {-1.0, 5.0};       /* the default not timed */
    assert_int_equal(dense_plan_pick(e, 2), 1);
    assert_int_equal(dense_plan_pick(a, 1), 0);
    for (int c2 = 0; c2 < DENSE_PLAN_CLASSES; c2++) {
        assert_true(dense_plan_rows(c2) <= dense_plan_top(c2));
        assert_true(c2 == 0 || dense_plan_rows(c2) > dense_plan_top(c2 - 1));
    }
    assert_int_equal(dense_plan_top(DENSE_PLAN_CLASSES - 1), DENSE_MAX_ROWS);
    dense_backend bk;
    assert_int_equal(dense_backend_parse("OneDNN", &bk), CTR_OK);
    assert_int_equal(bk, DENSE_BACKEND_ONEDNN);
    assert_int_equal(dense_backend_parse("fast", &bk), CTR_EINVAL);
    for (int i = 0; i < DENSE_BACKEND_COUNT; i++) {
        assert_int_equal(dense_backend_parse(dense_backend_name(i), &bk), CTR_OK);
        assert_int_equal(bk, i);
    }
}

/* 1 when /proc/cpuinfo lists the flag. */
static int cpu_flag(const char *flag) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return 0;
    char line[8192];
    int found = 0;
    size_t len = strlen(flag);
    while (!found && fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0) continue;
        for (char *p = strstr(line, flag); p && !found; p = strstr(p + 1, flag))
            found = (p[-1] == ' ' || p[-1] == '\t') && (p[len] == ' ' || p[len] == '\n');
        break;
    }
    fclose(f);
    return found;
}

/* The plan of each precision at the QNN's shape: every class runs a
 * candidate, that class's pick is what the planner's own timings say, a
 * forced backend runs everywhere; and oneDNN's instruction set and kernels
 * are those of this CPU as capped by ONEDNN_MAX_CPU_ISA. */
static void test_plan_choice(void **state) {
    (void)state;
    const char *cap = getenv("ONEDNN_MAX_CPU_ISA");
    const int capped = cap && strcmp(cap, "AVX512_CORE_BF16") == 0;
    const int amx = cpu_flag("amx_int8") && cpu_flag("amx_bf16") && cpu_flag("amx_tile");
    const char *isa = dense_cpu_isa();
    printf("oneDNN ISA %s (CPU %s AMX, ONEDNN_MAX_CPU_ISA %s)\n", isa, amx ? "has" : "has no",
           cap ? cap : "unset");
    if (amx && !capped) assert_string_equal(isa, "avx512_core_amx");
    if (capped) assert_null(strstr(isa, "amx"));
    const int D = 1024;
    float *w = falloc((size_t)D * D);
    for (int i = 0; i < D * D; i++) w[i] = uni() / 32.0f;
    char err[256];
    for (int p = 0; p < DENSE_PRECISION_COUNT; p++) {
        dense_backend cand[DENSE_BACKEND_COUNT];
        int nc = dense_candidates(p, D, D, cand);
        dense_params dp = dense_default_params();
        dp.precision = p;
        dense *d;
        if (dense_init(w, D, D, &dp, &d, err, sizeof err) < 0) fail_msg("%s", err);
        printf("%s\n", dense_describe(d));
        assert_non_null(strstr(dense_describe(d), "(planned)"));
        for (int c = 0; c < DENSE_PLAN_CLASSES; c++) {
            double us[DENSE_BACKEND_COUNT];
            for (int k = 0; k < nc; k++) us[k] = dense_plan_us(d, c, cand[k]);
            if (nc > 1) {
                for (int k = 0; k < nc; k++) assert_true(us[k] > 0);
                assert_int_equal(dense_backend_for(d, dense_plan_rows(c)),
                                 cand[dense_plan_pick(us, nc)]);
            } else {
                assert_int_equal(dense_backend_for(d, dense_plan_rows(c)), cand[0]);
            }
            assert_int_equal(dense_backend_for(d, dense_plan_top(c)),
                             dense_backend_for(d, dense_plan_rows(c)));
        }
        /* oneDNN's kernel for the precision: on AMX where oneDNN may use
         * it (bf16 and int8), never where it is capped. */
        dp.backend = DENSE_BACKEND_ONEDNN;
        dense *o;
        if (dense_init(w, D, D, &dp, &o, err, sizeof err) < 0) fail_msg("%s", err);
        printf("%s\n", dense_describe(o));
        assert_non_null(strstr(dense_describe(o), "(set)"));
        for (int c = 0; c < DENSE_PLAN_CLASSES; c++) {
            assert_int_equal(dense_backend_for(o, dense_plan_rows(c)), DENSE_BACKEND_ONEDNN);
            assert_true(dense_plan_us(o, c, DENSE_BACKEND_ONEDNN) < 0); /* not timed */
        }
        if (capped) assert_null(strstr(dense_describe(o), "amx"));
        if (amx && !capped && p != DENSE_FP32) assert_non_null(strstr(dense_describe(o), "amx"));
        dense_free(o);
        dense_free(d);
    }
    free(w);
}

int main(int argc, char **argv) {
    const struct CMUnitTest plan_tests[] = {
        cmocka_unit_test(test_plan_pick),
        cmocka_unit_test(test_plan_choice),
        cmocka_unit_test(test_candidates_exact),
        cmocka_unit_test(test_int8_kernels_agree),
        cmocka_unit_test(test_given_int8),
        cmocka_unit_test(test_post_fused),
    };
    if (argc > 1 && strcmp(argv[1], "plan") == 0)
        return cmocka_run_group_tests_name("dense planner", plan_tests, NULL, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_pick),
        cmocka_unit_test(test_plan_choice),
        cmocka_unit_test(test_int8_kernels_agree),
        cmocka_unit_test(test_given_int8),
        cmocka_unit_test(test_post_fused),
        cmocka_unit_test(test_rt),
        cmocka_unit_test(test_precision_names),
        cmocka_unit_test(test_bf16_rounding),
        cmocka_unit_test(test_quantize_row),
        cmocka_unit_test(test_quantize_rows),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_one_thread_per_call),
        cmocka_unit_test(test_fp32_auto),
        cmocka_unit_test(test_fp32_onednn),
        cmocka_unit_test(test_fp32_packed),
        cmocka_unit_test(test_fp32_openblas),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_int8),
        cmocka_unit_test(test_int8_onednn),
        cmocka_unit_test(test_int8_vnni),
        cmocka_unit_test(test_int8x2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
