//! The library's layers point one way (issue 19): a module imports only from its own layer or
//! below, and no modules import each other in a circle — neither the top-level modules nor the
//! parts of a directory module (`act::compute` and `act::k8s`, say). Read from the sources:
//! every `crate::`, `super::` and `self::` path outside test code.
//!
//! To move a module, change [`LAYERS`] and say why in the commit; a new top-level module must
//! be placed in it (the test fails until it is).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top. A module may import from its own layer and the layers before it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundation",
        &["text", "names", "error", "trace", "shutdown"],
    ),
    ("configuration", &["select", "config", "join"]),
    ("decode and decide (pure)", &["event", "plan", "privilege"]),
    (
        "observe and act (I/O)",
        &["act", "bus", "observe", "locate", "telemetry"],
    ),
    ("arrive and sweep", &["adapter", "sweep"]),
    ("services", &["handlers", "startup"]),
];

/// Test support (feature `testing`): may import anything; nothing but tests imports it.
const TEST_SUPPORT: &str = "testing";

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// One source file: its module path and its text without comments and test code.
struct File {
    module: Vec<String>,
    text: String,
}

/// Removes `//` comments (doc comments included) and string literals' contents, so a path in
/// a comment or a message is not an import.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut chars = src.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            if c == '\\' {
                chars.next();
            } else if c == '"' {
                in_str = false;
                out.push('"');
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push('"');
            }
            '/' if chars.peek() == Some(&'/') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '\'' => {
                // A char literal ('"' or '{') must not open a string or a block; a lifetime is
                // kept as it is.
                out.push(c);
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with("\\") || rest.chars().nth(1) == Some('\'') {
                    for n in chars.by_ref() {
                        if n == '\'' {
                            break;
                        }
                    }
                    out.push('\'');
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Removes every `#[cfg(test)]` item: an inline `mod x { … }` (balanced braces), or a
/// one-line item (`use …;`, `mod x;`). Returns the text and the names of test-only file
/// modules it declared.
fn strip_test_code(src: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut test_mods = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = rest[at + "#[cfg(test)]".len()..].trim_start();
        let end = match (after.find('{'), after.find(';')) {
            (b, Some(s)) if b.is_none_or(|b| s < b) => {
                if let Some(name) = after[..s].trim().strip_prefix("mod ") {
                    test_mods.push(name.trim().to_string());
                }
                s + 1
            }
            (Some(b), _) => {
                let mut depth = 0usize;
                let mut close = after.len();
                for (i, ch) in after[b..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                close = b + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                close
            }
            (None, _) => after.len(),
        };
        rest = &after[end..];
    }
    out.push_str(rest);
    (out, test_mods)
}

/// Every file of the library but test code, keyed by module path.
fn read_library(root: &Path) -> Vec<File> {
    let mut raw: BTreeMap<Vec<String>, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(root).expect("under src");
            let mut module: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).expect("readable source");
            raw.insert(module, text);
        }
    }
    files_of(&raw)
}

/// The files of a library given as module path → source, without test code and test-only
/// modules.
fn files_of(raw: &BTreeMap<Vec<String>, String>) -> Vec<File> {
    let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut files = Vec::new();
    for (module, text) in raw {
        let (code, test_mods) = strip_test_code(&strip_comments(text));
        for m in test_mods {
            let mut p = module.clone();
            p.push(m);
            test_only.insert(p);
        }
        files.push(File {
            module: module.clone(),
            text: code,
        });
    }
    files.retain(|f| {
        !test_only.iter().any(|t| f.module.starts_with(t))
            && f.module.first().map(String::as_str) != Some(TEST_SUPPORT)
    });
    files
}

/// The paths a text imports or names from the crate, as absolute module paths (at most the
/// first three segments), resolving `super::` and `self::` against `module`.
fn paths(text: &str, module: &[String], is_dir_module: bool) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let ident_start = |i: usize| {
        i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':')
    };
    for kw in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(kw) {
            let at = from + pos;
            from = at + kw.len();
            if !ident_start(at) {
                continue;
            }
            let base: Vec<String> = match kw {
                "crate::" => vec![],
                // In `x/mod.rs` (module `x`), `super` is x's parent; in `x/y.rs`, it is `x`.
                "super::" => {
                    let mut m = module.to_vec();
                    let _ = is_dir_module;
                    m.pop();
                    // Chains of `super::super::`.
                    let mut rest = &text[from..];
                    while let Some(r) = rest.strip_prefix("super::") {
                        m.pop();
                        rest = r;
                        from += "super::".len();
                    }
                    m
                }
                _ => module.to_vec(),
            };
            let mut tree = Vec::new();
            parse_tree(&text[from..], &mut Vec::new(), &mut tree);
            for p in tree {
                let mut full = base.clone();
                full.extend(p);
                full.truncate(3);
                if !full.is_empty() {
                    out.push(full);
                }
            }
        }
    }
    out
}

/// Parses a use-tree (`a::b`, `a::{b, c::d}`, `a::*`) into its paths, up to two segments
/// each (what the unit of a path needs).
fn parse_tree(s: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut i = 0;
    let b = s.as_bytes();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let depth = prefix.len();
    loop {
        skip_ws(&mut i);
        if i < b.len() && b[i] == b'{' {
            i += 1;
            loop {
                skip_ws(&mut i);
                if i < b.len() && b[i] == b'}' {
                    i += 1;
                    break;
                }
                i += parse_tree(&s[i..], prefix, out);
                skip_ws(&mut i);
                if i < b.len() && b[i] == b',' {
                    i += 1;
                } else if i < b.len() && b[i] == b'}' {
                    i += 1;
                    break;
                } else {
                    break;
                }
            }
            prefix.truncate(depth);
            return i;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if start == i {
            // `*` or the end of the path.
            if !prefix.is_empty() {
                out.push(prefix.clone());
            }
            prefix.truncate(depth);
            return i.max(usize::from(i < b.len() && b[i] == b'*'));
        }
        let seg = &s[start..i];
        if seg != "self" {
            prefix.push(seg.to_string());
        }
        if s[i..].starts_with("::") {
            i += 2;
            continue;
        }
        out.push(prefix.clone());
        prefix.truncate(depth);
        // Skip an `as name` rename.
        let rest = s[i..].trim_start();
        if let Some(r) = rest.strip_prefix("as ") {
            let r2 = r.trim_start();
            let n = r2
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(r2.len());
            i = s.len() - r2.len() + n;
        }
        return i;
    }
}

/// The unit a module path belongs to: a top-level file module, or a child of a directory
/// module (`act::compute`), or the directory module itself (its `mod.rs`).
fn unit(path: &[String], children: &BTreeMap<String, BTreeSet<String>>) -> String {
    let top = &path[0];
    match (children.get(top), path.get(1)) {
        (Some(kids), Some(second)) if kids.contains(second) => format!("{top}::{second}"),
        _ => top.clone(),
    }
}

/// Import edges between units, with where each was seen.
fn edges(files: &[File]) -> BTreeMap<(String, String), String> {
    let mut children: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        if f.module.len() >= 2 {
            children
                .entry(f.module[0].clone())
                .or_default()
                .insert(f.module[1].clone());
        }
    }
    let known: BTreeSet<&str> = files
        .iter()
        .filter_map(|f| f.module.first().map(String::as_str))
        .collect();
    let mut out = BTreeMap::new();
    for f in files {
        if f.module.is_empty() {
            continue; // lib.rs only declares
        }
        let from = unit(&f.module, &children);
        let dir = children.contains_key(&f.module[0]) && f.module.len() == 1;
        for p in paths(&f.text, &f.module, dir) {
            if !known.contains(p[0].as_str()) {
                continue; // an item of lib.rs, or a macro path
            }
            let to = unit(&p, &children);
            if to != from {
                out.entry((from.clone(), to))
                    .or_insert_with(|| f.module.join("::"));
            }
        }
    }
    out
}

fn top(u: &str) -> &str {
    u.split("::").next().unwrap_or(u)
}

/// Every import that goes up a layer, as `from -> to (file)`.
fn upward(edges: &BTreeMap<(String, String), String>) -> Vec<String> {
    let mut bad = Vec::new();
    for ((from, to), file) in edges {
        let (a, b) = (top(from), top(to));
        if a == b {
            continue;
        }
        match (rank(a), rank(b)) {
            (Some(ra), Some(rb)) if rb <= ra => {}
            (Some(_), Some(_)) => bad.push(format!(
                "{from} (layer {:?}) imports {to} (layer {:?}) in {file}",
                LAYERS[rank(a).unwrap_or(0)].0,
                LAYERS[rank(b).unwrap_or(0)].0
            )),
            _ => bad.push(format!(
                "{from} or {to} is in no layer: add it to LAYERS ({file})"
            )),
        }
    }
    bad
}

/// A circle in a directed graph, if any (as the list of its nodes).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = path.iter().position(|x| x == m).unwrap_or(0);
                    let mut c = path[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// The circles: among top-level modules, and among the parts of each directory module (a
/// `mod.rs` re-exporting its children and a child using its parent's items is not a circle).
fn cycles(edges: &BTreeMap<(String, String), String>) -> Vec<Vec<String>> {
    let mut tops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut parts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        let (a, b) = (top(from), top(to));
        if a != b {
            tops.entry(a.to_string()).or_default().insert(b.to_string());
        } else if from.contains("::") && to.contains("::") {
            parts.entry(from.clone()).or_default().insert(to.clone());
        }
    }
    [cycle(&tops), cycle(&parts)]
        .into_iter()
        .flatten()
        .collect()
}

/// The library's sources; `LAYERING_SRC` points the test at another tree (an older commit's
/// `shared/src`, to see what it finds there).
fn library() -> Vec<File> {
    match std::env::var_os("LAYERING_SRC") {
        Some(dir) => read_library(Path::new(&dir)),
        None => read_library(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src")),
    }
}

#[test]
fn every_top_level_module_is_in_a_layer() {
    let files = library();
    let tops: BTreeSet<&str> = files
        .iter()
        .filter_map(|f| f.module.first().map(String::as_str))
        .collect();
    let missing: Vec<&str> = tops.into_iter().filter(|m| rank(m).is_none()).collect();
    assert!(missing.is_empty(), "modules in no layer: {missing:?}");
    for (_, mods) in LAYERS {
        for m in *mods {
            assert!(
                files
                    .iter()
                    .any(|f| f.module.first().map(String::as_str) == Some(*m)),
                "LAYERS names {m}, which does not exist"
            );
        }
    }
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let e = edges(&library());
    assert!(e.len() > 40, "the scan found only {} import edges", e.len());
    let bad = upward(&e);
    assert!(
        bad.is_empty(),
        "imports that go up a layer:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_import_cycle_in_the_library() {
    let c = cycles(&edges(&library()));
    assert!(c.is_empty(), "import cycles: {c:?}");
}

/// The checks themselves can fail: a made-up library with an upward import and a circle.
#[test]
fn the_checks_find_an_upward_import_and_a_cycle() {
    let file = |m: &[&str], text: &str| {
        (
            m.iter().map(|s| s.to_string()).collect::<Vec<String>>(),
            text.to_string(),
        )
    };
    let raw: BTreeMap<Vec<String>, String> = BTreeMap::from([
        // config (layer 1) reaching up into act (layer 3), in a grouped use.
        file(
            &["config"],
            "use crate::{names::echo, act::k8s::is_loopback_http};",
        ),
        file(&["act"], "pub mod compute; pub mod k8s;"),
        file(&["act", "compute"], "use crate::act::k8s::KubeError;"),
        file(&["act", "k8s"], "use super::compute::WriteOutcome;"),
        file(
            &["names"],
            "// crate::plan::x in a comment\nlet s = \"crate::plan\";",
        ),
        file(
            &["plan"],
            "#[cfg(test)]\nmod tests { use crate::handlers::x; }\nuse crate::names::X;",
        ),
        file(
            &["adapter"],
            "use crate::names::X;\n#[cfg(test)]\nmod tests;",
        ),
        // A test-only file module may import anything.
        file(&["adapter", "tests"], "use crate::handlers::y;"),
    ]);
    let files = files_of(&raw);
    let e = edges(&files);
    let bad = upward(&e);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].starts_with("config (layer \"configuration\") imports act::k8s"));
    let c = cycles(&e);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].contains(&"act::compute".to_string()) && c[0].contains(&"act::k8s".to_string()));
    // Comments, strings and test code are not imports.
    assert!(
        !e.keys().any(|(f, t)| f == "names" || t == "handlers"),
        "{e:?}"
    );
}
