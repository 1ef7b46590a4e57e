/* info.c - JSON of the operations endpoints, see info.h. */
#include "info.h"

#include "core/base/status.h"

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

int proto_models_encode(const proto_model_info *models, int n, proto_buf *b) {
    proto_buf_puts(b, "{\"models\":[");
    for (int i = 0; i < n; i++) {
        const proto_model_info *m = &models[i];
        const engine_schema *c = m->schema;
        proto_buf_puts(b, i ? ",{\"name\":" : "{\"name\":");
        proto_buf_json_cstr(b, m->name);
        proto_buf_printf(b, ",\"default\":%s,\"version\":", m->is_default ? "true" : "false");
        proto_buf_json_cstr(b, c->version);
        proto_buf_puts(b, ",\"arch\":");
        proto_buf_json_cstr(b, engine_arch_name(c->arch));
        proto_buf_puts(b, ",\"precision\":");
        proto_buf_json_cstr(b, dense_precision_name(m->precision));
        proto_buf_printf(b, ",\"exact\":%s,\"kernel\":{\"setting\":",
                         dense_precision_exact(m->precision) ? "true" : "false");
        proto_buf_json_cstr(b, dense_backend_name(m->kernel_setting));
        proto_buf_puts(b, ",\"cpu_isa\":");
        proto_buf_json_cstr(b, dense_cpu_isa());
        proto_buf_puts(b, ",\"largest_layer\":");
        proto_buf_json_cstr(b, m->kernel ? m->kernel : "");
        if (m->split) {
            proto_buf_puts(b, ",\"split\":");
            proto_buf_json_cstr(b, m->split);
        }
        proto_buf_puts(b, "},\"path\":");
        proto_buf_json_cstr(b, m->path);
        proto_buf_printf(b, ",\"generation\":%llu,\"redis_prefix\":",
                         (unsigned long long)m->generation);
        proto_buf_json_cstr(b, m->redis_prefix);
        proto_buf_printf(b, ",\"cache\":{\"max_bytes\":%zu,\"entries\":%llu}",
                         m->cache_bytes, (unsigned long long)m->cache_entries);
        proto_buf_puts(b, ",\"config\":{\"model_name\":");
        proto_buf_json_cstr(b, c->name);
        proto_buf_printf(b,
                         ",\"max_len\":%d,\"item_id_min\":%d,\"item_vocab\":%d,"
                         "\"num_tags\":%d,\"tag_vocab\":%d,\"mm_dim\":%d,\"cate_vocab\":%d,"
                         "\"context_fields\":[",
                         c->max_len, c->item_id_min, c->item_vocab, c->num_tags, c->tag_vocab,
                         c->mm_dim, c->cate_vocab);
        for (int k = 0; k < c->num_ctx; k++) {
            proto_buf_puts(b, k ? ",{\"name\":" : "{\"name\":");
            proto_buf_json_cstr(b, c->ctx_name[k]);
            proto_buf_printf(b, ",\"vocab\":%d}", c->ctx_vocab[k]);
        }
        proto_buf_puts(b, "]}}");
    }
    proto_buf_puts(b, "]}");
    return proto_buf_ok(b) ? CTR_OK : CTR_ENOMEM;
}
