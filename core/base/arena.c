/* arena.c - bump allocator, see arena.h. */
#include "arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct arena_block {
    arena_block *next;
    size_t size;      /* bytes in data[] */
    size_t used;
    _Alignas(64) unsigned char data[];
};

/* Blocks are 64-byte aligned, so an offset aligned within data[] is an
 * aligned address (data[] itself sits at a multiple of 64). */
static arena_block *block_new(size_t size) {
    size_t bytes = (sizeof(arena_block) + size + 63) & ~(size_t)63;
    arena_block *b = aligned_alloc(64, bytes);
    if (!b) return NULL;
    b->next = NULL;
    b->size = size;
    b->used = 0;
    return b;
}

void arena_init(arena *a, size_t block_size) {
    a->head = a->first = NULL;
    a->block_size = block_size < 4096 ? 4096 : block_size;
}

void *arena_alloc(arena *a, size_t size, size_t align) {
    if (align == 0) align = 1;
    if (size == 0) size = 1;
    arena_block *b = a->head;
    if (b) {
        size_t off = (b->used + align - 1) & ~(align - 1);
        if (off <= b->size && size <= b->size - off) {
            b->used = off + size;
            return b->data + off;
        }
    }
    if (size > SIZE_MAX - 64) return NULL;
    size_t want = size + 64 > a->block_size ? size + 64 : a->block_size;
    arena_block *n = block_new(want);
    if (!n) return NULL;
    if (b) b->next = n; else a->first = n;
    a->head = n;
    n->used = size;
    return n->data;
}

char *arena_strndup(arena *a, const char *s, size_t len) {
    char *p = arena_alloc(a, len + 1, 1);
    if (!p) return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

void arena_reset(arena *a) {
    if (!a->first) return;
    arena_block *b = a->first->next;
    while (b) {
        arena_block *n = b->next;
        free(b);
        b = n;
    }
    a->first->next = NULL;
    a->first->used = 0;
    a->head = a->first;
}

void arena_free(arena *a) {
    arena_block *b = a->first;
    while (b) {
        arena_block *n = b->next;
        free(b);
        b = n;
    }
    a->head = a->first = NULL;
}
