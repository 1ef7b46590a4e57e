#!/usr/bin/env bash
# Appends through the Redis Functions library (see test_append.py).
set -euo pipefail
exec "${PYTHON:-/usr/bin/python3}" tests/integration/test_append.py
