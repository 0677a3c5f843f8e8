#!/usr/bin/env bash
# The main job on the embedded `local` provider: a real `cluster up`, a driver whose work makes the
# cluster grow, its results, the idle workers removed, then `cluster down`.
# Usage: bash scripts/demo.sh
source "$(dirname "$0")/bootstrap.sh"
CONFIG=cluster-configs/local.yaml
trap 'cluster down -y "$CONFIG" >/dev/null 2>&1 || true' EXIT
step() { printf '\n==> %s\n' "$*"; }

step "cluster up $CONFIG   (a head with 1 CPU; workers of 2 CPUs are launched on demand)"
cluster up -y "$CONFIG"

step "cluster submit $CONFIG examples/scale_demo.py   (6 tasks that each need 2 CPUs)"
cluster submit "$CONFIG" examples/scale_demo.py &
driver=$!
sleep 4
while kill -0 "$driver" 2>/dev/null; do
  step "cluster status   (while the driver runs: workers join for the queued demand)"
  cluster status "$CONFIG"
  sleep 3
done
wait "$driver"

step "Waiting for the idle workers to be removed (idle_timeout_minutes: 0.25 = 15 s)"
for _ in $(seq 1 45); do
  [ -z "$(cluster get-worker-ips "$CONFIG")" ] && break
  sleep 2
done
cluster status "$CONFIG"
[ -z "$(cluster get-worker-ips "$CONFIG")" ] || { echo "workers were not removed" >&2; exit 1; }

step "cluster down $CONFIG"
cluster down -y "$CONFIG"
trap - EXIT
step "Done: the cluster grew from 1 to several nodes for the work, and shrank back when idle."
