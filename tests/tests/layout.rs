//! The house rules on imports, checked from the sources (docs/layout.md):
//! each `fs` subsystem imports only the subsystems below it, and the
//! modules of the kernel and of the 9P server form no cycle; `unsafe`
//! lives only where the hardware is (drivers/, kernel/, and the UEFI
//! loader's firmware side, loader/src/main.rs), each use with a
//! `// SAFETY:` comment, and the crates without hardware forbid it.
//!
//! Comments and `#[cfg(test)]` modules are not scanned: unit tests may
//! use test support from anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use scoutvm_tests::workspace_root;

/// The non-test, non-comment code of a source file.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every `prefix::name` in `code` (names are lowercase identifiers).
fn referenced(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            names.insert(name);
        }
    }
    names
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The first cycle in `graph`, if any, as the list of nodes around it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|s| s == n).expect("on the stack");
                let mut cycle = stack[at..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

/// Module-level import graph of the flat modules in `dir` through
/// `prefix` (`crate::` or `super::`).
fn module_graph(dir: &Path, prefix: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let mods: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut graph = BTreeMap::new();
    for f in &files {
        let me = f.file_stem().unwrap().to_string_lossy().into_owned();
        let code = code_of(&fs::read_to_string(f).unwrap());
        let deps: BTreeSet<String> = referenced(&code, prefix)
            .into_iter()
            .filter(|m| mods.contains(m) && *m != me)
            .collect();
        graph.insert(me, deps);
    }
    graph
}

#[test]
fn fs_subsystems_import_only_what_is_below_them() {
    // What each subsystem may import: docs/layout.md draws the same
    // picture. `counter` is the crate-root counter! macro.
    let allowed: &[(&str, &[&str])] = &[
        ("runtime", &[]),
        ("format", &["errno", "runtime"]),
        ("storage", &["errno", "format", "runtime"]),
        ("cluster", &["errno", "format", "runtime", "storage"]),
        (
            "server",
            &["cluster", "errno", "format", "runtime", "storage"],
        ),
        (
            "posix",
            &["cluster", "errno", "format", "runtime", "storage"],
        ),
        (
            "client",
            &[
                "cluster", "errno", "format", "posix", "runtime", "server", "storage",
            ],
        ),
        (
            "tools",
            &[
                "client", "cluster", "errno", "format", "posix", "runtime", "server", "storage",
            ],
        ),
    ];
    let src = workspace_root().join("fs/src");
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            seen.insert(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    for (sub, ok) in allowed {
        assert!(
            seen.contains(*sub),
            "fs/src/{sub} is gone: update this test and docs/layout.md"
        );
        let mut files = Vec::new();
        rust_files(&src.join(sub), &mut files);
        for f in files {
            let code = code_of(&fs::read_to_string(&f).unwrap());
            for dep in referenced(&code, "crate::") {
                if dep != *sub && dep != "counter" && !ok.contains(&dep.as_str()) {
                    problems.push(format!("{} imports crate::{dep}", f.display()));
                }
            }
        }
    }
    // A new folder must be placed in the picture.
    for dir in &seen {
        assert!(
            dir == "sim" || allowed.iter().any(|(s, _)| s == dir),
            "fs/src/{dir} is not in the layering table"
        );
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn kernel_modules_form_no_cycle() {
    let graph = module_graph(&workspace_root().join("kernel/src"), "crate::");
    assert!(graph.len() > 10, "kernel modules found: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("kernel import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn p9_modules_form_no_cycle() {
    let graph = module_graph(&workspace_root().join("net/src/p9"), "super::");
    assert!(
        graph.contains_key("conn") && graph.contains_key("ops"),
        "{graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("9P import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_checker_sees_a_cycle_and_a_forbidden_import() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["c".to_string()].into());
    g.insert("c".into(), ["a".to_string()].into());
    assert_eq!(find_cycle(&g).unwrap(), vec!["a", "b", "c", "a"]);
    g.insert("c".into(), BTreeSet::new());
    assert!(find_cycle(&g).is_none());
    let code = code_of("use crate::server::role;\n// crate::posix in a comment\nfn f() { crate::storage::btree::x(); $crate::runtime::y }\n#[cfg(test)]\nmod tests { use crate::sim; }\n");
    let refs = referenced(&code, "crate::");
    assert_eq!(
        refs,
        ["server", "storage"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

/// Where `unsafe` may appear in the appliance's crates: the drivers, the
/// kernel binary, and the firmware side of the UEFI loader. The pure
/// crates (and the pure halves of kernel and loader) forbid it.
const UNSAFE_ALLOWED: [&str; 3] = ["drivers/src", "kernel/src", "loader/src/main.rs"];
const UNSAFE_FORBIDDEN_BY_ATTRIBUTE: [&str; 4] = [
    "fs/src/lib.rs",
    "net/src/lib.rs",
    "kernel/src/lib.rs",
    "loader/src/lib.rs",
];

/// `(line number, line)` of each `unsafe` block or impl in `text` with no
/// `SAFETY:` comment on its line, within the 3 lines above, or in the
/// comment block those lines end. (`unsafe fn`
/// declarations state their contract in docs; the blocks inside and the
/// calls to them are what is checked.)
fn unsafe_without_reason(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut bad = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        let code = t.split("//").next().unwrap_or("");
        if !(code.contains("unsafe {") || code.contains("unsafe impl")) {
            continue;
        }
        // the line itself, up to 3 lines above, and the whole comment
        // block those reach into
        let mut j = i;
        let mut reason = line.contains("SAFETY:");
        while !reason && j > 0 {
            j -= 1;
            let above = lines[j].trim_start();
            if i - j > 3 && !above.starts_with("//") {
                break;
            }
            reason = above.contains("SAFETY:");
        }
        if !reason {
            bad.push((i + 1, line.to_string()));
        }
    }
    bad
}

#[test]
fn unsafe_only_where_the_hardware_is_and_always_with_a_reason() {
    let root = workspace_root();
    for f in UNSAFE_FORBIDDEN_BY_ATTRIBUTE {
        let text = fs::read_to_string(root.join(f)).unwrap();
        assert!(
            text.contains("#![forbid(unsafe_code)]"),
            "{f} must forbid unsafe_code"
        );
    }
    let mut files = Vec::new();
    for dir in [
        "fs/src",
        "net/src",
        "drivers/src",
        "kernel/src",
        "loader/src",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut seen_allowed = 0;
    for path in files {
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let text = fs::read_to_string(&path).unwrap();
        if !code_of(&text).contains("unsafe") {
            continue;
        }
        let allowed = UNSAFE_ALLOWED.iter().any(|a| rel.starts_with(a));
        // `forbid(unsafe_code)` itself names the word
        let only_forbid = code_of(&text)
            .lines()
            .filter(|l| l.contains("unsafe"))
            .all(|l| l.contains("forbid(unsafe_code)"));
        if only_forbid {
            continue;
        }
        assert!(
            allowed,
            "unsafe code in {rel}: only {UNSAFE_ALLOWED:?} may hold it"
        );
        seen_allowed += 1;
        let bad = unsafe_without_reason(&text);
        assert!(
            bad.is_empty(),
            "{rel}: unsafe without a SAFETY comment: {bad:?}"
        );
    }
    assert!(seen_allowed > 5, "the scan found the drivers and kernel");
}

#[test]
fn the_unsafe_checker_sees_a_missing_reason() {
    let good =
        "fn f() {\n    // SAFETY: port 0x80 is a debug port.\n    unsafe { outb(0x80, 1) };\n}\n";
    assert!(unsafe_without_reason(good).is_empty());
    let bad = "fn f() {\n    let x = 1;\n    unsafe { outb(0x80, x) };\n}\n";
    assert_eq!(unsafe_without_reason(bad).len(), 1);
    let far = "// SAFETY: too far above.\n\n\n\n\nunsafe impl Send for X {}\n";
    assert_eq!(unsafe_without_reason(far).len(), 1);
}
