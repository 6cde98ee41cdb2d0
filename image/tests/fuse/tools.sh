#!/usr/bin/env bash
# Drives a scoutvm FUSE mount with ordinary tools (coreutils, setpriv,
# python3 for xattrs and renameat2). Run by image/tests/fuse.rs:
#   tools.sh populate MNT STATE   make files, record what verify expects
#   tools.sh verify MNT STATE     check it all (same mount or after remount)
# STATE is a host directory outside the mount. Exits non-zero on the first
# mismatch, saying what failed.
set -euo pipefail
phase=$1
mnt=$2
state=$3
cd "$mnt"

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
nobody() {
    setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"
}
# The command must fail with a permission error.
denied() {
    if "$@" 2>"$state/err"; then
        fail "allowed for nobody: $*"
    fi
    grep -Eq "Permission denied|Operation not permitted" "$state/err" ||
        fail "wrong error for $*: $(cat "$state/err")"
}
badname=$(printf 'bad\377name')

populate() {
    mkdir -p dir/sub/deeper
    head -c 3145728 /dev/urandom >"$state/random.bin"
    cp "$state/random.bin" dir/random.bin
    dd if=/dev/urandom of=dir/dd.bin bs=64k count=50 status=none
    # sparse, with bytes past 4 GiB
    printf 'tail-bytes' | dd of=dir/sparse.bin bs=1 seek=$((5 << 30)) conv=notrunc status=none
    echo "first line" >notes.txt
    echo "second line" >>notes.txt
    mv notes.txt dir/sub/notes.txt           # across directories
    cp dir/random.bin dir/victim
    mv dir/dd.bin dir/victim                 # over an existing file
    ln dir/sub/notes.txt hardlink.txt
    ln -s dir/sub/notes.txt symlink.txt
    touch dir/gone && rm dir/gone
    mkdir dir/emptydir && rmdir dir/emptydir
    mv dir/sub/deeper dir/moved-dir          # a directory across directories
    truncate -s 10000 dir/grown.bin
    head -c 9000 /dev/urandom >dir/shrunk.bin
    truncate -s 4097 dir/shrunk.bin
    chmod 0640 dir/sub/notes.txt
    touch -m -d '2001-02-03 04:05:06.789 UTC' hardlink.txt
    mkdir private && chmod 0700 private && echo secret >private/secret
    mkdir shared && chown 65534:65534 shared
    nobody sh -c 'echo by-nobody >shared/mine'
    touch "$badname"
    mkfifo dir/sub/fifo
    mknod dir/sub/chr c 1 3
    # unlink while open: the data stays readable through the descriptor
    cp "$state/random.bin" open-unlinked
    exec 3<open-unlinked
    rm open-unlinked
    [ ! -e open-unlinked ] || fail "unlinked file still visible"
    cmp <(cat <&3) "$state/random.bin" || fail "unlinked-open file changed"
    exec 3<&-
    # written after unlink, read back through the same descriptor
    exec 4<>scratch
    rm scratch
    echo "written after unlink" >&4
    [ "$(cat /proc/$$/fd/4)" = "written after unlink" ] || fail "write after unlink lost"
    exec 4<&-
    python3 - <<'PY'
import ctypes, errno, os
os.setxattr("dir/random.bin", "user.small", b"v")
os.setxattr("dir/random.bin", "user.big", b"x" * 3000)   # past the 128-byte first try: ERANGE path
os.setxattr("dir", "user.on-dir", b"d")
os.setxattr("dir/victim", "user.gone", b"g")
os.removexattr("dir/victim", "user.gone")
try:
    os.setxattr("dir/random.bin", "user.small", b"w", os.XATTR_CREATE)
    raise SystemExit("XATTR_CREATE over an existing xattr worked")
except OSError as e:
    assert e.errno == errno.EEXIST, e
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, NOREPLACE, EXCHANGE = -100, 1, 2
def renameat2(a, b, flags):
    if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags) != 0:
        return ctypes.get_errno()
    return 0
open("swap-a", "w").write("A")
open("swap-b", "w").write("B")
assert renameat2("swap-a", "swap-b", NOREPLACE) == errno.EEXIST
assert renameat2("swap-a", "swap-b", EXCHANGE) == 0
assert open("swap-a").read() == "B" and open("swap-b").read() == "A"
assert renameat2("swap-a", "swap-c", NOREPLACE) == 0
PY
    # odd requests get errors, not a dead mount
    ! cat /proc/self/nonexistent-dir/x 2>/dev/null
    dd if=dir/random.bin of=/dev/null bs=1 skip=$(((1 << 62) - 1)) count=1 status=none
    if truncate -s 9223372036854775807 huge 2>/dev/null; then rm huge; fi
    ! ln -s "" emptylink 2>/dev/null
    sync dir/random.bin   # fsync: commits everything (sync(1) and syncfs do not reach FUSE filesystems here)
    (cd "$mnt" && sha256sum dir/random.bin dir/victim dir/sub/notes.txt hardlink.txt \
        dir/grown.bin dir/shrunk.bin shared/mine private/secret swap-b swap-c) >"$state/sums"
    ls -l >/dev/null
}

verify() {
    sha256sum --quiet -c "$state/sums" || fail "checksums differ"
    cmp dir/random.bin "$state/random.bin" || fail "random.bin differs"
    [ "$(stat -c %s dir/sparse.bin)" = $(((5 << 30) + 10)) ] || fail "sparse size"
    [ "$(tail -c 10 dir/sparse.bin)" = tail-bytes ] || fail "sparse tail"
    cmp <(head -c 65536 dir/sparse.bin) <(head -c 65536 /dev/zero) || fail "sparse hole not zero"
    [ "$(stat -c %s dir/grown.bin)" = 10000 ] || fail "grown size"
    cmp dir/grown.bin <(head -c 10000 /dev/zero) || fail "grown not zero"
    [ "$(stat -c %s dir/shrunk.bin)" = 4097 ] || fail "shrunk size"
    [ "$(stat -c %h dir/sub/notes.txt)" = 2 ] || fail "hard link count"
    [ "$(stat -c %i dir/sub/notes.txt)" = "$(stat -c %i hardlink.txt)" ] || fail "hard link inode"
    [ "$(readlink symlink.txt)" = dir/sub/notes.txt ] || fail "symlink target"
    [ "$(cat symlink.txt)" = "$(printf 'first line\nsecond line')" ] || fail "through symlink"
    [ "$(stat -c %a dir/sub/notes.txt)" = 640 ] || fail "chmod"
    [ "$(TZ=UTC stat -c %y dir/sub/notes.txt)" = "2001-02-03 04:05:06.789000000 +0000" ] ||
        fail "utimens: $(TZ=UTC stat -c %y dir/sub/notes.txt)"
    [ "$(stat -c '%U %G' shared)" = "nobody nogroup" ] || fail "chown: $(stat -c '%U %G' shared)"
    [ "$(stat -c %U shared/mine)" = nobody ] || fail "owner of a file nobody made"
    [ -d dir/moved-dir ] && [ ! -e dir/sub/deeper ] || fail "directory rename"
    for gone in dir/gone dir/emptydir dir/dd.bin open-unlinked scratch notes.txt swap-a; do
        [ ! -e "$gone" ] || fail "$gone still exists"
    done
    [ -e "$badname" ] || fail "name with a non-UTF-8 byte"
    [ -p dir/sub/fifo ] || fail "fifo"
    [ -c dir/sub/chr ] && [ "$(stat -c %t,%T dir/sub/chr)" = 1,3 ] || fail "device node"
    [ "$(ls dir | tr '\n' ' ')" = "grown.bin moved-dir random.bin shrunk.bin sparse.bin sub victim " ] ||
        fail "ls dir: $(ls dir | tr '\n' ' ')"
    ls -l dir/sub/notes.txt | grep -q '^-rw-r----- 2 root root 23 ' || fail "ls -l: $(ls -l dir/sub/notes.txt)"
    denied nobody cat private/secret
    denied nobody ls private
    denied nobody touch new-in-root
    denied nobody rm dir/random.bin
    denied nobody chmod 777 dir/random.bin
    nobody cat dir/random.bin >/dev/null
    python3 - <<'PY'
import os
assert os.getxattr("dir/random.bin", "user.small") == b"v"
assert os.getxattr("dir/random.bin", "user.big") == b"x" * 3000
assert sorted(os.listxattr("dir/random.bin")) == ["user.big", "user.small"]
assert os.listxattr("dir/victim") == []
assert os.getxattr("dir", "user.on-dir") == b"d"
try:
    os.getxattr("dir/victim", "user.gone")
    raise SystemExit("removed xattr still there")
except OSError as e:
    assert e.errno == 61, e  # ENODATA
PY
    df -P . | tail -1 | grep -q . || fail "df"
}

case "$phase" in
populate) populate ;;
verify) verify ;;
*) fail "unknown phase $phase" ;;
esac
echo "$phase: ok"
