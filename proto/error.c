/* error.c - error answers of the API, see error.h. */
#include "error.h"

#include "core/base/status.h"

int proto_error_http(proto_error e) {
    switch (e) {
#define PROTO_ERROR_HTTP(name, http, code) case PROTO_ERROR_##name: return (http);
        PROTO_ERROR_MAP(PROTO_ERROR_HTTP)
#undef PROTO_ERROR_HTTP
    case PROTO_ERROR_COUNT: break;
    }
    return 500;
}

const char *proto_error_code(proto_error e) {
    switch (e) {
#define PROTO_ERROR_CODE(name, http, code) case PROTO_ERROR_##name: return (code);
        PROTO_ERROR_MAP(PROTO_ERROR_CODE)
#undef PROTO_ERROR_CODE
    case PROTO_ERROR_COUNT: break;
    }
    return "internal";
}

proto_error proto_error_from_status(int status) {
    switch (status) {
    case CTR_EFORMAT:   return PROTO_ERROR_BAD_JSON;
    case CTR_EINVAL:    return PROTO_ERROR_BAD_REQUEST;
    case CTR_ETOOMANY:  return PROTO_ERROR_TOO_MANY_CANDIDATES;
    case CTR_ERANGE:    return PROTO_ERROR_OUT_OF_RANGE;
    case CTR_ETOOBIG:   return PROTO_ERROR_BODY_TOO_LARGE;
    case CTR_ENOTFOUND: return PROTO_ERROR_NOT_FOUND;
    case CTR_EBACKEND:
    case CTR_ETIMEOUT:  return PROTO_ERROR_UNAVAILABLE;
    default:            return PROTO_ERROR_INTERNAL;
    }
}

int proto_error_encode(proto_error e, const char *message, proto_buf *out) {
    proto_buf_puts(out, "{\"error\":{\"code\":");
    proto_buf_json_cstr(out, proto_error_code(e));
    proto_buf_puts(out, ",\"message\":");
    proto_buf_json_cstr(out, message ? message : proto_error_code(e));
    proto_buf_puts(out, "}}");
    return proto_buf_ok(out) ? CTR_OK : CTR_ENOMEM;
}
