#!/usr/bin/env bash
# Benchmark any 9P2000.L server from a Linux guest: boots qemu/linux-guest.sh,
# runs p9bench on the mount and prints its one machine-readable line
# (`P9BENCH files=.. create_ops=.. stat_ops=.. readdir_ops=.. unlink_ops=..
#  mib=.. write_mbs=.. read_mbs=..`) on stdout; the guest console goes to
# stderr.
#
# Usage: qemu/p9bench.sh [--files N] [--mib M] [guest options] ADDR:PORT
#   ADDR 127.0.0.1 or localhost means the host's loopback, reached from the
#   guest as 10.0.2.2 over user networking; any other ADDR is used as the
#   guest sees it (give --net/--ip for a socket network to an appliance).
#   Guest options are those of `qemu/linux-guest.sh run` (--mount-opts,
#   --msize, --net, --ip, --gw, --mem, --timeout ...).
# Example: qemu/p9bench.sh --files 2000 --mib 256 127.0.0.1:5640
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

files=1000 mib=256 guest=() server=""
while [ $# -gt 0 ]; do
    case "$1" in
        --files) files="$2"; shift 2 ;;
        --mib) mib="$2"; shift 2 ;;
        --no-mount) echo "p9bench: --no-mount makes no sense here" >&2; exit 2 ;;
        --*) guest+=("$1" "$2"); shift 2 ;;
        *) server="$1"; shift ;;
    esac
done
[ -n "$server" ] || { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }
case "${server%:*}" in
    127.0.0.1|localhost) server="10.0.2.2:${server##*:}" ;;
esac

out="$(mktemp "${TMPDIR:-/tmp}/p9bench.XXXXXX")"
trap 'rm -f "$out"' EXIT
rc=0
"$here/linux-guest.sh" run --server "$server" "${guest[@]}" -- \
    "p9bench /mnt --files $files --mib $mib" >"$out" 2>&1 || rc=$?
cat "$out" >&2
line="$(grep -a '^P9BENCH ' "$out" | tr -d '\r' | tail -1)"
if [ "$rc" != 0 ] || [ -z "$line" ]; then
    echo "p9bench: the guest run failed (rc=$rc)" >&2
    exit 1
fi
echo "$line"
