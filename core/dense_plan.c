/*
 * dense_plan.c - the planner of the dense layers (dense.h, "The planner"):
 * at dense_init every kernel that can run the layer here is timed on the
 * layer's own weights per row class, the fastest kept; plans are cached
 * per shape for the process's life.
 */
#include "dense_internal.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <oneapi/dnnl/dnnl.h>

#include "gemm.h"

/* --- the planner ------------------------------------------------------------ */

static const int plan_rows[DENSE_PLAN_CLASSES] = {4, 16, 64, 256};
static const int plan_top[DENSE_PLAN_CLASSES] = {8, 32, 128, DENSE_MAX_ROWS};

int dense_plan_rows(int c) { return c >= 0 && c < DENSE_PLAN_CLASSES ? plan_rows[c] : 0; }
int dense_plan_top(int c) { return c >= 0 && c < DENSE_PLAN_CLASSES ? plan_top[c] : 0; }

int dense_plan_class(int m) {
    int c = 0;
    while (c < DENSE_PLAN_CLASSES - 1 && m > plan_top[c]) c++;
    return c;
}

int dense_candidates(dense_precision p, int out, int in, dense_backend *b) {
    int n = 0;
    b[n++] = DENSE_BACKEND_ONEDNN;
    if (p == DENSE_FP32 && in == out && gemm_packed_supported(in)) b[n++] = DENSE_BACKEND_PACKED;
    if (dense_is_int8(p) && dense_vnni_supported(out, in)) b[n++] = DENSE_BACKEND_PACKED;
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
    float *x = dense_aligned_bytes((size_t)n * d->ld_in * sizeof *x),
          *y = dense_aligned_bytes((size_t)n * d->ld_out * sizeof *y);
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
            rc = dense_run_kernel(d, cand[k], ws, rows, x, y, NULL);
        }
        for (int i = 0; i < reps && rc == CTR_OK; i++)
            for (int j = 0; j < nc && rc == CTR_OK; j++) {
                const int k = (i + j) % nc;
                double t0 = now_us();
                rc = dense_run_kernel(d, cand[k], ws, rows, x, y, NULL);
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
int dense_plan_layer(dense *d, const dense_backend *cand, int nc, char *err, size_t errlen) {
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
        snprintf(buf, len, dense_is_int8(d->prec) ? "AVX512_VNNI kernel (8 x 32 blocks)"
                                                 : "packed AVX-512 kernel");
        break;
    default: snprintf(buf, len, "?"); break;
    }
    return buf;
}

/* "int8: rows 1-8 <kernel>; rows 9-256 <kernel> (planned)". */
void dense_plan_describe(dense *d) {
    size_t len = (size_t)snprintf(d->what, sizeof d->what, "%s%s: ", dense_precision_name(d->prec),
                                  d->int8_given ? " (int8 weights given)" : "");
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
