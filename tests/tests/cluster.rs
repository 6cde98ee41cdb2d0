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

/// The rid of node `i`'s mount, from its `clients` (`this mount rid R`),
/// and the output.
fn follower_rid(c: &Cluster, i: usize) -> (String, String) {
    let out = c.wait_shell(i, "clients", |o| o.contains("this mount rid "));
    let rid = out
        .split("this mount rid ")
        .nth(1)
        .and_then(|r| r.split(|ch: char| !ch.is_ascii_hexdigit()).next())
        .unwrap_or_else(|| panic!("no rid in {out}"))
        .to_string();
    (rid, out)
}

/// The host fence agent's log (`cluster.sh fence-log`).
fn fence_log(c: &Cluster) -> String {
    c.ok(&["fence-log"])
}

/// Wait until the fence agent's log shows a request to fence `rid` for
/// `reason` answered `FENCED`; returns when the request and the answer
/// were first seen, and the answer's line.
fn await_agent_fenced(c: &Cluster, rid: &str, reason: &str) -> (Instant, Instant, String) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut asked = None;
    loop {
        let log = fence_log(c);
        let req = log
            .lines()
            .any(|l| l.contains(&format!("FENCE {rid} ")) && l.contains(reason));
        if req && asked.is_none() {
            asked = Some(Instant::now());
        }
        if let Some(l) = log.lines().find(|l| l.contains(&format!("FENCED {rid}:"))) {
            assert!(req, "answered without a {reason} request:\n{log}");
            return (
                asked.unwrap_or_else(Instant::now),
                Instant::now(),
                l.to_string(),
            );
        }
        assert!(
            !log.contains(&format!("ERROR {rid}")),
            "the agent could not fence {rid}:\n{log}"
        );
        assert!(
            Instant::now() < deadline,
            "the agent never fenced rid {rid} ({reason}):\n{log}\n{}",
            c.consoles()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Wait until `rid` holds no lock and is no longer a mount on `leader`.
fn await_reclaimed(c: &Cluster, leader: usize, rid: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(180);
    let needle = format!("rid {rid}");
    loop {
        let locks = c.shell(leader, "locks all");
        let clients = c.shell(leader, "clients");
        if !locks.contains(&needle) && !clients.contains(&needle) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "rid {rid} was not reclaimed: fence {}\nlocks {locks}\nclients {clients}\n{}",
            c.shell(leader, "fence"),
            c.consoles()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The quorum heartbeat timeout of the run: the default (10 s), or
/// `SCOUTVM_CLUSTER_HEARTBEAT_MS` (e.g. 3000 for the failover figure
/// with a 3 s timeout).
fn heartbeat_ms() -> u64 {
    std::env::var("SCOUTVM_CLUSTER_HEARTBEAT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&ms| ms >= 1000)
        .unwrap_or(10_000)
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
    let hb = format!("quorum_heartbeat_timeout_ms={}", heartbeat_ms());
    let up = c.ok(&["up", "3", "--", &hb]);
    assert!(up.contains("made a volume with 3 quorum slots"), "{up}");
    assert!(up.contains("3 nodes up"), "{up}");

    for i in 0..3 {
        let out = c.shell(i, "cluster");
        assert!(
            out.contains(&format!("cluster: on, quorum slot {i}")),
            "{out}"
        );
        assert!(
            out.contains(&format!("heartbeat timeout: {} ms", heartbeat_ms())),
            "{out}"
        );
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

    // A Linux guest writes and reads back files in a loop through a
    // survivor, timing each round trip, while the leader dies.
    let s = (0..3).find(|&i| i != leader).expect("a survivor");
    let gargs: Vec<String> = [
        "--no-mount".to_string(),
        "--mount".to_string(),
        format!("/mnt/s=10.0.2.2:{}", c.p9_base + s as u16),
        "--mount-opts".to_string(),
        "access=user,cache=none".to_string(),
        "--timeout".to_string(),
        "600".to_string(),
    ]
    .to_vec();
    let looping = std::thread::spawn(move || {
        run_linux_guest(
            &gargs,
            "mkdir -p /mnt/s/tick; i=0; while [ ! -e /mnt/s/stop ]; do \
             f=/mnt/s/tick/f$((i % 40)); echo $i > $f || { echo FAILED-WRITE $i; exit 1; }; \
             r=$(cat $f) || { echo FAILED-READ $i; exit 1; }; \
             [ \"$r\" = \"$i\" ] || { echo MISMATCH $i $r; exit 1; }; \
             echo TICK $(cut -d' ' -f1 /proc/uptime); i=$((i+1)); done; echo LOOP-DONE $i",
        )
    });
    c.wait_shell(s, "ls /tick", |o| o.contains("f1"));
    std::thread::sleep(Duration::from_secs(3));

    // The leader dies: a survivor is elected, asks the host fence agent
    // to fence the dead leader's rid (`quorum_block_leader`), the agent
    // answers FENCED (nobody acks in a shell), and the survivor serves in
    // a higher term.
    let (leader_rid, _) = follower_rid(&c, leader);
    let pid = c.pid_of(leader);
    let leader_killed = Instant::now();
    c.ok(&["kill", &leader.to_string()]);
    assert!(!alive(pid));
    let (asked, _, answer) = await_agent_fenced(&c, &leader_rid, "quorum_block_leader");
    assert!(answer.contains(&format!("node{leader}")), "{answer}");
    let asked_after = asked.duration_since(leader_killed);
    let next = wait_leader(&c, Some(leader));
    let serving_after = leader_killed.elapsed();
    assert_ne!(next, leader);
    let q2 = c.shell(next, "quorum");
    let term2 = term_of(&q2);
    assert!(term2 > term1, "term {term2} after {term1}");
    assert!(q2.contains(&format!("fence {leader_rid} Fenced")), "{q2}");
    // the agent, not a shell, answered: nothing waits for an ack
    let waiting = c.shell(next, "fence");
    assert!(waiting.contains("0 fence request(s) waiting"), "{waiting}");
    c.wait_shell(next, "clients", |o| o.contains("2 cluster mount(s)"));
    let mounted_after = leader_killed.elapsed();
    // the guest's loop ran through the failover: every value read back,
    // its longest pause is what a 9P client on a survivor saw
    std::thread::sleep(Duration::from_secs(3));
    let out = c.shell(next, "mkdir /stop");
    assert!(!out.contains("error"), "{out}");
    let run = looping.join().expect("the looping guest");
    let run = run.expect("start qemu/linux-guest.sh");
    assert!(
        run.status.success() && run.console.contains("LOOP-DONE"),
        "the guest's write-read loop through node{s} failed across the failover:\n{}\n{}",
        run.tail(40),
        c.consoles()
    );
    let ticks: Vec<f64> = run
        .console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("TICK "))
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    let gap = ticks.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    eprintln!(
        "failover: a guest's write-and-read-back loop through survivor node{s} paused at most \
         {gap:.1} s across the leader's kill ({} round trips, heartbeat timeout {} ms); \
         after the kill: the agent's fence request seen {:.1} s, new leader serving seen \
         {:.1} s, 2 mounts listed {:.1} s (the test's polls add ~1 s each)",
        ticks.len(),
        heartbeat_ms(),
        asked_after.as_secs_f64(),
        serving_after.as_secs_f64(),
        mounted_after.as_secs_f64()
    );
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

    // A crash of a follower while it holds write locks and dirty items
    // (a directory made, not synced), and a restart. The leader's
    // session with it times out, it does not come back within the
    // reconnect window, so the leader fences its rid (`client_reconnect`)
    // through the host agent (an earlier life: FENCED without touching
    // the restarted node) and reclaims it: its locks go, its rid leaves
    // the mounts, the others can take the locks it held.
    let f = (0..3).find(|&i| i != next).expect("a follower");
    let fs = f.to_string();
    let (old_rid, _) = follower_rid(&c, f);
    let out = c.shell(f, "mkdir /held-by-follower");
    assert!(!out.contains("error"), "{out}");
    let pid_f = c.pid_of(f);
    let killed = Instant::now();
    let out = c.ok(&["kill", &fs]);
    assert!(
        out.contains(&format!("node{f}: killed (pid {pid_f})")),
        "{out}"
    );
    assert!(!alive(pid_f));
    let status = c.ok(&["status"]);
    assert!(status.contains(&format!("node{f}: stopped")), "{status}");
    c.ok(&["start", &fs]);
    assert_ne!(c.pid_of(f), pid_f);
    let new_pid_f = c.pid_of(f);
    let (asked, fenced, answer) = await_agent_fenced(&c, &old_rid, "client_reconnect");
    assert!(answer.contains("earlier life"), "{answer}");
    let gone = await_reclaimed(&c, next, &old_rid);
    assert!(alive(new_pid_f), "the agent stopped node{f}'s new life");
    eprintln!(
        "follower kill: the agent's fence request (client_reconnect) after {:.1} s, \
         FENCED {:.1} s, locks released and rid gone {:.1} s after the kill (its \
         connection ends when the restarted node resets it, or at the 24 s idle \
         timeout; then the 20 s reconnect window)",
        asked.duration_since(killed).as_secs_f64(),
        fenced.duration_since(killed).as_secs_f64(),
        gone.duration_since(killed).as_secs_f64()
    );
    // the locks it held serve the others again
    let out = c.shell(next, "mkdir /after-the-follower");
    assert!(!out.contains("error"), "{out}");
    let out = c.shell(f, "cluster");
    assert!(out.contains(&format!("quorum slot {f}")), "{out}");
    let out = c.shell(f, &format!("ping 10.77.0.{} 1", 10 + next));
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
