#!/usr/bin/env bash
# The cost of cluster authentication on a 3-node cluster under TCG (a
# benchmark, not a test), with a cluster key (every frame and datagram
# tagged) and without (`--no-key`, cluster.insecure=1), the same cluster
# brought up fresh for each:
#  - no-op RPCs (PING) from a non-leader's mount to the leader's server
#    (`rpcping COUNT`): median round trip;
#  - creates per second across nodes: one Linux guest mounting node0,
#    node1 and node2 over 9P creates BENCH_FILES empty files in a directory
#    of each at once (`p9cluster creates`, one thread per node), so every
#    node takes its locks, inode numbers and log trees from the leader.
# Prints a line per run and then both side by side. The in-process cost of
# the MAC alone: `cargo bench -p scoutvm-fs --bench cluster_auth`.
#   qemu/cluster-auth-bench.sh [COUNT]   (default 200 RPCs; CLUSTER_DIR
#                                         default target/cluster-auth-bench)
# Environment: BENCH_FILES (200 per node; 0 skips the creates), BENCH_ROUNDS
# (1: how many times the key / no-key pair runs, alternating, so drift of
# the host's load hits both alike; the table lists every round and the
# median), SCOUTVM_ELF, SCOUTVM_GUEST_SKIP_TOOLS=1 (reuse the guest tools
# build).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cs="$here/cluster.sh"
lg="$here/linux-guest.sh"
count="${1:-200}"
files="${BENCH_FILES:-200}"
rounds="${BENCH_ROUNDS:-1}"
export CLUSTER_DIR="${CLUSTER_DIR:-$here/../target/cluster-auth-bench}"

# Three free TCP ports in a row on 127.0.0.1 for the nodes' 9P.
CLUSTER_P9_BASE=$(python3 - <<'PY'
import socket
for _ in range(200):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); base = s.getsockname()[1]; s.close()
    held = []
    try:
        for p in range(base, base + 3):
            t = socket.socket(); t.bind(("127.0.0.1", p)); held.append(t)
    except OSError:
        continue
    finally:
        for t in held: t.close()
    print(base); break
PY
)
export CLUSTER_P9_BASE

leader_of() {
    for i in 0 1 2; do
        if "$cs" shell "$i" quorum 2>/dev/null | grep -q "leader $i server Up"; then
            echo "$i"
            return
        fi
    done
}
trap '"$cs" down >/dev/null 2>&1 || true' EXIT

# creates RUN: BENCH_FILES files in a directory of each node at once;
# prints the guest's CREATES line.
creates() {
    local out rc=0
    out="$("$lg" run --no-mount \
        --mount "/mnt/a=10.0.2.2:$CLUSTER_P9_BASE" \
        --mount "/mnt/b=10.0.2.2:$((CLUSTER_P9_BASE + 1))" \
        --mount "/mnt/c=10.0.2.2:$((CLUSTER_P9_BASE + 2))" \
        --mount-opts access=user,cache=none --timeout 1800 -- \
        "p9cluster creates /mnt/a/$1-a /mnt/b/$1-b /mnt/c/$1-c --files $files" 2>/dev/null)" || rc=$?
    out="$(tr -d '\r' <<<"$out")"
    if [ "$rc" != 0 ]; then
        echo "guest failed (rc $rc):" >&2
        tail -20 <<<"$out" >&2
        exit 1
    fi
    grep -a '^CREATES' <<<"$out"
}

declare -A rtt per_sec
for round in $(seq 1 "$rounds"); do
for mode in key no-key; do
    if [ "$mode" = key ]; then "$cs" up 3 >/dev/null; else "$cs" up 3 --no-key >/dev/null; fi
    deadline=$(($(date +%s) + 300))
    while :; do
        l=$(leader_of)
        if [ -n "$l" ] && "$cs" shell "$l" clients 2>/dev/null | grep -q "3 cluster mount(s)"; then
            break
        fi
        [ "$(date +%s)" -lt "$deadline" ] || { echo "$mode: the cluster did not form" >&2; exit 1; }
        sleep 0.5
    done
    far=$(( (l + 1) % 3 ))
    "$cs" shell "$far" cluster | grep "^auth:" | sed "s/^/$mode: /"
    # a warm-up, then the measured run
    "$cs" shell "$far" rpcping 20 >/dev/null
    line=$("$cs" shell "$far" rpcping "$count" | tr -d '\r' | grep "no-op RPCs")
    echo "$mode: node$far -> leader node$l: $line"
    rtt[$mode]+=" $(sed -n 's/.*median \([0-9.]*\) ms.*/\1/p' <<<"$line")"
    if [ "$files" -gt 0 ]; then
        c=$(creates "$mode$round")
        echo "$mode: $c"
        per_sec[$mode]+=" $(sed -n 's/.*per_sec=\([0-9]*\).*/\1/p' <<<"$c")"
        for i in 0 1 2; do
            { "$cs" shell "$i" counters cluster_auth. 2>/dev/null || true; } | tr -d '\r' \
                | awk -v m="$mode" -v n="$i" '$2 ~ /^[0-9]+$/ && $2 > 0 { print m ": node" n " " $0 }'
        done
    fi
    "$cs" down >/dev/null 2>&1 || true
done
done

# "v1 v2 ... (median m)" of a list of numbers
summary() {
    python3 -c 'import sys, statistics
v = sys.argv[1:]
print(" / ".join(v) + " (median %g)" % statistics.median(float(x) for x in v) if v else "?")' $1
}
echo "== side by side (3 nodes, TCG, $rounds round(s))"
printf "%-34s %s\n" "no-op RPC median round trip, ms" ""
printf "  %-32s %s\n" "key" "$(summary "${rtt[key]:-}")" "no key" "$(summary "${rtt[no-key]:-}")"
if [ "$files" -gt 0 ]; then
    printf "%-34s %s\n" "creates/s, 3 nodes x $files files" ""
    printf "  %-32s %s\n" "key" "$(summary "${per_sec[key]:-}")" "no key" "$(summary "${per_sec[no-key]:-}")"
fi
