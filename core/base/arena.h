/*
 * arena.h - a bump allocator for one request's short-lived data.
 *
 * A request decodes into an arena, is scored, answers, and the arena is
 * reset: no free() per object and nothing left behind.  The arena grows by
 * chained blocks when a request is larger than the first block, so a big
 * request costs a malloc but never fails on size alone; arena_reset keeps
 * the first block and releases the rest.  Not thread-safe: one per worker.
 */
#ifndef CTR_ARENA_H
#define CTR_ARENA_H

#include <stddef.h>

typedef struct arena_block arena_block;

typedef struct arena {
    arena_block *head;     /* current block (first block is kept on reset) */
    arena_block *first;
    size_t block_size;
} arena;

/* Sets up an empty arena whose blocks are block_size bytes (at least). */
void arena_init(arena *a, size_t block_size);

/* size bytes aligned to `align` (a power of two <= 64); NULL when out of
 * memory.  The memory lives until arena_reset or arena_free. */
void *arena_alloc(arena *a, size_t size, size_t align);

/* Copies a string of len bytes and adds a NUL. */
char *arena_strndup(arena *a, const char *s, size_t len);

void arena_reset(arena *a);
void arena_free(arena *a);

#endif
