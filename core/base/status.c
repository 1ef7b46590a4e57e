/* status.c - strings for the status codes of status.h. */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>

const char *ctr_strerror(int status) {
    switch (status) {
#define CTR_STATUS_STR(name, val, msg) case (val): return (msg);
        CTR_STATUS_MAP(CTR_STATUS_STR)
#undef CTR_STATUS_STR
    }
    return "unknown status";
}

int ctr_fail(char *err, unsigned long errlen, int status, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return status;
}
