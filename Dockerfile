# Multi-stage image of the CTR scoring service.
#
#   docker build -t ctr-scorer .                          # runtime image (no model)
#   docker build -t ctr-scorer:demo --target demo .       # + demo model and data
#   docker build -t ctr-scorer:redis --target redis .     # Debian's redis-server
#   docker compose -f deploy/docker-compose.yml up --build   # Redis + load + service
#
# deploy/container-test.sh (`make container-test`) builds these with podman,
# runs them and checks a ranking against ctr-score.
#
# The build stage installs with the same script as CI and the README
# (deploy/install.sh build) and builds with the same Makefile; RUN_TESTS=1
# installs the test tools too and runs the whole test suite (`make check`,
# as CI does) inside the build.  The runtime stage installs
# `deploy/install.sh runtime`: the shared libraries only, so a library
# added to the build there reaches the image.
#
# A first build of the demo image (what a first `up --build` waits for)
# takes a few minutes on 2 cores: the build stage, PyTorch for the
# demo-data stage and the demo's training, BuildKit running the stages side
# by side; deploy/README.md has measured times.  Later builds reuse the
# cached layers.

FROM debian:bookworm-slim AS build
WORKDIR /src
ARG RUN_TESTS=0
COPY deploy/install.sh deploy/install.sh
# The compiler and the -dev packages; the test tools (Redis, PyTorch,
# Prometheus, Node.js...) only when the tests run here.
RUN if [ "$RUN_TESTS" = 1 ]; then bash deploy/install.sh; else bash deploy/install.sh build; fi \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN make clean && make -j"$(nproc)" all \
 && if [ "$RUN_TESTS" = 1 ]; then make check; fi

# Demo model and data: synthetic MicroLens-shaped data, a small QIN
# trained on it (about a minute on 2 cores, as tools/make_demo.py on the
# host: PyTorch's matrix products on OpenBLAS, which `install.sh demo`
# installs).  A stage of its own that copies only make_demo.py and the
# modules it imports (convert.py imports the TIN reference when converting
# a TIN), so a change to the C code or to another tool does not
# train it again.
#
# OPENBLAS_CORETYPE (optional, empty by default) picks OpenBLAS's kernels
# for the training, for a host whose CPU OpenBLAS does not detect; empty,
# OpenBLAS detects the CPU itself.  deploy/docker-compose.yml and
# deploy/container-test.sh both pass the caller's OPENBLAS_CORETYPE, so
# they build the same cached layer.
FROM debian:bookworm-slim AS demo-data
WORKDIR /src
COPY deploy/install.sh deploy/install.sh
RUN bash deploy/install.sh demo && rm -rf /var/lib/apt/lists/*
COPY tools/make_demo.py tools/convert.py tools/safetensors_io.py \
     tools/qin_reference.py tools/tin_reference.py tools/
ARG OPENBLAS_CORETYPE=
# An empty OPENBLAS_CORETYPE is not "unset" to OpenBLAS (it picks a
# fallback core instead of detecting): unset it.
RUN if [ -z "$OPENBLAS_CORETYPE" ]; then unset OPENBLAS_CORETYPE; fi \
 && /usr/bin/python3 tools/make_demo.py --out /demo

# The service alone, without a model: mount one at /models (read-only) or
# build FROM this image.
FROM debian:bookworm-slim AS runtime-base
COPY deploy/install.sh /tmp/install.sh
RUN bash /tmp/install.sh runtime && rm -rf /var/lib/apt/lists/* /tmp/install.sh \
 && groupadd --system --gid 10001 ctr \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin ctr
COPY --from=build /src/build/release/ctr-server /src/build/release/ctr-load \
     /src/build/release/ctr-score /usr/local/bin/
COPY proto/openapi.yaml /usr/share/ctr/openapi.yaml
# Listen on every interface inside the container; everything else is the
# documented default (ctr-server --help) or set through CTR_* variables.
ENV CTR_BIND=0.0.0.0 \
    CTR_PORT=8080 \
    CTR_MODEL=/models/model.safetensors \
    CTR_REDIS=redis:6379
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --start-period=30s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${CTR_PORT}/healthz" >/dev/null || exit 1
# SIGTERM drains in-flight requests and exits 0; SIGHUP reloads the model.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ctr-server"]

FROM runtime-base AS demo
COPY --from=demo-data --chown=10001:10001 /demo/model.safetensors /models/model.safetensors
COPY --from=demo-data --chown=10001:10001 /demo/items.jsonl /demo/users.jsonl /demo/

# Redis for the feature store, from Debian (the version the tests use), so
# that nothing needs an image registry.  deploy/redis.conf is the
# standalone configuration; a cluster node adds --cluster-enabled yes.
FROM debian:bookworm-slim AS redis
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/redis.conf /etc/redis/ctr.conf
WORKDIR /var/lib/redis
USER redis
EXPOSE 6379
ENTRYPOINT ["redis-server"]
CMD ["/etc/redis/ctr.conf"]

# Last, so that a plain `docker build .` makes the runtime image.
FROM runtime-base AS runtime
