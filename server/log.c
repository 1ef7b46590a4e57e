/* log.c - stderr log records, see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static atomic_int min_level = LOG_INFO;

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

void log_msg(log_level l, const char *fmt, ...) {
    if ((int)l < atomic_load(&min_level)) return;
    static const char *tags[] = {"debug", "info", "warn", "error"};
    char msg[1024], stamp[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %-5s %s\n", stamp, ts.tv_nsec / 1000000, tags[l], msg);
}
