//! The layering of the source trees stays true: in `gateway/src` every top-level module imports
//! only modules of a lower layer (DESIGN.md: source → decode → pipeline → aggregate, alert →
//! store → sink and api), and neither `gateway/src` nor `simulator/src` has an import circle
//! between its top-level modules.
//!
//! A module's imports are the `crate::…` paths in its code (every file of its folder), test
//! modules (`#[cfg(test)]` to the end of a file) and comments aside: a test may use fixtures
//! from anywhere, shipped code may not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The gateway's layers, lowest first: a module may import the modules of lower layers only.
const GATEWAY_LAYERS: &[&[&str]] = &[
    // ground: plain types and helpers
    &[
        "clock", "backoff", "secret", "heap", "metrics", "reading", "point", "ledger", "keys",
    ],
    &["registry", "net"],
    // input: device messages to readings
    &["decode"],
    // pure state, time passed in
    &["aggregate"],
    &["alert"],
    // durability
    &["store"],
    // where messages come from and where accepted data goes
    &["source", "sink", "auth"],
    &["pipeline"],
    &["api", "housekeeping"],
    // wiring
    &["config"],
    &["reload"],
    &["app"],
    &["commands", "demo"],
];

/// Re-exports of the gateway's root, named in `crate::{…}` imports, and the modules they are.
const ROOT_REEXPORTS: &[(&str, &str)] = &[("Gateway", "app"), ("Settings", "app")];

/// Top-level module → the top-level modules it imports, for the source tree at `src`.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.to_path_buf()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                files.push(e.unwrap().path());
            }
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = p.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" || module == "bin" {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let deps = out.entry(module.clone()).or_default();
        for dep in crate_paths(&text) {
            let dep = ROOT_REEXPORTS
                .iter()
                .find(|(name, _)| *name == dep)
                .map_or(dep, |(_, m)| m.to_string());
            if dep != module && dep != "self" {
                deps.insert(dep);
            }
        }
    }
    out
}

/// The first segment of every `crate::` path in the shipped code of `text`.
fn crate_paths(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| format!("{}\n", l.split(" //").next().unwrap_or_default()))
        .collect();
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d}`: the first segment of each, at the group's own depth.
            let (mut depth, mut start) = (0, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.push(first_segment(&group[start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(first_segment(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(first_segment(rest));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn first_segment(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Every import of a module from its own layer or one above it, as sentences.
fn back_imports(graph: &BTreeMap<String, BTreeSet<String>>, layers: &[&[&str]]) -> Vec<String> {
    let layer = |m: &str| layers.iter().position(|l| l.contains(&m));
    let mut out = Vec::new();
    for (module, deps) in graph {
        let Some(own) = layer(module) else {
            out.push(format!(
                "{module} is in no layer: add it to GATEWAY_LAYERS in tests/system/layering.rs"
            ));
            continue;
        };
        for dep in deps {
            match layer(dep) {
                Some(l) if l < own => {}
                Some(_) => out.push(format!(
                    "{module} imports {dep}, which is not in a layer below it"
                )),
                None => out.push(format!("{module} imports {dep}, which is in no layer")),
            }
        }
    }
    out
}

/// The import circles between modules, each as `a → b → … → a`.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut circle = path[at..].to_vec();
            circle.push(m.to_owned());
            out.push(circle.join(" → "));
            return;
        }
        if !done.insert(m.to_owned()) {
            return;
        }
        path.push(m.to_owned());
        for dep in graph.get(m).into_iter().flatten() {
            visit(dep, graph, path, done, out);
        }
        path.pop();
    }
    let (mut done, mut out) = (BTreeSet::new(), Vec::new());
    for m in graph.keys() {
        visit(m, graph, &mut Vec::new(), &mut done, &mut out);
    }
    out
}

fn source_tree(part: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(part)
        .join("src")
}

#[test]
fn gateway_modules_import_only_layers_below_them() {
    let graph = imports(&source_tree("gateway"));
    assert!(graph.len() > 20, "read too little: {graph:?}");
    let problems = back_imports(&graph, GATEWAY_LAYERS);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn neither_the_gateway_nor_the_simulator_has_an_import_circle() {
    for part in ["gateway", "simulator"] {
        let found = circles(&imports(&source_tree(part)));
        assert!(found.is_empty(), "{part}/src: {}", found.join("\n"));
    }
}

#[test]
fn a_back_import_and_a_circle_are_found_in_a_tree_made_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "pub mod store;\npub mod sink;\n");
    // The store (lower) reaches up into a sink, in a grouped import, past a doc link and a
    // test module that may do what they like.
    write(
        "store/mod.rs",
        "//! See [`crate::api`].\nuse crate::{clock::now_ms, sink::NotReady};\n\n#[cfg(test)]\nmod tests {\n    use crate::demo;\n}\n",
    );
    write("sink/mod.rs", "use crate::store::Store;\n");
    write("clock.rs", "pub fn now_ms() -> i64 { 0 }\n");
    let graph = imports(dir.path());
    assert_eq!(
        graph["store"],
        BTreeSet::from(["clock".to_owned(), "sink".to_owned()])
    );
    assert_eq!(
        back_imports(&graph, GATEWAY_LAYERS),
        ["store imports sink, which is not in a layer below it"]
    );
    assert_eq!(circles(&graph), ["sink → store → sink"]);
}
