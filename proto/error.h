/*
 * error.h - the API's error answers: which HTTP status and which "code"
 * string a failure gets, and the JSON body
 *
 *   {"error": {"code": "bad_request", "message": "candidates[3].item_id: ..."}}
 *
 * The list below is the contract published in openapi.yaml; keep the two in
 * step.  Clients branch on "code" (stable), humans read "message" (free
 * text).  Thread-safe (no state).
 */
#ifndef CTR_PROTO_ERROR_H
#define CTR_PROTO_ERROR_H

#include "proto/buf.h"

/*  X(name, http status, code) */
#define PROTO_ERROR_MAP(X)                                                    \
    X(BAD_JSON,               400, "bad_json")                                \
    X(BAD_REQUEST,            400, "bad_request")                             \
    X(NOT_FOUND,              404, "not_found")                               \
    X(METHOD_NOT_ALLOWED,     405, "method_not_allowed")                      \
    X(LENGTH_REQUIRED,        411, "length_required")                         \
    X(BODY_TOO_LARGE,         413, "body_too_large")                          \
    X(URI_TOO_LONG,           414, "uri_too_long")                            \
    X(UNSUPPORTED_MEDIA_TYPE, 415, "unsupported_media_type")                  \
    X(TOO_MANY_CANDIDATES,    422, "too_many_candidates")                     \
    X(OUT_OF_RANGE,           422, "out_of_range")                            \
    X(HEADERS_TOO_LARGE,      431, "headers_too_large")                       \
    X(INTERNAL,               500, "internal")                                \
    X(NOT_READY,              503, "not_ready")                               \
    X(UNAVAILABLE,            503, "unavailable")                             \
    X(OVERLOADED,             503, "overloaded")                              \
    X(DEADLINE_EXCEEDED,      503, "deadline_exceeded")                       \
    X(HTTP_VERSION,           505, "http_version_not_supported")

typedef enum proto_error {
#define PROTO_ERROR_ENUM(name, http, code) PROTO_ERROR_##name,
    PROTO_ERROR_MAP(PROTO_ERROR_ENUM)
#undef PROTO_ERROR_ENUM
    PROTO_ERROR_COUNT
} proto_error;

/* HTTP status of e (500 for a value outside the enum). */
int proto_error_http(proto_error e);
/* The "code" string of e; static ("internal" outside the enum). */
const char *proto_error_code(proto_error e);

/* The answer for a ctr_status (status.h) coming out of the decoder or the
 * engine:
 *   CTR_EFORMAT   -> bad_json (400)       CTR_EINVAL    -> bad_request (400)
 *   CTR_ETOOMANY  -> too_many_candidates  CTR_ERANGE    -> out_of_range (422)
 *   CTR_ETOOBIG   -> body_too_large (413: the body is more than the
 *                    service takes; an item_seq past its limit is
 *                    out_of_range, 422, since the body itself was fine)
 *   CTR_ENOTFOUND -> not_found (404)
 *   CTR_EBACKEND, CTR_ETIMEOUT -> unavailable (503)
 *   anything else (CTR_ENOMEM, CTR_EIO, CTR_EMODEL, ...) -> internal (500).
 * Not-ready, method, media-type, overloaded and deadline errors have no
 * ctr_status: the server names them directly. */
proto_error proto_error_from_status(int status);

/* Appends {"error":{"code":...,"message":...}} (no newline) to out; the
 * message is escaped (NULL: the code string again).  CTR_OK or
 * CTR_ENOMEM. */
int proto_error_encode(proto_error e, const char *message, proto_buf *out);

#endif
