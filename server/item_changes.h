/*
 * item_changes.h - the server's side of item changes: at each health check,
 * the records ctr-load left on a model's <prefix>item-changes since the
 * last one applied (featstore_get_item_changes) are applied to the model's
 * item cache, so an item rewritten in the feature store is read again by
 * the next request that needs it (deploy/REDIS_SCHEMA.md, "Item changes").
 *
 * Each record carries a generation (1, 2, ... over the stream's life).  A
 * record whose generation is not the one after the last applied means
 * records were missed (the stream's cap trimmed them, or the stream was
 * deleted and begun again): the whole cache is dropped, since what changed
 * is unknown.  Each poll reads the stream's last record first, so a stream
 * begun again with ids not after the position (within the millisecond, or
 * Redis's clock stepped back) is told too: its last record is then lower,
 * or the same id with another generation.  So is it when the feature-set marker names a later
 * generation than the stream still holds, and when the marker comes back
 * after being missing (Redis restarted empty and loaded anew).  The first
 * poll only finds where the stream ends (a server starting has nothing
 * cached to drop).
 *
 * Workload: one poll per model per health interval (200 ms), on the health
 * check's thread, with its own feature-store connection; usually no
 * record, one round trip (the last record's).  After a load into a live
 * prefix: that read, then a few hundred records of up to --batch ids, read
 * 256 at a time (at most ITEM_CHANGES_ROUNDS reads a poll; the rest at the
 * next).
 *
 * Thread-safety: one item_changes per model, used by one thread; the
 * cache it applies to is thread-safe (item_cache.h).
 */
#ifndef CTR_SERVER_ITEM_CHANGES_H
#define CTR_SERVER_ITEM_CHANGES_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/arena.h"
#include "server/item_cache.h"
#include "server/store/featstore.h"

#define ITEM_CHANGES_CHUNK 256      /* records a read asks for */
#define ITEM_CHANGES_ROUNDS 8       /* reads a poll makes at most */

/* Where a model is in its stream.  Zero it to start (not positioned). */
typedef struct item_changes {
    char last_id[48];               /* the last record applied; "0-0" before
                                       the first; "" not positioned yet */
    uint64_t last_gen;              /* its generation (0: none yet) */
} item_changes;

/* What one poll did. */
typedef struct item_changes_result {
    uint64_t applied;               /* cached vectors dropped for changed
                                       items */
    int records;                    /* records read */
    int dropped_all;                /* the whole cache was dropped */
    const char *why;                /* why (static text) when dropped_all */
    double lag_s;                   /* age of the newest record applied,
                                       seconds (Redis's clock against this
                                       host's); < 0 when none was */
    int more;                       /* records are left for the next poll */
} item_changes_result;

/* Applies the records after st's position to cache (NULL: only moves on).
 * marker_gen: the item_changes of the feature-set marker just read (0:
 * none or unknown); marker_back: the marker is there again after a check
 * that found it missing.  Reads through fs by deadline_ns, arena a reset
 * per read.  CTR_OK with *out filled; otherwise the feature store's
 * failure (err says why): what was applied stays applied, the rest waits
 * for the next poll. */
int item_changes_poll(item_changes *st, featstore *fs, item_cache *cache, uint64_t marker_gen,
                      int marker_back, int64_t deadline_ns, arena *a, item_changes_result *out,
                      char *err, size_t errlen);

#endif
