//! The `scoutvm` binary on sparse image files: mkfs with the reference
//! flags, print, fsck, and clear errors (never panics) for bad flags,
//! existing volumes, small, swapped, foreign and corrupted devices.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scoutvm"))
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scoutvm-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sparse(p: &Path, size: u64) {
    File::create(p).unwrap().set_len(size).unwrap();
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn assert_code(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "output:\n{}", text(o));
    assert!(!text(o).contains("panicked"), "{}", text(o));
}

#[test]
fn mkfs_print_fsck_small_volume() {
    let d = tmpdir("small");
    let (m, dd) = (d.join("meta.img"), d.join("data.img"));
    sparse(&m, 1 << 30);
    sparse(&dd, 1 << 30);
    let (ms, ds) = (m.to_str().unwrap(), dd.to_str().unwrap());
    // too small without -A
    let o = run(&["mkfs", "-Q", "0,10.0.2.15,7100", ms, ds]);
    assert_code(&o, 1);
    assert!(
        text(&o).contains("1.00GB too small for min 64.00GB meta device"),
        "{}",
        text(&o)
    );
    // with -A, format version 1
    let o = run(&[
        "mkfs",
        "-A",
        "-V",
        "1",
        "-Q",
        "0,10.0.2.15,7100",
        "-Q",
        "1,10.0.2.16,7101",
        ms,
        ds,
    ]);
    assert_code(&o, 0);
    let t = text(&o);
    assert!(
        t.contains("Created scoutfs filesystem:") && t.contains("format version:         1"),
        "{t}"
    );
    assert!(t.contains("quorum slots:           0: 10.0.2.15:7100\n                          1: 10.0.2.16:7101"), "{t}");
    assert!(t.contains("allowing with -A"));
    // an existing volume is refused without -f
    let o = run(&["mkfs", "-A", "-Q", "0,10.0.2.15,7100", ms, ds]);
    assert_code(&o, 1);
    assert!(
        text(&o).contains("already contains a scoutfs volume"),
        "{}",
        text(&o)
    );
    let o = run(&[
        "mkfs",
        "-f",
        "-A",
        "-m",
        "512M",
        "-d",
        "256M",
        "-Q0,10.0.2.15,7100",
        ms,
        ds,
    ]);
    assert_code(&o, 0);
    assert!(
        text(&o).contains("64KB metadata blocks:   8192 (512.00 MB)"),
        "{}",
        text(&o)
    );
    // print
    let o = run(&["print", ms]);
    assert_code(&o, 0);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.starts_with("super blkno 16\n"));
    assert!(t.contains("    quorum slot  0: 10.0.2.15:7100"));
    assert!(t.contains("fs_root btree blkno 2"));
    // fsck
    let o = run(&["fsck", ms, ds]);
    assert_code(&o, 0);
    assert!(text(&o).contains("clean"));
    let o = run(&["fsck", ms]);
    assert_code(&o, 0);
    // swapped devices
    let o = run(&["fsck", ds, ms]);
    assert_code(&o, 1);
    assert!(text(&o).contains("swapped"), "{}", text(&o));
    let o = run(&["print", ds]);
    assert_code(&o, 1);
    assert!(text(&o).contains("data device"), "{}", text(&o));
    // corrupt the fs root leaf (meta block 2): fsck names it
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&m)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 2 * 65536 + 1000).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, 2 * 65536 + 1000).unwrap();
    drop(f);
    let o = run(&["fsck", ms, ds]);
    assert_code(&o, 1);
    assert!(text(&o).contains("meta block 2: fs_root"), "{}", text(&o));
    let o = run(&["print", ms]);
    assert_code(&o, 0);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("(!= "),
        "print shows the crc mismatch"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn mkfs_64g_sparse_without_allow_small() {
    let d = tmpdir("64g");
    let (m, dd) = (d.join("meta.img"), d.join("data.img"));
    sparse(&m, 64 << 30);
    sparse(&dd, 64 << 30);
    let (ms, ds) = (m.to_str().unwrap(), dd.to_str().unwrap());
    let o = run(&[
        "mkfs",
        "-Q",
        "0,10.0.3.1,7100",
        "-Q",
        "1,10.0.3.2,7100",
        "-Q",
        "2,10.0.3.3,7100",
        ms,
        ds,
    ]);
    assert_code(&o, 0);
    assert!(text(&o).contains("64KB metadata blocks:   1048576 (64.00 GB)"));
    let o = run(&["fsck", ms, ds]);
    assert_code(&o, 0);
    // the files stay sparse
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&m).unwrap().blocks() * 512 < 8 << 20);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_invocations_are_usage_errors() {
    let d = tmpdir("bad");
    let (m, dd) = (d.join("meta.img"), d.join("data.img"));
    sparse(&m, 1 << 30);
    sparse(&dd, 1 << 30);
    let (ms, ds) = (m.to_str().unwrap(), dd.to_str().unwrap());
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["mkfs", ms, ds],
        vec!["mkfs", "-A", "-Q", "0,10.0.2.15,7100", ms],
        vec!["mkfs", "-A", "-V", "3", "-Q", "0,10.0.2.15,7100", ms, ds],
        vec!["mkfs", "-A", "-Q", "0,10.0.2.15", ms, ds],
        vec!["mkfs", "-A", "-Q", "99,10.0.2.15,7100", ms, ds],
        vec![
            "mkfs",
            "-A",
            "-Q",
            "0,10.0.2.15,7100",
            "-Q",
            "0,10.0.2.16,7100",
            ms,
            ds,
        ],
        vec!["mkfs", "-A", "-Q", "0,10.0.2.15,99999", ms, ds],
        vec!["mkfs", "-A", "-m", "12Q", "-Q", "0,10.0.2.15,7100", ms, ds],
        vec!["mkfs", "-A", "-x", "-Q", "0,10.0.2.15,7100", ms, ds],
        vec!["mkfs", "-A", "-Q"],
        vec!["print"],
        vec!["fsck"],
        vec!["fsck", ms, ds, ds],
    ] {
        let o = run(&args);
        assert_code(&o, 64);
        assert!(text(&o).contains("scoutvm"), "{args:?}: {}", text(&o));
    }
    // operations on things that are not volumes fail with a message
    let o = run(&["fsck", ms, ds]);
    assert_code(&o, 1);
    assert!(text(&o).contains("not a scoutfs volume"), "{}", text(&o));
    let o = run(&["print", ms]);
    assert_code(&o, 1);
    let o = run(&["fsck", d.join("missing.img").to_str().unwrap()]);
    assert_code(&o, 1);
    assert!(text(&o).contains("failed to open"));
    let o = run(&["mkfs", "-A", "-Q", "0,10.0.2.15,7100", ms, ms]);
    assert_code(&o, 1);
    assert!(text(&o).contains("must be different"));
    // a device too small for the layout even with -A
    let tiny = d.join("tiny.img");
    sparse(&tiny, 8 << 20);
    let o = run(&[
        "mkfs",
        "-A",
        "-Q",
        "0,10.0.2.15,7100",
        tiny.to_str().unwrap(),
        ds,
    ]);
    assert_code(&o, 1);
    assert!(text(&o).contains("need at least"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn print_of_golden_volume_matches_reference() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let shared = repo.parent().unwrap().join("shared/golden");
    let tarball = shared.join("scoutfs-mkfs-images.tar.xz");
    assert!(
        tarball.exists(),
        "golden volumes missing: {}",
        tarball.display()
    );
    let d = tmpdir("golden");
    let st = Command::new("tar")
        .arg("-xSf")
        .arg(&tarball)
        .arg("-C")
        .arg(&d)
        .status()
        .unwrap();
    assert!(st.success());
    let o = run(&["print", d.join("meta-v2.img").to_str().unwrap()]);
    assert_code(&o, 0);
    let want = std::fs::read_to_string(shared.join("print-meta-v2.txt")).unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), want);
    let o = run(&[
        "fsck",
        d.join("meta-64g.img").to_str().unwrap(),
        d.join("data-64g.img").to_str().unwrap(),
    ]);
    assert_code(&o, 0);
    let _ = std::fs::remove_dir_all(&d);
}

/// A fresh 1 GiB volume (format version `vers`) in `d`.
fn small_volume(d: &Path, vers: &str) -> (String, String) {
    let (m, dd) = (d.join("meta.img"), d.join("data.img"));
    sparse(&m, 1 << 30);
    sparse(&dd, 1 << 30);
    let (ms, ds) = (m.to_str().unwrap(), dd.to_str().unwrap());
    let o = run(&["mkfs", "-fAV", vers, "-Q", "0,10.0.2.15,7100", ms, ds]);
    assert_code(&o, 0);
    (ms.to_string(), ds.to_string())
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn read_super(p: &str) -> scoutvm_fs::format::super_block::SuperBlock {
    let dev = scoutvm_image::filedev::FileDev::open(Path::new(p), false).unwrap();
    scoutvm_fs::storage::block::read_super_from(&dev).unwrap()
}

/// Rewrite the super of `p` (sealed: a structurally valid super that says
/// something else).
fn edit_super(p: &str, f: impl FnOnce(&mut scoutvm_fs::format::super_block::SuperBlock)) {
    let dev = scoutvm_image::filedev::FileDev::open(Path::new(p), true).unwrap();
    let mut sb = scoutvm_fs::storage::block::read_super_from(&dev).unwrap();
    f(&mut sb);
    scoutvm_fs::storage::block::write_super_to(&dev, &sb).unwrap();
}

/// A mount that began in quorum slot 0 and never ended: the begin event's
/// write_nr is past the end event's.
fn begin_without_end(meta: &str) {
    let f = std::fs::OpenOptions::new().write(true).open(meta).unwrap();
    f.write_all_at(&7u64.to_le_bytes(), 17 * 4096 + 40).unwrap();
}

#[test]
fn reference_argument_habits() {
    let d = tmpdir("habits");
    let (m, dd) = (d.join("meta.img"), d.join("data.img"));
    sparse(&m, 1 << 30);
    sparse(&dd, 1 << 30);
    let (ms, ds) = (m.to_str().unwrap(), dd.to_str().unwrap());
    // --long=VALUE, --long VALUE, bundled short flags with a value
    let o = run(&[
        "mkfs",
        "--quorum-slot=0,10.0.2.15,7100",
        "--max-meta-size",
        "512M",
        "--max-data-size=256M",
        "-fAV1",
        ms,
        ds,
    ]);
    assert_code(&o, 0);
    let t = text(&o);
    assert!(
        t.contains("64KB metadata blocks:   8192 (512.00 MB)"),
        "{t}"
    );
    assert!(
        t.contains("4KB data blocks:        65536 (256.00 MB)"),
        "{t}"
    );
    assert!(t.contains("format version:         1"), "{t}");
    // print -S leaves out the allocator trees and fs_root
    let full = stdout(&run(&["print", ms]));
    let o = run(&["print", "-S", ms]);
    assert_code(&o, 0);
    let skipped = stdout(&o);
    for s in ["meta_alloc[0] btree", "data_alloc btree", "fs_root btree"] {
        assert!(full.contains(s), "{s}");
        assert!(!skipped.contains(s), "-S printed {s}");
    }
    assert!(skipped.starts_with("super blkno 16\n") && skipped.contains("quorum blkno 31"));
    assert_eq!(stdout(&run(&["print", "--skip-likely-huge", ms])), skipped);
    // a unique prefix of a long option names it, as with argp
    assert_eq!(stdout(&run(&["print", "--skip", ms])), skipped);
    // --help on every subcommand, on stdout, exit 0
    for sub in [
        "mkfs",
        "print",
        "fsck",
        "mount",
        "change-quorum-config",
        "change-format-version",
        "prepare-empty-data-device",
    ] {
        for h in ["--help", "-h"] {
            let o = run(&[sub, h]);
            assert_code(&o, 0);
            assert!(
                stdout(&o).contains(&format!("Usage: scoutvm {sub}")),
                "{sub} {h}: {}",
                text(&o)
            );
        }
        let o = run(&["help", sub]);
        assert_code(&o, 0);
    }
    assert!(stdout(&run(&["print", "--help"])).contains("-S, --skip-likely-huge"));
    // usage errors exit 64, as the reference's EX_USAGE
    for args in [
        vec![
            "mkfs",
            "--format-version=3",
            "-Q",
            "0,10.0.2.15,7100",
            ms,
            ds,
        ],
        vec!["mkfs", "-Q", "0,10.0.2.15,7100", "--bogus", ms, ds],
        vec!["print", "-S"],
        vec!["print", "-x", ms],
        vec!["fsck", "--skip-likely-huge", ms],
        vec!["frobnicate"],
    ] {
        let o = run(&args);
        assert_code(&o, 64);
        assert!(
            text(&o).contains("Usage: scoutvm") || text(&o).contains("scoutvm:"),
            "{args:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn change_quorum_config_offline() {
    let d = tmpdir("quorum");
    let (ms, ds) = small_volume(&d, "2");
    // usage: --offline and at least one valid slot
    for args in [
        vec!["change-quorum-config", "-Q", "0,10.0.3.1,7100", &ms],
        vec!["change-quorum-config", "--offline", &ms],
        vec!["change-quorum-config", "-F", "-Q", "0,10.0.3.1", &ms],
        vec![
            "change-quorum-config",
            "-F",
            "-Q",
            "0,10.0.3.1,7100",
            "-Q",
            "0,10.0.3.2,7100",
            &ms,
        ],
        vec!["change-quorum-config", "-F", "-Q", "0,10.0.3.1,7100"],
    ] {
        assert_code(&run(&args), 64);
    }
    // success: the slots are replaced and the version bumped
    let o = run(&[
        "change-quorum-config",
        "-F",
        "--quorum-slot=0,10.0.3.1,7100",
        "-Q",
        "2,10.0.3.3,7101",
        &ms,
    ]);
    assert_code(&o, 0);
    let t = stdout(&o);
    assert!(
        t.starts_with("Successfully changed quorum config for scoutfs filesystem:\n"),
        "{t}"
    );
    assert!(
        t.contains(&format!("  meta device path:       {ms}\n")),
        "{t}"
    );
    assert!(t.contains("  quorum config version:  2\n"), "{t}");
    assert!(
        t.contains("  quorum slots:           0: 10.0.3.1:7100\n                          2: 10.0.3.3:7101\n"),
        "{t}"
    );
    let p = stdout(&run(&["print", "-S", &ms]));
    assert!(p.contains("  quorum config version 2\n    quorum slot  0: 10.0.3.1:7100\n    quorum slot  2: 10.0.3.3:7101\n  hdr:") || p.contains("  quorum config version 2\n    quorum slot  0: 10.0.3.1:7100\n    quorum slot  2: 10.0.3.3:7101\nquorum blkno 17"), "{p}");
    assert!(!p.contains("10.0.2.15"), "{p}");
    assert_code(&run(&["fsck", &ms, &ds]), 0);
    scoutvm_image::volume::open_for_mount(&ms, &ds, false).unwrap();
    // refused while another process holds the device
    let held = scoutvm_image::filedev::FileDev::open(Path::new(&ms), true).unwrap();
    held.lock_exclusive().unwrap();
    let o = run(&["change-quorum-config", "-F", "-Q", "1,10.0.4.1,7100", &ms]);
    assert_code(&o, 1);
    assert!(text(&o).contains("is in use"), "{}", text(&o));
    drop(held);
    // refused while a mount may be running in a configured slot
    begin_without_end(&ms);
    let o = run(&["change-quorum-config", "-F", "-Q", "1,10.0.4.1,7100", &ms]);
    assert_code(&o, 1);
    assert!(
        text(&o).contains("mount in quorum slot 0 could still be running"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("cleanly unmounted to change the quorum config"));
    // refused while the super lists mounted clients
    let (ms2, _) = small_volume(&tmpdir("quorum2"), "2");
    edit_super(&ms2, |sb| {
        sb.mounted_clients.bref.blkno = 9;
        sb.mounted_clients.height = 1;
    });
    let o = run(&["change-quorum-config", "-F", "-Q", "1,10.0.4.1,7100", &ms2]);
    assert_code(&o, 1);
    assert!(
        text(&o).contains("mounted clients btree is not empty"),
        "{}",
        text(&o)
    );
    // nothing was written by the refusals
    assert_eq!(read_super(&ms).qconf.version, 2);
    assert_eq!(read_super(&ms2).qconf.version, 1);
    // the data device and a non-volume are refused
    let o = run(&["change-quorum-config", "-F", "-Q", "1,10.0.4.1,7100", &ds]);
    assert_code(&o, 1);
    assert!(text(&o).contains("not a meta device"), "{}", text(&o));
    let junk = d.join("junk.img");
    sparse(&junk, 1 << 20);
    let o = run(&[
        "change-quorum-config",
        "-F",
        "-Q",
        "1,10.0.4.1,7100",
        junk.to_str().unwrap(),
    ]);
    assert_code(&o, 1);
    assert!(
        text(&o).contains("failed to read meta super block"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn change_format_version_offline() {
    let d = tmpdir("fmtvers");
    let (ms, ds) = small_volume(&d, "1");
    for args in [
        vec!["change-format-version", &ms, &ds],
        vec!["change-format-version", "-F", &ms],
        vec!["change-format-version", "-F", "-V", "3", &ms, &ds],
        vec![
            "change-format-version",
            "-F",
            "--format-version=0",
            &ms,
            &ds,
        ],
    ] {
        assert_code(&run(&args), 64);
    }
    // swapped devices
    let o = run(&["change-format-version", "-F", &ds, &ms]);
    assert_code(&o, 1);
    assert!(
        text(&o).contains("device argument #1 is not a meta device"),
        "{}",
        text(&o)
    );
    // a data device of another volume
    let (ms2, ds2) = small_volume(&tmpdir("fmtvers2"), "1");
    let o = run(&["change-format-version", "-F", &ms, &ds2]);
    assert_code(&o, 1);
    assert!(text(&o).contains("another volume"), "{}", text(&o));
    // in use
    edit_super(&ms2, |sb| {
        sb.mounted_clients.bref.blkno = 9;
        sb.mounted_clients.height = 1;
    });
    let o = run(&["change-format-version", "-F", &ms2, &ds2]);
    assert_code(&o, 1);
    assert!(
        text(&o).contains("cleanly unmounted to change the format version"),
        "{}",
        text(&o)
    );
    assert_eq!(read_super(&ms2).fmt_vers, 1);
    // upgrade to the default (newest) version: both supers
    let o = run(&["change-format-version", "--offline", &ms, &ds]);
    assert_code(&o, 0);
    let t = stdout(&o);
    assert!(
        t.starts_with("Successfully updated format version for scoutfs filesystem:\n"),
        "{t}"
    );
    assert!(
        t.contains(&format!("  data device path:     {ds}\n")),
        "{t}"
    );
    assert!(t.ends_with("  format version:       2\n"), "{t}");
    assert_eq!(read_super(&ms).fmt_vers, 2);
    assert_eq!(read_super(&ds).fmt_vers, 2);
    assert!(stdout(&run(&["print", "-S", &ms])).contains("  fmt_vers 2 uuid "));
    assert_code(&run(&["fsck", &ms, &ds]), 0);
    scoutvm_image::volume::open_for_mount(&ms, &ds, false).unwrap();
    // again: nothing to do; a downgrade is refused
    let o = run(&["change-format-version", "-F", "-V", "2", &ms, &ds]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("already 2, nothing to do"),
        "{}",
        text(&o)
    );
    let o = run(&["change-format-version", "-FV1", &ms, &ds]);
    assert_code(&o, 1);
    assert!(text(&o).contains("Downgrade of Meta Format Version: 2 and Data Format Version: 2 to Format Version: 1 is not allowed"), "{}", text(&o));
    assert_eq!(read_super(&ms).fmt_vers, 2);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn prepare_empty_data_device_offline() {
    let d = tmpdir("prepare");
    let (ms, ds) = small_volume(&d, "2");
    let o = run(&["prepare-empty-data-device", "--check", &ms]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "All checks passed.\n");
    assert_code(&run(&["prepare-empty-data-device", &ms]), 64);
    // too small a new device
    let small = d.join("small.img");
    sparse(&small, 512 << 20);
    let o = run(&[
        "prepare-empty-data-device",
        "-c",
        &ms,
        small.to_str().unwrap(),
    ]);
    assert_code(&o, 1);
    assert!(
        text(&o).contains("it needs at least 262144 (1.00 GB) blocks"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("Errors were found"), "{}", text(&o));
    // a new empty device of the right size: written, and the pair checks clean
    let fresh = d.join("fresh.img");
    sparse(&fresh, 1 << 30);
    let fs_ = fresh.to_str().unwrap();
    let o = run(&["prepare-empty-data-device", "-c", &ms, fs_]);
    assert_code(&o, 0);
    assert!(read_super_err(fs_), "--check wrote the device");
    let o = run(&["prepare-empty-data-device", &ms, fs_]);
    assert_code(&o, 0);
    let t = stdout(&o);
    assert!(
        t.starts_with("Successfully initialized empty data device for scoutfs filesystem:\n"),
        "{t}"
    );
    assert!(
        t.contains(&format!("  data device path:       {fs_}\n")),
        "{t}"
    );
    assert!(
        t.contains("  4KB data blocks:        262144 (1.00 GB)\n"),
        "{t}"
    );
    let (msb, dsb) = (read_super(&ms), read_super(fs_));
    assert_eq!(
        (dsb.hdr.fsid, dsb.uuid, dsb.fmt_vers),
        (msb.hdr.fsid, msb.uuid, msb.fmt_vers)
    );
    assert_eq!(
        dsb.flags & scoutvm_fs::format::super_block::FLAG_IS_META_BDEV,
        0
    );
    assert_eq!(dsb.total_data_blocks, msb.total_data_blocks);
    let o = run(&["fsck", &ms, fs_]);
    assert_code(&o, 0);
    // and the pair opens for a mount (supers cross-checked, devices locked)
    scoutvm_image::volume::open_for_mount(&ms, fs_, false).unwrap();
    // the used golden volume: its files hold data blocks
    let shared = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("shared/golden");
    let st = Command::new("tar")
        .arg("-xSf")
        .arg(shared.join("used-v2.meta.tar.xz"))
        .arg("-C")
        .arg(&d)
        .status()
        .unwrap();
    assert!(st.success());
    let used = d.join("used-v2.meta");
    let o = run(&[
        "prepare-empty-data-device",
        "--check",
        used.to_str().unwrap(),
    ]);
    assert_code(&o, 1);
    assert!(
        text(&o).contains("data blocks used by files"),
        "{}",
        text(&o)
    );
    // in use
    begin_without_end(&ms);
    let o = run(&["prepare-empty-data-device", &ms, &ds]);
    assert_code(&o, 1);
    assert!(text(&o).contains("could still be running"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&d);
}

/// The device holds no readable super.
fn read_super_err(p: &str) -> bool {
    let dev = scoutvm_image::filedev::FileDev::open(Path::new(p), false).unwrap();
    scoutvm_fs::storage::block::read_super_from(&dev).is_err()
}
