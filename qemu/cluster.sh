#!/usr/bin/env bash
# Run a cluster of ScoutVM appliances under QEMU (TCG) on this host, as a
# normal user. Nodes node0..nodeN-1 share one metadata and one data image
# (QEMU image locking off, share-rw) and hold quorum slots 0..N-1. Each
# node has two cards: eth0 on user networking (DHCP, its 9P port forwarded
# to 127.0.0.1:$((P9_BASE + I)), its admin API port, on with `api.token=`,
# to 127.0.0.1:$((API_BASE + I)), its FUSE port to 127.0.0.1:$((FUSE_BASE + I)))
# and eth1 on a private segment between the
# nodes (a QEMU multicast socket on the loopback, group and port random per
# run) at 10.77.0.$((10 + I))/24. `up` makes one cluster key per cluster
# (`scoutvm cluster-key`, kept in cluster.env) and gives every node
# `cluster.key=`; `--no-key` runs unauthenticated (`cluster.insecure=1`).
# A `cluster.key=`/`cluster.insecure=` word given to `start` replaces the
# cluster's (a node with a wrong key). `up` also starts the host fence
# agent (`scoutvm fence-agent`, on a free port of 127.0.0.1, log in
# fence-agent.log) and gives every node `fence.agent=10.0.2.2:PORT`: a
# fence request stops the target node's QEMU through QMP before it is
# acknowledged. With `--no-fence-agent` fencing is only the shell's
# `fence ack RID` (docs/cluster.md); `--fence-agent` is the default.
#
#   qemu/cluster.sh up N [--disks file|nbd] [--meta IMG --data IMG] [--mem MB]
#                        [--no-key] [--fence-agent | --no-fence-agent]
#                        [-- EXTRA KERNEL CMDLINE WORDS]
#   qemu/cluster.sh status
#   qemu/cluster.sh shell I COMMAND...     run one shell command on node I
#   qemu/cluster.sh kill I                 SIGKILL node I's QEMU (a crash)
#   qemu/cluster.sh start I [-- WORDS]     (re)start node I; I >= N adds a
#                                          client-only node (no quorum slot)
#   qemu/cluster.sh fence-log              the fence agent's requests and answers
#   qemu/cluster.sh down                   poweroff every node, stop what is left
#
# Environment: CLUSTER_DIR (run directory, default target/cluster),
# CLUSTER_P9_BASE (default 5650), CLUSTER_API_BASE (default 8650),
# CLUSTER_FUSE_BASE (default 7650),
# CLUSTER_QUORUM_PORT (default 7100),
# CLUSTER_SHELL_TIMEOUT (seconds, default 60), CLUSTER_BOOT_TIMEOUT
# (seconds, default 120), SCOUTVM_ELF (the appliance image), SCOUTVM_TOOL
# (the host `scoutvm` tool, built or brought up to date through cargo).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${CLUSTER_DIR:-$root/target/cluster}"
elf="${SCOUTVM_ELF:-$root/target/scoutvm/scoutvm.elf}"
shell_timeout="${CLUSTER_SHELL_TIMEOUT:-60}"
boot_timeout="${CLUSTER_BOOT_TIMEOUT:-120}"

die() { echo "cluster.sh: $*" >&2; exit 1; }
usage() { sed -n '2,36p' "$0"; }

# A free TCP port on 127.0.0.1 (the kernel picks it; racy but brief).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

load_env() {
    [ -f "$dir/cluster.env" ] || die "no cluster in $dir (run 'up' first)"
    # shellcheck disable=SC1091
    . "$dir/cluster.env"
}

node_dir() { echo "$dir/node$1"; }

# The pid of node I's QEMU if it is running (checked against its command
# line, so a reused pid is never taken for ours).
node_pid() {
    local f pid
    f="$(node_dir "$1")/qemu.pid"
    [ -f "$f" ] || return 1
    pid="$(cat "$f" 2>/dev/null)" || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$(node_dir "$1")/console.sock" || return 1
    # an exited QEMU not yet reaped (a zombie) is not running
    [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)" != Z ] || return 1
    echo "$pid"
}

# The pid of the cluster's fence agent if it runs (checked against its
# command line).
agent_pid() {
    local pid
    pid="$(cat "$dir/fence-agent.pid" 2>/dev/null)" || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "fence-agent --dir $dir " || return 1
    echo "$pid"
}

stop_agent() {
    local pid
    pid="$(agent_pid)" || { rm -f "$dir/fence-agent.pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/fence-agent.pid"
    echo "cluster.sh: fence agent stopped (pid $pid)"
}

# Start the host fence agent; print its port.
start_agent() {
    local tool="$1"
    stop_agent >/dev/null
    rm -f "$dir/fence-agent.port"
    setsid "$tool" fence-agent --dir "$dir" --log "$dir/fence-agent.log" \
        --port-file "$dir/fence-agent.port" </dev/null >>"$dir/fence-agent.out" 2>&1 &
    echo $! >"$dir/fence-agent.pid"
    for _ in $(seq 100); do
        [ -s "$dir/fence-agent.port" ] && break
        agent_pid >/dev/null || die "the fence agent exited (see $dir/fence-agent.out)"
        sleep 0.1
    done
    [ -s "$dir/fence-agent.port" ] || die "the fence agent did not listen in 10s"
    cat "$dir/fence-agent.port"
}

find_tool() {
    if [ -n "${SCOUTVM_TOOL:-}" ]; then echo "$SCOUTVM_TOOL"; return; fi
    local t="${CARGO_TARGET_DIR:-$root/target}"
    # always through cargo (a no-op when it is fresh): a tool left from an
    # older checkout may lack a subcommand this script uses
    (cd "$root" && cargo build -q -p scoutvm-image --bin scoutvm) >&2 || die "building scoutvm failed"
    echo "$t/debug/scoutvm"
}

# Boot node I in the background; its words are the cluster's plus WORDS.
start_node() {
    local i="$1"; shift
    local extra="$*"
    load_env
    if pid="$(node_pid "$i")"; then die "node$i is already running (pid $pid)"; fi
    local nd; nd="$(node_dir "$i")"
    mkdir -p "$nd"
    rm -f "$nd/console.sock" "$nd/qmp.sock" "$nd/qemu.pid"
    local ip="10.77.0.$((10 + i))"
    local words="node=node$i ip1=$ip/24"
    if [ "$i" -lt "$N" ]; then
        words="$words quorum_slot_nr=$i"
    else
        words="$words cluster=1"
    fi
    # the node's own key word (start I -- cluster.key=...) wins
    if [[ " $extra $EXTRA " != *" cluster.key="* && " $extra $EXTRA " != *" cluster.insecure="* ]]; then
        if [ -n "${KEY:-}" ]; then
            words="$words cluster.key=$KEY"
        else
            words="$words cluster.insecure=1"
        fi
    fi
    if [ -n "${FENCE_PORT:-}" ] && [[ " $extra $EXTRA " != *" fence.agent="* ]]; then
        # the host is 10.0.2.2 on each node's user-networking card
        words="$words fence.agent=10.0.2.2:$FENCE_PORT"
    fi
    [ -n "$EXTRA" ] && words="$words $EXTRA"
    [ -n "$extra" ] && words="$words $extra"
    local drives=()
    if [ "$DISKS" = nbd ]; then
        drives+=(-drive "driver=raw,file.driver=nbd,file.host=127.0.0.1,file.port=$NBD_META_PORT,if=none,id=meta,cache=writeback")
        drives+=(-drive "driver=raw,file.driver=nbd,file.host=127.0.0.1,file.port=$NBD_DATA_PORT,if=none,id=data,cache=writeback")
    else
        drives+=(-drive "file=$META,format=raw,if=none,id=meta,cache=writeback,file.locking=off")
        drives+=(-drive "file=$DATA,format=raw,if=none,id=data,cache=writeback,file.locking=off")
    fi
    local mac_lo; mac_lo="$(printf '%02x' $((i & 255)))"
    local guest_api=8564 guest_fuse=7564 w
    for w in $words; do
        case "$w" in
            api.port=*) guest_api="${w#api.port=}" ;;
            fuse.port=*) guest_fuse="${w#fuse.port=}" ;;
        esac
    done
    echo "$words" >"$nd/cmdline"
    : >>"$nd/console.log"
    stat -c %s "$nd/console.log" >"$nd/console.start"
    echo "=== node$i start $(date -u +%FT%TZ): $words" >>"$nd/console.log"
    qemu-system-x86_64 -M microvm,acpi=off -global virtio-mmio.force-legacy=false \
        -accel tcg -m "${MEM}M" -nodefaults -no-reboot -display none -monitor none \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -chardev "socket,id=ser0,path=$nd/console.sock,server=on,wait=off,logfile=$nd/console.log,logappend=on" \
        -serial chardev:ser0 \
        -qmp "unix:$nd/qmp.sock,server=on,wait=off" \
        "${drives[@]}" \
        -device virtio-blk-device,drive=meta,serial=meta,share-rw=on \
        -device virtio-blk-device,drive=data,serial=data,share-rw=on \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$((P9_BASE + i))-:564,hostfwd=tcp:127.0.0.1:$((${API_BASE:-8650} + i))-:$guest_api,hostfwd=tcp:127.0.0.1:$((${FUSE_BASE:-7650} + i))-:$guest_fuse" \
        -device "virtio-net-device,netdev=n0,mac=52:54:00:12:00:$mac_lo" \
        -netdev "socket,id=n1,mcast=$MCAST,localaddr=127.0.0.1" \
        -device "virtio-net-device,netdev=n1,mac=52:54:00:77:00:$mac_lo" \
        -kernel "$elf" -append "$words" \
        -daemonize -pidfile "$nd/qemu.pid" || die "QEMU for node$i failed to start"
    echo "node$i: pid $(cat "$nd/qemu.pid"), 9P 127.0.0.1:$((P9_BASE + i)), API 127.0.0.1:$((${API_BASE:-8650} + i)), FUSE 127.0.0.1:$((${FUSE_BASE:-7650} + i)), cluster $ip, console $nd/console.log"
}

# Wait until node I printed its prompt since its last start.
wait_prompt() {
    local i="$1" nd deadline
    nd="$(node_dir "$i")"
    deadline=$(($(date +%s) + boot_timeout))
    while :; do
        if tail -c +"$(($(cat "$nd/console.start") + 1))" "$nd/console.log" | grep -q "node$i> "; then
            return 0
        fi
        node_pid "$i" >/dev/null || die "node$i exited while booting (see $nd/console.log)"
        [ "$(date +%s)" -lt "$deadline" ] || die "node$i did not reach its prompt in ${boot_timeout}s (see $nd/console.log)"
        sleep 0.1
    done
}

# Run one shell command on node I over its console socket; print its output.
node_shell() {
    local i="$1"; shift
    local nd; nd="$(node_dir "$i")"
    node_pid "$i" >/dev/null || die "node$i is not running"
    python3 - "$nd/console.sock" "node$i> " "$shell_timeout" "$*" <<'PY'
import re, socket, sys, time
path, prompt, timeout, cmd = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.sendall(cmd.encode() + b"\r")
deadline = time.time() + timeout
buf = b""
echo = (cmd + "\n").encode()
log = re.compile(rb"\[ *\d+\.\d{6}\] (ERROR|WARN|INFO|DEBUG|TRACE)[^\n]*\n")
while True:
    text = log.sub(b"", buf.replace(b"\r", b""))
    at = text.find(echo)
    if at >= 0:
        end = text.find(b"\n" + prompt.encode(), at + len(echo) - 1)
        if end >= 0:
            out = text[at + len(echo):end + 1]
            sys.stdout.write(out.decode(errors="replace"))
            sys.exit(1 if out.startswith(b"error: ") else 0)
    left = deadline - time.time()
    if left <= 0:
        sys.stderr.write("cluster.sh: no prompt after %r within %.0fs\n" % (cmd, timeout))
        sys.exit(2)
    s.settimeout(left)
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        continue
    if not chunk:
        sys.stderr.write("cluster.sh: console closed\n")
        sys.exit(2)
    buf += chunk
PY
}

cmd_up() {
    local n="${1:-}"; shift || true
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 15 ] || die "up wants a node count 1..15"
    local disks=file meta="" data="" mem=512 extra="" keyed=1 agent=1
    while [ $# -gt 0 ]; do
        case "$1" in
            --disks) disks="$2"; shift ;;
            --meta) meta="$2"; shift ;;
            --data) data="$2"; shift ;;
            --mem) mem="$2"; shift ;;
            --no-key) keyed=0 ;;
            --fence-agent) agent=1 ;;
            --no-fence-agent) agent=0 ;;
            --) shift; extra="$*"; break ;;
            *) die "up: unknown option '$1'" ;;
        esac
        shift
    done
    case "$disks" in file|nbd) ;; *) die "--disks is file or nbd" ;; esac
    { [ -n "$meta" ] && [ -n "$data" ]; } || { [ -z "$meta" ] && [ -z "$data" ]; } || die "give both --meta and --data"
    [ -f "$elf" ] || die "$elf is missing; build it with 'cargo xtask build'"
    if [ -f "$dir/cluster.env" ]; then
        for d in "$dir"/node*; do
            [ -d "$d" ] || continue
            if node_pid "${d##*/node}" >/dev/null; then die "a cluster is running in $dir ('down' first)"; fi
        done
    fi
    mkdir -p "$dir"
    # The last run's state goes; given images stay, even inside $dir.
    stop_agent >/dev/null
    rm -rf "$dir"/node* "$dir/cluster.env" "$dir"/nbd-*.pid "$dir"/fence-agent.*
    local tool; tool="$(find_tool)"
    local fresh=0
    if [ -z "$meta" ]; then
        meta="$dir/meta.img"; data="$dir/data.img"
        rm -f "$meta" "$data"
        truncate -s 16G "$meta"; truncate -s 16G "$data"
        fresh=1
    fi
    [ -f "$meta" ] && [ -f "$data" ] || die "--meta/--data: no such image"
    meta="$(realpath "$meta")"; data="$(realpath "$data")"
    [ "$meta" != "$data" ] || die "--meta and --data are the same image"
    local qport="${CLUSTER_QUORUM_PORT:-7100}" q=()
    for ((i = 0; i < n; i++)); do q+=(-Q "$i,10.77.0.$((10 + i)),$qport"); done
    if out="$("$tool" mkfs -A "${q[@]}" "$meta" "$data" 2>&1)"; then
        echo "cluster.sh: made a volume with $n quorum slots on $meta + $data"
    elif [ "$fresh" = 0 ] && grep -q "already contains a scoutfs volume" <<<"$out"; then
        echo "cluster.sh: using the volume already on $meta + $data"
    else
        echo "$out" >&2; die "mkfs failed"
    fi
    local key=""
    if [ "$keyed" = 1 ]; then
        key="$("$tool" cluster-key)" || die "scoutvm cluster-key failed"
        [[ "$key" =~ ^[0-9a-f]{64}$ ]] || die "scoutvm cluster-key printed no key"
    fi
    local nbd_meta="" nbd_data=""
    if [ "$disks" = nbd ]; then
        command -v qemu-nbd >/dev/null || die "qemu-nbd is missing (apt-get install qemu-utils)"
        nbd_meta="$(free_port)"; nbd_data="$(free_port)"
        for pair in "meta:$meta:$nbd_meta" "data:$data:$nbd_data"; do
            IFS=: read -r role img port <<<"$pair"
            qemu-nbd --fork --persistent --shared=16 --bind=127.0.0.1 --port="$port" \
                --format=raw --cache=writeback --pid-file="$dir/nbd-$role.pid" "$img" \
                || die "qemu-nbd for $img failed"
            echo "cluster.sh: $role exported over NBD at 127.0.0.1:$port (pid $(cat "$dir/nbd-$role.pid"))"
        done
    fi
    # A random multicast group and port per run, so parallel runs never
    # share a segment.
    local fence_port=""
    if [ "$agent" = 1 ]; then
        fence_port="$(start_agent "$tool")"
        echo "cluster.sh: fence agent on 127.0.0.1:$fence_port (pid $(cat "$dir/fence-agent.pid")), log $dir/fence-agent.log"
    fi
    local mcast
    mcast="239.77.$((RANDOM % 256)).$((RANDOM % 254 + 1)):$((20000 + RANDOM % 40000))"
    cat >"$dir/cluster.env" <<EOF
N=$n
DISKS=$disks
META='$meta'
DATA='$data'
NBD_META_PORT=$nbd_meta
NBD_DATA_PORT=$nbd_data
MCAST=$mcast
P9_BASE=${CLUSTER_P9_BASE:-5650}
API_BASE=${CLUSTER_API_BASE:-8650}
FUSE_BASE=${CLUSTER_FUSE_BASE:-7650}
MEM=$mem
EXTRA='$extra'
KEY=$key
FENCE_PORT=$fence_port
EOF
    chmod 600 "$dir/cluster.env"
    echo "cluster.sh: run directory $dir, private segment mcast $mcast"
    for ((i = 0; i < n; i++)); do start_node "$i"; done
    for ((i = 0; i < n; i++)); do wait_prompt "$i"; done
    echo "cluster.sh: $n nodes up"
}

cmd_status() {
    load_env
    echo "cluster in $dir: $N quorum nodes, disks $DISKS, segment mcast $MCAST"
    if [ -n "${FENCE_PORT:-}" ]; then
        if pid="$(agent_pid)"; then
            echo "fence agent: pid $pid, listening on 127.0.0.1:$FENCE_PORT, log $dir/fence-agent.log"
        else
            echo "fence agent: stopped"
        fi
    fi
    for d in "$dir"/node*; do
        [ -d "$d" ] || continue
        local i="${d##*/node}" state
        if pid="$(node_pid "$i")"; then state="running pid $pid"; else state="stopped"; fi
        echo "node$i: $state, 9P 127.0.0.1:$((P9_BASE + i)), API 127.0.0.1:$((${API_BASE:-8650} + i)), FUSE 127.0.0.1:$((${FUSE_BASE:-7650} + i)), cluster 10.77.0.$((10 + i)), qmp $d/qmp.sock"
    done
}

cmd_kill() {
    local i="${1:-}"
    [[ "$i" =~ ^[0-9]+$ ]] || die "kill wants a node index"
    load_env
    pid="$(node_pid "$i")" || die "node$i is not running"
    kill -KILL "$pid"
    for _ in $(seq 100); do node_pid "$i" >/dev/null || break; sleep 0.05; done
    echo "node$i: killed (pid $pid)"
}

cmd_start() {
    local i="${1:-}"; shift || true
    [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -le 200 ] || die "start wants a node index 0..200"
    [ "${1:-}" = "--" ] && shift
    start_node "$i" "$@"
    wait_prompt "$i"
}

cmd_down() {
    load_env
    local pids=()
    for d in "$dir"/node*; do
        [ -d "$d" ] || continue
        local i="${d##*/node}"
        if pid="$(node_pid "$i")"; then
            # Clean power off: type it on the console and stay connected
            # until QEMU exits (it drops input not yet read at a disconnect).
            python3 - "$d/console.sock" <<'PY' 2>/dev/null &
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"poweroff\r")
s.settimeout(1)
end = time.time() + 30
while time.time() < end:
    try:
        if not s.recv(4096):
            break
    except socket.timeout:
        pass
PY
            pids+=("$i:$pid")
        fi
    done
    local deadline=$(($(date +%s) + 30))
    for entry in "${pids[@]}"; do
        local i="${entry%%:*}" pid="${entry##*:}"
        [ "$(date +%s)" -lt "$deadline" ] || deadline=$(($(date +%s) + 5))
        while node_pid "$i" >/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
        if node_pid "$i" >/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
            echo "node$i: did not power off, killed (pid $pid)"
        else
            echo "node$i: powered off"
        fi
    done
    wait 2>/dev/null || true
    for role in meta data; do
        local f="$dir/nbd-$role.pid"
        [ -f "$f" ] || continue
        local pid; pid="$(cat "$f")"
        if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q qemu-nbd; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
            [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
    stop_agent
    echo "cluster.sh: down"
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    status) cmd_status ;;
    shell) shift; [ $# -ge 2 ] || die "usage: shell I COMMAND..."; i="$1"; shift; load_env; node_shell "$i" "$@" ;;
    kill) shift; cmd_kill "$@" ;;
    start) shift; cmd_start "$@" ;;
    down) cmd_down ;;
    fence-log) load_env; cat "$dir/fence-agent.log" 2>/dev/null || true ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
