#!/usr/bin/env bash
# A Linux 9P client guest for ScoutVM tests and benches.
#
# Builds and caches (under qemu/cache/linux-guest, or $SCOUTVM_GUEST_CACHE)
# a Debian 6.1 kernel plus a busybox-static initramfs holding the 9p, 9pnet,
# virtiofs (+fuse) and virtio-net modules, and an overlay (rebuilt every run) with the init,
# the static guest tools (p9check, p9fsx, p9bench, p9cluster) and the guest
# scripts of tests/guest/. Booted, the guest brings up eth0, mounts a
# 9P2000.L server on /mnt over TCP (or, with --virtiofs, the virtio-fs device
# tagged `scoutvm`) (and any --mount ones), runs one command,
# prints a result marker and powers off.
#
# Usage:
#   qemu/linux-guest.sh build
#   qemu/linux-guest.sh run [options] [--] COMMAND...
#
# Options of `run`:
#   --server ADDR:PORT   9P server as the guest sees it (default 10.0.2.2:5640,
#                        the host's loopback under user networking)
#   --net MODE           user (default) | socket-connect=HOST:PORT |
#                        socket-listen=HOST:PORT | mcast=GROUP:PORT |
#                        dgram=LOCALPORT:REMOTEPORT (udp on 127.0.0.1)
#   --ip CIDR            guest address (default 10.0.2.15/24)
#   --gw ADDR            default gateway (default 10.0.2.2 under user
#                        networking, none otherwise)
#   --mac MAC            guest MAC (default 52:54:00:12:34:56)
#   --msize N            9P msize (default 524288)
#   --mount-opts OPTS    extra mount options, e.g. access=user,cache=none
#                        (for every mount)
#   --mount DIR=ADDR:PORT  also mount that 9P server on DIR (repeatable;
#                        e.g. two cluster nodes on /mnt/a and /mnt/b)
#   --no-mount           do not mount /mnt (--mount ones still are)
#   --virtiofs SOCKET    mount /mnt with `mount -t virtiofs scoutvm` instead of
#                        9P: a vhost-user-fs-pci device on the vhost-user
#                        SOCKET (e.g. `scoutvm virtiofs --node ADDR:PORT
#                        --socket SOCKET`, started first), guest memory
#                        shared (memfd); --server is then unused
#   --mem MIB            guest memory (default 1024)
#   --timeout SEC        kill the guest after SEC seconds (default 900)
#   --log FILE           also copy the console to FILE
#
# Environment: SCOUTVM_GUEST_CACHE (cache dir), SCOUTVM_GUEST_SKIP_TOOLS=1
# (reuse the last tools build instead of running cargo).
#
# The guest prints `SCOUTVM-GUEST-RESULT rc=N stage=STAGE` (STAGE is net,
# mount or cmd) as its last line; the script exits with N (or 124 on timeout,
# 125 if the guest died without a marker). Under TCG the kernel reaches
# init in ~4 s.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${SCOUTVM_GUEST_CACHE:-$repo/qemu/cache/linux-guest}"
tools=(p9check p9fsx p9bench p9cluster)
# Modules the guest loads, 9pnet_fd being the TCP transport (their
# dependencies are found from the .ko files).
want_modules=(virtio_pci virtio_net 9p 9pnet 9pnet_fd virtiofs)

die() { echo "linux-guest: $*" >&2; exit 1; }
# Cleanup of whatever is under way, run on any exit.
WORK_DIR="" QEMU_PID="" CONSOLE_OUT=""
cleanup() {
    if [ -n "$QEMU_PID" ]; then kill "$QEMU_PID" 2>/dev/null || true; fi
    if [ -n "$CONSOLE_OUT" ]; then rm -f "$CONSOLE_OUT"; fi
    if [ -n "$WORK_DIR" ]; then rm -rf "$WORK_DIR"; fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT
say() { echo "linux-guest: $*" >&2; }

# ---------------------------------------------------------------------------
# Build: kernel + base initramfs (cached), tools overlay (every run).

# The host tools the build needs; Debian packages that provide them are
# installed when missing (as root, like xtask's QEMU), else a clear error.
need_tools() {
    local missing=()
    command -v cpio >/dev/null || missing+=(cpio)
    command -v dpkg-deb >/dev/null || missing+=(dpkg)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: install them (apt-get install ${missing[*]})"
    say "installing ${missing[*]} (apt-get)"
    apt-get install -y -qq "${missing[@]}" >&2 \
        || { apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2; } \
        || die "apt-get install ${missing[*]} failed"
}

pick_kernel() {
    local pkgs
    pkgs="$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null | awk '{print $1}')"
    if [ -z "$pkgs" ] && [ "$(id -u)" = 0 ]; then
        say "no kernel packages in the apt lists; running apt-get update"
        apt-get update -qq >&2 || true
        pkgs="$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null | awk '{print $1}')"
    fi
    [ -n "$pkgs" ] || die "no linux-image-6.1.0-*-amd64 in the apt lists (run apt-get update)"
    echo "$pkgs" | sort -V | tail -1
}

# Print the modules of "$@" and all their dependencies, dependencies first.
module_order() {
    local moddir="$1"; shift
    local -A seen=()
    local out=()
    visit() {
        local name="$1" file deps dep
        [ -n "${seen[$name]:-}" ] && return 0
        seen[$name]=1
        file="$(find "$moddir/kernel" -name "$name.ko" -o -name "${name//_/-}.ko" | head -1)"
        if [ -z "$file" ]; then
            grep -q "/$name.ko\$" "$moddir/modules.builtin" && return 0
            die "module $name not found in $moddir"
        fi
        deps="$(tr '\0' '\n' < "$file" | sed -n 's/^depends=//p' | head -1)"
        for dep in ${deps//,/ }; do visit "$dep"; done
        out+=("${file#"$moddir"/}")
    }
    for m in "$@"; do visit "$m"; done
    printf '%s\n' "${out[@]}"
}

build_base() {
    local pkg stamp work
    pkg="$(pick_kernel)"
    stamp="$pkg-v5"
    if [ -f "$cache/base.stamp" ] && [ "$(cat "$cache/base.stamp")" = "$stamp" ] \
        && [ -f "$cache/vmlinuz" ] && [ -f "$cache/base.cpio.gz" ]; then
        return 0
    fi
    say "building guest base from $pkg (cached in $cache)"
    need_tools
    mkdir -p "$cache"
    work="$(mktemp -d "$cache/work.XXXXXX")"
    WORK_DIR="$work"
    (cd "$work" && apt-get download "$pkg" busybox-static >/dev/null 2>&1) \
        || die "apt-get download $pkg busybox-static failed"
    dpkg-deb -x "$work"/linux-image-*.deb "$work/k"
    dpkg-deb -x "$work"/busybox-static_*.deb "$work/bb"
    local kver moddir root
    kver="$(ls "$work/k/lib/modules")"
    moddir="$work/k/lib/modules/$kver"
    root="$work/root"
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,mnt,etc,root,lib/modules}
    cp "$work/bb/bin/busybox" "$root/bin/busybox"
    module_order "$moddir" "${want_modules[@]}" > "$root/lib/modules/order"
    while read -r rel; do
        mkdir -p "$root/lib/modules/$(dirname "$rel")"
        cp "$moddir/$rel" "$root/lib/modules/$rel"
    done < "$root/lib/modules/order"
    printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\nother:x:1001:1001:other:/tmp:/bin/sh\n' > "$root/etc/passwd"
    printf 'root:x:0:\nuser:x:1000:\nother:x:1001:\n' > "$root/etc/group"
    cp "$here/guest/init" "$root/init"
    chmod 755 "$root/init"
    (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) > "$work/base.cpio.gz"
    cp "$work/k/boot/vmlinuz-$kver" "$work/vmlinuz"
    mv "$work/vmlinuz" "$cache/vmlinuz"
    mv "$work/base.cpio.gz" "$cache/base.cpio.gz"
    echo "$stamp" > "$cache/base.stamp"
    say "guest base ready: kernel $kver, modules: $(tr '\n' ' ' < "$root/lib/modules/order")"
    rm -rf "$work"
    WORK_DIR=""
}

build_tools() {
    local target_dir="$cache/tools-target" root="$cache/tools-root" tmp
    say "building static guest tools"
    need_tools
    # A target dir of its own: no lock contention with a running cargo test,
    # and the static RUSTFLAGS do not invalidate the host build.
    (cd "$repo" && CARGO_TARGET_DIR="$target_dir" RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --release --target x86_64-unknown-linux-gnu -p scoutvm-tests \
        $(printf -- '--bin %s ' "${tools[@]}")) >&2 || die "building guest tools failed"
    rm -rf "$root"
    mkdir -p "$root/bin"
    for t in "${tools[@]}"; do
        cp "$target_dir/x86_64-unknown-linux-gnu/release/$t" "$root/bin/$t"
    done
    # The init and the guest scripts ride the overlay: a later cpio entry
    # replaces an earlier one, so changing them needs no base rebuild.
    cp "$here/guest/init" "$root/init"
    chmod 755 "$root/init"
    for g in "$repo"/tests/guest/*.sh; do
        [ -f "$g" ] || continue
        cp "$g" "$root/bin/$(basename "$g")"
        chmod 755 "$root/bin/$(basename "$g")"
    done
    tmp="$(mktemp "$cache/tools.cpio.gz.XXXXXX")"
    (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) > "$tmp"
    mv "$tmp" "$cache/tools.cpio.gz"
    tmp="$(mktemp "$cache/initrd.gz.XXXXXX")"
    cat "$cache/base.cpio.gz" "$cache/tools.cpio.gz" > "$tmp"
    mv "$tmp" "$cache/initrd.gz"
}

build() {
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not installed"
    # Several guests may start at once (tests run in parallel): one builds
    # at a time, and archives are published by rename, so a guest booting
    # meanwhile reads a whole initrd.
    mkdir -p "$cache"
    exec 9>"$cache/build.lock"
    flock 9
    build_base
    if [ -z "${SCOUTVM_GUEST_SKIP_TOOLS:-}" ] || [ ! -f "$cache/initrd.gz" ]; then
        build_tools
    fi
    flock -u 9
    exec 9>&-
}

# ---------------------------------------------------------------------------
# Run.

run() {
    local server="10.0.2.2:5640" net="user" ip="10.0.2.15/24" gw="" gw_set=""
    local mac="52:54:00:12:34:56" msize=524288 mopts="" mem=1024 timeout=900
    local log="" mount=1 extra_mounts="" vfs_socket=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --server) server="$2"; shift 2 ;;
            --net) net="$2"; shift 2 ;;
            --ip) ip="$2"; shift 2 ;;
            --gw) gw="$2"; gw_set=1; shift 2 ;;
            --mac) mac="$2"; shift 2 ;;
            --msize) msize="$2"; shift 2 ;;
            --mount-opts) mopts="$2"; shift 2 ;;
            --no-mount) mount=0; shift ;;
            --virtiofs) vfs_socket="$2"; shift 2 ;;
            --mount)
                local spec="$2" mdir maddr
                mdir="${spec%%=*}"; maddr="${spec#*=}"
                [[ "$mdir" == /* && "$spec" == *=*:* ]] || die "--mount wants DIR=ADDR:PORT, got $spec"
                extra_mounts+="${extra_mounts:+,}$mdir@${maddr%:*}@${maddr##*:}"
                shift 2 ;;
            --mem) mem="$2"; shift 2 ;;
            --timeout) timeout="$2"; shift 2 ;;
            --log) log="$2"; shift 2 ;;
            --) shift; break ;;
            -*) die "unknown option $1" ;;
            *) break ;;
        esac
    done
    [ $# -gt 0 ] || die "run: no command given"
    local netdev
    case "$net" in
        user) netdev="user,id=n0"; [ -n "$gw_set" ] || gw="10.0.2.2" ;;
        socket-connect=*) netdev="socket,id=n0,connect=${net#socket-connect=}" ;;
        socket-listen=*) netdev="socket,id=n0,listen=${net#socket-listen=}" ;;
        mcast=*) netdev="socket,id=n0,mcast=${net#mcast=},localaddr=127.0.0.1" ;;
        dgram=*)
            local ports="${net#dgram=}"
            netdev="dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=${ports%%:*},remote.type=inet,remote.host=127.0.0.1,remote.port=${ports##*:}" ;;
        *) die "unknown --net $net" ;;
    esac
    local cmd_b64 append
    cmd_b64="$(printf '%s' "$*" | base64 -w0)"
    append="console=ttyS0 loglevel=4 panic=-1 guest_ip=$ip guest_gw=${gw:-none}"
    local vfs_args=()
    if [ -n "$vfs_socket" ]; then
        [ -S "$vfs_socket" ] || die "--virtiofs $vfs_socket: not a socket (start the backend first)"
        # vhost-user needs the guest RAM shared with the backend
        vfs_args=(-object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -numa node,memdev=mem
            -chardev "socket,id=vfs,path=$vfs_socket" -device vhost-user-fs-pci,chardev=vfs,tag=scoutvm)
        [ "$mount" = 1 ] && append+=" vfs_tag=scoutvm"
    elif [ "$mount" = 1 ]; then
        append+=" p9_addr=${server%:*} p9_port=${server##*:}"
    fi
    if { [ "$mount" = 1 ] && [ -z "$vfs_socket" ]; } || [ -n "$extra_mounts" ]; then
        append+=" p9_msize=$msize p9_opts=${mopts:-none}"
    fi
    [ -z "$extra_mounts" ] || append+=" p9_mounts=$extra_mounts"
    append+=" guest_cmd=$cmd_b64"
    [ ${#append} -lt 2000 ] || die "command too long for the kernel command line"

    local out
    out="$(mktemp "${TMPDIR:-/tmp}/linux-guest.XXXXXX")"
    CONSOLE_OUT="$out"
    # QEMU runs in the background so that its pid is known and it is stopped
    # by that pid, whatever happens to this script.
    qemu-system-x86_64 -accel tcg -M q35 -m "$mem" -smp 1 -display none -no-reboot \
        -kernel "$cache/vmlinuz" -initrd "$cache/initrd.gz" -append "$append" \
        -netdev "$netdev" -device "virtio-net-pci,netdev=n0,mac=$mac" "${vfs_args[@]}" \
        -serial stdio -monitor none </dev/null >"$out" 2>&1 &
    local qpid=$!
    QEMU_PID="$qpid"
    local tailpid=""
    if [ -n "$log" ]; then
        tail -n +1 -f "$out" --pid="$qpid" >"$log" 2>/dev/null &
        tailpid=$!
    fi
    tail -n +1 -f "$out" --pid="$qpid" &
    local echopid=$!
    local waited=0 timed_out=0
    while kill -0 "$qpid" 2>/dev/null; do
        if [ "$waited" -ge "$timeout" ]; then
            timed_out=1
            kill "$qpid" 2>/dev/null || true
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    wait "$qpid" 2>/dev/null || true
    QEMU_PID=""
    wait "$echopid" 2>/dev/null || true
    [ -n "$tailpid" ] && { wait "$tailpid" 2>/dev/null || true; }
    if [ "$timed_out" = 1 ]; then
        say "guest timed out after ${timeout}s"
        return 124
    fi
    local marker rc
    marker="$(grep -a 'SCOUTVM-GUEST-RESULT' "$out" | tail -1 | tr -d '\r')"
    if [ -z "$marker" ]; then
        say "guest stopped without a result marker"
        return 125
    fi
    rc="$(echo "$marker" | sed -n 's/.*rc=\([0-9]*\).*/\1/p')"
    return "${rc:-125}"
}

case "${1:-}" in
    build) build ;;
    run) shift; build; rc=0; run "$@" || rc=$?; exit "$rc" ;;
    paths) echo "kernel=$cache/vmlinuz initrd=$cache/initrd.gz" ;;
    *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2 ;;
esac
