/*
 * safetensors.h - a strict reader for the safetensors container.
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON header
 * {"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [..],
 * "data_offsets": [begin, end]}, ...}, then the byte buffer the offsets
 * point into.  The reader checks every bound before anything is used:
 * header length inside the file, well-formed JSON, offsets inside the
 * buffer, byte length equal to shape x dtype size.  It never reads past the
 * buffer it is given.  The JSON parser here is deliberately small: core/
 * does not link a JSON library, and a model file is untrusted input that
 * the fuzz target tests/fuzz/fuzz_model.c exercises.
 */
#ifndef CTR_SAFETENSORS_H
#define CTR_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u << 20)   /* refuse headers over 100 MiB */
#define ST_MAX_TENSORS 4096          /* and more tensors or metadata keys */

typedef struct st_tensor {
    char *name;
    char dtype[8];                /* "F32", "F16", "I64", ... as written */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;          /* byte offsets into the data buffer */
    const unsigned char *data;    /* = file data + begin (unaligned) */
} st_tensor;

typedef struct st_meta {
    char *key, *value;
} st_meta;

typedef struct st_file {
    st_tensor *tensors;
    int num_tensors;
    st_meta *meta;
    int num_meta;
} st_file;

/* Parses buf (len bytes, the whole file).  On success out holds pointers
 * into buf (which must outlive it) and owned strings; free with st_free.
 * Returns CTR_OK or CTR_EFORMAT with a message. */
int st_parse(const void *buf, size_t len, st_file *out, char *err, size_t errlen);
void st_free(st_file *f);

const st_tensor *st_find(const st_file *f, const char *name);
const char *st_meta_get(const st_file *f, const char *key);

/* Bytes per element of a dtype name, 0 for an unknown one. */
int st_dtype_size(const char *dtype);

#endif
