#!/usr/bin/env bash
# Appends and item changes through ctr-server (see test_fresh_server.py).
set -euo pipefail
exec "${PYTHON:-/usr/bin/python3}" tests/integration/test_fresh_server.py
