#!/usr/bin/env bash
# Boot one ScoutVM appliance under QEMU (TCG): microvm by default, q35 with
# --q35. Two raw disks (metadata, data) are created if missing; the serial
# console is this terminal (Ctrl-A x quits QEMU); user networking forwards
# host TCP 127.0.0.1:5640 to the node's 9P port 564 and 127.0.0.1:8564 to
# the admin API's port (8564, or the command line's api.port=; the API is
# on only with api.token=, docs/archival.md) and 127.0.0.1:7564 to the FUSE
# service's port (7564, or fuse.port=; docs/fuse-service.md). With --link the node
# is instead on a point-to-point Ethernet (UDP ports on 127.0.0.1) with a
# Linux guest, at 10.0.3.10/24:
#   qemu/run.sh --link 47001:47002
#   qemu/linux-guest.sh run --net dgram=47002:47001 --ip 10.0.3.20/24 \
#       --server 10.0.3.10:564 --mount-opts access=user -- 'ls -la /mnt'
#
#   qemu/run.sh [--q35] [--meta IMG] [--data IMG] [--elf ELF] [--mem MB]
#               [--port HOSTPORT] [--api-port HOSTPORT] [--fuse-port HOSTPORT]
#               [--link LOCALPORT:REMOTEPORT]
#               [-- KERNEL CMDLINE WORDS...]
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
machine=microvm
meta="$root/target/scoutvm/meta.img"
data="$root/target/scoutvm/data.img"
elf="$root/target/scoutvm/scoutvm.elf"
mem=512
port=5640
api_port=8564
fuse_port=7564
link=""
append=""

while [ $# -gt 0 ]; do
    case "$1" in
        --q35) machine=q35 ;;
        --microvm) machine=microvm ;;
        --meta) meta="$2"; shift ;;
        --data) data="$2"; shift ;;
        --elf) elf="$2"; shift ;;
        --mem) mem="$2"; shift ;;
        --port) port="$2"; shift ;;
        --api-port) api_port="$2"; shift ;;
        --fuse-port) fuse_port="$2"; shift ;;
        --link) link="$2"; shift ;;
        --) shift; append="$*"; break ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    echo "run.sh: qemu-system-x86_64 is missing; installing qemu-system-x86 with apt-get" >&2
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd=sudo
    $sudo_cmd apt-get update -q && $sudo_cmd apt-get install -y -q qemu-system-x86
fi
if [ ! -f "$elf" ]; then
    echo "run.sh: $elf is missing; build it with 'cargo xtask build'" >&2
    exit 1
fi
mkdir -p "$(dirname "$meta")" "$(dirname "$data")"
[ -f "$meta" ] || { truncate -s 1G "$meta"; echo "run.sh: created metadata disk $meta (1 GiB, sparse)"; }
[ -f "$data" ] || { truncate -s 4G "$data"; echo "run.sh: created data disk $data (4 GiB, sparse)"; }

if [ "$machine" = microvm ]; then
    # acpi=off: the kernel reads no ACPI and QEMU boots ~5 ms faster.
    mach=(-M microvm,acpi=off -global virtio-mmio.force-legacy=false)
    blk=virtio-blk-device; nic=virtio-net-device
else
    mach=(-M q35)
    blk=virtio-blk-pci; nic="virtio-net-pci,romfile="
fi

if [ -n "$link" ]; then
    case "$link" in
        *:*) ;;
        *) echo "run.sh: --link wants LOCALPORT:REMOTEPORT" >&2; exit 2 ;;
    esac
    netdev="dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=${link%%:*},remote.type=inet,remote.host=127.0.0.1,remote.port=${link##*:}"
    case " $append " in
        *" ip="*) ;;
        *) append="ip=10.0.3.10/24 $append" ;;
    esac
else
    guest_api=8564 guest_fuse=7564
    for w in $append; do
        case "$w" in
            api.port=*) guest_api="${w#api.port=}" ;;
            fuse.port=*) guest_fuse="${w#fuse.port=}" ;;
        esac
    done
    netdev="user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:564,hostfwd=tcp:127.0.0.1:${api_port}-:${guest_api},hostfwd=tcp:127.0.0.1:${fuse_port}-:${guest_fuse}"
fi

exec qemu-system-x86_64 "${mach[@]}" -accel tcg -m "${mem}M" \
    -nodefaults -no-reboot -nographic -serial mon:stdio \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -drive "file=$meta,format=raw,if=none,id=meta,cache=writeback" \
    -device "$blk,drive=meta,serial=meta" \
    -drive "file=$data,format=raw,if=none,id=data,cache=writeback" \
    -device "$blk,drive=data,serial=data" \
    -netdev "$netdev" \
    -device "$nic,netdev=n0" \
    -kernel "$elf" -append "node=scoutvm $append"
