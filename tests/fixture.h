/*
 * fixture.h - what most unit test files set up the same way: a message
 * buffer and a request arena, fresh for each test (cmocka setup/teardown).
 * Header-only: each test binary includes it once (tests/proto,
 * tests/server/store).
 */
#ifndef CTR_TESTS_FIXTURE_H
#define CTR_TESTS_FIXTURE_H

#include "core/base/arena.h"

static char err[256] __attribute__((unused));
static arena A __attribute__((unused));

static inline int setup(void **state) {
    (void)state;
    arena_init(&A, 1 << 16);
    err[0] = '\0';
    return 0;
}

static inline int teardown(void **state) {
    (void)state;
    arena_free(&A);
    return 0;
}

#endif
