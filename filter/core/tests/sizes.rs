//! No source file over 600 lines in the code a maintainer reads: the
//! filter, the agent SDK, the skills, the identity provider and the test
//! harness. A file that outgrows the limit is split by concern (see
//! docs/layout.md), tests included.

use std::path::{Path, PathBuf};

const LIMIT: usize = 600;
const FOLDERS: [&str; 7] = [
    "filter",
    "agent",
    "skills",
    "idp",
    "tests",
    "approval",
    "ratelimit",
];
const SOURCE: [&str; 6] = ["rs", "js", "mjs", "ts", "py", "rego"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p.is_dir() {
            // Installed packages and build output are not ours to split.
            if !matches!(name.as_ref(), "node_modules" | "target" | "__pycache__")
                && !name.starts_with('.')
            {
                sources(&p, out);
            }
        } else if p
            .extension()
            .is_some_and(|x| SOURCE.iter().any(|s| x == *s))
        {
            out.push(p);
        }
    }
}

#[test]
fn no_source_file_is_over_600_lines() {
    let root = repo();
    let mut files = Vec::new();
    for f in FOLDERS {
        sources(&root.join(f), &mut files);
    }
    assert!(
        files.len() > 50,
        "found only {} source files under {FOLDERS:?}: the walk is broken",
        files.len()
    );
    let mut over: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).ok()?.lines().count();
            let rel = f.strip_prefix(&root).unwrap_or(f).display().to_string();
            (lines > LIMIT).then(|| format!("{rel}: {lines} lines"))
        })
        .collect();
    over.sort();
    assert!(
        over.is_empty(),
        "over {LIMIT} lines (split by concern):\n{}",
        over.join("\n")
    );
}
