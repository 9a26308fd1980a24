//! The crate's layering, checked: reads every `crate::`, `super::` and
//! `self::` path in the library's sources, resolves it to the file that
//! defines it and fails on an import that runs against the layers or closes a
//! circle between files. The layers, top to bottom:
//!
//! - `config`: the command line, which builds the machine's configuration;
//!   `fuzzing`, the fuzz targets' entry points, which may reach any layer.
//! - `vmm`: the machine (vCPUs, boot, the event loop); only it and the
//!   command line may name `vmm::`.
//! - `proxy`, `remote`, `ioregion`, `vfio_user`: the two ends of a device
//!   in another process, the path a guest access takes between them, and
//!   the protocols they speak.
//! - `lsi`, `scsi`: device models, which know nothing of the process that
//!   hosts them (none of the ends).
//! - everything else (`bus`, `pci`, `protocol`, `device_model`, `mirror`,
//!   `devices`, ...), which names none of the layers above it.
//!
//! It also holds every source file to at most `MAX_CODE_LINES` lines of code
//! before its tests: a file that grows past that has more than one job.
//!
//! `KNOWN` lists the violations that the tree still has; the test fails both
//! on a new one and on one that is gone but still listed, so the list only
//! ever shrinks, one commit at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Violations still in the tree (see the structure issue): each line as the
/// test prints it.
const KNOWN: &[&str] = &[];

/// Lines of code a file may have before its `#[cfg(test)]` module.
const MAX_CODE_LINES: usize = 600;

/// A module path (`["proxy", "device"]`) for each library source file.
fn library_files(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let mut module = prefix.to_vec();
            if path.is_dir() {
                module.push(name);
                walk(&path, &module, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                if name != "mod" {
                    module.push(name);
                }
                out.insert(module, path);
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(src, &[], &mut files);
    // The binary's own files are not part of the library's layers.
    files.retain(|module, _| {
        !matches!(
            module.first().map(String::as_str),
            Some("main" | "host_check")
        )
    });
    files.insert(Vec::new(), src.join("lib.rs"));
    files.remove(&vec!["lib".to_string()]);
    files
}

/// The source with comments and the insides of string and char literals
/// blanked, so that neither prose naming a path nor a brace in a string is
/// taken for code.
fn strip_comments(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let blank = |b: u8| if b == b'\n' { b'\n' } else { b' ' };
    while i < bytes.len() {
        let rest = &bytes[i..];
        let end = if rest.starts_with(b"//") {
            rest.iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |n| i + n)
        } else if rest.starts_with(b"/*") {
            find(rest, b"*/").map_or(bytes.len(), |n| i + n + 2)
        } else if rest.starts_with(b"r\"") || rest.starts_with(b"r#") {
            let hashes = rest[1..].iter().take_while(|&&b| b == b'#').count();
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            find(&rest[2 + hashes..], &close)
                .map_or(bytes.len(), |n| i + 2 + hashes + n + close.len())
        } else if rest[0] == b'"'
            || (rest[0] == b'\'' && (rest.get(1) == Some(&b'\\') || rest.get(2) == Some(&b'\'')))
        {
            let quote = rest[0];
            let mut j = 1;
            while j < rest.len() && rest[j] != quote {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            i + j + 1
        } else {
            out.push(bytes[i]);
            i += 1;
            continue;
        };
        let end = end.min(bytes.len());
        out.extend(bytes[i..end].iter().map(|&b| blank(b)));
        i = end;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Every path that starts at `crate::`, `super::` or `self::`, with `use`
/// groups (`a::{b, c::{d, e}}`) expanded, as segments relative to the
/// crate's root.
fn paths_in(source: &str, module: &[String]) -> Vec<Vec<String>> {
    let code = strip_comments(source);
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    // Inline modules (`mod tests { use super::*; }`) open below the file's
    // module: their names, each with the brace depth it closes at.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut at = 0;
    while at < bytes.len() {
        let after_word = at > 0
            && (bytes[at - 1].is_ascii_alphanumeric()
                || bytes[at - 1] == b'_'
                || bytes[at - 1] == b':');
        let rest = &code[at..];
        match bytes[at] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            _ => {}
        }
        if !after_word && rest.starts_with("mod ") {
            let name: String = rest[4..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if rest[4 + name.len()..].trim_start().starts_with('{') {
                inline.push((name, depth));
            }
        }
        let root = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|root| rest.starts_with(root));
        match root {
            Some(root) if !after_word => {
                let mut here = module.to_vec();
                here.extend(inline.iter().map(|(name, _)| name.clone()));
                let mut base = match root {
                    "crate::" => Vec::new(),
                    "self::" => here,
                    _ => here[..here.len().saturating_sub(1)].to_vec(),
                };
                let mut cursor = at + root.len();
                while code[cursor..].starts_with("super::") {
                    base.pop();
                    cursor += "super::".len();
                }
                let (trees, end) = parse_tree(bytes, cursor);
                for tree in trees {
                    let mut full = base.clone();
                    full.extend(tree);
                    out.push(full);
                }
                // Braces inside a use group are not blocks.
                at = end.max(at + 1);
            }
            _ => at += 1,
        }
    }
    out
}

/// Parses `a::b::{c, d::e}` from `at`: the expanded paths and where it ended.
fn parse_tree(bytes: &[u8], mut at: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if at < bytes.len() && bytes[at] == b'{' {
            let mut trees = Vec::new();
            at += 1;
            loop {
                while at < bytes.len() && (bytes[at].is_ascii_whitespace() || bytes[at] == b',') {
                    at += 1;
                }
                if at >= bytes.len() || bytes[at] == b'}' {
                    return (
                        trees
                            .into_iter()
                            .map(|t: Vec<String>| prefix.iter().cloned().chain(t).collect())
                            .collect(),
                        at + 1,
                    );
                }
                let (sub, end) = parse_tree(bytes, at);
                trees.extend(sub);
                at = end;
                // Skip `as name` and anything else up to the next item.
                while at < bytes.len() && bytes[at] != b',' && bytes[at] != b'}' {
                    at += 1;
                }
            }
        }
        let start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        if start == at {
            return (vec![prefix], at);
        }
        prefix.push(String::from_utf8_lossy(&bytes[start..at]).into_owned());
        if bytes[at..].starts_with(b"::") {
            at += 2;
        } else {
            return (vec![prefix], at);
        }
    }
}

/// The longest prefix of `path` that names a file's module.
fn resolve<'a>(
    path: &[String],
    files: &'a BTreeMap<Vec<String>, PathBuf>,
) -> Option<&'a Vec<String>> {
    (0..=path.len())
        .rev()
        .find_map(|n| files.get_key_value(&path[..n]).map(|(k, _)| k))
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

/// Each file's module and the file modules it names.
fn import_graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = library_files(src);
    let mut graph = BTreeMap::new();
    for (module, path) in &files {
        let source = std::fs::read_to_string(path).unwrap();
        let targets: BTreeSet<Vec<String>> = paths_in(&source, module)
            .iter()
            .filter_map(|p| resolve(p, &files))
            .filter(|target| *target != module)
            // A folder's mod.rs declaring its children is not an import.
            .filter(|target| !(target.len() == module.len() + 1 && target.starts_with(module)))
            .cloned()
            .collect();
        graph.insert(module.clone(), targets);
    }
    graph
}

/// Imports that run against the layers.
fn layer_violations(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<String> {
    let top = |m: &[String]| m.first().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for (module, targets) in graph {
        let from = top(module);
        for target in targets {
            let to = top(target);
            let upward =
                to == "vmm" && !matches!(from.as_str(), "vmm" | "config") && !module.is_empty();
            let ends = ["proxy", "remote", "ioregion", "vfio_user"];
            // The fuzz targets' entry points reach into every layer.
            let above_the_floor = ["vmm", "config", "fuzzing", "lsi", "scsi"];
            let knows_ends = ends.contains(&to.as_str())
                && !ends.contains(&from.as_str())
                && !matches!(from.as_str(), "vmm" | "config" | "fuzzing")
                && !module.is_empty();
            let floor_knows_models = matches!(to.as_str(), "lsi" | "scsi")
                && !ends.contains(&from.as_str())
                && !above_the_floor.contains(&from.as_str())
                && !module.is_empty();
            if upward || knows_ends || floor_knows_models {
                out.push(format!("{} imports {}", name(module), name(target)));
            }
        }
    }
    out
}

/// Circles between files: each strongly connected set of two or more files.
fn circles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<String> {
    // A file reaches another if a path of imports leads there; two files that
    // reach each other sit on one circle.
    let reach = |from: &Vec<String>| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(m) = todo.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<_, _> = graph.keys().map(|m| (m.clone(), reach(m))).collect();
    let mut sets = BTreeSet::new();
    for (module, reached) in &reaches {
        let set: BTreeSet<String> = reached
            .iter()
            .filter(|other| *other != module && reaches[*other].contains(module))
            .chain(std::iter::once(module))
            .map(|m| name(m))
            .collect();
        if set.len() > 1 {
            sets.insert(set);
        }
    }
    sets.into_iter()
        .map(|set| {
            format!(
                "circle: {}",
                set.into_iter().collect::<Vec<_>>().join(" <-> ")
            )
        })
        .collect()
}

#[test]
fn imports_follow_the_layers_and_close_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src);
    let found: BTreeSet<String> = layer_violations(&graph)
        .into_iter()
        .chain(circles(&graph))
        .collect();
    let known: BTreeSet<String> = KNOWN.iter().map(|s| s.to_string()).collect();
    let new: Vec<_> = found.difference(&known).collect();
    let gone: Vec<_> = known.difference(&found).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "new layering violations (fix them): {new:#?}\nfixed but still in KNOWN (remove them): {gone:#?}"
    );
}

#[test]
fn no_file_has_more_than_one_job() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = library_files(&src).into_values().collect::<Vec<_>>();
    files.extend(["main.rs", "host_check.rs"].map(|f| src.join(f)));
    let long: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let source = std::fs::read_to_string(path).unwrap();
            let code = source
                .lines()
                .take_while(|line| !line.starts_with("#[cfg(test)]"))
                .count();
            (code > MAX_CODE_LINES).then(|| format!("{}: {code} lines", path.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_CODE_LINES} lines of code (split them by job): {long:#?}"
    );
}

#[test]
fn use_groups_and_relative_paths_are_expanded() {
    let module = vec!["proxy".to_string(), "device".to_string()];
    let paths = paths_in(
        "use crate::{bus::Bus, pci::{config::X, root as r}};\nuse super::ioregion::Y;\n// crate::vmm::Z\nlet _ = self::inner::f();\nmod tests {\n    use super::Z;\n    fn f() { let _ = format!(\"{}\", 1); }\n}\nuse super::W;",
        &module,
    );
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        [
            "bus::Bus",
            "pci::config::X",
            "pci::root",
            "proxy::ioregion::Y",
            "proxy::device::inner::f",
            "proxy::device::Z",
            "proxy::W",
        ]
    );
}

#[test]
fn a_circle_and_an_upward_import_are_found() {
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let mut graph = BTreeMap::new();
    graph.insert(
        m("proxy::a"),
        BTreeSet::from([m("proxy::b"), m("vmm::vcpu")]),
    );
    graph.insert(m("proxy::b"), BTreeSet::from([m("proxy::a")]));
    graph.insert(m("vmm::vcpu"), BTreeSet::new());
    graph.insert(m("lsi"), BTreeSet::from([m("remote::mirror")]));
    graph.insert(m("remote::mirror"), BTreeSet::new());
    assert_eq!(
        layer_violations(&graph),
        ["lsi imports remote::mirror", "proxy::a imports vmm::vcpu"]
    );
    assert_eq!(circles(&graph), ["circle: proxy::a <-> proxy::b"]);
}

#[test]
fn the_floor_names_neither_the_ends_nor_the_models() {
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let mut graph = BTreeMap::new();
    graph.insert(m("pci::root"), BTreeSet::from([m("ioregion::vmm_end")]));
    graph.insert(m("mirror::page"), BTreeSet::from([m("lsi::regs")]));
    graph.insert(m("ioregion::vmm_end"), BTreeSet::from([m("proxy::stats")]));
    graph.insert(m("remote::cli"), BTreeSet::from([m("lsi")]));
    graph.insert(m("lsi"), BTreeSet::from([m("scsi::disk")]));
    assert_eq!(
        layer_violations(&graph),
        [
            "mirror::page imports lsi::regs",
            "pci::root imports ioregion::vmm_end"
        ]
    );
}
