//! The walls between modules: no module reaches, through the modules it uses, back to itself.
//!
//! A module is a file of `src/` (`src/a.rs` or `src/a/mod.rs` is `a`, `src/a/b.rs` is `a::b`);
//! it uses every module its code names by a `crate::` or `super::` path, or a child by its
//! own name (`pub use page::render`); comments and its `#[cfg(test)]` module are not its
//! code. A path names the longest module it starts with: `crate::a::Item` names `a`,
//! `crate::a::b::Item` names `a::b`.
//!
//! The two protocol layers, `engine` and `socketio`, count as one module each: their files
//! are the parts of one protocol whose types name each other (a socket has its namespace, a
//! namespace its sockets; six circles between their files are left as they are). What is
//! checked is that the product's modules, and the layers as wholes, do not go round in
//! circles.
//!
//! `cargo modules dependencies` (0.27, rust-analyzer's view of the crate) agrees, and reports
//! two more that are not imports: it files the methods of an `impl` block under the module of
//! the type, so `app_handlers::run` (which implements how `app_handlers::spec`'s handlers
//! run) shows as used by `spec`, and `socketio::serve` (which implements the layer's
//! `Transport` for the engine's `Session`) makes `engine` look as if it used `socketio`. This
//! test keeps the import graph acyclic in CI without that tool (a 16-minute build here).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Modules whose submodules count as the module itself.
const LAYERS: [&str; 2] = ["engine", "socketio"];

/// The node of the graph `module` belongs to: its layer, or itself.
fn node_of(module: &str) -> String {
    let top = module.split("::").next().unwrap_or_default();
    if LAYERS.contains(&top) {
        top.to_owned()
    } else {
        module.to_owned()
    }
}

#[test]
fn no_module_uses_itself_through_others() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = read_modules(&src, &src);
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let mut graph = Graph::new();
    for (module, code) in &modules {
        let node = node_of(module);
        let used = uses(module, code, &names)
            .into_iter()
            .map(|used| node_of(&used));
        let edges = graph.entry(node.clone()).or_default();
        edges.extend(used.filter(|used| *used != node));
    }
    assert!(
        graph.len() > 25,
        "read too few modules ({}): is src/ where it was?",
        graph.len()
    );
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "import circles between modules (each line: a module, the modules it uses, back to \
         itself):\n{}",
        cycles
            .iter()
            .map(|cycle| cycle.join(" -> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Every module under `dir`, by path (`""` is the crate root), with its code.
fn read_modules(root: &Path, dir: &Path) -> BTreeMap<String, String> {
    let mut modules = BTreeMap::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.map(|entry| entry.expect("a readable directory entry")) {
        let path = entry.path();
        if path.is_dir() {
            modules.extend(read_modules(root, &path));
            continue;
        }
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let relative = path
            .strip_prefix(root)
            .expect("under src/")
            .with_extension("");
        let mut parts: Vec<String> = relative
            .iter()
            .map(|part| part.to_string_lossy().into_owned())
            .collect();
        if matches!(
            parts.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            parts.pop();
        }
        let text = std::fs::read_to_string(&path).expect("a readable source file");
        modules.insert(parts.join("::"), code_of(&text));
    }
    modules
}

/// The code of `text`: no comments, nothing from its test module on.
fn code_of(text: &str) -> String {
    text.lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
        .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The other modules `module`'s code names.
fn uses(module: &str, code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let parent = module.rsplit_once("::").map_or("", |(parent, _)| parent);
    let mut used = BTreeSet::new();
    for (anchor, base) in [("crate::", ""), ("super::", parent)] {
        for (at, _) in code.match_indices(anchor) {
            let preceded_by_ident = code[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            if preceded_by_ident {
                continue;
            }
            for path in paths_after(&code[at + anchor.len()..]) {
                used.insert(longest_module(base, &path, modules));
            }
        }
    }
    // A child named by its own name (`use page::render;` in `status`).
    let prefix = if module.is_empty() {
        String::new()
    } else {
        format!("{module}::")
    };
    for child in modules.iter().filter_map(|m| m.strip_prefix(&prefix)) {
        if child.contains("::") {
            continue;
        }
        let named = code.match_indices(&format!("{child}::")).any(|(at, _)| {
            !code[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        });
        if named {
            used.insert(format!("{prefix}{child}"));
        }
    }
    // The crate root only declares the modules.
    used.remove("");
    used.remove(module);
    used
}

/// The paths a `crate::` or `super::` prefix leads to: `a::b::C` gives `[a, b, C]`, and a
/// group `{a, b::C}` gives each of its members.
fn paths_after(rest: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect::<String>()
    };
    if let Some(group) = rest.strip_prefix('{') {
        let end = group.find('}').unwrap_or(group.len());
        return group[..end]
            .split(',')
            .map(|member| {
                member
                    .trim()
                    .split("::")
                    .map(ident)
                    .take_while(|part| !part.is_empty())
                    .collect()
            })
            .collect();
    }
    let mut path = Vec::new();
    let mut rest = rest;
    loop {
        let part = ident(rest);
        if part.is_empty() {
            break;
        }
        rest = &rest[part.len()..];
        path.push(part);
        match rest.strip_prefix("::") {
            Some(after) if !after.starts_with('{') => rest = after,
            _ => break,
        }
    }
    vec![path]
}

/// The longest module that `base::path` starts with.
fn longest_module(base: &str, path: &[String], modules: &BTreeSet<String>) -> String {
    let mut found = base.to_owned();
    let mut candidate = base.to_owned();
    for part in path {
        if !candidate.is_empty() {
            candidate.push_str("::");
        }
        candidate.push_str(part);
        if modules.contains(&candidate) {
            found = candidate.clone();
        } else {
            break;
        }
    }
    found
}

/// One cycle through each strongly connected group of modules, if any.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut in_a_cycle = BTreeSet::new();
    for start in graph.keys() {
        if in_a_cycle.contains(start) {
            continue;
        }
        if let Some(cycle) = path_back(graph, start) {
            in_a_cycle.extend(cycle.iter().cloned());
            found.push(cycle);
        }
    }
    found
}

/// The shortest way from `start` through its uses back to `start` (breadth-first).
fn path_back(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut frontier = vec![start];
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for module in frontier {
            for used in graph.get(module).into_iter().flatten() {
                if used == start {
                    let mut cycle = vec![start.to_owned(), module.to_owned()];
                    let mut at = module;
                    while let Some(previous) = came_from.get(at) {
                        cycle.insert(1, (*previous).to_owned());
                        at = previous;
                    }
                    cycle.dedup();
                    cycle.push(start.to_owned());
                    return Some(cycle);
                }
                if used != start && !came_from.contains_key(used.as_str()) {
                    came_from.insert(used, module);
                    next.push(used.as_str());
                }
            }
        }
        frontier = next;
    }
    None
}

#[test]
fn the_check_sees_a_circle_and_paths_of_every_shape() {
    let modules: BTreeSet<String> = ["a", "b", "b::c", "d"].map(String::from).into();
    let code = "use crate::{a, b::c::Item};\nlet x = crate::d::f();\n// crate::nothing";
    let used = uses("z", &code_of(code), &modules);
    assert_eq!(used, ["a", "b::c", "d"].map(String::from).into());
    assert_eq!(
        uses("b::c", "use super::Thing;", &modules),
        ["b".to_owned()].into()
    );
    let graph: Graph = [("a", "b"), ("b", "b::c"), ("b::c", "a"), ("d", "a")]
        .into_iter()
        .map(|(from, to)| (from.to_owned(), [to.to_owned()].into()))
        .collect();
    let cycles = cycles(&graph);
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert_eq!(cycles[0].first(), cycles[0].last());
    assert_eq!(cycles[0].len(), 4, "{cycles:?}");
}
