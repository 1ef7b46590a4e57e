/*
 * fixture.h - what every proto test file sets up the same way: a message
 * buffer and a request arena, fresh for each test (cmocka setup/teardown).
 * Header-only: each test binary includes it once.
 */
#ifndef CTR_TESTS_PROTO_FIXTURE_H
#define CTR_TESTS_PROTO_FIXTURE_H

#include "core/base/arena.h"

static char err[256];
static arena A;

static int setup(void **state) {
    (void)state;
    arena_init(&A, 1 << 14);
    err[0] = '\0';
    return 0;
}

static int teardown(void **state) {
    (void)state;
    arena_free(&A);
    return 0;
}

#endif
