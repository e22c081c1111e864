//! The source layout's rule, checked: imports point down the tree. The top folders stand in
//! the order data flows ([`FOLDERS`], bottom first) and each imports only folders below it;
//! inside them, no module imports, directly or through others, a module that imports it.
//! Imports are read from `crate::` and `super::` paths alike (tests aside).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The top folders, bottom first: each may import only those before it.
const FOLDERS: [&str; 9] = [
    "text", "model", "host", "kernel", "decode", "cli", "state", "output", "run",
];

/// Every module of `src` (by path, `run::session`) with its text, tests left out. A file
/// included with `#[path]` is named as the module that includes it declares it
/// (`session_seed.rs` is `run::session::seed`).
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("source directory readable") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).expect("below src");
            let Some(rel) = rel.to_str().and_then(|r| r.strip_suffix(".rs")) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).expect("source file readable");
            files.insert(rel.to_string(), text);
        }
    }
    // `#[path = "x.rs"] mod name;` in a file: x.rs is that file's module's child `name`.
    let mut included = BTreeMap::new();
    for (rel, text) in &files {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("#[path = \"") {
            rest = &rest[at + 10..];
            let Some(end) = rest.find('"') else { break };
            let target = &rest[..end];
            let name = rest[end..]
                .split_once("mod ")
                .map(|(_, after)| after.split(|c: char| !c.is_alphanumeric() && c != '_'))
                .and_then(|mut words| words.next())
                .unwrap_or_default();
            let dir = rel.rsplit_once('/').map_or("", |(d, _)| d);
            let file = if dir.is_empty() {
                target.trim_end_matches(".rs").to_string()
            } else {
                format!("{dir}/{}", target.trim_end_matches(".rs"))
            };
            included.insert(file, format!("{}::{name}", module_name(rel)));
        }
    }
    let mut found = BTreeMap::new();
    for (rel, text) in files {
        let name = included
            .get(&rel)
            .cloned()
            .unwrap_or_else(|| module_name(&rel));
        if name.ends_with("tests") || name.split("::").any(|p| p.ends_with("_tests")) {
            continue;
        }
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        found.insert(name, text);
    }
    found
}

/// A file's module path: `run/session` → `run::session`, `run/mod` → `run`, `main` → ``.
fn module_name(rel: &str) -> String {
    let mut parts: Vec<&str> = rel.split('/').collect();
    if parts.last() == Some(&"mod") || parts == ["main"] {
        parts.pop();
    }
    parts.join("::")
}

/// The paths a text names after `prefix` (`crate::` or `super::`), with `use
/// crate::{a::b, c::{d, e}}` expanded.
fn prefixed_paths(text: &str, prefix: &str) -> Vec<String> {
    fn expand(prefix: &str, body: &str, out: &mut Vec<String>) {
        let (mut depth, mut item) = (0, String::new());
        let mut items = Vec::new();
        for c in body.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(std::mem::take(&mut item));
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        items.push(item);
        for item in items {
            let item = item.split(" as ").next().unwrap_or("");
            let item: String = item.split_whitespace().collect();
            match item.split_once('{') {
                Some((head, rest)) => {
                    let inner = rest.strip_suffix('}').unwrap_or(rest);
                    expand(&format!("{prefix}{head}"), inner, out);
                }
                None if !item.is_empty() => out.push(format!("{prefix}{item}")),
                None => {}
            }
        }
    }
    let mut paths = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(prefix).map(|at| from + at) {
        from = at + prefix.len();
        // A whole path only: not the `super::` inside `super::super::`.
        let word_start = !text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        if !word_start {
            continue;
        }
        let rest = &text[from..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = body
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(body.len(), |(i, _)| i);
            expand("", &body[..end], &mut paths);
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            paths.push(rest[..end].trim_end_matches(':').to_string());
            from += end;
        }
    }
    paths
}

/// Each module's imports of other modules (the longest module path each import names;
/// a module's own ancestors and itself left out).
fn import_edges(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let owner = |path: &str| -> Option<String> {
        let segs: Vec<&str> = path.split("::").collect();
        (1..=segs.len())
            .rev()
            .map(|n| segs[..n].join("::"))
            .find(|m| modules.contains_key(m))
    };
    modules
        .iter()
        .map(|(name, text)| {
            let segs: Vec<&str> = name.split("::").filter(|s| !s.is_empty()).collect();
            // `super` is the parent module, whether the file is `a/b.rs` or `a/b/mod.rs`.
            let parent_len = segs.len().saturating_sub(1);
            let mut paths = prefixed_paths(text, "crate::");
            for p in prefixed_paths(text, "super::") {
                let mut base = segs[..parent_len].to_vec();
                let mut p = p.as_str();
                while let Some(rest) = p.strip_prefix("super::") {
                    base.pop();
                    p = rest;
                }
                base.push(p);
                paths.push(base.join("::"));
            }
            let targets = paths
                .iter()
                .filter_map(|p| owner(p))
                .filter(|t| !t.is_empty() && t != name && !name.starts_with(&format!("{t}::")))
                .collect();
            (name.clone(), targets)
        })
        .collect()
}

/// The first cycle found in `edges` (as the path that closes it), if any.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = edges[start]
            .iter()
            .map(|t| (t.clone(), vec![start.clone(), t.clone()]))
            .collect();
        while let Some((at, path)) = stack.pop() {
            if &at == start {
                return Some(path);
            }
            if !seen.insert(at.clone()) {
                continue;
            }
            for next in edges.get(&at).into_iter().flatten() {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

/// The top folder of a module (`run::session` → `run`; `main`'s module is ``).
fn folder(module: &str) -> &str {
    module.split("::").next().unwrap_or("")
}

/// Folder → the folders it imports, from the module edges.
fn folder_edges(edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in edges {
        for to in targets {
            let (a, b) = (folder(from), folder(to));
            if a != b && !a.is_empty() {
                folders
                    .entry(a.to_string())
                    .or_default()
                    .insert(b.to_string());
            }
        }
    }
    folders
}

/// Imports that point up: (folder, folder it imports) where the second is not below the first
/// in [`FOLDERS`].
fn upward(folders: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String)> {
    let rank = |f: &str| FOLDERS.iter().position(|&x| x == f);
    folders
        .iter()
        .flat_map(|(from, tos)| tos.iter().map(move |to| (from.clone(), to.clone())))
        .filter(|(from, to)| match (rank(from), rank(to)) {
            (Some(a), Some(b)) => b >= a,
            _ => true,
        })
        .collect()
}

#[test]
fn imports_point_down_the_tree() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    assert!(
        modules.contains_key("run::session")
            && modules.contains_key("run::session::seed")
            && modules.len() > 30,
        "the tree was read: {:?}",
        modules.keys().collect::<Vec<_>>()
    );
    let tops: BTreeSet<&str> = modules.keys().map(|m| folder(m)).collect();
    let tops: Vec<&str> = tops.into_iter().filter(|t| !t.is_empty()).collect();
    let mut listed: Vec<&str> = FOLDERS.to_vec();
    listed.sort_unstable();
    assert_eq!(tops, listed, "every top folder has its place in FOLDERS");
    let edges = import_edges(&modules);
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
    let folders = folder_edges(&edges);
    let up = upward(&folders);
    assert!(up.is_empty(), "folders importing upward: {up:?}");
}

/// The checks fail on what they are there to catch: a folder cycle planted through a
/// `super::super::` path, and a module cycle inside one folder.
#[test]
fn a_planted_cycle_is_caught() {
    let planted: BTreeMap<String, String> = [
        ("model::tcp", "pub struct Endpoint;"),
        ("state::timewait", "use crate::model::tcp::Endpoint;"),
        // model importing state through super:: from model::tcp's sibling.
        (
            "model::events",
            "use super::super::state::timewait::Tracker;",
        ),
        ("output::json", "use super::json_alert::alert_line;"),
        ("output::json_alert", "use super::json::hex;"),
    ]
    .into_iter()
    .map(|(m, t)| (m.to_string(), t.to_string()))
    .collect();
    let edges = import_edges(&planted);
    assert_eq!(
        edges["model::events"],
        BTreeSet::from(["state::timewait".to_string()]),
        "super::super:: resolved"
    );
    let cycle = find_cycle(&edges).expect("the json pair is a cycle");
    assert!(cycle.contains(&"output::json".to_string()), "{cycle:?}");
    let folders = folder_edges(&edges);
    assert_eq!(
        find_cycle(&folders),
        Some(vec!["model".into(), "state".into(), "model".into()]),
        "{folders:?}"
    );
    assert_eq!(
        upward(&folders),
        [("model".to_string(), "state".to_string())]
    );
}

#[test]
fn grouped_imports_are_expanded() {
    let paths = prefixed_paths(
        "use crate::{\n    a::b,\n    c::{d::E, f},\n    g as h,\n};\nx = crate::i::j(1);",
        "crate::",
    );
    assert_eq!(paths, ["a::b", "c::d::E", "c::f", "g", "i::j"]);
    assert_eq!(
        prefixed_paths("use super::{x, y::Z}; super::super::w()", "super::"),
        ["x", "y::Z", "super::w"]
    );
}
