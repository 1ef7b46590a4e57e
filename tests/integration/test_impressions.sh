#!/usr/bin/env bash
# The impression log end to end (see test_impressions.py).
set -euo pipefail
exec "${PYTHON:-/usr/bin/python3}" tests/integration/test_impressions.py
