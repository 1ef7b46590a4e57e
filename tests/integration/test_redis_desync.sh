#!/usr/bin/env bash
# ctr-server behind a proxy that sends one Redis reply too many (see test_redis_desync.py).
set -euo pipefail
exec "${PYTHON:-/usr/bin/python3}" tests/integration/test_redis_desync.py
