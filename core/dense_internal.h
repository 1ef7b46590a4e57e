/*
 * dense_internal.h - what the files of the dense module share (dense.h is
 * the API; nothing outside core/dense*.c includes this):
 *
 *   dense.c         the API: names, dense_init / dense_free, the workspace's
 *                   parts, a call's dispatch to the kernel the plan chose;
 *   dense_plan.c    the planner: the candidate kernels timed per layer
 *                   shape and row class at load, the plan cache, describe;
 *   dense_onednn.c  oneDNN's matmul: the engine, one primitive per row
 *                   class, the weights in oneDNN's layout, workspaces'
 *                   streams and memory objects, a call through oneDNN;
 *   dense_vnni.c    our int8 AVX512_VNNI kernel and its weight layout;
 *   dense_quant.c   conversions: bf16 rounding, row and weight
 *                   quantisation, int32 sums back to floats.
 *
 * The layer (struct dense) is built by dense_init and read-only after it;
 * a workspace (struct dense_ws) belongs to one thread.
 */
#ifndef CTR_DENSE_INTERNAL_H
#define CTR_DENSE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <oneapi/dnnl/dnnl_types.h>

#include "dense.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define DENSE_X86 1
#endif

#define DENSE_ALIGN 64
/* Row-count classes: 1..16, then 24, 32, ..., DENSE_MAX_ROWS. */
#define DENSE_NCLASS (16 + (DENSE_MAX_ROWS - 16) / 8)

static inline int dense_class_rows(int c) { return c < 16 ? c + 1 : 16 + 8 * (c - 15); }
static inline int dense_class_of(int m) { return m <= 16 ? m - 1 : 15 + (m - 16 + 7) / 8; }

/* The precisions with int8 weights and u8 rows. */
static inline int dense_is_int8(dense_precision p) {
    return p == DENSE_INT8 || p == DENSE_INT8X2;
}

static inline size_t dense_round_up(size_t n) {
    return (n + DENSE_ALIGN - 1) & ~(size_t)(DENSE_ALIGN - 1);
}


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
    int rt;                         /* 1: the weights come with each call
                                       (dense_rt_init; w_md their plain
                                       layout, ws->wrt the call's) */
    float *wscale;                  /* int8: out scales, max |W[o,:]| / 127 */
    float *colscale;                /* int8x2: f_k, x_k's factor (in) */
    int32_t *colsum;                /* int8: sum_k Wq[o][k] */
    int int8_given;                 /* 1: the int8 weights came with
                                       dense_params.int8 */
    dense_class cls[DENSE_NCLASS];
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
    dnnl_memory_desc_t src_md, dst_md, pad_md, wei_md;
    dnnl_memory_t wei;             /* run-time weights (dense_rt), or NULL */
    dnnl_memory_t src, dst, pad;   /* pad: a scratchpad of pad_bytes, or NULL */
    size_t pad_bytes;
} ws_mem;

struct dense_ws {
    dnnl_stream_t stream;
    unsigned char *buf;
    size_t size;
    ws_mem mem[WS_MEMS];
    int nmem, next;                /* entries made; the one to replace next */
    const void *wrt;               /* the weights of a dense_rt_forward call */
};

/* The parts of a call's workspace: the kernel's rows (src), oneDNN's
 * output (dst) and scratchpad (pad), the rows' scales and zero points,
 * and one row of floats (int8x2's residual). */
typedef struct dense_ws_parts {
    unsigned char *src, *dst, *pad;
    float *scale;
    int32_t *zero;
    float *row;
} dense_ws_parts;

/* --- dense.c ---------------------------------------------------------------- */

/* n bytes (rounded up to DENSE_ALIGN), DENSE_ALIGN-aligned and zeroed
 * (every page touched); NULL when out of memory.  free() releases it. */
void *dense_aligned_bytes(size_t n);
/* Where each part of a call's workspace sits in ws->buf for layer d. */
dense_ws_parts dense_ws_parts_of(const dense *d, dense_ws *ws);
/* m <= DENSE_MAX_ROWS rows on kernel b (built for d), then post (NULL:
 * none) on those rows. */
int dense_run_kernel(const dense *d, dense_backend b, dense_ws *ws, int m, const float *x,
                     float *y, const dense_post *post);

/* --- dense_plan.c ------------------------------------------------------------ */

/* The plan class (0..DENSE_PLAN_CLASSES-1) of a call of m rows. */
int dense_plan_class(int m);
/* d->pick and d->plan_us for AUTO among cand[0..nc-1] (all built): from
 * the process's plan cache, or timed and cached. */
int dense_plan_layer(dense *d, const dense_backend *cand, int nc, char *err, size_t errlen);
/* d->what from d->pick. */
void dense_plan_describe(dense *d);

/* --- dense_onednn.c ---------------------------------------------------------- */

/* oneDNN's primitives for every row class and the weights in their layout:
 * w (fp32, bf16) or wq (int8, dense_quantize_int8). */
int dense_onednn_make(dense *d, const float *w, const signed char *wq, char *err,
                      size_t errlen);
void dense_onednn_free(dense *d);
/* The primitives of a layer whose bf16 weights come with each call
 * (dense_rt_init): plain layout, out x in rows when b_out_in, else in x
 * out. */
int dense_onednn_make_rt(dense *d, int b_out_in, char *err, size_t errlen);
/* m <= DENSE_MAX_ROWS rows through oneDNN, then post (NULL: none). */
int dense_onednn_chunk(const dense *d, dense_ws *ws, int m, const float *x, float *y,
                       const dense_post *post);

/* --- dense_vnni.c ------------------------------------------------------------- */

/* The int8 weights in the VNNI kernel's layout, and its workspace needs. */
int dense_vnni_make(dense *d, const signed char *wq, char *err, size_t errlen);
/* m <= DENSE_MAX_ROWS rows on the VNNI kernel, then post (NULL: none). */
void dense_vnni_chunk(const dense *d, dense_ws *ws, int m, const float *x, float *y,
                      const dense_post *post);

/* --- dense_quant.c ------------------------------------------------------------ */

/* Rows of x (stride ldx) into bfloat16 rows of `in` on the fastest
 * conversion this CPU has. */
void dense_rows_to_bf16(int n, int in, const float *x, int ldx, unsigned short *q);
/* The int8 weights, once for every kernel of the layer: Wq (out x in, a
 * buffer the caller frees), d->wscale, d->colsum (and int8x2's
 * d->colscale). */
int dense_quantize_int8(dense *d, const float *w, const dense_int8 *given, signed char **wq,
                        char *err, size_t errlen);
/* Rows of x (m, stride d->ld_in) quantised for the kernel into q (int8:
 * one row each; int8x2: two levels, 2m rows), scales and zero points. */
void dense_quantize_rows(const dense *d, int m, const float *x, unsigned char *q, float *scale,
                         int32_t *zero, float *row);
/* One level of an int8 product's rows: m rows of int32 sums (stride out),
 * each row's scale and zero point. */
typedef struct dense_sums {
    const int32_t *acc;
    const float *scale;
    const int32_t *zero;
} dense_sums;
/* y (stride ldy) = sum over the nlev levels of (sum - z_i colsum) * row
 * scale * channel scale for m rows; with post (its rows those of the m
 * rows), post applied in the same pass and y not written. */
void dense_dequantize(int m, int out, const dense_sums *lev, int nlev, const int32_t *colsum,
                      const float *cscale, float *y, int ldy, const dense_post *post);

#endif
