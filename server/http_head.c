/* http_head.c - the strict check of a request head, see http_head.h. */
#include "http_head.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* RFC 9110 5.6.2 tchar. */
static int is_tchar(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* RFC 3986 pchar without '%' (handled apart), plus '/' and '?' (path and
 * query). */
static int is_target_char(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
    return c && strchr("-._~!$&'()*+,;=:@/?", c) != NULL;
}

static int hex_val(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static http_head_result refuse(proto_error *err, proto_error e, char *msg, size_t cap,
                               const char *fmt, const char *arg) {
    *err = e;
    if (cap) snprintf(msg, cap, fmt, arg ? arg : "");
    return HTTP_HEAD_REFUSED;
}

#define BAD(...) refuse(err, PROTO_ERROR_BAD_REQUEST, msg, cap, __VA_ARGS__)

/* The request line line[0..n) (without its CRLF).  *http11 set for
 * HTTP/1.1. */
static http_head_result request_line(const char *line, size_t n, int *http11, proto_error *err,
                                     char *msg, size_t cap) {
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)line[i])) i++;
    if (i == 0 || i >= n || line[i] != ' ')
        return BAD("malformed request line (expected METHOD SP PATH SP HTTP/1.1)%s", NULL);
    const char *t = line + i + 1;
    const char *sp = memchr(t, ' ', n - (size_t)(t - line));
    if (!sp) return BAD("malformed request line (expected METHOD SP PATH SP HTTP/1.1)%s", NULL);
    size_t tlen = (size_t)(sp - t);
    if (tlen > HTTP_TARGET_MAX)
        return refuse(err, PROTO_ERROR_URI_TOO_LONG, msg, cap,
                      "request target over %s bytes", "2048");
    if (tlen == 0 || t[0] != '/')
        return BAD("the request target must be a path starting with /%s", NULL);
    for (size_t k = 0; k < tlen; k++) {
        unsigned char c = (unsigned char)t[k];
        if (c == '%') {
            if (k + 2 >= tlen || hex_val((unsigned char)t[k + 1]) < 0 ||
                hex_val((unsigned char)t[k + 2]) < 0)
                return BAD("malformed %%-escape in the path%s", NULL);
            int v = hex_val((unsigned char)t[k + 1]) * 16 + hex_val((unsigned char)t[k + 2]);
            if (v < 0x20 || v == 0x7f)
                return BAD("the path holds an escaped control byte (%%00..%%1F, %%7F)%s", NULL);
            k += 2;
        } else if (!is_target_char(c)) {
            return BAD("the path holds a byte a path cannot hold (a space, control, "
                       "non-ASCII or one of \"<>\\^`{|}#)%s", NULL);
        }
    }
    const char *v = sp + 1;
    size_t vlen = n - (size_t)(v - line);
    if (vlen != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
        v[7] < '0' || v[7] > '9')
        return BAD("malformed HTTP version in the request line%s", NULL);
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
        return refuse(err, PROTO_ERROR_HTTP_VERSION, msg, cap,
                      "HTTP version %.8s not supported (HTTP/1.1 and HTTP/1.0 are)", v);
    *http11 = v[7] == '1';
    return HTTP_HEAD_OK;
}

/* Framing headers seen so far. */
typedef struct fields {
    int content_length, transfer_encoding, host;
    uint64_t cl;
    int te_chunked;
} fields;

/* Trims optional whitespace (SP, HTAB) off both ends of v[0..*n). */
static const char *trim(const char *v, size_t *n) {
    while (*n && (v[0] == ' ' || v[0] == '\t')) v++, (*n)--;
    while (*n && (v[*n - 1] == ' ' || v[*n - 1] == '\t')) (*n)--;
    return v;
}

static http_head_result field_line(const char *line, size_t n, fields *f, proto_error *err,
                                   char *msg, size_t cap) {
    if (line[0] == ' ' || line[0] == '\t')
        return BAD("a header line starts with whitespace (obs-fold is refused)%s", NULL);
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)line[i])) i++;
    if (i < n && (line[i] == ' ' || line[i] == '\t'))
        return BAD("whitespace between a header name and its colon%s", NULL);
    if (i == 0 || i >= n || line[i] != ':')
        return BAD("malformed header line (expected NAME: VALUE)%s", NULL);
    size_t vlen = n - i - 1;
    const char *v = trim(line + i + 1, &vlen);
    for (size_t k = 0; k < vlen; k++) {
        unsigned char c = (unsigned char)v[k];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return BAD("a control byte in a header value%s", NULL);
    }
#define NAME_IS(s) (i == sizeof(s) - 1 && strncasecmp(line, s, i) == 0)
    if (NAME_IS("Content-Length")) {
        if (++f->content_length > 1) return BAD("more than one Content-Length header%s", NULL);
        if (vlen == 0 || vlen > 19)
            return BAD("Content-Length must be plain digits (at most 19)%s", NULL);
        uint64_t x = 0;
        for (size_t k = 0; k < vlen; k++) {
            if (v[k] < '0' || v[k] > '9')
                return BAD("Content-Length must be plain digits (at most 19)%s", NULL);
            x = x * 10 + (uint64_t)(v[k] - '0');
        }
        f->cl = x;
    } else if (NAME_IS("Transfer-Encoding")) {
        if (++f->transfer_encoding > 1)
            return BAD("more than one Transfer-Encoding header%s", NULL);
        f->te_chunked = vlen == 7 && strncasecmp(v, "chunked", 7) == 0;
    } else if (NAME_IS("Host")) {
        f->host++;
    }
#undef NAME_IS
    return HTTP_HEAD_OK;
}

/* The end of the line starting at p (the index of its CR), or -1 when
 * not in yet; -2 for a bare CR or LF. */
static long line_end(const char *buf, size_t p, size_t n) {
    for (size_t i = p; i < n; i++) {
        if (buf[i] == '\n') return -2;
        if (buf[i] == '\r') {
            if (i + 1 == n) return -1;
            return buf[i + 1] == '\n' ? (long)i : -2;
        }
    }
    return -1;
}

http_head_result http_head_check(const char *buf, size_t n, http_head *out, proto_error *err,
                                 char *msg, size_t cap) {
    size_t p = 0;
    /* Empty lines before the request line (a client's CRLF after a body). */
    while (p + 1 < n && buf[p] == '\r' && buf[p + 1] == '\n' && p < 64) p += 2;
    int http11 = 0;
    fields f = {0, 0, 0, 0, 0};
    for (int first = 1;; first = 0) {
        long e = line_end(buf, p, n);
        if (e == -2) return BAD("a bare CR or LF in the head (lines end with CRLF)%s", NULL);
        if (e == -1) {
            /* Not whole yet: refuse now what can no longer fit, and what
             * is already wrong in the request line. */
            if (first) {
                const char *sp = memchr(buf + p, ' ', n - p);
                const char *t = sp ? sp + 1 : NULL;
                const char *sp2 = t ? memchr(t, ' ', n - (size_t)(t - buf)) : NULL;
                if (t && !sp2 && n - (size_t)(t - buf) > HTTP_TARGET_MAX)
                    return refuse(err, PROTO_ERROR_URI_TOO_LONG, msg, cap,
                                  "request target over %s bytes", "2048");
            }
            if (n >= HTTP_HEAD_MAX)
                return refuse(err, PROTO_ERROR_HEADERS_TOO_LARGE, msg, cap,
                              "request line and headers over %s bytes", "8192");
            return HTTP_HEAD_MORE;
        }
        size_t len = (size_t)e - p;
        if ((size_t)e + 2 > HTTP_HEAD_MAX)
            return first && len > HTTP_TARGET_MAX
                       ? refuse(err, PROTO_ERROR_URI_TOO_LONG, msg, cap,
                                "request target over %s bytes", "2048")
                       : refuse(err, PROTO_ERROR_HEADERS_TOO_LARGE, msg, cap,
                                "request line and headers over %s bytes", "8192");
        http_head_result r;
        if (first) {
            r = request_line(buf + p, len, &http11, err, msg, cap);
        } else if (len == 0) {
            p = (size_t)e + 2;
            break;
        } else {
            r = field_line(buf + p, len, &f, err, msg, cap);
        }
        if (r != HTTP_HEAD_OK) return r;
        p = (size_t)e + 2;
    }
    if (f.transfer_encoding && f.content_length)
        return BAD("both Transfer-Encoding and Content-Length: refused (the framing is "
                   "ambiguous)%s", NULL);
    if (f.transfer_encoding && !f.te_chunked)
        return BAD("Transfer-Encoding other than chunked: refused%s", NULL);
    if (f.transfer_encoding)
        return refuse(err, PROTO_ERROR_LENGTH_REQUIRED, msg, cap,
                      "a body needs a Content-Length (chunked bodies are not accepted)%s",
                      NULL);
    if (http11 && f.host != 1)
        return BAD(f.host ? "more than one Host header%s" : "HTTP/1.1 needs a Host header%s",
                   NULL);
    out->len = p;
    out->content_length = f.cl;
    return HTTP_HEAD_OK;
}

void http_head_path(const char *buf, size_t n, char *path, size_t cap) {
    size_t p = 0;
    while (p + 1 < n && buf[p] == '\r' && buf[p + 1] == '\n' && p < 64) p += 2;
    const char *sp = memchr(buf + p, ' ', n - p);
    size_t k = 0;
    if (sp)
        for (const char *t = sp + 1; t < buf + n && *t != ' ' && *t != '?' && *t != '\r' &&
                                     k + 1 < cap;
             t++)
            path[k++] = *t;
    if (cap) path[k] = '\0';
}
