#!/usr/bin/env bash
# Figures of the cluster locks (issue 11, "Measure") under TCG: a 3-node
# cluster (qemu/cluster.sh up 3) and one Linux guest mounting node0, node1
# and node2 over 9P (access=user,cache=none) on /mnt/a, /mnt/b, /mnt/c.
# A benchmark, not a test:
#  - lock hand-off latency: one file written (open, 4 KiB pwrite, close)
#    alternately through node0 and node1, BENCH_ROUNDS times each; median
#    and p99 per write, against the same writes through node0 alone;
#  - creates per second in separate directories with 1, 2 and 3 nodes
#    (BENCH_FILES empty files per directory, one guest thread per node);
#  - the lock messages of a BENCH_MANY-file create workload (10 000) in one
#    directory through node0: the lock_client.* and lock_server.* counter
#    deltas summed over the nodes (docs/cluster.md; /work/notes/lockproto.md).
# The 9P traffic goes guest -> host loopback -> each node's forwarded port,
# and all four VMs share the host's cores: absolute figures are TCG's.
#
#   qemu/cluster-locks-bench.sh      (CLUSTER_DIR default target/cluster-locks-bench)
# Environment: BENCH_ROUNDS (50), BENCH_FILES (500), BENCH_MANY (10000),
# SCOUTVM_ELF, SCOUTVM_GUEST_SKIP_TOOLS=1 (reuse the guest tools build).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cs="$here/cluster.sh"
lg="$here/linux-guest.sh"
export CLUSTER_DIR="${CLUSTER_DIR:-$here/../target/cluster-locks-bench}"
rounds="${BENCH_ROUNDS:-50}"
files="${BENCH_FILES:-500}"
many="${BENCH_MANY:-10000}"

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
trap '"$cs" down >/dev/null 2>&1 || true' EXIT

"$cs" up 3 >/dev/null
for i in 0 1 2; do
    deadline=$(($(date +%s) + 180))
    until "$cs" shell "$i" ls / >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "node$i did not mount" >&2; exit 1; }
        sleep 0.5
    done
done

# guest COMMAND: run it in the Linux guest with the three mounts; print its
# figure lines.
guest() {
    local out rc=0
    out="$("$lg" run --no-mount \
        --mount "/mnt/a=10.0.2.2:$CLUSTER_P9_BASE" \
        --mount "/mnt/b=10.0.2.2:$((CLUSTER_P9_BASE + 1))" \
        --mount "/mnt/c=10.0.2.2:$((CLUSTER_P9_BASE + 2))" \
        --mount-opts access=user,cache=none --timeout 3600 -- "$1" 2>/dev/null)" || rc=$?
    out="$(tr -d '\r' <<<"$out")"
    grep -a '^HANDOFF\|^CREATES\|^p9cluster' <<<"$out" || true
    if [ "$rc" != 0 ]; then
        echo "guest failed (rc $rc):" >&2
        tail -20 <<<"$out" >&2
        exit 1
    fi
}

# The lock counters of every node as `name value` lines, summed over nodes.
lock_counters() {
    for i in 0 1 2; do
        for p in lock_client. lock_server.; do
            "$cs" shell "$i" counters "$p" 2>/dev/null || true
        done
    done | awk '$1 ~ /^lock_(client|server)\./ && $2 ~ /^[0-9]+$/ { s[$1] += $2 }
                END { for (k in s) print k, s[k] }' | sort
}

echo "== lock hand-off, creates with 1, 2, 3 nodes (TCG, 3 nodes up)"
guest "p9cluster handoff /mnt/a/handoff /mnt/b/handoff --rounds $rounds \
    && p9cluster creates /mnt/a/n1-a --files $files \
    && p9cluster creates /mnt/a/n2-a /mnt/b/n2-b --files $files \
    && p9cluster creates /mnt/a/n3-a /mnt/b/n3-b /mnt/c/n3-c --files $files"

echo "== lock messages of $many creates in one directory through node0"
before="$(lock_counters)"
guest "p9cluster creates /mnt/a/many --files $many"
after="$(lock_counters)"
join -a 2 -e 0 -o 0,1.2,2.2 <(echo "$before") <(echo "$after") \
    | awk '{ printf "  %-36s %d\n", $1, $3 - $2 }'
