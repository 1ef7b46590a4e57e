/*
 * buf.c - growing byte buffer and JSON value printing, see buf.h.
 *
 * The one subtle part is string escaping: the output must be valid JSON for
 * any input bytes, because what we quote includes client-supplied ids and
 * error messages that snprintf may have cut in the middle of a UTF-8
 * sequence.  Runs of bytes that need nothing are copied in one append.
 */
#include "buf.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void proto_buf_init(proto_buf *b) {
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}

void proto_buf_free(proto_buf *b) {
    free(b->data);
    proto_buf_init(b);
}

void proto_buf_reset(proto_buf *b) {
    b->len = 0;
    b->oom = 0;
    if (b->data) b->data[0] = '\0';
}

int proto_buf_ok(const proto_buf *b) { return !b->oom; }

const char *proto_buf_str(const proto_buf *b) {
    return b->data && !b->oom ? b->data : "";
}

/* Makes room for `extra` more bytes plus the NUL. */
static int reserve(proto_buf *b, size_t extra) {
    if (b->oom) return 0;
    if (extra >= SIZE_MAX - b->len) goto fail;
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) { cap = need; break; }
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p) goto fail;
    b->data = p;
    b->cap = cap;
    return 1;
fail:
    b->oom = 1;
    return 0;
}

void proto_buf_append(proto_buf *b, const char *s, size_t len) {
    if (!reserve(b, len)) return;
    if (len) memcpy(b->data + b->len, s, len);
    b->len += len;
    b->data[b->len] = '\0';
}

char *proto_buf_room(proto_buf *b, size_t n) {
    return reserve(b, n) ? b->data + b->len : NULL;
}

void proto_buf_commit(proto_buf *b, size_t n) {
    if (b->oom) return;
    b->len += n;
    b->data[b->len] = '\0';
}

void proto_buf_puts(proto_buf *b, const char *s) {
    proto_buf_append(b, s, strlen(s));
}

void proto_buf_putc(proto_buf *b, char c) { proto_buf_append(b, &c, 1); }

void proto_buf_printf(proto_buf *b, const char *fmt, ...) {
    if (b->oom) return;
    va_list ap;
    /* Most printfs are short numbers: try the room we have first. */
    size_t room = b->cap > b->len ? b->cap - b->len : 0;
    va_start(ap, fmt);
    int n = vsnprintf(room ? b->data + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0) { b->oom = 1; return; }
    if ((size_t)n >= room) {
        if (!reserve(b, (size_t)n)) return;
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence starting at s (at most `left` bytes),
 * or 0 when the bytes there are not one (overlong forms, surrogates and
 * code points past U+10FFFF included). */
static size_t utf8_seq(const unsigned char *s, size_t left) {
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;   /* allowed range of the 2nd byte */
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;          /* overlong */
        if (c == 0xED) hi = 0x9F;          /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;          /* overlong */
        if (c == 0xF4) hi = 0x8F;          /* past U+10FFFF */
    } else {
        return 0;
    }
    if (left < n) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return n;
}

void proto_buf_json_string(proto_buf *b, const char *str, size_t len) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, run = 0;   /* s[run..i) is copied verbatim when flushed */
    proto_buf_putc(b, '"');
    while (i < len) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) { i++; continue; }
        size_t n = c >= 0x80 ? utf8_seq(s + i, len - i) : 0;
        if (n) { i += n; continue; }
        proto_buf_append(b, str + run, i - run);
        char esc[8];
        size_t elen = 2;
        esc[0] = '\\';
        switch (c) {
        case '"':  esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            if (c < 0x20) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                elen = 6;
            } else {
                memcpy(esc, "\xEF\xBF\xBD", 3);   /* U+FFFD */
                elen = 3;
            }
        }
        proto_buf_append(b, esc, elen);
        run = ++i;
    }
    proto_buf_append(b, str + run, i - run);
    proto_buf_putc(b, '"');
}

void proto_buf_json_cstr(proto_buf *b, const char *s) {
    if (!s) proto_buf_append(b, "null", 4);
    else proto_buf_json_string(b, s, strlen(s));
}

static const char DIGITS2[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

size_t proto_fmt_int(char *out, int64_t v) {
    /* Digits by hand, two at a time: four or more per answer item, and
     * printf is slow for this. */
    char tmp[20];
    int w = (int)sizeof tmp;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    while (u >= 100) {
        unsigned r = (unsigned)(u % 100);
        u /= 100;
        w -= 2;
        memcpy(tmp + w, DIGITS2 + 2 * r, 2);
    }
    if (u >= 10) {
        w -= 2;
        memcpy(tmp + w, DIGITS2 + 2 * u, 2);
    } else {
        tmp[--w] = (char)('0' + u);
    }
    size_t n = 0;
    if (v < 0) out[n++] = '-';
    memcpy(out + n, tmp + w, sizeof tmp - (size_t)w);
    return n + sizeof tmp - (size_t)w;
}

void proto_buf_json_int(proto_buf *b, int64_t v) {
    char *p = proto_buf_room(b, PROTO_NUM_MAX);
    if (p) proto_buf_commit(b, proto_fmt_int(p, v));
}

/* "%.9g" of a float in [1e-4, 1), without printf: answers print one score
 * per candidate, and glibc's printf of a float (arbitrary precision, locale
 * machinery) costs about 0.3 us each, a tenth of a warm request's time
 * outside the model at 256 candidates.  The float is m 2^e exactly, so
 * m 10^k 2^e is computed exactly in 128-bit integers and rounded half to
 * even, as printf rounds the exact binary value; the digits are then laid
 * out as %g does (fixed notation in this range, trailing zeros dropped).
 * Returns the length written into out (at least 24 bytes), or 0 when v is
 * outside the range (the caller uses printf then).  Tested against
 * snprintf on every float in the range's exponents (tests/proto). */
static int fmt_prob(float v, char *out) {
    /* Decades are compared in double: 1e-4f, 0.01f... are not the decimal
     * powers they stand for, and a float just below 10^x belongs to the
     * decade below (doubles are close enough to 10^x to decide that). */
    double dv = (double)v;
    if (!(dv >= 1e-4 && dv < 1.0)) return 0;
    /* v = m / 2^shift from its bits (normal in this range): m the 24-bit
     * significand with its implicit 1, shift in 25..38. */
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    uint64_t m = (bits & 0x7FFFFFu) | 0x800000u;
    int shift = 150 - (int)((bits >> 23) & 0xFF);
    /* Decimal exponent x of v (v in [10^x, 10^(x+1))), x in -4..-1. */
    int x = dv >= 0.1 ? -1 : dv >= 0.01 ? -2 : dv >= 0.001 ? -3 : -4;
    /* 9 significant digits: q = round(v 10^(8 - x)). */
    unsigned __int128 n = m;
    for (int i = 0; i < 8 - x; i++) n *= 10;
    unsigned __int128 q = n >> shift, rem = n - (q << shift), half = (unsigned __int128)1 << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    if (q >= 1000000000u) { /* rounded up to the next power of ten */
        q /= 10;
        x++;
        if (x >= 0) return 0; /* became 1.00000000: let printf say "1" */
    }
    char digits[9];
    uint64_t d = (uint64_t)q;
    for (int i = 8; i >= 0; i--) {
        digits[i] = (char)('0' + d % 10);
        d /= 10;
    }
    int nd = 9;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    int w = 0;
    out[w++] = '0';
    out[w++] = '.';
    for (int i = 0; i < -x - 1; i++) out[w++] = '0';
    for (int i = 0; i < nd; i++) out[w++] = digits[i];
    return w;
}

size_t proto_fmt_float(char *out, float v) {
    int n;
    if (!isfinite(v)) {
        memcpy(out, "null", 4);
        return 4;
    }
    if ((n = fmt_prob(v, out)) > 0) return (size_t)n;
    char tmp[PROTO_NUM_MAX];
    n = snprintf(tmp, sizeof tmp, "%.9g", (double)v);   /* at most 15 bytes */
    memcpy(out, tmp, (size_t)n);
    return (size_t)n;
}

void proto_buf_json_float(proto_buf *b, float v) {
    char *p = proto_buf_room(b, PROTO_NUM_MAX);
    if (p) proto_buf_commit(b, proto_fmt_float(p, v));
}
