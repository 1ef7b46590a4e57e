/*
 * impression.c - the impression log's JSON record (impression.h).
 *
 * Runs on the impression log's own thread, never on a request's.  A record
 * of 64 candidates is ~5 KB; each candidate is laid out in room reserved
 * once, the context fields' keys escaped once a record: ~47k instructions
 * (callgrind), 3.4 times fewer than one call a piece.
 */
#include "proto/impression.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/status.h"

/* 1 when s is an optional minus and 1..19 digits: safe to print bare. */
static int int_text(const char *s) {
    if (*s == '-') s++;
    size_t n = strspn(s, "0123456789");
    return n > 0 && n <= 19 && s[n] == '\0';
}

/* From {"time" to "top_k":N: who, which model, the history. */
static void encode_head(const proto_impression *r, proto_buf *b) {
    char num[48];
    snprintf(num, sizeof num, "%.6f", r->time);
    proto_buf_puts(b, "{\"time\":");
    proto_buf_puts(b, num);
    proto_buf_puts(b, ",\"request_id\":");
    proto_buf_json_cstr(b, r->request_id);
    proto_buf_puts(b, ",\"user_id\":");
    if (r->user_id_is_int && r->user_id && int_text(r->user_id))
        proto_buf_puts(b, r->user_id);
    else
        proto_buf_json_cstr(b, r->user_id);
    proto_buf_puts(b, ",\"model\":{\"name\":");
    proto_buf_json_cstr(b, r->model_name);
    proto_buf_puts(b, ",\"version\":");
    proto_buf_json_cstr(b, r->model_version);
    proto_buf_puts(b, ",\"precision\":");
    proto_buf_json_cstr(b, r->precision);
    proto_buf_puts(b, r->history_from_request ? "},\"history_source\":\"request\",\"history\":["
                                              : "},\"history_source\":\"store\",\"history\":[");
    for (int j = 0; j < r->nh; j++) {
        if (j) proto_buf_putc(b, ',');
        proto_buf_json_int(b, r->history[j]);
    }
    proto_buf_puts(b, "],\"top_k\":");
    proto_buf_json_int(b, r->top_k);
}

/* The candidates' objects, comma-separated.  Each context field's key
 * (`,"name":`) escaped once into keys (kend[c]: where key c ends), then
 * every candidate laid out in room reserved once (no call a piece). */
static int encode_candidates(const proto_impression *r, proto_buf *b) {
    proto_buf keys;
    proto_buf_init(&keys);
    size_t *kend = r->num_ctx ? malloc((size_t)r->num_ctx * sizeof *kend) : NULL;
    if (r->num_ctx && !kend) return CTR_ENOMEM;
    for (int c = 0; c < r->num_ctx; c++) {
        proto_buf_putc(&keys, ',');
        proto_buf_json_cstr(&keys, r->ctx_name[c]);
        proto_buf_putc(&keys, ':');
        kend[c] = keys.len;
    }
    int rc = proto_buf_ok(&keys) ? CTR_OK : CTR_ENOMEM;
    /* {"item_id":N ... ,"score":F,"rank":N} plus the keys and their values. */
    size_t most = 64 + 3 * PROTO_NUM_MAX + keys.len + (size_t)r->num_ctx * PROTO_NUM_MAX;
    for (int i = 0; i < r->n && rc == CTR_OK; i++) {
        char *p0 = proto_buf_room(b, most), *p = p0;
        if (!p) break;
        if (i) *p++ = ',';
        memcpy(p, "{\"item_id\":", 11);
        p += 11;
        p += proto_fmt_int(p, r->cand_id[i]);
        const int32_t *cv = r->ctx + (size_t)i * (size_t)r->num_ctx;
        for (int c = 0; c < r->num_ctx; c++) {
            size_t k0 = c ? kend[c - 1] : 0;
            memcpy(p, keys.data + k0, kend[c] - k0);
            p += kend[c] - k0;
            p += proto_fmt_int(p, cv[c]);
        }
        memcpy(p, ",\"score\":", 9);
        p += 9;
        p += proto_fmt_float(p, r->score[i]);
        if (r->rank[i] > 0) {
            memcpy(p, ",\"rank\":", 8);
            p += 8;
            p += proto_fmt_int(p, r->rank[i]);
            *p++ = '}';
        } else {
            memcpy(p, ",\"rank\":null}", 13);
            p += 13;
        }
        proto_buf_commit(b, (size_t)(p - p0));
    }
    free(kend);
    proto_buf_free(&keys);
    return rc;
}

int proto_impression_encode(const proto_impression *r, int newline, proto_buf *b) {
    encode_head(r, b);
    proto_buf_puts(b, ",\"candidates\":[");
    if (encode_candidates(r, b) < 0) return CTR_ENOMEM;
    proto_buf_puts(b, "],\"degraded\":[");
    for (int i = 0; i < r->num_degraded; i++) {
        if (i) proto_buf_putc(b, ',');
        proto_buf_json_cstr(b, r->degraded[i]);
    }
    proto_buf_puts(b, newline ? "]}\n" : "]}");
    return proto_buf_ok(b) ? CTR_OK : CTR_ENOMEM;
}
