#!/usr/bin/env bash
# The test command: installs what is missing (scripts/setup.sh), lints, and runs the whole suite
# against a private dockerd on a loop filesystem and the fake Kubernetes API server.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/crash -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
