/*
 * impression.c - the impression log's JSON record (impression.h).
 *
 * Runs on the impression log's own thread, never on a request's: a record
 * of 64 candidates is ~64 x 4 short appends, a few tens of microseconds.
 */
#include "proto/impression.h"

#include <stdio.h>
#include <string.h>

#include "core/base/status.h"

/* 1 when s is an optional minus and 1..19 digits: safe to print bare. */
static int int_text(const char *s) {
    if (*s == '-') s++;
    size_t n = strspn(s, "0123456789");
    return n > 0 && n <= 19 && s[n] == '\0';
}

int proto_impression_encode(const proto_impression *r, int newline, proto_buf *b) {
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
    proto_buf_printf(b, "],\"top_k\":%d,\"candidates\":[", r->top_k);
    for (int i = 0; i < r->n; i++) {
        proto_buf_puts(b, i ? ",{\"item_id\":" : "{\"item_id\":");
        proto_buf_json_int(b, r->cand_id[i]);
        for (int c = 0; c < r->num_ctx; c++) {
            proto_buf_putc(b, ',');
            proto_buf_json_cstr(b, r->ctx_name[c]);
            proto_buf_putc(b, ':');
            proto_buf_json_int(b, r->ctx[(size_t)i * (size_t)r->num_ctx + (size_t)c]);
        }
        proto_buf_puts(b, ",\"score\":");
        proto_buf_json_float(b, r->score[i]);
        if (r->rank[i] > 0) {
            proto_buf_puts(b, ",\"rank\":");
            proto_buf_json_int(b, r->rank[i]);
            proto_buf_putc(b, '}');
        } else {
            proto_buf_puts(b, ",\"rank\":null}");
        }
    }
    proto_buf_puts(b, "],\"degraded\":[");
    for (int i = 0; i < r->num_degraded; i++) {
        if (i) proto_buf_putc(b, ',');
        proto_buf_json_cstr(b, r->degraded[i]);
    }
    proto_buf_puts(b, newline ? "]}\n" : "]}");
    return proto_buf_ok(b) ? CTR_OK : CTR_ENOMEM;
}
