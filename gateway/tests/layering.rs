//! The gateway's modules import each other one way only: this test reads
//! every source file, builds the graph of `crate::<module>` references
//! between top-level modules (test code left out), and fails on an import
//! that points up a layer, on a module missing from the table, and on any
//! cycle. The layers are those the crate's `lib.rs` describes.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and its layer. A module may import modules of a
/// lower layer, and of its own layer except in layer 0 (leaves import no
/// module of the crate). A new module must be added here, at its layer.
const LAYERS: &[(&str, u8)] = &[
    // 0: leaves: plain data and small utilities.
    ("config", 0),
    ("error", 0),
    ("util", 0),
    ("wire", 0),
    // 1: the stages and what they run on.
    ("analyse", 1),
    ("answer", 1),
    ("audit", 1),
    ("auth", 1),
    ("budget", 1),
    ("cache", 1),
    ("defence", 1),
    ("encoders", 1),
    ("generate", 1),
    ("gpu_metrics", 1),
    ("guard", 1),
    ("inflight", 1),
    ("keys", 1),
    ("limits", 1),
    ("metrics", 1),
    ("moderation", 1),
    ("pii", 1),
    ("providers", 1),
    ("registry", 1),
    ("router", 1),
    ("sealing", 1),
    ("sensitivity", 1),
    ("sessions", 1),
    ("spend", 1),
    ("store", 1),
    ("telemetry", 1),
    ("tool_calls", 1),
    ("validate", 1),
    // 2: the request path, in order.
    ("chain", 2),
    // 3: HTTP and the command line.
    ("admin", 3),
    ("anthropic", 3),
    ("cli", 3),
    ("console", 3),
    ("openai", 3),
    ("server", 3),
    ("state", 3),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to; `None` for the crate root and
/// the binary, and for test-only files.
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src_dir()).unwrap();
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .iter()
        .any(|p| p == "tests" || p == "tests.rs" || p == "testing.rs")
    {
        return None;
    }
    let first = parts.first()?.trim_end_matches(".rs").to_string();
    (first != "lib" && first != "main").then_some(first)
}

/// The code of a file without comments and without its inline test module.
fn code_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if line == "#[cfg(test)]" {
            let next = lines.get(i + 1).map_or("", |l| l.trim());
            if next.starts_with("mod ") && next.ends_with('{') {
                break; // the inline test module runs to the end of the file
            }
            i += 2; // `#[cfg(test)] mod tests;` or a test-only item
            continue;
        }
        if !line.starts_with("//") {
            out.push(line.split(" //").next().unwrap_or(line));
        }
        i += 1;
    }
    out
}

/// module -> the other modules it references.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = graph.entry(module.clone()).or_default();
        for line in code_lines(&text) {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

#[test]
fn every_module_has_a_layer_and_imports_point_down() {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, deps) in import_graph() {
        let Some(&own) = layers.get(module.as_str()) else {
            wrong.push(format!(
                "`{module}` has no layer: add it to LAYERS here and to lib.rs"
            ));
            continue;
        };
        for dep in deps {
            match layers.get(dep.as_str()) {
                None => wrong.push(format!("`{module}` imports `{dep}`, which has no layer")),
                Some(&theirs) if theirs > own || (theirs == own && own == 0) => wrong.push(
                    format!("`{module}` (layer {own}) imports `{dep}` (layer {theirs})"),
                ),
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_modules_import_no_cycle() {
    let graph = import_graph();
    // Depth-first search; a module met again while on the path closes a cycle.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_check_sees_imports_and_ignores_comments_and_tests() {
    let text = "use crate::cache::Cache;\n// crate::server in a comment\n\
                let x = crate::router::Router::new(); // crate::cli\n\
                #[cfg(test)]\nmod tests {\n    use crate::server::AppState;\n}\n";
    let lines = code_lines(text);
    let refs: Vec<&str> = lines
        .iter()
        .flat_map(|l| l.match_indices("crate::").map(move |(i, _)| &l[i + 7..]))
        .collect();
    assert_eq!(refs.len(), 2, "{refs:?}");
    assert!(refs[0].starts_with("cache") && refs[1].starts_with("router"));
}
