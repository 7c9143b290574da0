#!/usr/bin/env bash
# See the whole machine work: one fsm-cleaner cycle.
# - With a local Docker daemon: a dry run against it (all states; nothing is removed).
# - Without one: a private dockerd on a small loop filesystem, filled with images, and the fake
#   Kubernetes API server standing in for the cluster; a real cycle cordons, prunes and uncordons
#   the node "demo-node", then `fsm-cleaner status` shows its journal. Everything is torn down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
py=.venv/bin/python

if [ -S /var/run/docker.sock ] && "$py" -c 'import docker; docker.from_env(timeout=5).ping()' 2>/dev/null; then
  echo "== local Docker daemon found: one dry-run cycle against it (nothing is removed) =="
  exec "$py" -m fsm_cleaner run --once --dry-run --threshold-high 0 \
    --path-to-check "$("$py" -c 'import docker; print(docker.from_env().info()["DockerRootDir"])')"
fi

root="$PWD/.testbed/demo"
mkdir -p "$root"
fake_pid=""
cleanup() {
  [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null && wait "$fake_pid" 2>/dev/null
  "$py" -m devtools.testbed down "$root" || true
}
trap cleanup EXIT

echo "== no local Docker daemon: starting the test bed (private dockerd on a 600 MiB loop ext4) =="
eval "$("$py" -m devtools.testbed up "$root" --fill)"
rm -f "$root/kubeconfig"
"$py" -m devtools.fakekube --port 0 --node demo-node --kubeconfig "$root/kubeconfig" >/dev/null &
fake_pid=$!
for _ in $(seq 50); do [ -s "$root/kubeconfig" ] && break; sleep 0.1; done

echo "== one cycle: high threshold 50%, target 20% =="
export KUBECONFIG="$root/kubeconfig" NO_PROXY=127.0.0.1
export DOCKER_IMAGE_CLEANER_NODE_NAME=demo-node DOCKER_IMAGE_CLEANER_PATH_TO_CHECK="$PATH_TO_CHECK"
export DOCKER_IMAGE_CLEANER_THRESHOLD_HIGH=50 DOCKER_IMAGE_CLEANER_THRESHOLD_LOW=20
export DOCKER_IMAGE_CLEANER_DELAY_SECONDS=0.5 FSM_CLEANER_HEARTBEAT_FILE="$root/heartbeat"
# The bed's images are minutes old: MIN_AGE 0 lets them go (the default, 30m, would keep them all), and
# the use history lives in the bed, not in the host's /var/lib/fsm-cleaner.
export FSM_CLEANER_MIN_AGE=0 FSM_CLEANER_STATE_DIR="$root/state"
"$py" -m fsm_cleaner run --once

echo "== the node afterwards =="
"$py" -m fsm_cleaner status
