#!/usr/bin/env bash
# tools/join_impressions.py (see test_join_impressions.py).
set -euo pipefail
exec "${PYTHON:-/usr/bin/python3}" tests/integration/test_join_impressions.py
