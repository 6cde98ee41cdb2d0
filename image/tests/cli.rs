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
        assert_code(&o, 2);
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
