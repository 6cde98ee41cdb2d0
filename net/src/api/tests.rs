//! The admin API without a network: JSON and HTTP framing (known inputs,
//! every split, random and mutated bytes never panic), the handler over an
//! in-memory volume (auth, routing, every endpoint, malformed bodies) and
//! one connection served over an in-memory stream.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use std::collections::VecDeque;

use proptest::prelude::*;
use scoutvm_fs::errno::Errno;
use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::posix::types::Cred;
use scoutvm_fs::runtime::env::{ManualClock, Timespec};
use scoutvm_fs::runtime::exec::{Executor, Notify};
use scoutvm_fs::sim::mem_backend::{MemBackend, MemMkfs, MemStore};
use scoutvm_fs::storage::dev::MemDev;

use super::handler::{Api, ENDPOINTS};
use super::http::{parse_request, Parsed, Request, Response, MAX_BODY};
use super::json::{self, Value};
use crate::p9::{ByteStream, StreamClosed};

const TOKEN: &str = "s3cret-token";
const BS: u64 = 4096;

// ---------------------------------------------------------------------------
// JSON

#[test]
fn json_reads_objects_strings_and_numbers() {
    let v = json::parse(
        br#" {"a": 1, "b": "x\"\\\/\n\u00e9\ud83d\ude00", "c": [true, false, null, -2], "d": {"e": 1.5e3}} "#,
    )
    .unwrap();
    assert_eq!(v.get("a").unwrap().as_u64(), Some(1));
    assert_eq!(
        v.get("b").unwrap().as_str(),
        Some("x\"\\/\n\u{e9}\u{1f600}")
    );
    let c = v.get("c").unwrap().as_array().unwrap();
    assert_eq!(c[0], Value::Bool(true));
    assert_eq!(c[3].as_i64(), Some(-2));
    assert_eq!(c[3].as_u64(), None);
    let e = v.get("d").unwrap().get("e").unwrap();
    assert_eq!(e.as_u64(), None, "no fractions where integers are wanted");
    assert_eq!(
        json::parse(b"18446744073709551615").unwrap().as_u64(),
        Some(u64::MAX)
    );
    assert_eq!(json::parse(b"18446744073709551616").unwrap().as_u64(), None);
}

#[test]
fn json_rejects_what_is_not_json() {
    for bad in [
        &b""[..],
        b"{",
        b"{\"a\"}",
        b"{\"a\":}",
        b"{\"a\":1,}",
        b"[1,]",
        b"{\"a\":1}x",
        b"01",
        b"1.",
        b"-",
        b"1e",
        b"\"\\x\"",
        b"\"\\ud800\"",
        b"\"\\udc00\"",
        b"\"a\nb\"",
        b"\"\xff\"",
        b"tru",
        b"{\"a\":1,\"a\":2}",
        b"[[[[[[[[[[1]]]]]]]]]]",
    ] {
        assert!(
            json::parse(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn json_writer_round_trips_through_the_reader() {
    let tricky = "q\"b\\s\u{1}\u{7f}\t\r\n\u{e9}";
    let mut w = json::ObjWriter::new();
    w.u64("n", u64::MAX).i64("m", -5).str("s", tricky);
    json::bytes_member(&mut w, "name", b"ok");
    json::bytes_member(&mut w, "raw", b"\xff\x00/");
    let text = w.finish();
    let v = json::parse(text.as_bytes()).unwrap();
    assert_eq!(v.get("n").unwrap().as_u64(), Some(u64::MAX));
    assert_eq!(v.get("m").unwrap().as_i64(), Some(-5));
    assert_eq!(v.get("s").unwrap().as_str(), Some(tricky));
    assert_eq!(json::bytes_of(&v, "name").unwrap(), b"ok");
    assert_eq!(json::bytes_of(&v, "raw").unwrap(), b"\xff\x00/");
    assert!(v.get("raw").is_none());
}

#[test]
fn base64_known_values() {
    for (plain, enc) in [
        (&b""[..], ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
    ] {
        assert_eq!(json::base64_encode(plain), enc);
        assert_eq!(json::base64_decode(enc).unwrap(), plain);
    }
    for bad in ["Z", "Zh==", "Zm9v!", "Zm9vY"] {
        assert_eq!(json::base64_decode(bad), None, "{bad}");
    }
}

proptest! {
    #[test]
    fn json_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = json::parse(&b);
    }

    #[test]
    fn json_never_panics_on_mutated_objects(
        at in 0usize..60, byte in any::<u8>(), cut in 0usize..60,
    ) {
        let mut b = br#"{"path":"/a\u00e9","ino":[1,{"x":-0.5e+3}],"ok":true}"#.to_vec();
        let at = at % b.len();
        b[at] = byte;
        b.truncate(cut.max(1) * b.len() / 60);
        let _ = json::parse(&b);
    }

    #[test]
    fn base64_round_trips(b in proptest::collection::vec(any::<u8>(), 0..100)) {
        prop_assert_eq!(json::base64_decode(&json::base64_encode(&b)).unwrap(), b);
    }

    #[test]
    fn strings_round_trip(s in "\\PC*") {
        let mut out = String::new();
        json::write_str(&mut out, &s);
        prop_assert_eq!(json::parse(out.as_bytes()).unwrap(), Value::Str(s));
    }
}

// ---------------------------------------------------------------------------
// HTTP framing

fn post(path: &str, token: Option<&str>, body: &str) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: node\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

#[test]
fn a_request_is_whole_only_with_its_body() {
    let bytes = post("/v1/stat", Some(TOKEN), r#"{"path":"/f"}"#);
    for cut in 0..bytes.len() {
        assert!(
            matches!(parse_request(&bytes[..cut]), Parsed::Incomplete { .. }),
            "cut {cut}"
        );
    }
    let mut two = bytes.clone();
    two.extend_from_slice(&bytes);
    let Parsed::Done(req, used) = parse_request(&two) else {
        panic!("a request");
    };
    assert_eq!(used, bytes.len());
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/stat");
    assert_eq!(req.body, br#"{"path":"/f"}"#);
    assert_eq!(
        req.authorization.as_deref(),
        Some(&b"Bearer s3cret-token"[..])
    );
    assert!(!req.close);
}

fn bad_status(bytes: &[u8]) -> u16 {
    match parse_request(bytes) {
        Parsed::Bad(r) => {
            assert!(r.close);
            assert!(!r.body.contains('\n'), "one line: {}", r.body);
            r.status
        }
        other => panic!("not rejected: {other:?}"),
    }
}

#[test]
fn framing_errors_get_4xx_or_501() {
    assert_eq!(bad_status(b"GARBAGE\r\n\r\n"), 400);
    assert_eq!(
        bad_status(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
        400
    );
    assert_eq!(
        bad_status(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
        400
    );
    assert_eq!(
        bad_status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        400
    );
    assert_eq!(
        bad_status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        501
    );
    let big = format!(
        "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    );
    assert_eq!(bad_status(big.as_bytes()), 413);
    let huge = "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n";
    assert_eq!(bad_status(huge.as_bytes()), 400);
    let mut many = String::from("POST / HTTP/1.1\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(bad_status(many.as_bytes()), 431);
    let long = format!("POST /{} HTTP/1.1\r\n", "a".repeat(9000));
    assert_eq!(bad_status(long.as_bytes()), 431);
}

#[test]
fn http10_and_connection_close_close() {
    let Parsed::Done(r, _) = parse_request(b"POST /v1/stat HTTP/1.0\r\n\r\n") else {
        panic!()
    };
    assert!(r.close);
    let Parsed::Done(r, _) =
        parse_request(b"POST /v1/stat HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n")
    else {
        panic!()
    };
    assert!(r.close);
    assert_eq!(
        parse_request(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"),
        Parsed::Incomplete {
            expect_continue: true
        }
    );
}

proptest! {
    #[test]
    fn framing_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_request(&b);
    }

    #[test]
    fn framing_never_panics_on_mutated_requests(
        at in 0usize..1000, byte in any::<u8>(), cut in 0usize..1000,
    ) {
        let mut b = post("/v1/release", Some(TOKEN), r#"{"ino":5,"data_version":1,"offset":0,"length":4096}"#);
        let at = at % b.len();
        b[at] = byte;
        b.truncate(cut % (b.len() + 1));
        let _ = parse_request(&b);
    }
}

// ---------------------------------------------------------------------------
// The handler over an in-memory volume

struct Env {
    ex: Executor,
    api: Rc<Api>,
}

impl Env {
    fn new() -> Env {
        let ex = Executor::default();
        let mk = MemMkfs {
            data_blocks: 1 << 14,
            ..MemMkfs::default()
        };
        let data = Rc::new(MemDev::new(mk.data_blocks * 4096));
        let store = MemStore::mkfs(mk);
        let clock = Rc::new(ManualClock::new(Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        }));
        let mount = ex
            .block_on(Mount::mount(
                MemBackend::new(store),
                data,
                clock,
                MountOptions::default(),
            ))
            .expect("executor")
            .expect("mount");
        let api = Rc::new(Api::new(Rc::new(mount), TOKEN));
        Env { ex, api }
    }

    fn m(&self) -> &Mount {
        self.api.mount()
    }

    fn run<F: core::future::Future>(&self, f: F) -> F::Output {
        self.ex.block_on(f).expect("deadlock")
    }

    fn settle(&self) {
        let h = self.ex.handle();
        self.run(async move { h.sleep_ns(1_000_000).await });
    }

    fn raw(&self, bytes: &[u8]) -> Response {
        match parse_request(bytes) {
            Parsed::Done(req, _) => self.run(self.api.handle(&req)),
            other => panic!("not a request: {other:?}"),
        }
    }

    /// POST `/v1/op` with `body` and the right token: status and the
    /// parsed answer.
    fn call(&self, op: &str, body: &str) -> (u16, Value) {
        let r = self.raw(&post(&format!("/v1/{op}"), Some(TOKEN), body));
        assert!(!r.body.contains('\n'), "one line: {}", r.body);
        let v = json::parse(r.body.as_bytes()).expect("answers are JSON");
        if r.status != 200 {
            assert!(
                v.get("error").and_then(Value::as_str).is_some(),
                "{}",
                r.body
            );
        }
        (r.status, v)
    }

    fn ok(&self, op: &str, body: &str) -> Value {
        let (s, v) = self.call(op, body);
        assert_eq!(s, 200, "{op} {body}: {v:?}");
        v
    }

    fn file(&self, dir: u64, name: &str, data: &[u8]) -> u64 {
        let a = self
            .run(self.m().create(&Cred::root(), dir, name.as_bytes(), 0o644))
            .unwrap();
        if !data.is_empty() {
            self.run(self.m().write(a.ino, 0, data)).unwrap();
        }
        a.ino
    }

    fn stat(&self, body: &str) -> Value {
        self.ok("stat", body)
    }
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{k} in {v:?}"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn the_token_is_needed_for_everything() {
    let e = Env::new();
    let body = r#"{"path":"/"}"#;
    for op in ENDPOINTS.iter().chain(&["nope"]) {
        let path = format!("/v1/{op}");
        for auth in [
            None,
            Some("Bearer wrong-token!"),
            Some("Bearer s3cret-toke"),
            Some("Bearer s3cret-tokenX"),
            Some("Basic s3cret-token"),
            Some("Bearer"),
            Some(""),
        ] {
            let mut r = format!("POST {path} HTTP/1.1\r\nContent-Length: {}\r\n", body.len());
            if let Some(a) = auth {
                r.push_str(&format!("Authorization: {a}\r\n"));
            }
            r.push_str("\r\n");
            r.push_str(body);
            let resp = e.raw(r.as_bytes());
            assert_eq!(resp.status, 401, "{op} {auth:?}");
            assert!(String::from_utf8(resp.encode())
                .unwrap()
                .contains("WWW-Authenticate: Bearer"));
        }
    }
    // the scheme is case-insensitive, as HTTP says
    let r = format!(
        "POST /v1/stat HTTP/1.1\r\nAuthorization: bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(e.raw(r.as_bytes()).status, 200);
}

#[test]
fn routing_and_malformed_bodies() {
    let e = Env::new();
    assert_eq!(e.call("nope", "{}").0, 404);
    assert_eq!(e.raw(&post("/stat", Some(TOKEN), "{}")).status, 404);
    assert_eq!(e.raw(&post("/v1/stat/x", Some(TOKEN), "{}")).status, 404);
    let get = format!("GET /v1/stat HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    let r = e.raw(get.as_bytes());
    assert_eq!(r.status, 405);
    assert!(String::from_utf8(r.encode())
        .unwrap()
        .contains("Allow: POST"));
    for (op, body, why) in [
        ("stat", "{", "not JSON"),
        ("stat", "[1]", "must be a JSON object"),
        ("stat", "{}", "missing field 'path'"),
        ("stat", r#"{"path":"/","ino":1}"#, "not both"),
        ("stat", r#"{"ino":0}"#, "inode 0"),
        ("stat", r#"{"ino":-1}"#, "unsigned"),
        ("stat", r#"{"ino":"1"}"#, "unsigned"),
        ("stat", r#"{"ino":1.0}"#, "unsigned"),
        ("stat", r#"{"path":5}"#, "expected a string"),
        ("stat", r#"{"path":"/../x"}"#, "'..'"),
        (
            "stat",
            r#"{"path":"/","colour":1}"#,
            "unknown field 'colour'",
        ),
        (
            "release",
            r#"{"ino":1,"offset":0,"length":4096}"#,
            "missing field 'data_version'",
        ),
        (
            "stage",
            r#"{"ino":1,"data_version":1,"offset":0}"#,
            "missing field 'data'",
        ),
        (
            "stage",
            r#"{"ino":1,"data_version":1,"offset":0,"data":"!!"}"#,
            "not base64",
        ),
        (
            "walk-inodes",
            r#"{"index":"nope","first":0,"last":1}"#,
            "meta_seq or data_seq",
        ),
        (
            "walk-inodes",
            r#"{"index":"meta_seq","first":0,"last":-2}"#,
            "'last'",
        ),
        (
            "walk-inodes",
            r#"{"index":"meta_seq","first":0,"last":1,"max":0}"#,
            "at least 1",
        ),
        (
            "data-wait-err",
            r#"{"ino":1,"data_version":1,"offset":0,"count":1,"ops":"eat","err":-5}"#,
            "unknown op 'eat'",
        ),
        (
            "data-wait-err",
            r#"{"ino":1,"data_version":1,"offset":0,"count":1,"ops":"read","err":"x"}"#,
            "'err'",
        ),
        ("setattr", r#"{"ino":1,"offline":1}"#, "true or false"),
        ("setattr", r#"{"ino":1,"ctime":"yesterday"}"#, "SEC.NSEC"),
    ] {
        let (s, v) = e.call(op, body);
        assert_eq!(s, 400, "{op} {body}: {v:?}");
        let reason = v.get("error").unwrap().as_str().unwrap();
        assert!(reason.contains(why), "{op} {body}: {reason}");
    }
    let long = format!(r#"{{"path":"{}"}}"#, "a/".repeat(2100));
    assert_eq!(e.call("stat", &long).0, 400);
    // filesystem errors carry their errno
    let (s, v) = e.call("stat", r#"{"path":"/missing"}"#);
    assert_eq!(s, 404);
    assert_eq!(v.get("errname").unwrap().as_str(), Some("ENOENT"));
    assert_eq!(n(&v, "errno"), 2);
}

#[test]
fn stat_release_stage_and_punch_offline() {
    let e = Env::new();
    let dir = e
        .run(e.m().mkdir(&Cred::root(), 1, b"d", 0o755))
        .unwrap()
        .ino;
    let data = pattern(3 * BS as usize, 7);
    let ino = e.file(dir, "f", &data);
    let s = e.stat(r#"{"path":"/d/f"}"#);
    assert_eq!(n(&s, "ino"), ino);
    assert_eq!(
        s,
        e.stat(&format!(r#"{{"ino":{ino}}}"#)),
        "by path or inode"
    );
    let want = e.run(e.m().stat_more(ino)).unwrap();
    assert_eq!(n(&s, "data_version"), want.data_version);
    assert_eq!(n(&s, "size"), 3 * BS);
    assert_eq!(n(&s, "online_blocks"), 3);
    assert_eq!(n(&s, "offline_blocks"), 0);
    assert_eq!(
        s.get("crtime").unwrap().as_str().unwrap(),
        format!("{}.{:09}", want.crtime.sec, want.crtime.nsec)
    );
    let vers = want.data_version;

    // a stale data_version is a conflict
    let (st, v) = e.call(
        "release",
        &format!(
            r#"{{"path":"d/f","data_version":{},"offset":0,"length":8192}}"#,
            vers + 1
        ),
    );
    assert_eq!(st, 409, "{v:?}");
    assert_eq!(v.get("errname").unwrap().as_str(), Some("ESTALE"));
    // unaligned is EINVAL
    assert_eq!(
        e.call(
            "release",
            &format!(r#"{{"ino":{ino},"data_version":{vers},"offset":1,"length":4096}}"#)
        )
        .0,
        400
    );
    e.ok(
        "release",
        &format!(r#"{{"path":"/d/./f","data_version":{vers},"offset":0,"length":8192}}"#),
    );
    let s = e.stat(r#"{"path":"/d/f"}"#);
    assert_eq!((n(&s, "online_blocks"), n(&s, "offline_blocks")), (1, 2));
    assert_eq!(n(&s, "data_version"), vers, "release keeps data_version");

    // stage the first block back
    let b64 = json::base64_encode(&data[..BS as usize]);
    let v = e.ok(
        "stage",
        &format!(r#"{{"ino":{ino},"data_version":{vers},"offset":0,"data":"{b64}"}}"#),
    );
    assert_eq!(n(&v, "staged"), BS);
    let s = e.stat(r#"{"path":"/d/f"}"#);
    assert_eq!((n(&s, "online_blocks"), n(&s, "offline_blocks")), (2, 1));
    assert_eq!(
        e.run(e.m().read(ino, 0, BS as usize)).unwrap(),
        &data[..BS as usize]
    );

    // punch the rest of the offline range into a hole
    e.ok(
        "punch-offline",
        &format!(r#"{{"ino":{ino},"data_version":{vers},"offset":4096,"length":4096}}"#),
    );
    let s = e.stat(r#"{"path":"/d/f"}"#);
    assert_eq!((n(&s, "online_blocks"), n(&s, "offline_blocks")), (2, 0));
    assert_eq!(
        e.run(e.m().read(ino, BS, BS as usize)).unwrap(),
        vec![0u8; BS as usize]
    );
}

#[test]
fn move_blocks_by_path_and_by_inode() {
    let e = Env::new();
    let data = pattern(3 * BS as usize, 9);
    let from = e.file(1, "from", &data);
    let to = e.file(1, "to", b"");
    e.ok(
        "move-blocks",
        r#"{"path":"/to","from_path":"/from","from_offset":4096,"length":8192,"to_offset":0}"#,
    );
    assert_eq!(
        e.run(e.m().read(to, 0, 3 * BS as usize)).unwrap(),
        &data[BS as usize..]
    );
    let s = e.stat(r#"{"path":"/from"}"#);
    assert_eq!((n(&s, "size"), n(&s, "online_blocks")), (3 * BS, 1));
    // the target has blocks there now: EINVAL
    let (st, v) = e.call(
        "move-blocks",
        &format!(r#"{{"ino":{to},"from_ino":{from},"from_offset":0,"length":4096,"to_offset":0}}"#),
    );
    assert_eq!(st, 400, "{v:?}");
    assert_eq!(v.get("errname").unwrap().as_str(), Some("EINVAL"));
    // into offline extents: the data_version is checked
    let vers = n(&e.stat(r#"{"path":"/to"}"#), "data_version");
    e.ok(
        "release",
        &format!(r#"{{"path":"/to","data_version":{vers},"offset":0,"length":8192}}"#),
    );
    let (st, v) = e.call(
        "move-blocks",
        &format!(
            r#"{{"path":"/to","from_path":"/from","from_offset":0,"length":4096,"to_offset":0,"stage":true,"data_version":{}}}"#,
            vers + 1
        ),
    );
    assert_eq!(
        (st, v.get("errname").unwrap().as_str()),
        (409, Some("ESTALE"))
    );
    e.ok(
        "move-blocks",
        &format!(
            r#"{{"path":"/to","from_path":"/from","from_offset":0,"length":4096,"to_offset":4096,"stage":true,"data_version":{vers}}}"#
        ),
    );
    let s = e.stat(r#"{"path":"/to"}"#);
    assert_eq!((n(&s, "online_blocks"), n(&s, "offline_blocks")), (1, 1));
    assert_eq!(n(&s, "data_version"), vers);
    assert_eq!(
        e.run(e.m().read(to, BS, BS as usize)).unwrap(),
        &data[..BS as usize]
    );
    // malformed: no source, both sources, a stage that is not a bool
    for body in [
        r#"{"path":"/to","from_offset":0,"length":4096,"to_offset":0}"#,
        r#"{"path":"/to","from_path":"/from","from_ino":5,"from_offset":0,"length":4096,"to_offset":0}"#,
        r#"{"path":"/to","from_path":"/from","from_offset":0,"length":4096,"to_offset":0,"stage":1}"#,
        r#"{"path":"/to","from_path":"/from","length":4096,"to_offset":0}"#,
    ] {
        let (st, v) = e.call("move-blocks", body);
        assert_eq!(st, 400, "{body}: {v:?}");
        assert!(v.get("errno").is_none(), "{body}: {v:?}");
    }
}

#[test]
fn setattr_restores_an_offline_file() {
    let e = Env::new();
    let ino = e.file(1, "restored", b"");
    e.ok(
        "setattr",
        r#"{"path":"/restored","data_version":77,"size":12288,"offline":true,"ctime":"1600000000.5","crtime":"1500000000.000000001"}"#,
    );
    let s = e.stat(&format!(r#"{{"ino":{ino}}}"#));
    assert_eq!(n(&s, "data_version"), 77);
    assert_eq!(n(&s, "size"), 12288);
    assert_eq!(n(&s, "offline_blocks"), 3);
    assert_eq!(
        s.get("crtime").unwrap().as_str(),
        Some("1500000000.000000001")
    );
    let a = e.run(e.m().getattr(ino)).unwrap();
    assert_eq!((a.ctime.sec, a.ctime.nsec), (1_600_000_000, 500_000_000));
    // only once: the file is no longer new
    assert_eq!(e.call("setattr", r#"{"path":"/restored","size":1}"#).0, 400);
}

#[test]
fn readers_wait_are_listed_and_failed() {
    let e = Env::new();
    let data = pattern(2 * BS as usize, 3);
    let ino = e.file(1, "f", &data);
    let vers = n(&e.stat(r#"{"path":"/f"}"#), "data_version");
    e.ok(
        "release",
        &format!(r#"{{"ino":{ino},"data_version":{vers},"offset":0,"length":8192}}"#),
    );
    let spawn_read = |off: u64| {
        let api = e.api.clone();
        e.ex.handle()
            .spawn(async move { api.mount().read(ino, off, BS as usize).await })
            .unwrap()
    };
    let (r0, r1) = (spawn_read(0), spawn_read(BS));
    e.settle();
    let v = e.ok("data-waiting", "{}");
    let list: Vec<(u64, u64, &str)> = v
        .get("entries")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                n(x, "ino"),
                n(x, "iblock"),
                x.get("ops").unwrap().as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(list, [(ino, 0, "read"), (ino, 1, "read")]);
    // paging: the cursor is exclusive, max bounds an answer
    let v = e.ok(
        "data-waiting",
        &format!(r#"{{"after_ino":{ino},"after_iblock":0}}"#),
    );
    assert_eq!(v.get("entries").unwrap().as_array().unwrap().len(), 1);
    let v = e.ok("data-waiting", r#"{"max":1}"#);
    assert_eq!(v.get("entries").unwrap().as_array().unwrap().len(), 1);

    // fail the first block's reader, stage the second's
    let v = e.ok(
        "data-wait-err",
        &format!(
            r#"{{"ino":{ino},"data_version":{vers},"offset":0,"count":4096,"ops":"read","err":-5}}"#
        ),
    );
    assert_eq!(n(&v, "failed"), 1);
    let b64 = json::base64_encode(&data[BS as usize..]);
    e.ok(
        "stage",
        &format!(r#"{{"path":"/f","data_version":{vers},"offset":4096,"data":"{b64}"}}"#),
    );
    e.settle();
    assert_eq!(r0.try_take().unwrap(), Err(Errno::EIO));
    assert_eq!(r1.try_take().unwrap().unwrap(), &data[BS as usize..]);
    let v = e.ok("data-waiting", "{}");
    assert!(v.get("entries").unwrap().as_array().unwrap().is_empty());
    // a mask works as well as names; bad errno values are refused
    assert_eq!(
        e.call(
            "data-wait-err",
            &format!(
                r#"{{"ino":{ino},"data_version":{vers},"offset":0,"count":4096,"ops":1,"err":5}}"#
            )
        )
        .0,
        400
    );
}

#[test]
fn walk_inodes_and_names() {
    let e = Env::new();
    let d = e
        .run(e.m().mkdir(&Cred::root(), 1, b"dir", 0o755))
        .unwrap()
        .ino;
    let a = e.file(d, "a", b"x");
    e.run(e.m().link(&Cred::root(), a, 1, "b\u{e9}".as_bytes()))
        .unwrap();
    e.run(e.m().link(&Cred::root(), a, d, b"raw\xff")).unwrap();
    e.run(e.m().sync()).unwrap();

    let v = e.ok("walk-inodes", r#"{"index":"data_seq","first":0,"last":-1}"#);
    let found: Vec<(u64, u64, u64)> = v
        .get("entries")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (n(x, "major"), n(x, "minor"), n(x, "ino")))
        .collect();
    let brute = e
        .run(e.m().walk_inodes(
            scoutvm_fs::posix::archive::WalkIndex::DataSeq,
            Default::default(),
            scoutvm_fs::posix::archive::WalkEntry::MAX,
            1 << 20,
        ))
        .unwrap();
    assert_eq!(
        found,
        brute
            .iter()
            .map(|e| (e.major, u64::from(e.minor), e.ino))
            .collect::<Vec<_>>()
    );
    assert!(found.iter().any(|f| f.2 == a));
    assert!(
        !found.iter().any(|f| f.2 == d),
        "directories have no data_seq"
    );
    // max and an upper bound limit the answer
    let v = e.ok(
        "walk-inodes",
        r#"{"index":"meta_seq","first":0,"last":-1,"max":1}"#,
    );
    assert_eq!(v.get("entries").unwrap().as_array().unwrap().len(), 1);
    let v = e.ok("walk-inodes", r#"{"index":"meta_seq","first":0,"last":0}"#);
    assert!(v.get("entries").unwrap().as_array().unwrap().is_empty());

    let v = e.ok("get-referring-entries", &format!(r#"{{"ino":{a}}}"#));
    let mut names: Vec<(u64, Vec<u8>, u64)> = v
        .get("entries")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                n(x, "dir"),
                json::bytes_of(x, "name").unwrap(),
                n(x, "type"),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            (1, "b\u{e9}".as_bytes().to_vec(), 8),
            (d, b"a".to_vec(), 8),
            (d, b"raw\xff".to_vec(), 8)
        ]
    );
    let v = e.ok("ino-path", r#"{"path":"/dir/a"}"#);
    let mut paths: Vec<Vec<u8>> = v
        .get("paths")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| json::bytes_of(x, "path").unwrap())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "b\u{e9}".as_bytes().to_vec(),
            b"dir/a".to_vec(),
            b"dir/raw\xff".to_vec()
        ]
    );
    // paging from the cursor after the first answer's first record
    let v = e.ok("ino-path", &format!(r#"{{"ino":{a},"max":1}}"#));
    let first = &v.get("paths").unwrap().as_array().unwrap()[0];
    let v = e.ok(
        "ino-path",
        &format!(
            r#"{{"ino":{a},"dir":{},"pos":{}}}"#,
            n(first, "dir"),
            n(first, "pos") + 1
        ),
    );
    assert_eq!(v.get("paths").unwrap().as_array().unwrap().len(), 2);
}

fn inos_of(v: &Value) -> Vec<u64> {
    v.get("inos")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn search_xattrs_pages_and_checks_its_fields() {
    let e = Env::new();
    let root = Cred::root();
    let mut tagged = Vec::new();
    for i in 0..7 {
        let ino = e.file(1, &format!("s{i}"), b"x");
        if i % 3 != 1 {
            e.run(e.m().setxattr(&root, ino, b"scoutfs.srch.tape", b"1", 0))
                .unwrap();
            tagged.push(ino);
        }
    }
    e.run(e.m().removexattr(&root, tagged[0], b"scoutfs.srch.tape"))
        .unwrap();
    let want = tagged[1..].to_vec();
    // the answer is the mount's own (the brute force of fs/tests/srch.rs)
    let m = e
        .run(e.m().search_xattrs(b"scoutfs.srch.tape", 0, u64::MAX, 1000))
        .unwrap();
    assert_eq!(m.inos, want);
    let v = e.ok("search-xattrs", r#"{"name":"scoutfs.srch.tape"}"#);
    assert_eq!(inos_of(&v), want);
    assert_eq!(n(&v, "last_ino"), m.last_ino);
    // an inode range
    let v = e.ok(
        "search-xattrs",
        &format!(
            r#"{{"name":"scoutfs.srch.tape","first_ino":{},"last_ino":{}}}"#,
            want[1], want[2]
        ),
    );
    assert_eq!(inos_of(&v), want[1..3]);
    // paging with max 1: every inode once, in order, from last_ino + 1
    let (mut from, mut paged, mut rounds) = (0u64, Vec::new(), 0);
    loop {
        rounds += 1;
        assert!(rounds < 100, "paging ends");
        let v = e.ok(
            "search-xattrs",
            &format!(r#"{{"name":"scoutfs.srch.tape","first_ino":{from},"max":1}}"#),
        );
        let got = inos_of(&v);
        assert!(got.len() <= 1, "{v:?}");
        paged.extend(got);
        match n(&v, "last_ino").checked_add(1) {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(paged, want);
    assert!(inos_of(&e.ok("search-xattrs", r#"{"name":"scoutfs.srch.other"}"#)).is_empty());
    // an untagged name is the filesystem's EINVAL
    let (s, v) = e.call("search-xattrs", r#"{"name":"user.plain"}"#);
    assert_eq!(s, 400, "{v:?}");
    assert_eq!(v.get("errname").unwrap().as_str(), Some("EINVAL"));
}

#[test]
fn xattr_totals_and_index() {
    let e = Env::new();
    let root = Cred::root();
    let a = e.file(1, "a", b"");
    let b = e.file(1, "b", b"");
    for (ino, name, val) in [
        (a, "scoutfs.totl.x.1.2.3", "7"),
        (b, "scoutfs.totl.y.1.2.3", "5"),
        (a, "scoutfs.totl.x.4.5.6", "1"),
        (a, "scoutfs.indx.t.4.99", ""),
        (b, "scoutfs.indx.t.4.99", ""),
        (b, "scoutfs.indx.t.200.1", ""),
    ] {
        e.run(
            e.m()
                .setxattr(&root, ino, name.as_bytes(), val.as_bytes(), 0),
        )
        .unwrap();
    }
    e.run(e.m().sync()).unwrap();

    let totals = |body: &str| -> Vec<([u64; 3], i64, i64)> {
        let v = e.ok("read-xattr-totals", body);
        v.get("entries")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                let nm: Vec<u64> = x
                    .get("name")
                    .unwrap()
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_u64().unwrap())
                    .collect();
                let i = |k: &str| x.get(k).unwrap().as_i64().unwrap();
                ([nm[0], nm[1], nm[2]], i("total"), i("count"))
            })
            .collect()
    };
    let all = totals("{}");
    assert_eq!(all, [([1, 2, 3], 12, 2), ([4, 5, 6], 1, 1)]);
    let mount: Vec<_> = e
        .run(e.m().read_xattr_totals([0; 3], 1000))
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.total, t.count))
        .collect();
    assert_eq!(all, mount);
    assert_eq!(totals(r#"{"from":[1,2,4]}"#), [([4, 5, 6], 1, 1)]);
    assert_eq!(totals(r#"{"max":1}"#), [([1, 2, 3], 12, 2)]);

    let index = |body: &str| -> Vec<(u64, u64, u64)> {
        let v = e.ok("read-xattr-index", body);
        v.get("entries")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (n(x, "major"), n(x, "minor"), n(x, "ino")))
            .collect()
    };
    let mut at_4_99 = vec![(4, 99, a), (4, 99, b)];
    at_4_99.sort();
    let mut all = at_4_99.clone();
    all.push((200, 1, b));
    assert_eq!(index("{}"), all);
    assert_eq!(
        index(r#"{"first_major":4,"first_minor":99,"last_major":4,"last_minor":99}"#),
        at_4_99
    );
    assert_eq!(
        index(&format!(
            r#"{{"first_major":4,"first_minor":99,"first_ino":{}}}"#,
            at_4_99[1].2
        )),
        all[1..]
    );
    assert_eq!(index(r#"{"max":1}"#), all[..1]);
    assert!(index(r#"{"first_major":5,"last_major":199}"#).is_empty());
}

#[test]
fn malformed_search_totals_and_index_requests() {
    let e = Env::new();
    for (op, body, why) in [
        ("search-xattrs", "{}", "missing field 'name'"),
        ("search-xattrs", r#"{"name":7}"#, "expected a string"),
        (
            "search-xattrs",
            r#"{"name":"scoutfs.srch.t","first_ino":5,"last_ino":4}"#,
            "past 'last_ino'",
        ),
        (
            "search-xattrs",
            r#"{"name":"scoutfs.srch.t","max":0}"#,
            "at least 1",
        ),
        (
            "search-xattrs",
            r#"{"name":"scoutfs.srch.t","path":"/"}"#,
            "unknown field 'path'",
        ),
        (
            "search-xattrs",
            r#"{"name":"scoutfs.srch.t","first_ino":-1}"#,
            "unsigned",
        ),
        ("read-xattr-totals", r#"{"from":[1,2]}"#, "[A,B,C]"),
        ("read-xattr-totals", r#"{"from":[1,2,-3]}"#, "[A,B,C]"),
        ("read-xattr-totals", r#"{"from":"1.2.3"}"#, "[A,B,C]"),
        ("read-xattr-totals", r#"{"max":0}"#, "at least 1"),
        (
            "read-xattr-totals",
            r#"{"to":[1,2,3]}"#,
            "unknown field 'to'",
        ),
        ("read-xattr-index", r#"{"first_major":256}"#, "0 to 255"),
        ("read-xattr-index", r#"{"last_minor":"x"}"#, "unsigned"),
        (
            "read-xattr-index",
            r#"{"first_major":5,"last_major":4}"#,
            "past the last",
        ),
        (
            "read-xattr-index",
            r#"{"first_major":4,"first_minor":2,"last_major":4,"last_minor":1}"#,
            "past the last",
        ),
        (
            "read-xattr-index",
            r#"{"major":1}"#,
            "unknown field 'major'",
        ),
        ("read-xattr-index", r#"{"max":0}"#, "at least 1"),
    ] {
        let (s, v) = e.call(op, body);
        assert_eq!(s, 400, "{op} {body}: {v:?}");
        let reason = v.get("error").unwrap().as_str().unwrap();
        assert!(reason.contains(why), "{op} {body}: {reason}");
    }
    // a name past the xattr limit is the filesystem's to refuse
    let long = format!(r#"{{"name":"scoutfs.srch.{}"}}"#, "n".repeat(300));
    assert_eq!(e.call("search-xattrs", &long).0, 400);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
    /// Random bodies to every endpoint: an answer, never a panic, and a
    /// 4xx unless the body happened to be a valid request.
    #[test]
    fn the_handler_never_panics(op in 0usize..ENDPOINTS.len(), body in "[{}\\[\\]\":,0-9a-z_ /.-]{0,80}") {
        let e = Env::new();
        let (s, _) = e.call(ENDPOINTS[op], &body);
        prop_assert!(s == 200 || (400..500).contains(&s), "{} {}: {}", ENDPOINTS[op], body, s);
    }
}

// ---------------------------------------------------------------------------
// One connection over an in-memory stream

#[derive(Default)]
struct Pipe {
    to_server: RefCell<VecDeque<u8>>,
    to_client: RefCell<Vec<u8>>,
    closed: Cell<bool>,
    ready: Notify,
}

impl ByteStream for Pipe {
    async fn read(&self, buf: &mut [u8]) -> Result<usize, StreamClosed> {
        loop {
            let n = self.ready.notified();
            {
                let mut q = self.to_server.borrow_mut();
                if !q.is_empty() {
                    // a few bytes at a time: requests arrive split
                    let k = q.len().min(buf.len()).min(7);
                    for (i, b) in q.drain(..k).enumerate() {
                        buf[i] = b;
                    }
                    return Ok(k);
                }
            }
            if self.closed.get() {
                return Ok(0);
            }
            n.await;
        }
    }

    async fn write_all(&self, buf: &[u8]) -> Result<(), StreamClosed> {
        if self.closed.get() {
            return Err(StreamClosed);
        }
        self.to_client.borrow_mut().extend_from_slice(buf);
        Ok(())
    }

    fn close(&self) {
        self.closed.set(true);
        self.ready.notify();
    }
}

fn statuses(out: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(out);
    text.match_indices("HTTP/1.1 ")
        .map(|(i, _)| text[i + 9..i + 12].parse().unwrap())
        .collect()
}

#[test]
fn a_connection_answers_in_order_and_closes_when_asked() {
    let e = Env::new();
    let pipe = Rc::new(Pipe::default());
    let mut input = post("/v1/stat", Some(TOKEN), r#"{"path":"/"}"#);
    input.extend(post("/v1/stat", Some("bad-token!"), r#"{"path":"/"}"#));
    input.extend(
        format!(
            "POST /v1/data-waiting HTTP/1.1\r\nAuthorization: Bearer {}\r\nExpect: 100-continue\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{}{}",
            TOKEN, r#"{"max": 1000}"#, " ".repeat(27)
        )
        .into_bytes(),
    );
    input.extend(post("/v1/stat", Some(TOKEN), r#"{"path":"/"}"#));
    pipe.to_server.borrow_mut().extend(input);
    let (api, p) = (e.api.clone(), pipe.clone());
    let task =
        e.ex.handle()
            .spawn(async move { super::serve(&api, &*p).await })
            .unwrap();
    e.settle();
    assert!(task.try_take().is_some(), "the connection ended");
    assert!(pipe.closed.get());
    // 100 Continue once the head asked for it and the body was missing;
    // the fourth request came after Connection: close
    assert_eq!(statuses(&pipe.to_client.borrow()), [200, 401, 100, 200]);

    // a framing error is answered and closes
    let pipe = Rc::new(Pipe::default());
    pipe.to_server
        .borrow_mut()
        .extend(b"POST /v1/stat HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".iter());
    let (api, p) = (e.api.clone(), pipe.clone());
    let task =
        e.ex.handle()
            .spawn(async move { super::serve(&api, &*p).await })
            .unwrap();
    e.settle();
    assert!(task.try_take().is_some());
    assert_eq!(statuses(&pipe.to_client.borrow()), [501]);

    // end of stream mid-request ends the connection quietly
    let pipe = Rc::new(Pipe::default());
    pipe.to_server.borrow_mut().extend(b"POST /v1/st".iter());
    pipe.closed.set(true);
    let (api, p) = (e.api.clone(), pipe.clone());
    let task =
        e.ex.handle()
            .spawn(async move { super::serve(&api, &*p).await })
            .unwrap();
    e.settle();
    assert!(task.try_take().is_some());
    assert!(pipe.to_client.borrow().is_empty());
}

#[test]
fn responses_are_well_formed() {
    let r = Response::error(400, "bad \"thing\"");
    let bytes = r.encode();
    let text = String::from_utf8(bytes).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(len, body.len());
    assert_eq!(
        json::parse(body.as_bytes())
            .unwrap()
            .get("error")
            .unwrap()
            .as_str(),
        Some("bad \"thing\"")
    );
    let _ = Request {
        method: String::new(),
        path: String::new(),
        authorization: None,
        body: Vec::new(),
        close: false,
    };
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]
    /// Random bytes after a valid request, through a whole connection:
    /// the connection ends (or waits for more) without a panic, and
    /// every answer is a whole HTTP response.
    #[test]
    fn a_connection_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..400)) {
        let e = Env::new();
        let pipe = Rc::new(Pipe::default());
        let mut input = post("/v1/stat", Some(TOKEN), r#"{"path":"/"}"#);
        input.extend_from_slice(&tail);
        pipe.to_server.borrow_mut().extend(input);
        let (api, p) = (e.api.clone(), pipe.clone());
        let task = e.ex.handle().spawn(async move { super::serve(&api, &*p).await }).unwrap();
        e.settle();
        {
            let out = pipe.to_client.borrow();
            let st = statuses(&out);
            prop_assert!(!st.is_empty() && st[0] == 200, "{}", String::from_utf8_lossy(&out));
        }
        // the rest was answered and closed, or waits for more: end it
        pipe.close();
        e.settle();
        prop_assert!(task.try_take().is_some(), "the connection ended");
    }
}
