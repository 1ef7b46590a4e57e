/*
 * clock.h - the one monotonic clock of the server: nanoseconds since an
 * arbitrary start (CLOCK_MONOTONIC), for deadlines, back-offs and timings.
 * Deadlines are absolute values of this clock, so a budget passed from one
 * stage to the next never restarts.  Thread-safe.
 */
#ifndef CTR_SERVER_CLOCK_H
#define CTR_SERVER_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t clock_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline double clock_now_s(void) { return (double)clock_now_ns() * 1e-9; }

#endif
