/*
 * fuzz_files.h - what the fuzz targets' plain programs share (header-only;
 * each target is one .c file): running the files named on the command
 * line through the target, and writing a seed into a corpus folder.
 */
#ifndef CTR_FUZZ_FILES_H
#define CTR_FUZZ_FILES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Runs each file of argv[1..argc-1], read whole into a buffer of exactly
 * its size (so a read past the end is the sanitizer's to see), through
 * fn, then prints "NAME: N files, no crash".  0, or 1 when a file could
 * not be read (named on stderr; the others still run). */
static inline int fuzz_run_files(const char *name, int argc, char **argv,
                                 int (*fn)(const uint8_t *, size_t)) {
    int failed = 0;
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            perror(argv[i]);
            failed = 1;
            continue;
        }
        uint8_t *buf = NULL, chunk[65536];
        size_t len = 0, n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
            uint8_t *p = realloc(buf, len + n);
            if (!p) {
                perror("realloc");
                free(buf);
                fclose(f);
                return 1;
            }
            buf = p;
            memcpy(buf + len, chunk, n);
            len += n;
        }
        fclose(f);
        fn(buf ? buf : (const uint8_t *)"", len);
        free(buf);
    }
    printf("%s: %d files, no crash\n", name, argc - 1);
    return failed;
}

/* Writes b[0..len) to DIR/NAME.  0, or 1 (said on stderr). */
static inline int fuzz_write_seed(const char *dir, const char *name, const void *b, size_t len) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, len, f) != len) {
        perror(path);
        if (f) fclose(f);
        return 1;
    }
    if (fclose(f) != 0) {
        perror(path);
        return 1;
    }
    return 0;
}

#endif
