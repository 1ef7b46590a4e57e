/* test_breaker.c - the circuit breaker's states, back-off doubling and cap,
 * jitter bounds, and events. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>

#include "server/store/breaker.h"

#define MS 1000000LL

static int events[4];
static void hook(void *arg, breaker_event ev) {
    (void)arg;
    events[ev]++;
}

static void test_cycle(void **state) {
    (void)state;
    for (int i = 0; i < 4; i++) events[i] = 0;
    breaker b;
    breaker_init(&b, &(breaker_params){100, 400, hook, NULL}, 7);
    int64_t t = 1000 * MS;
    assert_true(breaker_allow(&b, t));
    breaker_success(&b);                          /* closed stays closed */
    assert_int_equal(events[BREAKER_EV_CLOSED], 0);
    breaker_failure(&b, t);
    assert_int_equal(b.state, BREAKER_OPEN);
    assert_int_equal(events[BREAKER_EV_OPENED], 1);
    /* Open for 75..125 ms. */
    assert_false(breaker_allow(&b, t + 74 * MS));
    assert_int_equal(events[BREAKER_EV_SHORT_CIRCUIT], 1);
    assert_true(breaker_wait_ms(&b, t + 74 * MS) >= 1);
    assert_true(breaker_allow(&b, t + 126 * MS)); /* the probe */
    assert_int_equal(b.state, BREAKER_HALF_OPEN);
    assert_int_equal(events[BREAKER_EV_PROBE], 1);
    /* Failed probes double the period: 200, 400, then the 400 cap. */
    int expect[] = {200, 400, 400, 400};
    for (int k = 0; k < 4; k++) {
        t += 1000 * MS;
        breaker_failure(&b, t);
        assert_int_equal(b.period_ms, expect[k]);
        assert_false(breaker_allow(&b, t + (int64_t)(expect[k] * 0.74) * MS));
        assert_true(breaker_allow(&b, t + (int64_t)(expect[k] * 1.26) * MS));
    }
    assert_int_equal(events[BREAKER_EV_OPENED], 1); /* re-opening is not a new opening */
    breaker_success(&b);
    assert_int_equal(b.state, BREAKER_CLOSED);
    assert_int_equal(events[BREAKER_EV_CLOSED], 1);
    assert_int_equal(breaker_wait_ms(&b, t), 0);
    /* Closed again: the next failure starts from base. */
    breaker_failure(&b, t);
    assert_int_equal(b.period_ms, 100);
    assert_int_equal(breaker_recovery_bound_ms(&b.p), 500);
}

static void test_jitter_spreads(void **state) {
    (void)state;
    /* Connections that fail together do not probe together. */
    int64_t lo = INT64_MAX, hi = 0;
    for (uint64_t seed = 1; seed <= 64; seed++) {
        breaker b;
        breaker_init(&b, &(breaker_params){100, 100, NULL, NULL}, seed);
        breaker_failure(&b, 0);
        if (b.open_until_ns < lo) lo = b.open_until_ns;
        if (b.open_until_ns > hi) hi = b.open_until_ns;
        assert_true(b.open_until_ns >= 75 * MS && b.open_until_ns < 125 * MS);
    }
    assert_true(hi - lo > 20 * MS);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cycle),
        cmocka_unit_test(test_jitter_spreads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
