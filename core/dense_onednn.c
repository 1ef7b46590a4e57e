/*
 * dense_onednn.c - the dense layers on oneDNN's matmul (dense_internal.h):
 * the process's CPU engine, one primitive per row class made at load with
 * the weights reordered once into oneDNN's layout, each workspace's stream
 * and memory objects, and a call: rows converted (bf16) or quantised
 * (int8), one primitive run, int32 sums rescaled.
 */
#include "dense_internal.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

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
    const int rows = dense_class_rows(c);
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
    if (wmd->format_kind == dnnl_format_kind_any || (d->rt && !d->impl[0])) {
        if (!d->rt) d->w_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
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
    if (!(d->wq = dense_aligned_bytes(dnnl_memory_desc_get_size(&d->w_md))))
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

/* oneDNN's primitives for every row class and the weights in their layout:
 * w (fp32, bf16) or wq (int8, dense_quantize_int8). */
int dense_onednn_make(dense *d, const float *w, const signed char *wq, char *err,
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
    if ((rc = make_class(d, DENSE_NCLASS - 1, &any, err, errlen)) < 0) return rc;
    d->ncls = DENSE_NCLASS;
    for (int c = 0; c < DENSE_NCLASS - 1; c++)
        if ((rc = make_class(d, c, &d->w_md, err, errlen)) < 0) return rc;
    if (dense_is_int8(d->prec)) rc = reorder_weights(d, wq, dnnl_s8, err, errlen);
    else rc = reorder_weights(d, w, dnnl_f32, err, errlen); /* bf16: rounds to nearest even */
    if (rc < 0) return rc;
    size_t esz = d->prec == DENSE_FP32 ? 4 : (d->prec == DENSE_BF16 ? 2 : 1); /* int8s: 1 */
    size_t src = dense_round_up((size_t)DENSE_MAX_ROWS * src_stride(d) * esz);
    if (src > d->src_bytes) d->src_bytes = src;
    d->dst_bytes = dense_round_up((size_t)DENSE_MAX_ROWS * dst_stride(d) * 4);
    for (int c = 0; c < DENSE_NCLASS; c++)
        if (d->cls[c].pad_bytes > d->pad_bytes) d->pad_bytes = d->cls[c].pad_bytes;
    d->pad_bytes = dense_round_up(d->pad_bytes);
    return CTR_OK;
}

int dense_onednn_make_rt(dense *d, int b_out_in, char *err, size_t errlen) {
    if (!engine_get()) return ctr_fail(err, errlen, CTR_EINVAL, "oneDNN: no CPU engine");
    dnnl_dims_t wdims = {d->in, d->out};
    dnnl_status_t s = dnnl_memory_desc_init_by_tag(&d->w_md, 2, wdims, dnnl_bf16,
                                                   b_out_in ? dnnl_ba : dnnl_ab);
    if (s) return dnnl_fail(err, errlen, s, "run-time weights");
    int rc;
    for (int c = 0; c < DENSE_NCLASS; c++)
        if ((rc = make_class(d, c, &d->w_md, err, errlen)) < 0) return rc;
    d->ncls = DENSE_NCLASS;
    d->src_bytes = dense_round_up((size_t)DENSE_MAX_ROWS * src_stride(d) * 2);
    d->dst_bytes = dense_round_up((size_t)DENSE_MAX_ROWS * dst_stride(d) * 4);
    for (int c = 0; c < DENSE_NCLASS; c++)
        if (d->cls[c].pad_bytes > d->pad_bytes) d->pad_bytes = d->cls[c].pad_bytes;
    d->pad_bytes = dense_round_up(d->pad_bytes);
    return CTR_OK;
}

void dense_onednn_free(dense *d) {
    for (int c = 0; c < DENSE_NCLASS; c++)
        if (d->cls[c].prim) dnnl_primitive_destroy(d->cls[c].prim);
    memset(d->cls, 0, sizeof d->cls);
    d->ncls = 0;
    if (d->w_mem) dnnl_memory_destroy(d->w_mem);
    d->w_mem = NULL;
    free(d->wq);
    d->wq = NULL;
    d->impl[0] = 0;
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

int dense_ws_init(size_t bytes, dense_ws **out) {
    *out = NULL;
    dense_ws *ws = calloc(1, sizeof *ws);
    if (!ws) return CTR_ENOMEM;
    ws->size = dense_round_up(bytes);
    if (!(ws->buf = dense_aligned_bytes(ws->size))) {
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
    if (e->wei) dnnl_memory_destroy(e->wei);
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

/* The workspace's memory objects for class k's shapes: found, or made
 * (the oldest entry replaced), once per shape and workspace. */
static ws_mem *ws_mem_for(dense_ws *ws, const dense_class *k, const dnnl_memory_desc_t *wmd) {
    for (int i = 0; i < ws->nmem; i++) {
        ws_mem *e = &ws->mem[i];
        if (e->pad_bytes == k->pad_bytes && dnnl_memory_desc_equal(&e->src_md, &k->src_md) &&
            dnnl_memory_desc_equal(&e->dst_md, &k->dst_md) &&
            (!k->pad_bytes || dnnl_memory_desc_equal(&e->pad_md, &k->pad_md)) &&
            (!wmd) == (!e->wei) && (!wmd || dnnl_memory_desc_equal(&e->wei_md, wmd)))
            return e;
    }
    ws_mem *e = &ws->mem[ws->nmem < WS_MEMS ? ws->nmem++ : ws->next];
    if (ws->nmem == WS_MEMS) ws->next = (ws->next + 1) % WS_MEMS;
    ws_mem_free(e);
    if (dnnl_memory_create(&e->src, &k->src_md, engine_get(), DNNL_MEMORY_NONE) ||
        dnnl_memory_create(&e->dst, &k->dst_md, engine_get(), DNNL_MEMORY_NONE) ||
        (k->pad_bytes &&
         dnnl_memory_create(&e->pad, &k->pad_md, engine_get(), DNNL_MEMORY_NONE)) ||
        (wmd && dnnl_memory_create(&e->wei, wmd, engine_get(), DNNL_MEMORY_NONE))) {
        ws_mem_free(e);
        return NULL;
    }
    if (wmd) e->wei_md = *wmd;
    e->src_md = k->src_md;
    e->dst_md = k->dst_md;
    e->pad_md = k->pad_md;
    e->pad_bytes = k->pad_bytes;
    return e;
}

static int run_class(const dense *d, const dense_class *k, dense_ws *ws, void *src, void *dst,
                     void *pad) {
    ws_mem *e = ws_mem_for(ws, k, d->rt ? &d->w_md : NULL);
    if (!e) return CTR_ENOMEM;
    dnnl_status_t s;
    if ((s = dnnl_memory_set_data_handle(e->src, src)) == dnnl_success &&
        (s = dnnl_memory_set_data_handle(e->dst, dst)) == dnnl_success &&
        (!e->pad || (s = dnnl_memory_set_data_handle(e->pad, pad)) == dnnl_success) &&
        (!d->rt || (s = dnnl_memory_set_data_handle(e->wei, (void *)ws->wrt)) == dnnl_success)) {
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, e->src},
                                   {DNNL_ARG_WEIGHTS, d->rt ? e->wei : d->w_mem},
                                   {DNNL_ARG_DST, e->dst}, {DNNL_ARG_SCRATCHPAD, e->pad}};
        s = dnnl_primitive_execute(k->prim, ws->stream, e->pad ? 4 : 3, args);
    }
    return s == dnnl_success ? CTR_OK : CTR_EINVAL;
}

/* m <= DENSE_MAX_ROWS rows through oneDNN, then post (NULL: none) on the
 * chunk's rows. */
int dense_onednn_chunk(const dense *d, dense_ws *ws, int m, const float *x, float *y,
                       const dense_post *post) {
    const int kr = d->prec == DENSE_INT8X2 ? 2 * m : m; /* the kernel's rows */
    const dense_class *k = &d->cls[dense_class_of(kr)];
    const int rows = dense_class_rows(dense_class_of(kr));
    const dense_ws_parts wp = dense_ws_parts_of(d, ws);
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
            dense_rows_to_bf16(m, d->in, x, d->ld_in, (unsigned short *)src);
        else if (rows == m && tight_in)
            s_ = (void *)x;
        else
            for (int i = 0; i < m; i++)
                memcpy((float *)src + (size_t)i * d->in, x + (size_t)i * d->ld_in,
                       (size_t)d->in * sizeof(float));
        if (rows == m && tight_out) {
            if ((rc = run_class(d, k, ws, s_, y, pad)) < 0) return rc;
            if (post) dense_post_rows(m, d->out, y, d->ld_out, post);
            return CTR_OK;
        }
        if ((rc = run_class(d, k, ws, s_, dst, pad)) < 0) return rc;
        if (post) {
            dense_post_rows(m, d->out, (const float *)dst, d->out, post);
            return CTR_OK;
        }
        for (int i = 0; i < m; i++)
            memcpy(y + (size_t)i * d->ld_out, (float *)dst + (size_t)i * d->out,
                   (size_t)d->out * sizeof(float));
        return CTR_OK;
    }
    case DENSE_INT8:
    case DENSE_INT8X2: {
        dense_quantize_rows(d, m, x, src, scale, zero, wp.row);
        if ((rc = run_class(d, k, ws, src, dst, pad)) < 0) return rc;
        /* int8x2: the residual's rows m..2m-1 are the second level. */
        const dense_sums lev[2] = {{(const int32_t *)dst, scale, zero},
                                   {(const int32_t *)dst + (size_t)m * d->out, scale + m,
                                    zero + m}};
        dense_dequantize(m, d->out, lev, kr > m ? 2 : 1, d->colsum, d->wscale, y, d->ld_out,
                         post);
        return CTR_OK;
    }
    default:
        return CTR_EINVAL;
    }
}
