/*
 * http_head.h - the strict check of a request's head (request line and
 * header fields) that the HTTP front runs on the raw bytes before
 * libmicrohttpd parses them (http.c).
 *
 * libmicrohttpd 0.9.75 is lenient where a proxy in front may not be: it
 * takes a header name with whitespace before the colon as another header
 * ("Content-Length : 5" frames no body), joins folded lines into the
 * previous value, stops a path at %00, accepts HTTP/1.1 without Host and
 * any HTTP/1.x version, and answers its own refusals (400, 414, 431, 505)
 * with HTML.  Every head is checked here first, on exactly the bytes the
 * library will get, and whatever could be read two ways is refused with
 * the API's JSON error and the connection closed:
 *
 *   - request line: METHOD SP TARGET SP HTTP/1.0|HTTP/1.1 CRLF, a token
 *     method; a target that is a path (origin form) of the bytes RFC 3986
 *     allows, whose %XX escapes are well formed and decode to no control
 *     byte (%00..%1F, %7F); longer than HTTP_TARGET_MAX: 414; another
 *     HTTP/x.y: 505;
 *   - header lines: a token name, the colon right after it (whitespace
 *     before it is refused, RFC 9112 5.1), no line starting with
 *     whitespace (obs-fold), no control byte but HTAB in a value, CRLF line
 *     ends only (a bare CR or LF is refused);
 *   - framing: Content-Length of plain digits only ("-1", "+5", "5, 5",
 *     "0x5" refused), at most one; Transfer-Encoding refused (a rank body
 *     needs a Content-Length: 411 for "chunked", 400 for anything else or
 *     together with Content-Length);
 *   - Host: exactly one on HTTP/1.1;
 *   - the whole head within HTTP_HEAD_MAX bytes, else 431.
 * Empty lines before the request line (RFC 9112 2.2) are skipped.
 *
 * Pure functions over a buffer; thread-safe.
 */
#ifndef CTR_HTTP_HEAD_H
#define CTR_HTTP_HEAD_H

#include <stddef.h>
#include <stdint.h>

#include "proto/error.h"

#define HTTP_HEAD_MAX 8192          /* request line + header fields */
#define HTTP_TARGET_MAX 2048        /* the request target (path and query) */

typedef struct http_head {
    size_t len;                     /* bytes of the head, its blank line and
                                       any empty lines before it */
    uint64_t content_length;        /* 0 when absent */
} http_head;

typedef enum http_head_result {
    HTTP_HEAD_REFUSED = -1,         /* *err and msg say why */
    HTTP_HEAD_MORE = 0,             /* not whole yet: call again with more */
    HTTP_HEAD_OK = 1,
} http_head_result;

/* Checks the head at the start of buf[0..n).  HTTP_HEAD_OK fills *out;
 * HTTP_HEAD_REFUSED sets *err (the error to answer) and msg (cap bytes,
 * for the answer's message); HTTP_HEAD_MORE when the bytes so far are a
 * valid beginning (refusals are found as early as the bytes allow). */
http_head_result http_head_check(const char *buf, size_t n, http_head *out, proto_error *err,
                                 char *msg, size_t cap);

/* The path of a head's request line (up to '?', at most cap-1 bytes) for
 * the metrics' endpoint label; "" when there is none. */
void http_head_path(const char *buf, size_t n, char *path, size_t cap);

#endif
