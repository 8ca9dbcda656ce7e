//! The shape of the daemons' source, checked on every run: no two modules depend on each other (directly or
//! round a longer loop), and no source file outside tests grows past 600 lines.
//!
//! Dependencies are read from the source: every `crate::a::b` and `super::x` path is resolved to the deepest
//! module it names. A module using its own ancestor or descendant is how Rust modules share private items
//! and is not counted; any other use is an edge between the two sibling subtrees that hold the modules
//! (below their lowest common ancestor), and a loop of such edges is a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 4] = ["common", "hcpe", "hag", "testkit"];
const MAX_LINES: usize = 600;

type ModPath = Vec<String>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Every non-test source file of `src` by module path (`lib.rs`/`main.rs`/`mod.rs` name their directory).
fn modules(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src").with_extension("");
            let mut segs: ModPath = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            if segs.first().is_some_and(|s| s == "bin") || segs.last().is_some_and(|s| s == "tests") {
                continue;
            }
            if segs.last().is_some_and(|s| s == "mod" || s == "lib" || s == "main") {
                segs.pop();
            }
            out.insert(segs, path);
        }
    }
    out
}

/// The source without its inline test module and without comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The modules `me`'s code names through `crate::` and `super::` paths.
fn references(code: &str, me: &ModPath, mods: &BTreeMap<ModPath, PathBuf>) -> BTreeSet<ModPath> {
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    for (at, _) in code.match_indices("::") {
        // The identifier before this `::` starts a path when it is `crate` or `super`.
        let start = code[..at].rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
        let head = &code[start..at];
        if head != "crate" && head != "super" {
            continue;
        }
        if start > 1 && &bytes[start - 2..start] == b"::" {
            continue; // inside a longer path, counted from its head
        }
        let tail: String =
            code[at + 2..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        let mut path: ModPath = if head == "crate" { Vec::new() } else { me[..me.len().saturating_sub(1)].to_vec() };
        for seg in tail.split("::").filter(|s| !s.is_empty()) {
            if seg == "super" {
                path.pop();
            } else {
                path.push(seg.to_owned());
            }
        }
        while !path.is_empty() && !mods.contains_key(&path) {
            path.pop();
        }
        out.insert(path);
    }
    out
}

/// Strongly connected components of more than one node (Tarjan).
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        edges: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'a ModPath, (usize, usize)>,
        stack: Vec<&'a ModPath>,
        next: usize,
        found: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a ModPath) {
        s.index.insert(v, (s.next, s.next));
        s.next += 1;
        s.stack.push(v);
        for w in s.edges.get(v).into_iter().flatten() {
            match s.index.get(w).copied() {
                None => {
                    visit(s, w);
                    let low = s.index[w].1.min(s.index[v].1);
                    s.index.get_mut(v).expect("visited").1 = low;
                }
                Some((w_index, _)) if s.stack.contains(&w) => {
                    let low = w_index.min(s.index[v].1);
                    s.index.get_mut(v).expect("visited").1 = low;
                }
                Some(_) => {}
            }
        }
        if s.index[v].0 == s.index[v].1 {
            let at = s.stack.iter().rposition(|x| *x == v).expect("on the stack");
            let comp: Vec<ModPath> = s.stack.drain(at..).cloned().collect();
            if comp.len() > 1 {
                s.found.push(comp);
            }
        }
    }
    let mut s = State { edges, index: BTreeMap::new(), stack: Vec::new(), next: 0, found: Vec::new() };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_two_modules_depend_on_each_other() {
    let mut report = Vec::new();
    for krate in CRATES {
        let mods = modules(&workspace().join(krate).join("src"));
        assert!(mods.len() > 3, "{krate}: found only {mods:?}");
        let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for (me, file) in &mods {
            let text = std::fs::read_to_string(file).expect("read source");
            for target in references(&code(&text), me, &mods) {
                let common = me.iter().zip(&target).take_while(|(a, b)| a == b).count();
                if common == me.len() || common == target.len() {
                    continue; // an ancestor or a descendant
                }
                edges.entry(me[..=common].to_vec()).or_default().insert(target[..=common].to_vec());
            }
        }
        for cycle in cycles(&edges) {
            report.push(format!("{krate}: {}", cycle.iter().map(|m| m.join("::")).collect::<Vec<_>>().join(" <-> ")));
        }
    }
    assert!(report.is_empty(), "module cycles:\n{}", report.join("\n"));
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let m = |s: &str| s.split("::").map(str::to_owned).collect::<ModPath>();
    let edges = BTreeMap::from([
        (m("config"), BTreeSet::from([m("uplink")])),
        (m("uplink"), BTreeSet::from([m("config")])),
        (m("conn"), BTreeSet::from([m("uplink")])),
    ]);
    assert_eq!(cycles(&edges), [vec![m("config"), m("uplink")]]);
}

#[test]
fn no_source_file_outside_tests_is_over_600_lines() {
    let mut long = Vec::new();
    for krate in CRATES {
        for file in modules(&workspace().join(krate).join("src")).values() {
            let lines = std::fs::read_to_string(file).expect("read source").lines().count();
            if lines > MAX_LINES {
                long.push(format!("{} ({lines} lines)", file.display()));
            }
        }
    }
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}
