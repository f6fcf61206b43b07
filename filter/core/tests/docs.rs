//! Keeps `docs/` in step with the code. Each check reads the source as
//! text (no build-time hooks, no macros to keep in sync) and fails naming
//! the missing item and the page to add it to:
//! - every metric in `metrics.rs` is in `docs/metrics.md`, and every
//!   metric in that page's table is still defined;
//! - every policy entry point the filter reads (`declared("…")` in
//!   `policy/entry.rs`, and each rule of its `OPTIONAL` table) has a
//!   heading in `docs/policy.md`;
//! - every JSON-RPC code in `mcp/mod.rs`'s `code` module is in
//!   `docs/outcomes.md`, and every code in that page's tables exists;
//! - every field of the plugin configuration (the fields of the
//!   `Deserialize` structs reachable from `RawConfig`) is named, as its
//!   dotted path, in `docs/configuration.md`;
//! - every relative link in the README and `docs/` reaches a file, and a
//!   heading when it names one.

#![allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn core_sources() -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&repo().join("filter/core/src"), &mut files);
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read source"))
        .collect()
}

/// The markdown without fenced code blocks (their backticks and `#`
/// lines are not spans or headings).
fn prose(md: &str) -> String {
    let mut fenced = false;
    let mut out = String::new();
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The inline code spans (`…`) of some markdown prose.
fn spans(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The rows of the markdown tables in some prose.
fn table_rows(text: &str) -> String {
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
    rows.join("\n")
}

/// The double-quoted string literals in some Rust text.
fn literals(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The text after `start` up to the next `end`.
fn between<'a>(text: &'a str, start: &str, end: &str, file: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{file} has no `{start}`: update filter/core/tests/docs.rs"))
        + start.len();
    let len = text[from..].find(end).unwrap_or(text.len() - from);
    &text[from..from + len]
}

/// Fails with every problem found, one per line, so one run lists all
/// that is missing.
fn report(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "docs/ out of step with the code:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_metric_is_documented_and_every_documented_metric_exists() {
    let src = read("filter/core/src/metrics.rs");
    let names = literals(between(&src, "pub const NAMES", "];", "metrics.rs"));
    assert!(!names.is_empty(), "no metric names found in metrics.rs");
    // Metrics named at run time (`define_metric(&format!("prefix.{x}"…`).
    let families: Vec<String> = core_sources()
        .iter()
        .flat_map(|s| {
            s.split("define_metric(&format!(\"")
                .skip(1)
                .map(str::to_string)
        })
        .filter_map(|rest| rest.split(['{', '"']).next().map(str::to_string))
        .collect();
    let doc = prose(&read("docs/metrics.md"));
    let documented = spans(&doc);
    let mut problems = Vec::new();
    for name in names.iter().filter(|n| !documented.contains(*n)) {
        problems.push(format!(
            "metric `{name}` (filter/core/src/metrics.rs) is not in docs/metrics.md: add a row for it"
        ));
    }
    for family in &families {
        if !documented.iter().any(|s| s.starts_with(family.as_str())) {
            problems.push(format!(
                "metric family `{family}…` (defined at run time in filter/core/src) is not in docs/metrics.md: add a row for it"
            ));
        }
    }
    for listed in spans(&table_rows(&doc)) {
        let known = names.contains(&listed) || families.iter().any(|f| listed.starts_with(f));
        if listed.starts_with("agentplane.") && !known {
            problems.push(format!(
                "docs/metrics.md lists `{listed}`, which filter/core/src no longer defines: remove its row"
            ));
        }
    }
    report(&problems);
}

#[test]
fn every_policy_entry_point_the_filter_reads_is_documented() {
    let src = read("filter/core/src/policy/entry.rs");
    let mut rules: BTreeSet<String> = src
        .split("declared(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next().map(str::to_string))
        .collect();
    // The OPTIONAL table's rows: `("rule", "key", "default"),`.
    rules.extend(src.lines().filter_map(|l| {
        l.trim()
            .strip_prefix("(\"")
            .and_then(|rest| rest.split('"').next())
            .map(str::to_string)
    }));
    assert!(
        rules.contains("exchange"),
        "no OPTIONAL rows found in policy/entry.rs: update filter/core/tests/docs.rs"
    );
    assert!(
        rules.contains("allow"),
        "no declared(\"…\") calls found in policy/entry.rs: update filter/core/tests/docs.rs"
    );
    let doc = prose(&read("docs/policy.md"));
    let missing: Vec<String> = rules
        .iter()
        .filter(|rule| {
            let heading = format!("`{rule}`");
            !doc.lines().any(|l| l.starts_with('#') && l.contains(&heading))
        })
        .map(|rule| format!(
            "the filter reads policy entry point `{rule}` (declared(\"{rule}\") in filter/core/src/policy/entry.rs), but docs/policy.md has no heading for it: add a section saying what it must return"
        ))
        .collect();
    report(&missing);
}

/// `−32700` as the docs write it (a minus sign), or with an ASCII hyphen.
fn code_forms(code: i64) -> [String; 2] {
    [format!("\u{2212}{}", -code), code.to_string()]
}

#[test]
fn every_json_rpc_code_is_documented_and_every_documented_code_exists() {
    let src = read("filter/core/src/mcp/mod.rs");
    let module = between(&src, "pub mod code {", "\n}", "mcp/mod.rs");
    let codes: BTreeMap<i64, String> = module
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let value = rest.split('=').nth(1)?.trim().trim_end_matches(';');
            Some((value.parse().ok()?, name.to_string()))
        })
        .collect();
    assert!(
        codes.contains_key(&-32700),
        "no codes found in mcp/mod.rs `code`: update filter/core/tests/docs.rs"
    );
    let doc = prose(&read("docs/outcomes.md"));
    let mut problems = Vec::new();
    for (code, name) in &codes {
        let [minus, hyphen] = code_forms(*code);
        if !doc.contains(&minus) && !doc.contains(&hyphen) {
            problems.push(format!(
                "JSON-RPC code {code} (`{name}` in filter/core/src/mcp/mod.rs) is not in docs/outcomes.md: add it to the JSON-RPC codes table"
            ));
        }
    }
    // Every −32xxx in the tables must still be a code the filter has.
    let rows = table_rows(&doc).replace('\u{2212}', "-");
    for (i, _) in rows.match_indices("-32") {
        let digits: String = rows[i + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let code: i64 = -digits.parse::<i64>().expect("digits");
        if !codes.contains_key(&code) {
            problems.push(format!(
                "docs/outcomes.md's tables name JSON-RPC code {code}, which filter/core/src/mcp/mod.rs no longer has: remove or correct it"
            ));
        }
    }
    report(&problems);
}

/// The fields of every struct deriving `Deserialize` in the sources: the
/// JSON name (after `#[serde(rename = "…")]`) and the Rust type; and the
/// type parameters of the generic ones (`ResourceConfig<S = …>`: `S`).
type Structs = BTreeMap<String, Vec<(String, String)>>;
fn deserialize_structs() -> (Structs, BTreeMap<String, Vec<String>>) {
    let mut structs = BTreeMap::new();
    let mut params = BTreeMap::new();
    for src in core_sources() {
        let (mut derives, mut current, mut rename) = (false, None::<String>, None);
        for line in src.lines().map(str::trim) {
            if line.starts_with("#[derive(") {
                derives = line.contains("Deserialize");
            } else if let Some(rest) = line
                .strip_prefix("pub struct ")
                .or(line.strip_prefix("struct "))
            {
                let name = rest.split([' ', '{', '(', '<', ';']).next().unwrap_or("");
                if derives && line.ends_with('{') {
                    current = Some(name.to_string());
                    structs.insert(name.to_string(), Vec::new());
                    if let Some((_, generics)) = rest.split_once('<') {
                        let names = generics.split(',').filter_map(|p| {
                            let p = p.split(['=', ':', '>']).next()?.trim();
                            (!p.is_empty()).then(|| p.to_string())
                        });
                        params.insert(name.to_string(), names.collect());
                    }
                }
                derives = false;
            } else if line == "}" {
                current = None;
            } else if let Some(s) = &current {
                if let Some(r) = line.strip_prefix("#[serde(rename = \"") {
                    rename = r.split('"').next().map(str::to_string);
                } else if !line.starts_with("//") && !line.starts_with('#') {
                    let field = line.strip_prefix("pub ").unwrap_or(line);
                    if let Some((name, ty)) = field.split_once(": ") {
                        let json = rename.take().unwrap_or_else(|| name.to_string());
                        structs
                            .get_mut(s)
                            .expect("open struct")
                            .push((json, ty.to_string()));
                    }
                }
            }
        }
    }
    (structs, params)
}

#[test]
fn every_configuration_field_is_documented() {
    let (structs, params) = deserialize_structs();
    assert!(
        structs.contains_key("RawConfig"),
        "no `struct RawConfig` deriving Deserialize in filter/core/src: update filter/core/tests/docs.rs"
    );
    // Dotted paths from RawConfig down: a map level is `.<name>`, a list
    // element `[]` (`resources.<name>.secrets[].kv`).
    let mut paths = Vec::new();
    // A generic struct is read with the type arguments its field names
    // (`ResourceConfig<SecretFields>`): a field typed `Vec<S>` is one of those.
    let mut queue = vec![("RawConfig".to_string(), String::new(), Vec::new())];
    let mut seen = BTreeSet::from(["RawConfig".to_string()]);
    while let Some((name, prefix, args)) = queue.pop() {
        for (field, ty) in &structs[&name] {
            let path = if prefix.is_empty() {
                field.clone()
            } else {
                format!("{prefix}.{field}")
            };
            let named: Vec<String> = ty
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .map(|t| {
                    let param = params
                        .get(&name)
                        .and_then(|ps| ps.iter().position(|p| p == t));
                    param
                        .and_then(|i| args.get(i).cloned())
                        .unwrap_or_else(|| t.to_string())
                })
                .filter(|t| structs.contains_key(t))
                .collect();
            if let Some(inner) = named.first().filter(|t| seen.insert(t.to_string())) {
                let level = if ty.contains("Map<") {
                    ".<name>"
                } else if ty.contains("Vec<") {
                    "[]"
                } else {
                    ""
                };
                queue.push((
                    inner.to_string(),
                    format!("{path}{level}"),
                    named[1..].to_vec(),
                ));
            }
            paths.push(path);
        }
    }
    let documented = spans(&prose(&read("docs/configuration.md")));
    let missing: Vec<String> = paths
        .iter()
        .filter(|path| {
            !documented.iter().any(|s| {
                s == *path || s.starts_with(&format!("{path}.")) || s.starts_with(&format!("{path}["))
            })
        })
        .map(|path| format!(
            "configuration field `{path}` (filter/core/src) is not in docs/configuration.md: add a row naming `{path}`"
        ))
        .collect();
    report(&missing);
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_link_in_the_docs_reaches_its_page_and_heading() {
    let root = repo();
    let mut problems = Vec::new();
    let mut pages = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
    {
        pages.push(e.path());
    }
    for page in pages
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
    {
        let text = prose(&std::fs::read_to_string(page).expect("read page"));
        let name = page.strip_prefix(&root).unwrap_or(page).display();
        for link in text.split("](").skip(1).filter_map(|r| r.split(')').next()) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = link.split_once('#').unwrap_or((link, ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().expect("dir").join(file)
            };
            if !target.exists() {
                problems.push(format!("{name}: link to {link}: no such file"));
            } else if !anchor.is_empty() {
                let headings = prose(&std::fs::read_to_string(&target).expect("read target"));
                if !headings
                    .lines()
                    .filter(|l| l.starts_with('#'))
                    .any(|l| slug(l) == anchor)
                {
                    problems.push(format!(
                        "{name}: link to {link}: no heading with that anchor"
                    ));
                }
            }
        }
    }
    report(&problems);
}
