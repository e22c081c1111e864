//! The source layout's rule, checked: imports point down the tree — no module imports,
//! directly or through others, a module that imports it (tests aside).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Every module of `src` (by path, `events::session`) with its text, tests left out.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
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
            let mut parts: Vec<&str> = rel.split('/').collect();
            if parts.last() == Some(&"mod") || parts == ["main"] {
                parts.pop();
            }
            // Files included with #[path] into a parent's test or helper module.
            if parts
                .last()
                .is_some_and(|p| p.ends_with("_tests") || *p == "filter_parse")
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source file readable");
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            found.insert(parts.join("::"), text);
        }
    }
    found
}

/// The paths a text names after `crate::`, with `use crate::{a::b, c::{d, e}}` expanded.
fn crate_paths(text: &str) -> Vec<String> {
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
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
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
        }
    }
    paths
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    assert!(
        modules.contains_key("events::session") && modules.len() > 30,
        "the tree was read: {:?}",
        modules.keys().collect::<Vec<_>>()
    );
    // The longest module path each import names.
    let owner = |path: &str| -> Option<String> {
        let segs: Vec<&str> = path.split("::").collect();
        (1..=segs.len())
            .rev()
            .map(|n| segs[..n].join("::"))
            .find(|m| modules.contains_key(m))
    };
    let edges: BTreeMap<&String, BTreeSet<String>> = modules
        .iter()
        .map(|(name, text)| {
            let targets = crate_paths(text)
                .iter()
                .filter_map(|p| owner(p))
                .filter(|t| !t.is_empty() && t != name && !name.starts_with(&format!("{t}::")))
                .collect();
            (name, targets)
        })
        .collect();
    // A module reaches itself only through a cycle.
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = edges[start]
            .iter()
            .map(|t| (t.clone(), vec![(*start).clone(), t.clone()]))
            .collect();
        while let Some((at, path)) = stack.pop() {
            assert!(&at != *start, "import cycle: {}", path.join(" -> "));
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
}

#[test]
fn grouped_imports_are_expanded() {
    let paths = crate_paths(
        "use crate::{\n    a::b,\n    c::{d::E, f},\n    g as h,\n};\nx = crate::i::j(1);",
    );
    assert_eq!(paths, ["a::b", "c::d::E", "c::f", "g", "i::j"]);
}
