/*
 * modelfile.h - reading the model file's metadata and tensors, shared by
 * engine.c (which reads the feature schema every file declares) and the
 * loaders of the three architectures (qin_load.c, din_load.c, tin.c).
 * Below the engine: it knows the file, not the architectures.
 *
 * Format "ctr-model-2" (tools/convert.py writes it for every architecture):
 * metadata "arch" and the feature schema (item_fields, context_fields,
 * max_len and the vocabularies), then the architecture's own keys.  Files
 * of the first format, "ctr-qin-1" (QIN only; its schema is implied: item
 * fields item_id, item_tags, item_emb_d128), load unchanged.
 */
#ifndef CTR_MODELFILE_H
#define CTR_MODELFILE_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"
#include "core/base/status.h"

#define MODELFILE_FORMAT "ctr-model-2"
#define MODELFILE_FORMAT_QIN1 "ctr-qin-1"

/* A model file larger than this is refused before anything is allocated
 * (the largest real model is a few hundred MB). */
#define MODELFILE_MAX_BYTES (16ull << 30)

/* File times advance in clock ticks (1..10 ms), not nanoseconds. */
#define MODELFILE_TIME_TICK_NS 20000000

/* Reads the whole file at path into *buf (malloc'd, the caller frees it)
 * and its length into *len, through one descriptor: only a regular file
 * (checked before reading; a FIFO is not waited on), read whole and found
 * unchanged afterwards (device, inode, size, mtime, ctime), so a file
 * being overwritten in place is refused instead of read half old, half
 * new.  A file written within the last clock tick is read again once the
 * tick has passed (its times could not show a write during the read);
 * refused after 3 such reads.  Model files are to be replaced by atomic
 * rename.  CTR_EIO (naming the path and the reason), CTR_ETOOBIG or
 * CTR_ENOMEM.  Thread-safe. */
int modelfile_read(const char *path, unsigned char **buf, size_t *len, char *err,
                   size_t errlen);

/* Finds tensor `name`, checks dtype F32, shape (d0) when d1 < 0 else
 * (d0, d1), and finite values; *out gets an aligned copy (NULL on error).
 * CTR_EMODEL / CTR_ENOMEM with a message naming the tensor. */
int modelfile_tensor(const st_file *f, const char *name, int64_t d0, int64_t d1, float **out,
                     char *err, size_t errlen);

/* The same for an I8 tensor whose values are in -127..127 (int8 weights):
 * *out gets a malloc'd copy. */
int modelfile_tensor_i8(const st_file *f, const char *name, int64_t d0, int64_t d1,
                        signed char **out, char *err, size_t errlen);

/* Metadata value of key as an integer in [lo, hi]; CTR_EMODEL if absent or
 * out of bounds. */
int modelfile_meta_int(const st_file *f, const char *key, int lo, int hi, int *out, char *err,
                       size_t errlen);

/* Metadata value of key as 1..cap-1 characters. */
int modelfile_meta_str(const st_file *f, const char *key, char *dst, size_t cap, char *err,
                       size_t errlen);

/* Metadata value of key as a comma-separated list of 0..max integers, each
 * in [lo, hi]; *n gets the count.  An absent key is CTR_EMODEL. */
int modelfile_meta_ints(const st_file *f, const char *key, int max, int lo, int hi, int *out,
                        int *n, char *err, size_t errlen);

/* A batch norm of n units, read and folded into y = scale x + shift (in
 * double, unrounded): scale = gamma / sqrt(var + eps), shift = beta - mean
 * scale, from the tensors prefix + names[k] for gamma, beta, the running
 * mean and the running variance (names[0] and names[1] NULL: no affine
 * part, gamma 1 and beta 0).  CTR_EMODEL naming the tensor (missing, wrong
 * shape, non-finite, a negative variance) or CTR_ENOMEM. */
int modelfile_batch_norm(const st_file *f, const char *prefix, const char *const names[4], int n,
                         double eps, double *scale, double *shift, char *err, size_t errlen);

/* The names of a batch norm's tensors as PyTorch and TensorFlow save them. */
extern const char *const modelfile_bn_torch[4];  /* weight, bias, running_mean, running_var */
extern const char *const modelfile_bn_tf[4];     /* gamma, beta, moving_mean, moving_variance */

/* Refuses (CTR_EMODEL) the first tensor for which expected(ctx, name) is 0,
 * as "unexpected tensor NAME". */
int modelfile_no_unexpected(const st_file *f, int (*expected)(const void *ctx, const char *name),
                            const void *ctx, char *err, size_t errlen);

/* A tensor name built with printf, for the loaders' numbered layers. */
const char *modelfile_name(char *buf, size_t cap, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#endif
