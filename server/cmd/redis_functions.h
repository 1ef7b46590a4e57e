/*
 * redis_functions.h - the Redis Functions library `ctr` (deploy/redis/ctr.lua:
 * ctr_append, ctr_append_max, ctr_item_changes, ctr_version), built into
 * the programs by the Makefile, so that ctr-load loads (FUNCTION LOAD
 * REPLACE) the library its own writes call.
 */
#ifndef CTR_SERVER_CMD_REDIS_FUNCTIONS_H
#define CTR_SERVER_CMD_REDIS_FUNCTIONS_H

#include <stddef.h>

/* The library's source text (not NUL-terminated). */
extern const unsigned char redis_functions_lua[];
extern const size_t redis_functions_lua_len;

/* The library's name (its "#!lua name=" line) and the version ctr_version
 * answers. */
#define REDIS_FUNCTIONS_LIBRARY "ctr"
#define REDIS_FUNCTIONS_VERSION 1

#endif
