//! `qemu/cluster.sh` end to end: three nodes on fresh shared images boot
//! in cluster mode without mounting the volume, see each other on the
//! private segment (ICMP, and a stream and a datagram exchange through the
//! kernel's cluster transports, also to itself), survive `kill`/`start`,
//! take a client-only node, refuse a node with another cluster key, and
//! `down` leaves no QEMU behind. Ports are
//! picked at run time; the run directory is under target/.

use std::time::{Duration, Instant};

use scoutvm_tests::cluster_sh::{alive, Cluster};
use scoutvm_tests::guest::run_linux_guest;

/// The slot leading with its server up, as node 0..3 (not `not`) see it.
fn wait_leader(c: &Cluster, not: Option<usize>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for i in (0..3).filter(|&i| Some(i) != not) {
            let n = i.to_string();
            let q = String::from_utf8_lossy(&c.run(&["shell", &n, "quorum"]).stdout).into_owned();
            if q.contains(&format!("leader {i} server Up")) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader:\n{}", c.consoles());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The term in a `quorum` output's first line.
fn term_of(q: &str) -> u64 {
    q.split_whitespace()
        .skip_while(|w| *w != "term")
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no term in {q}"))
}

#[test]
fn cluster_sh_three_nodes_up_talk_kill_start_down() {
    let c = Cluster::new("cluster-test", 4);
    let up = c.ok(&["up", "3"]);
    assert!(up.contains("made a volume with 3 quorum slots"), "{up}");
    assert!(up.contains("3 nodes up"), "{up}");

    for i in 0..3 {
        let out = c.shell(i, "cluster");
        assert!(
            out.contains(&format!("cluster: on, quorum slot {i}")),
            "{out}"
        );
        assert!(out.contains("heartbeat timeout: 10000 ms"), "{out}");
        assert!(
            out.contains(&format!("eth1: 10.77.0.{}/24", 10 + i)),
            "{out}"
        );
    }
    // One leader elected, every node mounted through it.
    let leader = wait_leader(&c, None);
    let out = c.wait_shell(leader, "clients", |o| o.contains("3 cluster mount(s)"));
    assert!(out.contains("this node leads"), "{out}");
    let q = c.shell(leader, "quorum");
    let term1 = term_of(&q);

    // A Linux guest writes a file through node0 and closes it; node1 and
    // node2 never saw it, yet read it at once (their cluster lock grants
    // make them fetch fresh roots). Each node's 9P port is forwarded to
    // the host, which the guest reaches at 10.0.2.2.
    let mut args = vec!["--no-mount".to_string()];
    for (i, dir) in ["/mnt/n0", "/mnt/n1", "/mnt/n2"].iter().enumerate() {
        args.push("--mount".into());
        args.push(format!("{dir}=10.0.2.2:{}", c.p9_base + i as u16));
    }
    args.extend(["--mount-opts", "access=user,cache=none", "--timeout", "300"].map(String::from));
    let cmd = "echo written-through-node0 > /mnt/n0/seen && \
               for n in n1 n2; do echo \"READ $n: $(cat /mnt/$n/seen)\"; done";
    let run = run_linux_guest(&args, cmd).expect("start qemu/linux-guest.sh");
    for n in ["n1", "n2"] {
        assert!(
            run.console
                .lines()
                .any(|l| l.trim_end() == format!("READ {n}: written-through-node0")),
            "node {n} did not read what node0 wrote:\n{}\n{}",
            run.tail(40),
            c.consoles()
        );
    }

    // The leader dies: a survivor is elected once the operator acks the
    // fence of the dead leader's mount, in a higher term.
    let pid = c.pid_of(leader);
    c.ok(&["kill", &leader.to_string()]);
    assert!(!alive(pid));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut acked = None;
    while acked.is_none() && Instant::now() < deadline {
        for i in (0..3).filter(|&i| i != leader) {
            let f = c.shell(i, "fence");
            if let Some(rid) = f
                .lines()
                .find_map(|l| l.trim().strip_prefix("rid "))
                .and_then(|r| r.split_whitespace().next())
            {
                let out = c.shell(i, &format!("fence ack {rid}"));
                assert!(out.contains("acknowledged"), "{out}");
                acked = Some(i);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        acked.is_some(),
        "no survivor asked to fence the dead leader"
    );
    let next = wait_leader(&c, Some(leader));
    assert_ne!(next, leader);
    let term2 = term_of(&c.shell(next, "quorum"));
    assert!(term2 > term1, "term {term2} after {term1}");
    c.wait_shell(next, "clients", |o| o.contains("2 cluster mount(s)"));
    // the dead node comes back as a follower and mounts again
    c.ok(&["start", &leader.to_string()]);
    c.wait_shell(next, "clients", |o| o.contains("3 cluster mount(s)"));

    let status = c.ok(&["status"]);
    assert_eq!(status.matches(": running pid").count(), 3, "{status}");
    assert!(
        status.contains(&format!(
            "node2: running pid {}, 9P 127.0.0.1:{}",
            c.pid_of(2),
            c.p9_base + 2
        )),
        "{status}"
    );

    // The private segment: ICMP both ways, then the cluster transports.
    let out = c.shell(0, "ping 10.77.0.12 2");
    assert!(out.contains("reply from 10.77.0.12: seq="), "{out}");
    let out = c.shell(2, "ping 10.77.0.11 1");
    assert!(out.contains("1 sent, 1 received"), "{out}");
    let out = c.shell(1, "clusternet serve 7300");
    assert!(
        out.contains("echoing streams and datagrams on 0.0.0.0:7300"),
        "{out}"
    );
    let out = c.shell(0, "clusternet ping 10.77.0.11:7300 from-node0");
    assert!(
        out.contains("stream 10.77.0.11:7300: echoed 10 bytes"),
        "{out}"
    );
    assert!(
        out.contains("datagram 10.77.0.11:7300: echoed 10 bytes"),
        "{out}"
    );
    // node1 to itself: the loopback paths of both transports
    let out = c.shell(1, "clusternet ping 10.77.0.11:7300 self");
    assert!(
        out.contains("stream 10.77.0.11:7300: echoed 4 bytes"),
        "{out}"
    );
    assert!(
        out.contains("datagram 10.77.0.11:7300: echoed 4 bytes"),
        "{out}"
    );
    // nobody serves on node2: a clean error, non-zero exit
    let refused = c.run(&["shell", "2", "clusternet", "ping", "10.77.0.10:7300", "x"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stdout)
            .starts_with("error: clusternet: connect 10.77.0.10:7300: Refused"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );

    // A crash and a restart of node1.
    let pid1 = c.pid_of(1);
    let out = c.ok(&["kill", "1"]);
    assert!(
        out.contains(&format!("node1: killed (pid {pid1})")),
        "{out}"
    );
    assert!(!alive(pid1));
    let status = c.ok(&["status"]);
    assert!(status.contains("node1: stopped"), "{status}");
    c.ok(&["start", "1"]);
    assert_ne!(c.pid_of(1), pid1);
    let out = c.shell(1, "cluster");
    assert!(out.contains("quorum slot 1"), "{out}");
    let out = c.shell(1, "ping 10.77.0.10 1");
    assert!(out.contains("1 received"), "{out}");

    // A client-only node joins with extra words.
    c.ok(&["start", "3", "--", "quorum_heartbeat_timeout_ms=3000"]);
    let out = c.shell(3, "cluster");
    assert!(out.contains("client only (no quorum slot)"), "{out}");
    assert!(out.contains("heartbeat timeout: 3000 ms"), "{out}");
    let out = c.shell(3, "ping 10.77.0.12 1");
    assert!(out.contains("1 received"), "{out}");

    // A node with another cluster key cannot join: it says why, the
    // refusal is counted, it never mounts, the others serve.
    c.ok(&[
        "start",
        "4",
        "--",
        &format!("cluster.key={}", "0".repeat(64)),
    ]);
    let console = c.dir.join("node4/console.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains("refused session frame: bad_mac (another cluster key?)") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        log.contains("refused session frame: bad_mac (another cluster key?)"),
        "{log}"
    );
    // (node4 refuses the leader's hello, as its console said; the leader
    // counts node4's only when its connect gets that far, so its counter
    // is not asserted)
    let out = c.shell(next, "cluster");
    assert!(out.contains("auth: cluster key set"), "{out}");
    // it never mounted (the leader's mount list also keeps the rids of
    // earlier lives until they are reclaimed, so it is not the measure)
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(!log.contains("volume: mounted"), "{log}");
    let out = c.run(&["shell", "4", "clients"]);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = c.shell(3, "ping 10.77.0.12 1");
    assert!(out.contains("1 received"), "{out}");

    // the refused node has nothing to unmount: it goes at once
    let pids = c.recorded_pids();
    assert_eq!(pids.len(), 5);
    c.ok(&["kill", "4"]);
    let out = c.ok(&["down"]);
    assert_eq!(out.matches("powered off").count(), 4, "{out}");
    for pid in pids {
        assert!(!alive(pid), "QEMU {pid} left running");
    }
    let status = c.ok(&["status"]);
    assert!(!status.contains("running"), "{status}");
}
