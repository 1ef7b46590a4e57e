/*
 * breaker.h - a circuit breaker for one connection to a dependency (a
 * Redis connection today; one per node when there are several).
 *
 * States: CLOSED (calls go through); OPEN (calls fail at once, for a
 * back-off period); when the period ends, the next call is let through as a
 * probe (HALF_OPEN): its success closes the breaker, its failure opens it
 * again for twice as long, up to max_ms.  Each period is drawn with jitter
 * in [0.75, 1.25) of its nominal length, so connections that failed
 * together do not all probe together.  A hung dependency then costs one
 * bounded call per connection per period, not a timeout per request.
 *
 * The owner calls breaker_allow before a call and breaker_success or
 * breaker_failure after it.  Events (opened, closed, short-circuited) go to
 * an optional callback so metrics can count them across connections.
 *
 * Plain data owned by its connection; not thread-safe (a connection is used
 * by one thread at a time).
 */
#ifndef CTR_SERVER_BREAKER_H
#define CTR_SERVER_BREAKER_H

#include <stdint.h>

typedef enum breaker_state {
    BREAKER_CLOSED,
    BREAKER_OPEN,
    BREAKER_HALF_OPEN
} breaker_state;

typedef enum breaker_event {
    BREAKER_EV_OPENED,          /* closed -> open */
    BREAKER_EV_CLOSED,          /* probe succeeded: open -> closed */
    BREAKER_EV_SHORT_CIRCUIT,   /* a call refused while open */
    BREAKER_EV_PROBE            /* a call let through as a probe */
} breaker_event;

typedef void (*breaker_hook)(void *arg, breaker_event ev);

typedef struct breaker_params {
    int base_ms;                /* first open period (nominal) */
    int max_ms;                 /* longest open period (nominal) */
    breaker_hook hook;          /* may be NULL */
    void *hook_arg;
} breaker_params;

typedef struct breaker {
    breaker_params p;
    breaker_state state;
    int64_t open_until_ns;      /* when OPEN: no call before this */
    int period_ms;              /* nominal length of the current period */
    uint64_t rng;               /* jitter state (xorshift) */
    uint64_t opens, short_circuits, probes;
} breaker;

/* A closed breaker; seed makes the jitter differ between connections. */
void breaker_init(breaker *b, const breaker_params *p, uint64_t seed);

/* 1: make the call (closed, or the probe after a period); 0: fail at once
 * (the call is counted as short-circuited). */
int breaker_allow(breaker *b, int64_t now_ns);

/* The call succeeded (the dependency answered): close. */
void breaker_success(breaker *b);

/* The call failed (timeout, connection error, unavailable reply): open,
 * for base_ms after a closed state or twice the last period after a failed
 * probe (capped at max_ms). */
void breaker_failure(breaker *b, int64_t now_ns);

/* Milliseconds until the next probe may go out (0 when closed). */
int64_t breaker_wait_ms(const breaker *b, int64_t now_ns);

/* The longest a breaker can stay open after the dependency is healthy
 * again, in ms: max_ms with the jitter's upper bound. */
int breaker_recovery_bound_ms(const breaker_params *p);

#endif
