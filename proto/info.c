/* info.c - JSON of the operations endpoints, see info.h. */
#include "info.h"

#include "core/status.h"

int proto_status_encode(const char *status, const char *detail, proto_buf *b) {
    proto_buf_puts(b, "{\"status\":");
    proto_buf_json_cstr(b, status);
    if (detail) {
        proto_buf_puts(b, ",\"detail\":");
        proto_buf_json_cstr(b, detail);
    }
    proto_buf_putc(b, '}');
    return proto_buf_ok(b) ? CTR_OK : CTR_ENOMEM;
}

int proto_models_encode(const qin_config *c, const char *path, uint64_t generation,
                        proto_buf *b) {
    proto_buf_puts(b, "{\"models\":[{\"name\":");
    proto_buf_json_cstr(b, c->name);
    proto_buf_puts(b, ",\"version\":");
    proto_buf_json_cstr(b, c->version);
    proto_buf_puts(b, ",\"arch\":\"qin\",\"precision\":");
    proto_buf_json_cstr(b, dense_precision_name(c->precision));
    proto_buf_printf(b, ",\"exact\":%s,\"path\":",
                     dense_precision_exact(c->precision) ? "true" : "false");
    proto_buf_json_cstr(b, path);
    proto_buf_printf(b, ",\"generation\":%llu,\"config\":{", (unsigned long long)generation);
    proto_buf_printf(b,
                     "\"embedding_dim\":%d,\"max_len\":%d,\"num_layers\":%d,\"num_row\":%d,"
                     "\"batch_norm\":%s,\"item_vocab\":%d,\"tag_vocab\":%d,\"num_tags\":%d,"
                     "\"mm_in\":%d,\"mm_out\":%d,\"item_dim\":%d,\"input_dim\":%d,"
                     "\"context_fields\":[",
                     c->embedding_dim, c->max_len, c->num_layers, c->num_row,
                     c->batch_norm ? "true" : "false", c->item_vocab, c->tag_vocab, c->num_tags,
                     c->mm_in, c->mm_out, c->item_dim, c->input_dim);
    for (int i = 0; i < c->num_ctx; i++) {
        proto_buf_puts(b, i ? ",{\"name\":" : "{\"name\":");
        proto_buf_json_cstr(b, c->ctx_name[i]);
        proto_buf_printf(b, ",\"vocab\":%d}", c->ctx_vocab[i]);
    }
    proto_buf_puts(b, "]}}]}");
    return proto_buf_ok(b) ? CTR_OK : CTR_ENOMEM;
}
