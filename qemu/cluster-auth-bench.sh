#!/usr/bin/env bash
# The cost of cluster authentication on a 3-node cluster under TCG (a
# benchmark, not a test): no-op RPCs (PING) from a non-leader's mount to
# the leader's server (`rpcping COUNT`), with a cluster key (every frame
# tagged) and without (`--no-key`, cluster.insecure=1). The in-process
# cost of the MAC alone: `cargo bench -p scoutvm-fs --bench cluster_auth`.
#   qemu/cluster-auth-bench.sh [COUNT]   (default 200; CLUSTER_DIR default
#                                         target/cluster-auth-bench)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cs="$here/cluster.sh"
count="${1:-200}"
export CLUSTER_DIR="${CLUSTER_DIR:-$here/../target/cluster-auth-bench}"
leader_of() {
    for i in 0 1 2; do
        if "$cs" shell "$i" quorum 2>/dev/null | grep -q "leader $i server Up"; then
            echo "$i"
            return
        fi
    done
}
trap '"$cs" down >/dev/null 2>&1 || true' EXIT

for mode in key no-key; do
    if [ "$mode" = key ]; then "$cs" up 3 >/dev/null; else "$cs" up 3 --no-key >/dev/null; fi
    while :; do
        l=$(leader_of)
        if [ -n "$l" ] && "$cs" shell "$l" clients 2>/dev/null | grep -q "3 cluster mount(s)"; then
            break
        fi
        sleep 0.5
    done
    far=$(( (l + 1) % 3 ))
    "$cs" shell "$far" cluster | grep "^auth:" | sed "s/^/$mode: /"
    # a warm-up, then the measured run
    "$cs" shell "$far" rpcping 20 >/dev/null
    "$cs" shell "$far" rpcping "$count" | sed "s/^/$mode: node$far -> leader node$l: /"
    "$cs" down >/dev/null 2>&1 || true
done
