//! The core's modules form layers: no module reaches, through `crate::`
//! paths, a module that reaches back to it. A new import circle fails here
//! with the circle named. Test code (files named `*tests.rs`, files under
//! a `tests/` folder and inline `#[cfg(test)] mod … { }` blocks) may
//! import freely and is not read.

#![allow(clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module a file belongs to: `src/x.rs` and `src/x/…` are `x`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            // A `tests/` folder (e.g. `request/tests/`) is test code.
            if p.file_name().is_some_and(|n| n != "tests") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs")
            && !p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("tests.rs"))
        {
            out.push(p);
        }
    }
}

/// Every `crate::<module>` a file's non-test code names.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "#[cfg(test)]" {
            // Past any further attributes: an inline test module runs to
            // the end of the file.
            let next = lines[i + 1..]
                .iter()
                .find(|l| !l.trim_start().starts_with("#["));
            if next.is_some_and(|n| n.trim_start().starts_with("mod ") && n.contains('{')) {
                break;
            }
        }
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + 7..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn the_core_has_no_import_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(m) = module_of(&src, f) else {
            continue;
        };
        let text = std::fs::read_to_string(f).expect("read");
        let deps = edges.entry(m.clone()).or_default();
        deps.extend(imports(&text).into_iter().filter(|d| *d != m));
    }
    assert!(edges.len() > 20, "read only {} modules", edges.len());
    // Depth-first search for a back edge; the path to it is the circle.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        if let Some(c) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn a_circle_is_found_when_there_is_one() {
    // The reader sees `crate::` paths in code, not in comments or tests.
    let code = "use crate::config::Config;\nfn f() { crate::oauth::serve(); } // crate::audit\n#[cfg(test)]\n#[allow(clippy::unwrap_used)]\nmod tests {\n use crate::host::MockHost;\n}\n";
    let found = imports(code);
    assert_eq!(
        found,
        ["config", "oauth"].iter().map(|s| s.to_string()).collect()
    );
}
