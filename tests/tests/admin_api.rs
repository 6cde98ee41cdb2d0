//! The admin API on a booted appliance (issue 14's acceptance subset): one
//! node on a RAM volume with `api.token=`, its 9P and API ports forwarded
//! to free host ports. A Linux guest writes a file over 9P
//! (`cache=none`); the host `scoutvm` CLI in `--node` mode stats it,
//! releases it (its blocks go offline), a wrong token gets 401; the guest
//! then reads the released file and waits (the CLI's `data-waiting` lists
//! it) until the CLI stages the archived bytes, and reads them intact.
//! Also measures stat requests per second over one keep-alive connection
//! and release and stage MB/s through the API: the guest writes a file
//! of `SCOUTVM_API_MB` MiB, the host releases all of it in one request
//! and stages it back in 128 KiB requests (the CLI's `--node` parts),
//! the guest reads back the same checksum (figures printed, not
//! asserted).
//!
//! `SCOUTVM_TOOL` names the host tool (default: built in release);
//! `API_BENCH_REQUESTS` sets the measured requests (default 2000);
//! `SCOUTVM_API_MB` the size of the release/stage file (default 16).

use std::process::Command;
use std::time::{Duration, Instant};

use scoutvm_image::api_client::{ApiClient, ApiError};
use scoutvm_net::api::json::base64_encode;
use scoutvm_tests::guest::{host_tool, run_linux_guest};
use scoutvm_tests::{free_tcp_port, Machine, Net, Vm, VmConfig};

const TOKEN: &str = "api-test-token-0123";
/// The guest writes `seq 1 LINES` to /mnt/f; the host makes the same bytes.
const LINES: u32 = 50_000;
const BS: u64 = 4096;
/// Bytes per stage request in the measured pass (the CLI's part size
/// over `--node`: base64 in JSON stays under the API's 260 KiB body).
const STAGE_PART: usize = 32 * 4096;

/// The measured file's bytes: `seq 1 999999999` cut at `len` (the
/// guest makes the same with `seq | head -c`).
fn seq_bytes(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 16);
    let mut i = 1u64;
    while v.len() < len {
        v.extend_from_slice(format!("{i}\n").as_bytes());
        i += 1;
    }
    v.truncate(len);
    v
}

fn cli(api: &str, token: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(host_tool())
        .args(args)
        .args(["--node", api, "--token", token])
        .output()
        .expect("run the scoutvm tool");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn ok(api: &str, args: &[&str]) -> String {
    let (ok, text) = cli(api, TOKEN, args);
    assert!(ok, "scoutvm {args:?} failed: {text}");
    text
}

/// `  field: value` lines of `scoutvm stat`.
fn field(stat: &str, name: &str) -> u64 {
    stat.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {stat}"))
}

/// Poll `f` until it returns Some, for at most `secs` seconds.
fn until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn cli_releases_and_stages_while_a_linux_guest_waits() {
    let p9_port = free_tcp_port();
    let mut api_port = free_tcp_port();
    while api_port == p9_port {
        api_port = free_tcp_port();
    }
    let api = format!("127.0.0.1:{api_port}");
    let bench_mb: u64 = std::env::var("SCOUTVM_API_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&m| (1..=4096).contains(&m))
        .unwrap_or(16);
    let bench_bytes = bench_mb << 20;
    let mut cfg = VmConfig::new(Machine::Microvm)
        .net(Net::User {
            hostfwd: vec![(p9_port, 564), (api_port, 8564)],
        })
        .append(&format!(
            "volume=ram:{} api.token={TOKEN}",
            1024.max(4 * bench_mb)
        ));
    // the RAM volume's written blocks live in the appliance's memory (a
    // power of two: with -m 304M the guest's 9P mount failed with EFAULT)
    cfg.mem_mb = (256 + 3 * bench_mb as u32).next_power_of_two();
    let mut vm = Vm::spawn(&cfg).expect("boot the appliance");
    vm.wait_for("api: admin API", Duration::from_secs(120))
        .expect("the API listens");
    vm.wait_prompt(Duration::from_secs(120)).expect("prompt");

    // The guest writes, says so with a directory, waits for /go, reads;
    // then the same with the measured file /big and /wrote2, /go2.
    let guest_cmd = format!(
        "seq 1 50000 > /mnt/f && md5sum /mnt/f && touch /mnt/wrote \
         && while [ ! -d /mnt/go ]; do sleep 0.2; done && md5sum /mnt/f \
         && {{ seq 1 999999999 | head -c {bench_bytes} > /mnt/big; }} && md5sum /mnt/big \
         && touch /mnt/wrote2 && while [ ! -d /mnt/go2 ]; do sleep 0.2; done \
         && md5sum /mnt/big"
    );
    let guest_args: Vec<String> = [
        "--server",
        &format!("10.0.2.2:{p9_port}"),
        "--mount-opts",
        "access=user,cache=none",
        "--timeout",
        &(300 + 4 * bench_mb).to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let guest = std::thread::spawn(move || run_linux_guest(&guest_args, &guest_cmd));

    until(240, "the guest's file", || {
        cli(&api, TOKEN, &["stat", "/wrote"]).0.then_some(())
    });
    let expect: Vec<u8> = (1..=LINES)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let size = expect.len() as u64;
    let blocks = size.div_ceil(BS);
    let stat = ok(&api, &["stat", "/f"]);
    assert_eq!(field(&stat, "size"), size, "{stat}");
    assert_eq!(field(&stat, "online_blocks"), blocks, "{stat}");
    assert_eq!(field(&stat, "offline_blocks"), 0, "{stat}");
    let vers = field(&stat, "data_version");
    let vers_s = vers.to_string();
    assert_eq!(
        ok(&api, &["stat", "-s", "data_version", "/f"]).trim(),
        vers_s
    );

    // a wrong token is refused, by the CLI and by a raw request
    let (good, text) = cli(&api, "not-the-token", &["stat", "/f"]);
    assert!(!good && text.contains("HTTP 401"), "{text}");
    match ApiClient::new(&api, "not-the-token").call("stat", r#"{"path":"/f"}"#) {
        Err(ApiError::Status(401, _)) => {}
        other => panic!("wrong token: {other:?}"),
    }

    // release: every block offline, data_version kept
    let len = (blocks * BS).to_string();
    ok(
        &api,
        &["release", "/f", "-V", &vers_s, "-o", "0", "-l", &len],
    );
    let stat = ok(&api, &["stat", "/f"]);
    assert_eq!(field(&stat, "online_blocks"), 0, "{stat}");
    assert_eq!(field(&stat, "offline_blocks"), blocks, "{stat}");
    assert_eq!(field(&stat, "data_version"), vers);
    // a stale data_version is refused with the errno's message
    let stale = (vers + 1).to_string();
    let (good, text) = cli(
        &api,
        TOKEN,
        &["release", "/f", "-V", &stale, "-o", "0", "-l", "4096"],
    );
    assert!(!good && text.contains("Stale file handle"), "{text}");

    // the guest reads the released file and waits
    let out = vm.run("mkdir /go").expect("mkdir /go");
    assert!(out.trim().is_empty(), "mkdir: {out}");
    let waiting = until(120, "the guest's read to wait", || {
        let w = ok(&api, &["data-waiting"]);
        w.lines().any(|l| l.starts_with("ino ")).then_some(w)
    });
    assert!(waiting.contains("ops read"), "{waiting}");

    let archive = std::env::temp_dir().join(format!("scoutvm-api-archive-{}", std::process::id()));
    std::fs::write(&archive, &expect).unwrap();
    let archive_s = archive.to_str().unwrap().to_string();
    ok(
        &api,
        &[
            "stage",
            &archive_s,
            "/f",
            "-V",
            &vers_s,
            "-o",
            "0",
            "-l",
            &size.to_string(),
        ],
    );
    let _ = std::fs::remove_file(&archive);
    let stat = ok(&api, &["stat", "/f"]);
    assert_eq!(field(&stat, "online_blocks"), blocks, "{stat}");
    assert_eq!(field(&stat, "offline_blocks"), 0, "{stat}");
    assert_eq!(field(&stat, "data_version"), vers);

    assert!(ok(&api, &["data-waiting"]).trim().is_empty());

    // release and stage MB/s through the API, one keep-alive connection
    until(300 + 4 * bench_mb, "the guest's measured file", || {
        cli(&api, TOKEN, &["stat", "/wrote2"]).0.then_some(())
    });
    let mut c = ApiClient::new(&api, TOKEN);
    let st = c.call("stat", r#"{"path":"/big"}"#).expect("stat /big");
    let num = |k: &str| st.get(k).and_then(|v| v.as_u64()).expect(k);
    assert_eq!(num("size"), bench_bytes);
    let big_vers = num("data_version");
    let big = seq_bytes(bench_bytes as usize);
    let t = Instant::now();
    c.call(
        "release",
        &format!(
            r#"{{"path":"/big","data_version":{big_vers},"offset":0,"length":{bench_bytes}}}"#
        ),
    )
    .expect("release /big");
    let release_s = t.elapsed().as_secs_f64();
    let st = c.call("stat", r#"{"path":"/big"}"#).expect("stat /big");
    let offline = st.get("offline_blocks").and_then(|v| v.as_u64());
    assert_eq!(offline, Some(bench_bytes / BS));
    // the bodies are made before the clock starts: the API is measured
    let bodies: Vec<String> = big
        .chunks(STAGE_PART)
        .enumerate()
        .map(|(i, part)| {
            format!(
                r#"{{"path":"/big","data_version":{big_vers},"offset":{},"data":"{}"}}"#,
                i * STAGE_PART,
                base64_encode(part)
            )
        })
        .collect();
    let t = Instant::now();
    for b in &bodies {
        c.call("stage", b).expect("stage part of /big");
    }
    let stage_s = t.elapsed().as_secs_f64();
    let st = c.call("stat", r#"{"path":"/big"}"#).expect("stat /big");
    let offline = st.get("offline_blocks").and_then(|v| v.as_u64());
    assert_eq!(offline, Some(0));
    let mb = bench_bytes as f64 / f64::from(1u32 << 20);
    eprintln!(
        "RELEASE-STAGE-BENCH: release {:.1} MB/s, stage {:.1} MB/s ({bench_mb} MiB; \
         release {release_s:.3} s in 1 request, stage {stage_s:.2} s in {} requests of {} KiB)",
        mb / release_s,
        mb / stage_s,
        bodies.len(),
        STAGE_PART >> 10
    );
    let out = vm.run("mkdir /go2").expect("mkdir /go2");
    assert!(out.trim().is_empty(), "mkdir: {out}");

    let run = guest.join().expect("guest thread").expect("run the guest");
    assert!(run.status.success(), "guest failed:\n{}", run.tail(40));
    for (file, what) in [
        ("  /mnt/f", "the staged file reads as written"),
        ("  /mnt/big", "the measured file reads back as written"),
    ] {
        let sums: Vec<&str> = run.console.lines().filter(|l| l.ends_with(file)).collect();
        assert_eq!(sums.len(), 2, "two checksums of {file}:\n{}", run.tail(40));
        assert_eq!(sums[0], sums[1], "{what}");
    }

    // requests per second: stat over one keep-alive connection
    let n: u32 = std::env::var("API_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut c = ApiClient::new(&api, TOKEN);
    let t = Instant::now();
    for _ in 0..n {
        let v = c.call("stat", r#"{"path":"/f"}"#).expect("stat");
        assert_eq!(v.get("size").and_then(|s| s.as_u64()), Some(size));
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "API-BENCH stat: {n} requests in {secs:.2} s = {:.0} requests/s (TCG guest, one connection)",
        f64::from(n) / secs
    );

    vm.poweroff().expect("poweroff");
}
