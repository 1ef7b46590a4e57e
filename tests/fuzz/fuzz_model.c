/*
 * fuzz_model.c - fuzz target for the model loaders (engine_model_load_buffer,
 * which reads the schema and dispatches to QIN, DIN and TIN): a
 * model file is untrusted input, and the loader must refuse any damage with
 * a message, never crash, never read past the buffer.  When a mutated file
 * still loads, one item vector and one forward pass (with an explanation)
 * run on it, so whatever the loader accepts is safe to score with.
 *
 * libFuzzer (`make fuzz`, clang):
 *   build/fuzz/fuzz_model -max_total_time=60 CORPUS_DIR
 *
 * Without libFuzzer (built by `make test`, run by tests/run.sh): with file
 * arguments it runs each file once; with none it runs a deterministic
 * sweep over a small valid QIN model, and over the golden din-small and
 * tin-small files when $CTR_GOLDEN has them: every truncation length in a
 * range, and a few thousand seeded byte mutations of the header and the
 * data.
 *
 * `fuzz_model --write-seeds DIR` writes the seed corpus committed under
 * tests/fuzz/corpus/model/ (a valid small model, with and without batch
 * norm and context fields, and one of each kind of damage the loader names:
 * a missing tensor, a wrong dtype, a wrong shape, data past the end, an
 * unexpected tensor, a bad metadata value, a cut header), so libFuzzer
 * starts from files that reach every check.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "tests/core/testmodel.h"
#include "tests/fuzz/fuzz_files.h"

/* One file through the engine interface (any architecture). */
static int one_input(const uint8_t *data, size_t size) {
    engine_model *m = NULL;
    char err[512];
    if (engine_model_load_buffer(data, size, &m, err, sizeof err) != CTR_OK) {
        if (m || err[0] == '\0') abort(); /* a refusal must say why */
        return 0;
    }
    const engine_schema *sc = engine_model_schema(m);
    float *v = engine_item_vecs_alloc(m, 1);
    int32_t tags[1] = {0};
    engine_item in = {sc->item_id_min, tags, sc->num_tags > 0 ? 1 : 0, NULL, 0};
    engine_scratch *s = NULL;
    if (v && engine_items_compute(m, 1, &in, v, NULL, err, sizeof err) == CTR_OK &&
        engine_scratch_init(m, 2, &s) == CTR_OK) {
        const float *h[2] = {v, NULL}, *cand[2] = {v, v};
        float p[2], w[4];
        int32_t pos[4];
        engine_explain ex = {2, pos, w};
        engine_request r = {h, 2, cand, NULL, 2, &ex, NULL};
        if (engine_forward(m, s, &r, p, err, sizeof err) != CTR_OK) abort();
    }
    engine_scratch_free(s);
    free(v);
    engine_model_free(m);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return one_input(data, size); }

#ifndef FUZZ_LIBFUZZER
static int write_seeds(const char *dir) {
    int bad = 0;
    for (int variant = 0; variant < 2; variant++) {
        qin_config c = tm_small_config();
        c.num_layers = 1;
        c.item_vocab = 6;
        if (variant) { c.batch_norm = 0; c.num_ctx = 0; c.input_dim = 2 * c.item_dim; }
        test_model tm;
        tm_init(&tm, &c, 3 + (uint64_t)variant);
        size_t len;
        unsigned char *b = tm_serialize(&tm, NULL, &len);
        bad |= fuzz_write_seed(dir, variant ? "valid_no_bn_no_ctx" : "valid", b, len);
        if (!variant) {
            bad |= fuzz_write_seed(dir, "cut_header", b, len < 40 ? len : 40);
            bad |= fuzz_write_seed(dir, "cut_data", b, len - 3);
        }
        free(b);
        if (!variant) {
            const struct { const char *name; tm_damage d; } dmg[] = {
                {"missing_tensor", {.skip = "qnn.fc.weight"}},
                {"wrong_dtype", {.dtype_of = "attention_layers.W_q.weight"}},
                {"wrong_shape", {.shape_of = "attention_layers.W_k.weight"}},
                {"past_end", {.end_extra = 8}},
                {"extra_tensor", {.extra = "unexpected.weight"}},
                {"bad_meta", {.meta_key = "num_row", .meta_value = "x"}},
            };
            for (size_t k = 0; k < sizeof dmg / sizeof *dmg; k++) {
                b = tm_serialize(&tm, &dmg[k].d, &len);
                bad |= fuzz_write_seed(dir, dmg[k].name, b, len);
                free(b);
            }
        }
        tm_free(&tm);
    }
    return bad;
}

/* Truncations and seeded mutations of one valid file; returns the runs. */
static int sweep(const unsigned char *good, size_t len) {
    int runs = 0;
    /* Each truncation within the header and around the end. */
    for (size_t cut = 0; cut < len; cut += cut < 2048 ? 1 : 97, runs++) {
        unsigned char *b = malloc(cut ? cut : 1);
        memcpy(b, good, cut);
        one_input(b, cut);
        free(b);
    }
    /* Seeded mutations: 1-4 bytes set to interesting values. */
    uint64_t rng = 12345;
    unsigned char *b = malloc(len);
    const unsigned char vals[] = {0, 0xff, '"', '{', '}', '[', ']', ',', ':', '9', '-', '\\', 0x80};
    for (int k = 0; k < 4000; k++, runs++) {
        memcpy(b, good, len);
        int nmut = 1 + k % 4;
        for (int j = 0; j < nmut; j++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            size_t span = (k % 3) ? (len < 1600 ? len : 1600) : len; /* favour the header */
            size_t pos = (size_t)(rng >> 33) % span;
            b[pos] = vals[(rng >> 20) % sizeof vals];
        }
        one_input(b, len);
    }
    free(b);
    return runs;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0) return write_seeds(argv[2]);
    if (argc > 1) return fuzz_run_files("fuzz_model", argc, argv, one_input);
    qin_config c = tm_small_config();
    c.num_layers = 1;
    c.item_vocab = 6;
    test_model tm;
    tm_init(&tm, &c, 3);
    size_t len;
    unsigned char *good = tm_serialize(&tm, NULL, &len);
    tm_free(&tm);
    int runs = sweep(good, len);
    /* The golden DIN and TIN files, when the build has made them. */
    const char *g = getenv("CTR_GOLDEN");
    static const char *const more[] = {"din-small", "din-dice-softmax", "tin-small"};
    for (size_t i = 0; g && i < sizeof more / sizeof more[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s/model.safetensors", g, more[i]);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        rewind(f);
        unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
        if (fread(buf, 1, (size_t)n, f) == (size_t)n) runs += sweep(buf, (size_t)n);
        fclose(f);
        free(buf);
    }
    free(good);
    printf("fuzz_model: %d generated inputs, no crash\n", runs);
    return 0;
}
#endif
