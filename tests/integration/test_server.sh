#!/usr/bin/env bash
# ctr-server end to end (see test_server.py).
set -euo pipefail
exec "${PYTHON:-/usr/bin/python3}" tests/integration/test_server.py
