/*
 * buf.h - a growing byte buffer for the JSON the service writes.
 *
 * Answers are printed straight into this buffer (no JSON tree): ranking 256
 * items costs 256 short snprintf calls and nothing else.  A buffer is meant
 * to be reused: proto_buf_reset keeps the memory, so a worker that answers
 * request after request stops allocating once its buffer has grown to the
 * largest answer it has seen.
 *
 * Out of memory is sticky: after a failed growth every append is a no-op and
 * proto_buf_ok() is 0, so encoders check once at the end instead of after
 * every call.  Not thread-safe: one buffer per worker.
 */
#ifndef CTR_PROTO_BUF_H
#define CTR_PROTO_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct proto_buf {
    char *data;       /* NUL-terminated when len > 0 or after any append */
    size_t len;       /* bytes written, without the NUL */
    size_t cap;       /* bytes allocated */
    int oom;          /* 1 after a failed growth */
} proto_buf;

/* An empty buffer; allocates nothing until the first append. */
void proto_buf_init(proto_buf *b);
/* Releases the memory; the buffer is empty (and usable) again. */
void proto_buf_free(proto_buf *b);
/* Empties the buffer, keeps its memory, clears the out-of-memory flag. */
void proto_buf_reset(proto_buf *b);
/* 1 when every append since the last reset succeeded. */
int proto_buf_ok(const proto_buf *b);
/* The text written so far ("" for an empty buffer); owned by the buffer. */
const char *proto_buf_str(const proto_buf *b);

void proto_buf_append(proto_buf *b, const char *s, size_t len);
void proto_buf_puts(proto_buf *b, const char *s);
void proto_buf_putc(proto_buf *b, char c);
void proto_buf_printf(proto_buf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Room for n more bytes: where to write them (then proto_buf_commit with
 * how many were written, at most n), or NULL after a failed growth.  For
 * encoders that lay out many short pieces without a call each. */
char *proto_buf_room(proto_buf *b, size_t n);
void proto_buf_commit(proto_buf *b, size_t n);

/* JSON values.  Strings are quoted and escaped; bytes that are not valid
 * UTF-8 become U+FFFD, so the output is valid JSON whatever the input
 * (error messages may hold truncated or foreign text). */
void proto_buf_json_string(proto_buf *b, const char *s, size_t len);
void proto_buf_json_cstr(proto_buf *b, const char *s);  /* NULL -> null */
void proto_buf_json_int(proto_buf *b, int64_t v);
/* %.9g, enough to read the same float32 back; non-finite -> null (JSON has
 * no NaN or infinity). */
void proto_buf_json_float(proto_buf *b, float v);
/* The text proto_buf_json_int / proto_buf_json_float append, written at
 * out (room for PROTO_NUM_MAX bytes; no NUL); returns its length. */
#define PROTO_NUM_MAX 32
size_t proto_fmt_int(char *out, int64_t v);
size_t proto_fmt_float(char *out, float v);

#endif
