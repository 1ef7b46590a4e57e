# One Makefile for the CTR scorer.
#
#   make                      optimised build of every program (build/release)
#   make test                 unit tests (cmocka) + integration tests
#   make SANITIZE=address test     the same under AddressSanitizer
#   make SANITIZE=undefined test   the same under UBSan
#   make check                test + ASan, UBSan and TSan runs, then
#                             test-prometheus once (what CI runs)
#   make test-prometheus      a real Prometheus scraping ctr-server under
#                             load: recording rules, alerts, dashboard (~75 s)
#   make bench                forward-pass benchmarks (print tables): QIN in
#                             detail, then QIN, DIN and TIN through engine.h
#   make bench-e2e            the service end to end (demo and MicroLens-size)
#   make bench-latency        p50/p99/p99.9 at one connection (blocking client)
#                             and saturation, MicroLens-size (needs demo-full)
#   make bench-latency-din    the same for the challenge-size DIN (N = 64)
#   make demo-full            the MicroLens-size model and data (demo/full)
#   make container-test       build the Dockerfile's images with podman and run
#                             them (not in check: downloads, takes minutes)
#   make bench-faults         Redis frozen, overload, connection floods (figures)
#   make bench-cluster-e2e    ctr-server on one Redis vs a Redis Cluster (figures)
#   make bench-fresh          appends, item changes, the impression log (figures)
#   make soak                 ASan server, 1M requests with faults (not in CI)
#   make clean
#
# Objects and programs go to build/<variant>/, so sanitizer builds never
# mix with the optimised one.

SANITIZE ?=
VARIANT  := $(if $(SANITIZE),$(SANITIZE),release)
B        := build/$(VARIANT)
PYTHON   ?= /usr/bin/python3
GOLDEN   := build/golden

PKGS     := openblas hiredis libmicrohttpd jansson
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

OPT      ?= -O3
CFLAGS   := -std=c11 -D_GNU_SOURCE -g $(OPT) -Wall -Wextra -Wshadow \
            -Wno-unused-parameter -pthread -I. $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDFLAGS  := -pthread $(EXTRA_LDFLAGS)
LDLIBS   := $(PKG_LIBS) -ldnnl -lgomp -lmvec -lm

ifeq ($(SANITIZE),address)
  CFLAGS  += -fsanitize=address -fno-omit-frame-pointer
  LDFLAGS += -fsanitize=address
else ifeq ($(SANITIZE),undefined)
  CFLAGS  += -fsanitize=undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
  LDFLAGS += -fsanitize=undefined
else ifeq ($(SANITIZE),thread)
  CFLAGS  += -fsanitize=thread
  LDFLAGS += -fsanitize=thread
else ifneq ($(SANITIZE),)
  $(error SANITIZE must be address, undefined or thread)
endif

# Layers, bottom up (docs/ARCHITECTURE.md): core/base (arena, status, log,
# clock), core (the engine), proto (the wire), server/store (the feature
# store over Redis), server (the service), server/cmd (the programs: one
# main() per ctr_*.c, and what only they use).
CORE_SRC   := $(wildcard core/base/*.c core/*.c)
PROTO_SRC  := $(wildcard proto/*.c)
STORE_SRC  := $(wildcard server/store/*.c)
SERVER_LIB := $(STORE_SRC) $(wildcard server/*.c) \
              $(filter-out server/cmd/ctr_%.c,$(wildcard server/cmd/*.c))

CORE_OBJ   := $(CORE_SRC:%.c=$(B)/%.o)
PROTO_OBJ  := $(PROTO_SRC:%.c=$(B)/%.o)
SERVER_OBJ := $(SERVER_LIB:%.c=$(B)/%.o)
# The Redis Functions library (deploy/redis/ctr.lua) as bytes in the
# programs (server/cmd/redis_functions.h), so ctr-load always loads the
# library it was built with.
GEN_OBJ    := $(B)/gen/redis_functions.o
LIB        := $(B)/libctr.a

PROGRAMS   := $(patsubst server/cmd/ctr_%.c,$(B)/ctr-%,$(wildcard server/cmd/ctr_*.c))
BENCH_BIN  := $(patsubst bench/%.c,$(B)/bench/%,$(wildcard bench/*.c))
TEST_SRC   := $(wildcard tests/core/test_*.c tests/core/*/test_*.c tests/proto/test_*.c \
                         tests/server/test_*.c tests/server/*/test_*.c)
TEST_BIN   := $(TEST_SRC:%.c=$(B)/%)
# Fuzz targets: built as plain programs (regression sweep) for `make test`,
# and with libFuzzer by `make fuzz`.
FUZZ_SRC   := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN   := $(FUZZ_SRC:%.c=$(B)/%)
FUZZ_SECONDS ?= 60

.PHONY: all test check bench bench-e2e bench-faults soak golden fuzz clean container-test \
        test-prometheus demo-full
all: $(PROGRAMS) $(BENCH_BIN)

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(CORE_OBJ) $(PROTO_OBJ) $(SERVER_OBJ) $(GEN_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && $(AR) rcs $@ $^

$(B)/gen/redis_functions.c: deploy/redis/ctr.lua
	@mkdir -p $(dir $@)
	{ echo '/* Generated from deploy/redis/ctr.lua by the Makefile. */'; \
	  echo '#include "server/cmd/redis_functions.h"'; \
	  echo 'const unsigned char redis_functions_lua[] = {'; \
	  od -An -v -tx1 $< | sed 's/\([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	  echo '};'; \
	  echo 'const size_t redis_functions_lua_len = sizeof redis_functions_lua;'; } > $@

$(GEN_OBJ): $(B)/gen/redis_functions.c
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(B)/ctr-%: $(B)/server/cmd/ctr_%.o $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(B)/bench/%: $(B)/bench/%.o $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(B)/tests/fuzz/%: $(B)/tests/fuzz/%.o $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(B)/tests/%: $(B)/tests/%.o $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -lcmocka -o $@

# Golden data from the PyTorch reference: generated here, in every clean
# build (CI included), so the parity tests follow the reference.
golden: $(GOLDEN)/stamp
$(GOLDEN)/stamp: tools/make_golden.py tools/qin_reference.py tools/din_reference.py \
                 tools/tin_reference.py tools/convert.py tools/safetensors_io.py \
                 tools/int8_rounding.py
	@mkdir -p $(GOLDEN)
	$(PYTHON) tools/make_golden.py --out $(GOLDEN)
	touch $@

test: all $(TEST_BIN) $(FUZZ_BIN) golden
	@bash tests/run.sh $(B) $(GOLDEN) $(TEST_BIN) $(FUZZ_BIN)

# libFuzzer runs of every fuzz target, FUZZ_SECONDS each (needs clang).
fuzz:
	@mkdir -p build/fuzz
	@set -e; for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  clang -std=c11 -D_GNU_SOURCE -g -O1 -I. -DFUZZ_LIBFUZZER $(PKG_CFLAGS) -pthread \
	    -fsanitize=fuzzer,address,undefined $$f $(CORE_SRC) $(PROTO_SRC) $(STORE_SRC) \
	    server/http_head.c $(LDLIBS) -o build/fuzz/$$n; \
	  mkdir -p build/fuzz/corpus-$$n; \
	  build/fuzz/$$n -max_total_time=$(FUZZ_SECONDS) build/fuzz/corpus-$$n \
	    $$( [ -d tests/fuzz/corpus/$${n#fuzz_} ] && echo tests/fuzz/corpus/$${n#fuzz_} ); done

# TSan joined when the request path went multi-threaded (event loop,
# workers, watchdog, health check): ~3 minutes on 2 cores.
check:
	$(MAKE) test
	$(MAKE) SANITIZE=address test
	$(MAKE) SANITIZE=undefined test
	$(MAKE) SANITIZE=thread test
	$(MAKE) test-prometheus

# Debian's prometheus scraping ctr-server while bench/loadgen drives it,
# the recording rules checked against the load's own counts through the
# HTTP API, every dashboard expression evaluated.  A target of its own (the
# rules' windows are a minute, so it runs ~75 s); `check` runs it once, on
# the optimised build, since the sanitizers would only slow the server down.
test-prometheus: all golden
	CTR_BUILD=$(B) CTR_GOLDEN=$(GOLDEN) $(PYTHON) tests/integration/test_prometheus.py

bench: all golden
	$(B)/bench/bench_isa
	$(B)/bench/bench_forward
	$(B)/bench/bench_models --precision fp32 --precision bf16 --precision int8 \
	    --precision int8x2 $(GOLDEN)/microlens/model.safetensors \
	    $(GOLDEN)/din-microlens/model.safetensors $(GOLDEN)/tin-amazon/model.safetensors
	$(B)/bench/bench_split --precision int8 --precision int8x2 --precision bf16 \
	    $(GOLDEN)/microlens/model.safetensors
	$(PYTHON) bench/quality.py --build $(B) --golden $(GOLDEN) --make-demo

# ctr-server at one connection through a blocking client (bench/blockclient:
# p50, p99, p99.9; BENCH_LATENCY_ARGS=--count 1000000 for a million
# requests) and at saturation (8 connections), MicroLens-size model
# (demo/full: make demo-full), per precision and split mode.
.PHONY: bench-latency bench-latency-din
bench-latency: all
	$(PYTHON) bench/latency.py --build $(B) $(BENCH_LATENCY_ARGS)

# The same for the challenge-size DIN (the golden files' random weights at
# the real shapes, their 248 items and users), N = 64, bf16 and fp32.
bench-latency-din: all golden
	$(PYTHON) bench/latency.py --build $(B) --model-dir $(GOLDEN)/din-microlens --ns 64 \
	    --splits candidates --precisions bf16,fp32 $(BENCH_LATENCY_ARGS)

# ctr-server on a real redis-server with the demo model, loaded with wrk
# (makes demo/ first if needed); tables in bench/README.md.
bench-e2e: all
	$(PYTHON) bench/e2e.py --build $(B)

# Feature reads on a Redis Cluster (server/store/rcluster.c) against one node:
# starts a 3+3 cluster (tests/integration/lib/redis_cluster.sh) and a
# single redis-server, both on free loopback ports.
.PHONY: bench-cluster bench-cluster-e2e
bench-cluster: $(B)/bench/bench_rcluster
	bash bench/cluster.sh $(B)/bench/bench_rcluster $(BENCH_CLUSTER_ARGS)

# ctr-server on one Redis node and on a 3+3 Redis Cluster, same run, demo
# model, N = 64: p50/p99 at one connection and at a moderate rate.
bench-cluster-e2e: all
	bash tests/integration/lib/redis_cluster.sh -- $(PYTHON) bench/cluster_e2e.py --build $(B) $(BENCH_CLUSTER_E2E_ARGS)

# The images built and run for real (deploy/container-test.sh): Redis, the
# loader and the scorer as containers, a ranking checked against ctr-score,
# then deploy/docker-compose.yml under podman-compose.
container-test:
	bash deploy/install.sh container
	bash deploy/container-test.sh
# Several models in one ctr-server: explain off/on server-side, and the
# load-time warm-up's effect on the first requests (bench/README.md).
.PHONY: bench-multimodel
bench-multimodel: all golden
	$(PYTHON) bench/multimodel.py --build $(B) $(BENCH_MULTIMODEL_ARGS)

# Appends, item changes and the impression log (bench/fresh.py): append ->
# next rank, ctr-load --events throughput, item-change latency, the log's
# overhead at 100% and with its sink frozen; demo model (made if missing).
.PHONY: bench-fresh
bench-fresh: all
	$(PYTHON) bench/fresh.py --build $(B) $(BENCH_FRESH_ARGS)

# ctr-server under a frozen Redis, overload and connection floods, with the
# demo model (made first if needed); bench/README.md.
bench-faults: all
	$(PYTHON) bench/faults.py --build $(B)

# An AddressSanitizer server under load with Redis faults and reloads on a
# schedule, SOAK_REQUESTS answers, then the leak check (not in CI).
SOAK_REQUESTS ?= 1000000
soak: golden
	$(MAKE) all
	$(MAKE) SANITIZE=address all
	$(PYTHON) bench/soak.py --requests $(SOAK_REQUESTS)

# The MicroLens-size model (D 1024, 4 layers, R 4), its features and
# validation set, trained briefly on synthetic data (tools/README.md).
demo-full:
	$(PYTHON) tools/make_demo.py --full

clean:
	rm -rf build

# Keep objects of pattern-built programs (tests, bench) between runs.
.SECONDARY:

-include $(shell find build -name '*.d' 2>/dev/null)

# --- make bench-compare: our engine vs ONNX Runtime (onnxruntime-node) vs
# PyTorch eager, one thread each (bench/README.md).  onnxruntime-node is
# installed from bench/package-lock.json without its install script (the CPU
# library ships in the package); if that fails, the run reports ORT as
# unavailable.
BENCH_ORT_STAMP := bench/node_modules/.package-lock.json
.PHONY: bench-compare
bench-compare: $(B)/bench/bench_engine $(BENCH_ORT_STAMP)
	$(PYTHON) bench/compare.py --engine $(B)/bench/bench_engine --out build/bench-compare

$(BENCH_ORT_STAMP): bench/package.json bench/package-lock.json
	cd bench && npm ci --ignore-scripts --no-audit --no-fund || \
	  echo "bench-compare: npm ci failed; ONNX Runtime will be reported unavailable"
