//! Many writers on one volume (issue 12, QEMU acceptance): two appliance
//! nodes on shared images (`qemu/cluster.sh up 2`) with a small data
//! device (96 MiB), one Linux guest mounting node0's 9P on /mnt/a and
//! node1's on /mnt/b, running `tests/guest/cluster-writers.sh`:
//! createmany-parallel-mounts (creates through both nodes at once in
//! separate directories, each file seen through the other node),
//! cross-mount-data-free (60 % of the data device written through node0
//! and freed through node1, three rounds, no ENOSPC) and unlink-while-open
//! (a file open through node0 and unlinked through node1 stays readable
//! there, and its space comes back after the close). Then the log-tree
//! count the server saw (`server.log_trees`, `server.log_trees_max`) is
//! printed and must stay bounded while merges run often
//! (`log_merge.finalize_height=1`), both nodes power off and the host
//! `scoutvm fsck` of the images is clean.
//!
//! `CLUSTER_WRITERS_CREATES` sets the creates per mount (default 1000;
//! the reference's createmany-parallel-mounts makes 10000). The creates
//! per second the guest prints are figures, not assertions.

use std::fs;

use scoutvm_tests::cluster_sh::{counter, Cluster};
use scoutvm_tests::guest::run_linux_guest;

const CHECKS: [&str; 3] = [
    "createmany-parallel-mounts",
    "cross-mount-data-free",
    "unlink-while-open",
];
/// The data device: small, so that the space checks fill it in seconds.
const DATA_BYTES: u64 = 96 << 20;
/// Log trees the volume may hold at once with two writing mounts: each
/// mount's open tree, a finalized one per mount waiting for its merge,
/// and the trees a merge in progress still reads. More means the server
/// is not finalizing and merging under steady writes.
const LOG_TREES_BOUND: u64 = 8;

#[test]
fn two_writing_nodes_share_space_and_open_unlinked_files() {
    let creates: u64 = std::env::var("CLUSTER_WRITERS_CREATES")
        .ok()
        .map(|v| v.parse().expect("CLUSTER_WRITERS_CREATES is a number"))
        .unwrap_or(1000);
    let mut c = Cluster::new("cluster-writers", 2);
    c.boot_timeout = 240;
    c.shell_timeout = 90;
    c.console_tail = Some(60);
    fs::create_dir_all(&c.dir).expect("the run directory");
    let (meta, data) = (c.dir.join("meta.img"), c.dir.join("data.img"));
    for (img, len) in [(&meta, 16u64 << 30), (&data, DATA_BYTES)] {
        fs::File::create(img)
            .and_then(|f| f.set_len(len))
            .expect("a sparse image");
    }
    let (m, d) = (meta.display().to_string(), data.display().to_string());
    // merges often (a tree is finalized once it has more than one leaf),
    // so that the log-tree bound below is about finalize and merge
    let up = c.ok(&[
        "up",
        "2",
        "--meta",
        &m,
        "--data",
        &d,
        "--",
        "log_merge.finalize_height=1",
    ]);
    assert!(up.contains("made a volume with 2 quorum slots"), "{up}");
    c.wait_mounted(0);
    c.wait_mounted(1);

    let args = c.two_node_guest_args(900);
    let cmd = format!(
        "CREATES={creates} DATA_KIB={} cluster-writers.sh /mnt/a /mnt/b",
        DATA_BYTES >> 10
    );
    let run = run_linux_guest(&args, &cmd).expect("start qemu/linux-guest.sh");
    eprintln!("guest run took {:?}", run.elapsed);
    for l in run
        .console
        .lines()
        .filter(|l| l.contains("CLUSTER-WRITERS FIGURE"))
    {
        eprintln!("{}", l.trim_end());
    }
    run.assert_checks_passed("CLUSTER-WRITERS", &CHECKS, &c.consoles());

    // The leader's server counted the log trees at every GET_LOG_TREES.
    // (a node without such a counter yet answers with an error: then 0)
    let (mut now, mut max, mut merges) = (0, 0, 0);
    for i in 0..2 {
        let out = c.run(&["shell", &i.to_string(), "counters", "server.log_trees"]);
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        now = now.max(counter(&out, "server.log_trees"));
        max = max.max(counter(&out, "server.log_trees_max"));
        let out = c.run(&["shell", &i.to_string(), "counters", "log_merge.finished"]);
        merges += counter(&String::from_utf8_lossy(&out.stdout), "log_merge.finished");
    }
    eprintln!("LOG-TREES: {now} now, at most {max} during the run, {merges} merges finished");
    assert!(max > 0, "the server never counted a log tree");
    assert!(
        max <= LOG_TREES_BOUND,
        "{max} log trees at once (bound {LOG_TREES_BOUND}): finalize/merge fell behind\n{}",
        c.consoles()
    );
    assert!(merges > 0, "no log merge finished during the run");

    c.down_clean(2, &meta, &data);
}
