#!/usr/bin/env bash
# The test command: installs what is missing (scripts/setup.sh), lints, and runs the whole suite
# against a private dockerd on a loop filesystem and the fake Kubernetes API server.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/crash -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The tools the tests run that come from wheels (hadolint, kubectl) live in .venv/bin: put it first,
# so that the suite never depends on what else happens to be installed on the machine.
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
