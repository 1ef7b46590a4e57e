/* log.c - stderr log records and rate-limited kinds, see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/base/clock.h"

static atomic_int min_level = LOG_INFO;
static atomic_int limit_interval_ms = 10000;

/* Kinds that have fired, for log_limit_tick; a fixed table, since kinds
 * are call sites (a few dozen at most). */
#define LOG_MAX_KINDS 64
static _Atomic(log_limit *) kinds[LOG_MAX_KINDS];
static atomic_int nkinds;

void log_set_level(log_level l) { atomic_store(&min_level, (int)l); }

int log_set_level_name(const char *name) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            log_set_level((log_level)i);
            return 0;
        }
    return -1;
}

void log_limit_set_interval_ms(int ms) { atomic_store(&limit_interval_ms, ms > 0 ? ms : 1); }

/* Copies msg into out (cap bytes) with every control character escaped:
 * C0 and DEL as \n, \r, \t or \xHH, C1 (UTF-8 C2 80..C2 9F) as \u00HH.
 * Messages carry client-supplied strings (user ids, request ids, model
 * names, paths): raw, a newline would forge a log line and an escape
 * sequence would drive the reader's terminal.  Cut short (never
 * mid-escape) when out is full. */
static void escape(const char *msg, char *out, size_t cap) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
        char e[8];
        size_t n;
        if (*p == '\n' || *p == '\r' || *p == '\t') {
            e[0] = '\\';
            e[1] = *p == '\n' ? 'n' : *p == '\r' ? 'r' : 't';
            n = 2;
        } else if (*p < 0x20 || *p == 0x7f) {
            e[0] = '\\', e[1] = 'x', e[2] = hex[*p >> 4], e[3] = hex[*p & 15];
            n = 4;
        } else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
            p++;
            memcpy(e, "\\u00", 4);
            e[4] = hex[*p >> 4], e[5] = hex[*p & 15];
            n = 6;
        } else {
            e[0] = (char)*p;
            n = 1;
        }
        if (o + n >= cap) break;
        memcpy(out + o, e, n);
        o += n;
    }
    out[o] = '\0';
}

static void emit(log_level l, const char *raw) {
    static const char *tags[] = {"debug", "info", "warn", "error"};
    char msg[LOG_LINE_MAX];
    escape(raw, msg, sizeof msg);
    char stamp[32];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %-5s %s\n", stamp, ts.tv_nsec / 1000000, tags[l], msg);
}

void log_msg(log_level l, const char *fmt, ...) {
    if ((int)l < atomic_load(&min_level)) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    emit(l, msg);
}

static void summary(log_limit *l, unsigned long long n) {
    if (!n || (int)l->level < atomic_load(&min_level)) return;
    char msg[256];
    snprintf(msg, sizeof msg, "%s: %llu more like the last in %.1f s (rate-limited)",
             l->kind ? l->kind : "log", n, atomic_load(&limit_interval_ms) / 1000.0);
    emit(l->level, msg);
}

void log_limited(log_limit *l, log_level lv, const char *kind, const char *fmt, ...) {
    if ((int)lv < atomic_load(&min_level)) return;
    int64_t now = clock_now_ns();
    long long end = atomic_load(&l->window_end_ns);
    if (end && now < end) {
        atomic_fetch_add(&l->suppressed, 1);
        return;
    }
    /* One thread opens the next window and prints; racers count. */
    if (!atomic_compare_exchange_strong(&l->window_end_ns, &end,
                                        now + (int64_t)atomic_load(&limit_interval_ms) * 1000000)) {
        atomic_fetch_add(&l->suppressed, 1);
        return;
    }
    if (!atomic_exchange(&l->registered, 1)) {
        l->kind = kind;
        l->level = lv;
        int i = atomic_fetch_add(&nkinds, 1);
        if (i < LOG_MAX_KINDS) atomic_store(&kinds[i], l);
    }
    summary(l, atomic_exchange(&l->suppressed, 0));
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    emit(lv, msg);
}

void log_limit_tick(void) {
    int n = atomic_load(&nkinds);
    if (n > LOG_MAX_KINDS) n = LOG_MAX_KINDS;
    int64_t now = clock_now_ns();
    for (int i = 0; i < n; i++) {
        log_limit *l = atomic_load(&kinds[i]);
        if (!l || !atomic_load(&l->suppressed)) continue;
        long long end = atomic_load(&l->window_end_ns);
        if (now < end) continue;
        /* Close the window: the next record prints at once again. */
        if (atomic_compare_exchange_strong(&l->window_end_ns, &end, 0))
            summary(l, atomic_exchange(&l->suppressed, 0));
    }
}
