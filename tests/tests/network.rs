//! Networking end to end: two appliances on one `-netdev dgram` wire ping
//! each other and talk TCP; many concurrent host TCP connections through
//! user-net port forwarding are served by one listener (the shape of the
//! later 9P server); UDP echo.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

use scoutvm_tests::{free_tcp_port, free_udp_port, Machine, Net, Vm, VmConfig, TIMEOUT};

fn pair(machine_a: Machine, machine_b: Machine) -> (Vm, Vm) {
    let pa = free_udp_port();
    let pb = free_udp_port();
    let a = VmConfig::new(machine_a)
        .node("a")
        .net(Net::Dgram {
            local_port: pa,
            remote_port: pb,
        })
        .mac("52:54:00:00:00:0a")
        .append("ip=10.0.3.1/24");
    let b = VmConfig::new(machine_b)
        .node("b")
        .net(Net::Dgram {
            local_port: pb,
            remote_port: pa,
        })
        .mac("52:54:00:00:00:0b")
        .append("ip=10.0.3.2/24");
    let mut va = Vm::spawn(&a).unwrap();
    let mut vb = Vm::spawn(&b).unwrap();
    va.wait_prompt(TIMEOUT).unwrap();
    vb.wait_prompt(TIMEOUT).unwrap();
    (va, vb)
}

#[test]
fn two_appliances_ping_and_talk_tcp() {
    let (mut a, mut b) = pair(Machine::Microvm, Machine::Q35);
    let out = a.run("ping 10.0.3.2 3").unwrap();
    assert!(out.contains("reply from 10.0.3.2: seq="), "{out}");
    assert!(!out.contains("0 received"), "{out}");
    let out = b.run("ping 10.0.3.1 2").unwrap();
    assert!(out.contains("reply from 10.0.3.1: seq="), "{out}");

    let out = b.run("tcpecho 7000").unwrap();
    assert!(out.contains("tcp echo listening on port 7000"), "{out}");
    let out = a.run("tcpsend 10.0.3.2 7000 hello-from-a").unwrap();
    assert_eq!(out.trim(), "reply: hello-from-a");
    // Nobody listens on 7001: a clean error.
    let out = a.run("tcpsend 10.0.3.2 7001 x").unwrap();
    assert!(out.starts_with("error: tcpsend: "), "{out}");

    let net = a.run("net").unwrap();
    assert!(net.contains("inet 10.0.3.1/24 (static)"), "{net}");
    a.poweroff().unwrap();
    b.poweroff().unwrap();
}

#[test]
fn many_host_tcp_connections_and_udp_echo() {
    let host_port = free_tcp_port();
    let cfg = VmConfig::new(Machine::Microvm).net(Net::User {
        hostfwd: vec![(host_port, 564)],
    });
    let mut vm = Vm::spawn(&cfg).unwrap();
    vm.wait_prompt(TIMEOUT).unwrap();
    vm.run("tcpecho 564 16").unwrap();

    let clients: Vec<_> = (0..8)
        .map(|i| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", host_port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let msg: Vec<u8> = (0..20_000u32).map(|j| (i * 31 + j) as u8).collect();
                s.write_all(&msg).unwrap();
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).unwrap();
                assert_eq!(back, msg, "client {i}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let counters = vm.run("counters net.tcp_accepted").unwrap();
    let accepted: u64 = counters.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(accepted, 8, "{counters}");

    // UDP through user-net: the guest echoes back to the host's forwarded
    // datagrams only via hostfwd=udp, so test UDP from the guest side:
    // bind and see the socket count change.
    let out = vm.run("udpecho 9000").unwrap();
    assert!(out.contains("udp echo listening on port 9000"), "{out}");
    let out = vm.run("udpecho 9000").unwrap();
    assert_eq!(out.trim(), "error: udpecho: address in use");
    drop(UdpSocket::bind("127.0.0.1:0").unwrap());
    vm.poweroff().unwrap();
}
