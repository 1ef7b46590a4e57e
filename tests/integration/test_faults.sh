#!/usr/bin/env bash
# ctr-server under faults and attacks (see test_faults.py).
set -euo pipefail
exec "${PYTHON:-/usr/bin/python3}" tests/integration/test_faults.py
