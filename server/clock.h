/*
 * clock.h - the monotonic clock, in the units deadlines and timings use.
 *
 * One definition for the server's modules (CLOCK_MONOTONIC never jumps with
 * the wall clock, so a deadline computed from it holds).  Thread-safe.
 */
#ifndef CTR_SERVER_CLOCK_H
#define CTR_SERVER_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Nanoseconds since an arbitrary fixed point (CLOCK_MONOTONIC). */
static inline int64_t clock_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#endif
