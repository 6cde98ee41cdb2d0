//! POSIX stays consistent between nodes (issue 11, QEMU acceptance): two
//! appliance nodes on shared images (`qemu/cluster.sh up 2`), one Linux
//! guest mounting node0's 9P on /mnt/a and node1's on /mnt/b (user
//! networking: each node's 9P port is forwarded to a free host port, which
//! the guest reaches at 10.0.2.2), running `tests/guest/cluster-posix.sh`:
//! ports of basic-posix-consistency (both directions), dirent-consistency,
//! mkdir-rename-rmdir, renameat2-noreplace and lock-ex-race-processes.
//! The host fence agent (on by default) was never asked to fence (one
//! leader of the two slots). Then both nodes power off and the host
//! `scoutvm fsck` of the images is clean.
//!
//! The guest mounts with `access=user,cache=none`: no page, attribute or
//! dentry cache survives a call, so what one node answers is what the
//! cluster holds (close-to-open and fsync are then up to the nodes' locks).
//!
//! `CLUSTER_POSIX_LOCK_SECS` sets the lock-ex-race-processes duration
//! (default 8 s; the reference runs 30), `CLUSTER_POSIX_ROUNDS` the
//! noreplace race rounds (default 20).

use scoutvm_tests::cluster_sh::{counter, Cluster};
use scoutvm_tests::guest::run_linux_guest;

/// The checks cluster-posix.sh runs (its `CLUSTER-POSIX PASS` names).
const CHECKS: [&str; 6] = [
    "basic-posix-consistency-ab",
    "basic-posix-consistency-ba",
    "dirent-consistency",
    "mkdir-rename-rmdir",
    "renameat2-noreplace",
    "lock-ex-race-processes",
];

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

#[test]
fn two_nodes_one_linux_guest_posix_consistent_across_mounts() {
    let lock_secs = env_num("CLUSTER_POSIX_LOCK_SECS", 8);
    let rounds = env_num("CLUSTER_POSIX_ROUNDS", 20);
    let mut c = Cluster::new("cluster-posix", 2);
    c.boot_timeout = 240;
    c.shell_timeout = 90;
    c.console_tail = Some(60);
    let up = c.ok(&["up", "2"]);
    assert!(up.contains("made a volume with 2 quorum slots"), "{up}");
    c.wait_mounted(0);
    c.wait_mounted(1);

    let args = c.two_node_guest_args(600);
    let cmd =
        format!("LOCK_RACE_SECS={lock_secs} RACE_ROUNDS={rounds} cluster-posix.sh /mnt/a /mnt/b");
    let run = run_linux_guest(&args, &cmd).expect("start qemu/linux-guest.sh");
    eprintln!("guest run took {:?}", run.elapsed);
    run.assert_checks_passed("CLUSTER-POSIX", &CHECKS, &c.consoles());
    // The lock-ex race made progress on both mounts.
    for tag in ["a1", "a2", "b1", "b2"] {
        let ops: u64 = run
            .console
            .lines()
            .find_map(|l| {
                l.trim_end()
                    .strip_prefix(&format!("PINGPONG tag={tag} ops="))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or_else(|| panic!("no PINGPONG line for {tag}:\n{}", run.tail(40)));
        assert!(ops > 0, "pingpong {tag} made no progress");
    }

    // Both nodes went through the cluster locks: each asked for locks, and
    // the ping-pong made the server take some back.
    let mut invalidations = 0;
    for i in 0..2 {
        // (an error when no lock_client counter exists yet: then 0)
        let out = c.run(&["shell", &i.to_string(), "counters", "lock_client."]);
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let requests = counter(&out, "lock_client.requests");
        assert!(requests > 0, "node{i} sent no lock requests:\n{out}");
        invalidations += counter(&out, "lock_client.invalidations");
    }
    assert!(invalidations > 0, "no lock was ever invalidated");

    // A 2-slot cluster with the host fence agent (on by default) elected
    // one leader at start and fenced nobody (issue 13: both nodes were
    // elected at once and fenced each other's VMs).
    let fences = c.ok(&["fence-log"]);
    assert!(
        !fences.contains("FENCE"),
        "fencing in a healthy cluster:\n{fences}"
    );
    let status = c.ok(&["status"]);
    assert!(status.contains("fence agent: pid"), "{status}");
    assert_eq!(status.matches(": running pid").count(), 2, "{status}");

    // Clean power off of both nodes, no QEMU left, a clean volume.
    let (meta, data) = (c.dir.join("meta.img"), c.dir.join("data.img"));
    c.down_clean(2, &meta, &data);
}
