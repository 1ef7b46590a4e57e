/*
 * field.h - typed access to one JSON value, with a message naming the field
 * when it is not what the wire format says.  Internal to proto/ (it is the
 * only header outside jansson's own that mentions json_t).
 *
 * Every decoder in proto/ reports errors as "<path>: <problem>", e.g.
 * "candidates[3].likes_level: expected an integer, got a string", so a
 * client can find its mistake without reading our code.  The path is built
 * only when there is an error: on the good path a field costs one type test.
 * Thread-safe (no shared state); what a function allocates lives in the
 * caller's arena.
 */
#ifndef CTR_PROTO_FIELD_H
#define CTR_PROTO_FIELD_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/base/arena.h"

/* Where a value sits: outer, then "[index]" when index >= 0, then
 * ".inner" when inner is set.  {"candidates", 3, "item_id"} prints as
 * candidates[3].item_id; {"item_seq", 5, NULL} as item_seq[5]. */
typedef struct proto_path {
    const char *outer;
    long index;
    const char *inner;
} proto_path;

#define PROTO_PATH(name) ((proto_path){(name), -1, NULL})

/* "<path>: <message>" into err; returns status. */
int proto_field_fail(char *err, size_t errlen, int status, proto_path p,
                     const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

/* "a string", "an array", ... for messages. */
const char *proto_field_kind(const json_t *v);

/* A JSON integer (never a real, even 17.0, and never a string). */
int proto_field_int64(const json_t *v, proto_path p, int64_t *out, char *err,
                      size_t errlen);
/* A JSON integer in int32 range. */
int proto_field_int32(const json_t *v, proto_path p, int32_t *out, char *err,
                      size_t errlen);
/* Any JSON number that is finite as a float32. */
int proto_field_float(const json_t *v, proto_path p, float *out, char *err,
                      size_t errlen);
/* A JSON array of integers into a new arena array (NULL for length 0);
 * longer than max_len: CTR_ETOOBIG. */
int proto_field_int64_array(const json_t *v, proto_path p, int max_len,
                            arena *a, int64_t **out, int *n, char *err,
                            size_t errlen);
/* An id that may be a string (1..max_len bytes) or an integer; integers are
 * kept as their decimal text.  The text lives in the arena. */
int proto_field_id(const json_t *v, proto_path p, size_t max_len, arena *a,
                   const char **text, int *is_int, char *err, size_t errlen);

/* Parses buf as one JSON object.  A syntax error gives CTR_EFORMAT with
 * jansson's line and column; a number too large to hold (an integer past
 * int64, a real past double) gives CTR_EINVAL naming the field when its
 * path can be recovered from the text; a value that is not an object gives
 * CTR_EINVAL "<what>: expected an object".  Duplicate keys are refused.
 * On success *out is a new reference (json_decref it). */
int proto_field_parse_object(const char *buf, size_t len, const char *what,
                             json_t **out, char *err, size_t errlen);

#endif
