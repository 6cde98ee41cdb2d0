//! A node keeps running its other tasks (heartbeats, replies) while it
//! commits and merges a large transaction: the client commit, the server
//! commit and the merge work yield between bounded steps. Counted in
//! executor runs, never in time, so the test is deterministic.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::*;
use scoutvm_fs::posix::mount::MountOptions;
use scoutvm_fs::posix::types::Cred;
use scoutvm_fs::runtime::exec::yield_now;

#[test]
fn other_tasks_run_during_a_large_commit_and_merge() {
    const FILES: u32 = 3000;
    let v = RealVol::new(
        16 << 30,
        1 << 30,
        5,
        test_node_options(MountOptions::default()),
    );
    let c = Cred::root();
    let (m, node) = v.mount();
    let d = block_on(m.mkdir(&c, 1, b"d", 0o755)).unwrap().ino;
    for i in 0..FILES {
        block_on(m.create(&c, d, format!("f{i:05}").as_bytes(), 0o644)).unwrap();
    }

    // a task that wants a turn in every executor run, as a heartbeat would
    let turns = Rc::new(Cell::new(0u64));
    let t = turns.clone();
    let ticker = handle()
        .spawn(async move {
            loop {
                t.set(t.get() + 1);
                yield_now().await;
            }
        })
        .unwrap();

    // one commit of every dirty item (several items per create)
    block_on(m.sync()).unwrap();
    let during_commit = turns.replace(0);
    // the merge of all of it, request by request
    block_on(node.start_merge()).unwrap();
    turns.set(0);
    while block_on(node.merge_once()).unwrap() {}
    let during_merge = turns.get();
    ticker.abort();

    assert!(
        during_commit >= 20,
        "the commit ran in {during_commit} executor runs"
    );
    assert!(
        during_merge >= 20,
        "the merge ran in {during_merge} executor runs"
    );

    // and the results are those of an unbroken commit and merge
    merge_until_idle(&node);
    assert_eq!(readdir_all(&m, d, 500).len(), FILES as usize);
    drop(m);
    block_on(node.unmount()).unwrap();
    v.fsck();
    let (m, node) = v.mount();
    let mut names: Vec<Vec<u8>> = readdir_all(&m, d, 500)
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    let want: Vec<Vec<u8>> = (0..FILES)
        .map(|i| format!("f{i:05}").into_bytes())
        .collect();
    assert_eq!(names, want);
    drop(m);
    block_on(node.unmount()).unwrap();
    v.fsck();
}
