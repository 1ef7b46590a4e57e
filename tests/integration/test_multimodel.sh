#!/usr/bin/env bash
# One ctr-server with QIN, DIN and TIN models at once (see test_multimodel.py).
set -euo pipefail
exec "${PYTHON:-/usr/bin/python3}" tests/integration/test_multimodel.py
