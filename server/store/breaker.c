/* breaker.c - per-connection circuit breaker, see breaker.h. */
#include "breaker.h"

static void emit(breaker *b, breaker_event ev) {
    if (b->p.hook) b->p.hook(b->p.hook_arg, ev);
}

void breaker_init(breaker *b, const breaker_params *p, uint64_t seed) {
    b->p = *p;
    if (b->p.base_ms < 1) b->p.base_ms = 1;
    if (b->p.max_ms < b->p.base_ms) b->p.max_ms = b->p.base_ms;
    b->state = BREAKER_CLOSED;
    b->open_until_ns = 0;
    b->period_ms = 0;
    b->rng = seed * 0x9E3779B97F4A7C15ull + 1;
    b->opens = b->short_circuits = b->probes = 0;
}

/* Uniform in [0.75, 1.25). */
static double jitter(breaker *b) {
    uint64_t x = b->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b->rng = x;
    return 0.75 + 0.5 * (double)(x >> 11) / (double)(1ull << 53);
}

int breaker_allow(breaker *b, int64_t now_ns) {
    switch (b->state) {
    case BREAKER_CLOSED:
        return 1;
    case BREAKER_HALF_OPEN:
        return 1;   /* one thread per connection: the probe is this call */
    case BREAKER_OPEN:
        if (now_ns >= b->open_until_ns) {
            b->state = BREAKER_HALF_OPEN;
            b->probes++;
            emit(b, BREAKER_EV_PROBE);
            return 1;
        }
        b->short_circuits++;
        emit(b, BREAKER_EV_SHORT_CIRCUIT);
        return 0;
    }
    return 1;
}

void breaker_success(breaker *b) {
    if (b->state == BREAKER_CLOSED) return;
    b->state = BREAKER_CLOSED;
    b->period_ms = 0;
    emit(b, BREAKER_EV_CLOSED);
}

void breaker_failure(breaker *b, int64_t now_ns) {
    if (b->state == BREAKER_CLOSED) {
        b->period_ms = b->p.base_ms;
        b->opens++;
        emit(b, BREAKER_EV_OPENED);
    } else {
        b->period_ms = b->period_ms * 2 > b->p.max_ms ? b->p.max_ms : b->period_ms * 2;
        if (b->period_ms < b->p.base_ms) b->period_ms = b->p.base_ms;
    }
    b->state = BREAKER_OPEN;
    b->open_until_ns = now_ns + (int64_t)(b->period_ms * jitter(b) * 1e6);
}

int64_t breaker_wait_ms(const breaker *b, int64_t now_ns) {
    if (b->state != BREAKER_OPEN || now_ns >= b->open_until_ns) return 0;
    return (b->open_until_ns - now_ns + 999999) / 1000000;
}

int breaker_recovery_bound_ms(const breaker_params *p) {
    int max = p->max_ms > p->base_ms ? p->max_ms : p->base_ms;
    return (int)(max * 1.25 + 0.5);
}
