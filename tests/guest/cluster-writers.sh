#!/bin/sh
# Many writers on one ScoutVM cluster (issue 12): two 9P mounts served by
# two different nodes, each node writing its own log tree. Ports of the
# scoutfs reference tests createmany-parallel-mounts, cross-mount-data-free
# and the open-unlink part of inode-deletion / orphan-inodes (see
# ../shared/reference/scoutfs-cluster.md §6.3). Runs in the Linux guest
# (qemu/linux-guest.sh puts it in the guest's /bin), busybox sh.
#
#   cluster-writers.sh MNT_A MNT_B [CHECK...]
#
# CHECKs: createmany-parallel-mounts cross-mount-data-free unlink-while-open
# (default: all). The data-space checks size their files from DATA_KIB, the
# data device's size (statfs counts the metadata device too), so run them
# on a small data device (the QEMU test gives 96 MiB).
#
# Environment: DATA_KIB (required by the space checks), CREATES (files per
# mount, default 1000; the reference makes 10000), FREE_ROUNDS
# (cross-mount-data-free rounds, default 3).
#
# Prints `CLUSTER-WRITERS PASS CHECK` or `CLUSTER-WRITERS FAIL CHECK: why`
# lines, figures as `CLUSTER-WRITERS FIGURE ...`, and last
# `CLUSTER-WRITERS DONE failed=N`; exits 1 if any check failed.

A="${1:?usage: cluster-writers.sh MNT_A MNT_B [CHECK...]}"
B="${2:?usage: cluster-writers.sh MNT_A MNT_B [CHECK...]}"
shift 2
CHECKS="${*:-createmany-parallel-mounts cross-mount-data-free unlink-while-open}"
CREATES="${CREATES:-1000}"
FREE_ROUNDS="${FREE_ROUNDS:-3}"
RUN="cwriters-$(date +%s)-$$"
TMP="/tmp/$RUN"
mkdir -p "$TMP"
failed=0

begin() { cur="$1"; bad=0; echo "CLUSTER-WRITERS BEGIN $cur"; }
no() { echo "CLUSTER-WRITERS FAIL $cur: $*" | tr '\n' '|'; echo; bad=1; }
end() {
    if [ "$bad" = 0 ]; then
        echo "CLUSTER-WRITERS PASS $cur"
    else
        failed=$((failed + 1))
    fi
}
is() { [ "$2" = "$3" ] || no "$1: got '$2', want '$3'"; }
ok() {
    what="$1"; shift
    out="$("$@" 2>&1)" || no "$what: '$*' failed: $out"
}
# Hundredths of a second since boot (busybox date has no %N).
now_cs() { tr -d . </proc/uptime | cut -d' ' -f1; }
# What the volume's statfs says is free (metadata and data devices).
free_kib() { df -k "$1" | awk 'NR == 2 { print $4 }'; }
# fill DIR PREFIX KIB: files of at most 4 MiB, written in 64 KiB pieces
# (cache=none: each piece is one 9P write), until KIB (rounded up to
# 64 KiB) are written; prints nothing and fails at the first short write.
fill() {
    left=$((($3 + 63) / 64)); n=0
    while [ "$left" -gt 0 ]; do
        k=64
        [ "$left" -lt "$k" ] && k="$left"
        dd if=/dev/zero of="$1/$2$n" bs=65536 count="$k" conv=fsync 2>"$TMP/dd.err" ||
            { echo "file $n: $(tr '\n' ' ' <"$TMP/dd.err")"; return 1; }
        left=$((left - k)); n=$((n + 1))
    done
}
# create DIR N: N empty files, no process per file, from inside DIR as
# the reference's createmany runs (a full path would walk the parent
# directories on every create under cache=none, and their inode group's
# lock would go back and forth between the nodes).
create() {
    (
        cd "$1" || exit 1
        i=0
        while [ "$i" -lt "$2" ]; do
            : >"f$i" || exit 1
            i=$((i + 1))
        done
    )
}

# createmany-parallel-mounts: N creates through one mount alone, then N
# through each mount at the same time in separate directories. The
# reference only asks that the parallel run is not 200x slower; here the
# rates are printed (tests do not assert timings) and every file must be
# seen through the other mount.
createmany() {
    begin createmany-parallel-mounts
    d="$RUN/create"
    ok "mkdir" mkdir -p "$A/$d/solo" "$A/$d/a" "$B/$d/b"
    t0=$(now_cs)
    create "$A/$d/solo" "$CREATES" || no "creates in solo failed"
    t1=$(now_cs)
    (create "$A/$d/a" "$CREATES" || echo fail >"$TMP/create-a") &
    pa=$!
    (create "$B/$d/b" "$CREATES" || echo fail >"$TMP/create-b") &
    pb=$!
    wait "$pa"; wait "$pb"
    t2=$(now_cs)
    [ -e "$TMP/create-a" ] && no "parallel creates through $A failed"
    [ -e "$TMP/create-b" ] && no "parallel creates through $B failed"
    is "files of a through $B" "$(ls "$B/$d/a" | wc -l)" "$CREATES"
    is "files of b through $A" "$(ls "$A/$d/b" | wc -l)" "$CREATES"
    is "files of solo through $B" "$(ls "$B/$d/solo" | wc -l)" "$CREATES"
    solo=$((t1 - t0)); par=$((t2 - t1))
    [ "$solo" -gt 0 ] || solo=1
    [ "$par" -gt 0 ] || par=1
    echo "CLUSTER-WRITERS FIGURE creates one mount: $CREATES in $solo cs = $((CREATES * 100 / solo))/s"
    echo "CLUSTER-WRITERS FIGURE creates two mounts: $((2 * CREATES)) in $par cs = $((2 * CREATES * 100 / par))/s"
    # the removal goes through the other mount, also in parallel
    (rm -rf "$B/$d/a" || echo fail >"$TMP/rm-a") &
    pa=$!
    (rm -rf "$A/$d/b" || echo fail >"$TMP/rm-b") &
    pb=$!
    wait "$pa"; wait "$pb"
    [ -e "$TMP/rm-a" ] && no "removing a through $B failed"
    [ -e "$TMP/rm-b" ] && no "removing b through $A failed"
    ok "rm solo" rm -rf "$A/$d"
    is "left in the run dir" "$(ls "$B/$RUN" | wc -l)" 0
    end
}

# cross-mount-data-free: fill 60 % of the data device through A, free it
# through B, and again: every round must write without ENOSPC, which needs
# the space B freed to be allocatable by A's node.
datafree() {
    begin cross-mount-data-free
    d="$RUN/free"
    ok "mkdir" mkdir -p "$A/$d"
    total="${DATA_KIB:?DATA_KIB: the data device size in KiB}"
    want=$((total * 60 / 100))
    echo "CLUSTER-WRITERS FIGURE data device $total KiB, each round writes $want KiB"
    r=1
    while [ "$r" -le "$FREE_ROUNDS" ]; do
        why="$(fill "$A/$d" "r$r-" "$want")" || { no "round $r: write through $A: $why"; break; }
        ok "round $r: rm through $B" sh -c "rm -f '$B/$d'/r$r-*"
        is "round $r: files left through $A" "$(ls "$A/$d" | wc -l)" 0
        echo "CLUSTER-WRITERS FIGURE round $r: free after rm $(free_kib "$A") KiB"
        r=$((r + 1))
    done
    ok "rmdir" rmdir "$A/$d"
    end
}

# unlink-while-open: a file open through A is unlinked through B. It stays
# readable (every byte) through the open descriptor, is gone by name from
# both mounts, and its space comes back after the close: the device then
# takes more than it could hold with the file still allocated.
unlinkopen() {
    begin unlink-while-open
    d="$RUN/unlink"
    ok "mkdir" mkdir -p "$A/$d"
    total="${DATA_KIB:?DATA_KIB: the data device size in KiB}"
    big=$((total * 45 / 100))
    head -c $((big * 1024)) /dev/urandom >"$TMP/pat" 2>/dev/null ||
        dd if=/dev/urandom of="$TMP/pat" bs=1024 count="$big" 2>/dev/null
    want="$(md5sum <"$TMP/pat")"
    ok "write" dd if="$TMP/pat" of="$A/$d/f" bs=65536 conv=fsync
    is "written through $B" "$(md5sum <"$B/$d/f")" "$want"
    exec 3<"$A/$d/f"
    ok "unlink through $B" rm "$B/$d/f"
    [ -e "$B/$d/f" ] && no "f still has a name through $B"
    # (a stat through A would use the guest's dentry, pinned by the open
    # descriptor: cache=none does not revalidate it; readdir asks the node)
    ls "$A/$d" | grep -qx f && no "f still listed through $A"
    # the node that unlinked must not have deleted it: A still reads it all
    is "read through the open descriptor" "$(md5sum <&3)" "$want"
    # writes through B meanwhile see the file's blocks still allocated
    echo "CLUSTER-WRITERS FIGURE free while open: $(free_kib "$A") KiB"
    exec 3<&-
    # the last close (A's) deleted it: 45 % + 70 % only fits if it did
    why="$(fill "$B/$d" "after-" $((total * 70 / 100)))" ||
        no "writing 70 % through $B after the close: $why"
    echo "CLUSTER-WRITERS FIGURE free after close and refill: $(free_kib "$A") KiB"
    ok "cleanup" rm -rf "$A/$d"
    end
}

for c in $CHECKS; do
    case "$c" in
        createmany-parallel-mounts) createmany ;;
        cross-mount-data-free) datafree ;;
        unlink-while-open) unlinkopen ;;
        *) begin "$c"; no "unknown check"; end ;;
    esac
done
rm -rf "${A:?}/$RUN" "$TMP"
echo "CLUSTER-WRITERS DONE failed=$failed"
[ "$failed" = 0 ]
