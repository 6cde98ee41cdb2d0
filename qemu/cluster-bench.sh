#!/usr/bin/env bash
# Figures of a 3-node cluster under TCG (a benchmark, not a test):
#  - time from `cluster.sh up 3` to every node mounted (the leader's
#    `clients` lists 3 cluster mounts), including mkfs and the boots;
#  - time from SIGKILL of the leader to a new leader with its server up,
#    with quorum_heartbeat_timeout_ms 10000 and 3000 (the host fence agent
#    `up` starts fences the dead leader; the shell ack below only races it);
#  - a TCP stream round trip between two nodes over the private segment
#    (`clusternet ping`; the session's RPCs ride the same path);
#  - a no-op RPC (PING) round trip from a non-leader's mount to the
#    leader's server through the session (`rpcping`).
# Polling goes through the serial console (`cluster.sh shell`), so each
# figure is late by up to one poll (~0.2-0.5 s).
#   qemu/cluster-bench.sh            (CLUSTER_DIR default target/cluster-bench)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cs="$here/cluster.sh"
export CLUSTER_DIR="${CLUSTER_DIR:-$here/../target/cluster-bench}"
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
leader_of() {
    for i in "$@"; do
        if "$cs" shell "$i" quorum 2>/dev/null | grep -q "leader $i server Up"; then
            echo "$i"
            return
        fi
    done
}
trap '"$cs" down >/dev/null 2>&1 || true' EXIT

for hb in 10000 3000; do
    t0=$(now)
    "$cs" up 3 -- "quorum_heartbeat_timeout_ms=$hb" >/dev/null
    while :; do
        l=$(leader_of 0 1 2)
        if [ -n "$l" ] && "$cs" shell "$l" clients 2>/dev/null | grep -q "3 cluster mount(s)"; then
            break
        fi
        sleep 0.2
    done
    echo "heartbeat ${hb} ms: up 3 -> all 3 mounted: $(since "$t0") s (leader node$l)"
    if [ "$hb" = 10000 ]; then
        other=$(( (l + 1) % 3 ))
        far=$(( (l + 2) % 3 ))
        "$cs" shell "$other" clusternet serve 7300 >/dev/null
        "$cs" shell "$far" clusternet ping "10.77.0.$((10 + other)):7300" rtt | sed 's/^/  round trip: /'
        "$cs" shell "$far" rpcping 50 | sed "s/^/  node$far: /"
    fi
    survivors=$(for i in 0 1 2; do [ "$i" != "$l" ] && echo "$i"; done)
    "$cs" kill "$l" >/dev/null
    tk=$(now)
    while :; do
        for i in $survivors; do
            rid=$("$cs" shell "$i" fence 2>/dev/null | awk '$1 == "rid" { print $2; exit }')
            [ -n "$rid" ] && "$cs" shell "$i" fence ack "$rid" >/dev/null || true
        done
        n=$(leader_of $survivors)
        [ -n "$n" ] && break
        sleep 0.2
    done
    echo "heartbeat ${hb} ms: leader killed -> node$n leads with its server up: $(since "$tk") s"
    "$cs" down >/dev/null 2>&1 || true
done
