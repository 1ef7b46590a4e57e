/*
 * fuzz_http_head.c - fuzz target for the HTTP gate's head check
 * (http_head_check, server/http_head.h), which reads raw client bytes.
 * The oracle, beyond the sanitizers:
 *   - a head accepted is one libmicrohttpd cannot read another way: it
 *     ends with CRLF CRLF, its lines end with CRLF and none starts with
 *     whitespace, no header name holds whitespace, and its Content-Length
 *     is the digits it says;
 *   - the check is incremental: every prefix of an accepted head asks for
 *     more, and a prefix refused means the whole is refused (the gate
 *     refuses as early as the bytes allow, never something it would accept
 *     whole);
 *   - a refusal is one of the gate's errors (400, 411, 414, 431, 505) with
 *     a message.
 *
 * `make test` builds it as a plain program: without arguments it runs a
 * built-in sweep (fixed-seed mutations of valid heads, ~1 s), with
 * arguments it replays those files (tests/fuzz/corpus/http_head).  `make
 * fuzz` runs it under libFuzzer.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/error.h"
#include "server/http_head.h"
#include "tests/fuzz/fuzz_files.h"

static void check_accepted(const char *d, const http_head *h) {
    if (h->len < 4 || memcmp(d + h->len - 4, "\r\n\r\n", 4) != 0) abort();
    for (size_t i = 0; i + 1 < h->len; i++) {
        if (d[i] == '\n' && (i == 0 || d[i - 1] != '\r')) abort();         /* bare LF */
        if (d[i] == '\r' && d[i + 1] != '\n') abort();                      /* bare CR */
        if (d[i] == '\n' && i + 1 < h->len && (d[i + 1] == ' ' || d[i + 1] == '\t'))
            abort();                                                        /* obs-fold */
        if (d[i] == '\0') abort();
    }
    /* Each header line: no whitespace before its colon; Content-Length
     * digits equal to what was returned. */
    size_t start = 0;   /* empty lines before the request line */
    while (start + 1 < h->len && d[start] == '\r' && d[start + 1] == '\n') start += 2;
    const char *p = memchr(d + start, '\n', h->len - start);
    while (p && (size_t)(p + 1 - d) < h->len - 2) {
        const char *line = p + 1, *end = memchr(line, '\r', h->len - (size_t)(line - d));
        const char *colon = memchr(line, ':', (size_t)(end - line));
        if (!end || !colon) abort();
        for (const char *q = line; q < colon; q++)
            if (*q == ' ' || *q == '\t') abort();
        if (colon - line == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
            uint64_t x = 0;
            for (const char *q = colon + 1; q < end; q++)
                if (*q >= '0' && *q <= '9') x = x * 10 + (uint64_t)(*q - '0');
                else if (*q != ' ' && *q != '\t') abort();
            if (x != h->content_length) abort();
        }
        if (colon - line == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0) abort();
        p = memchr(line, '\n', h->len - (size_t)(line - d));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *d = (const char *)data;
    http_head h;
    proto_error e;
    char msg[200];
    http_head_result r = http_head_check(d, size, &h, &e, msg, sizeof msg);
    if (r == HTTP_HEAD_REFUSED) {
        int st = proto_error_http(e);
        if ((st != 400 && st != 411 && st != 414 && st != 431 && st != 505) || !msg[0]) abort();
    } else if (r == HTTP_HEAD_OK) {
        if (h.len > size || h.len > HTTP_HEAD_MAX) abort();
        check_accepted(d, &h);
    } else if (r != HTTP_HEAD_MORE || size >= HTTP_HEAD_MAX) {
        abort();
    }
    /* Prefixes (a few, to stay fast): MORE below an accepted head's end; a
     * refused prefix only for a refused whole. */
    size_t cuts[4] = {size / 4, size / 2, size - (size > 0), size > 8 ? size - 8 : 0};
    for (int i = 0; i < 4; i++) {
        size_t n = cuts[i];
        if (n >= size) continue;
        http_head hp;
        http_head_result rp = http_head_check(d, n, &hp, &e, msg, sizeof msg);
        if (rp == HTTP_HEAD_REFUSED && r != HTTP_HEAD_REFUSED) abort();
        if (r == HTTP_HEAD_OK && n < h.len && rp != HTTP_HEAD_MORE) abort();
        if (rp == HTTP_HEAD_OK && (r != HTTP_HEAD_OK || hp.len != h.len)) abort();
    }
    char path[64];
    http_head_path(d, size, path, sizeof path);
    return 0;
}

#ifndef FUZZ_LIBFUZZER
static const char *const seeds[] = {
    "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    "POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    "Content-Length: 2\r\n\r\n{}",
    "\r\nGET /metrics?x=%41 HTTP/1.0\r\nX-A:\t b \r\n\r\n",
    "POST /v1/rank HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
};

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* Bytes that matter to the grammar, so mutations hit its edges. */
static const char special[] = " \t\r\n:%0aAzZ-+,/?\x01\x7f\x80";

int main(int argc, char **argv) {
    if (argc > 1) return fuzz_run_files("fuzz_http_head", argc, argv, LLVMFuzzerTestOneInput);
    static char buf[HTTP_HEAD_MAX + 64];
    int runs = 0, ok = 0;
    for (size_t s = 0; s < sizeof seeds / sizeof seeds[0]; s++) {
        for (int k = 0; k < 50000; k++) {
            size_t n = strlen(seeds[s]);
            memcpy(buf, seeds[s], n);
            int muts = 1 + (int)(next() % 4);
            for (int m = 0; m < muts; m++) {
                size_t at = n ? next() % n : 0;
                switch (next() % 4) {
                case 0: buf[at] = special[next() % (sizeof special - 1)]; break;
                case 1: buf[at] = (char)next(); break;
                case 2:  /* insert */
                    if (n + 1 < sizeof buf) {
                        memmove(buf + at + 1, buf + at, n - at);
                        buf[at] = special[next() % (sizeof special - 1)];
                        n++;
                    }
                    break;
                default:  /* delete */
                    if (n) {
                        memmove(buf + at, buf + at + 1, n - at - 1);
                        n--;
                    }
                }
            }
            LLVMFuzzerTestOneInput((const uint8_t *)buf, n);
            http_head h;
            proto_error e;
            char msg[8];
            ok += http_head_check(buf, n, &h, &e, msg, sizeof msg) == HTTP_HEAD_OK;
            runs++;
        }
    }
    printf("fuzz_http_head: %d mutated heads run (%d accepted)\n", runs, ok);
    return 0;
}
#endif
