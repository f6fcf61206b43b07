//! Which parts of `input` a policy reads, found in its source at configure
//! time, so that the decision cache can key on exactly those and nothing
//! else: two requests that differ only in what the policy never looks at
//! (a query string, a request id) share a decision.
//!
//! Conservative by construction. A read is understood only as a static
//! path: `input.a.b`, `input["a"].b`, or `object.get(input, ["a", "b"], d)`
//! with literal keys. A dynamic index (`input.a[x]`) counts as reading all
//! of `input.a`. Any other use of `input` (passed to a function, bound to
//! a variable, `with input as`, a path built at run time) makes the answer
//! "the whole input" (`None`).

/// A path below `input`, e.g. `["resource", "metadata", "team"]`.
pub type Path = Vec<String>;

/// The paths the modules read, reduced so that no path is a prefix of
/// another; `None` when some use of `input` is not a static path.
pub fn input_reads(modules: &[(&str, &str)]) -> Option<Vec<Path>> {
    let mut paths = Vec::new();
    for (_, src) in modules {
        scan(src, &mut paths)?;
    }
    paths.sort();
    paths.dedup();
    let mut minimal: Vec<Path> = Vec::new();
    for p in paths {
        if !minimal.iter().any(|m| p.starts_with(m)) {
            minimal.push(p);
        }
    }
    Some(minimal)
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Reads a `"..."` literal starting at `at` (the quote); returns its
/// content and the index after the closing quote. Escapes make it
/// non-literal for our purposes (`None`).
fn string_at(s: &[u8], at: usize) -> Option<(String, usize)> {
    if s.get(at) != Some(&b'"') {
        return None;
    }
    let mut i = at + 1;
    while let Some(&c) = s.get(i) {
        match c {
            b'"' => {
                let text = std::str::from_utf8(s.get(at + 1..i)?).ok()?;
                return Some((text.to_string(), i + 1));
            }
            b'\\' | b'\n' => return None,
            _ => i += 1,
        }
    }
    None
}

fn skip_space(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

fn scan(src: &str, out: &mut Vec<Path>) -> Option<()> {
    let s = src.as_bytes();
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        match c {
            b'#' => {
                while s.get(i).is_some_and(|&c| c != b'\n') {
                    i += 1;
                }
            }
            b'"' => {
                // Skip a string, escapes included.
                i += 1;
                while let Some(&c) = s.get(i) {
                    i += 1;
                    if c == b'\\' {
                        i += 1;
                    } else if c == b'"' {
                        break;
                    }
                }
            }
            b'`' => {
                i += 1;
                while s.get(i).is_some_and(|&c| c != b'`') {
                    i += 1;
                }
                i += 1;
            }
            c if is_ident(c) => {
                let start = i;
                while s.get(i).copied().is_some_and(is_ident) {
                    i += 1;
                }
                let word = s.get(start..i)?;
                let after_dot = start > 0 && s.get(start - 1) == Some(&b'.');
                if word == b"input" && !after_dot {
                    i = read_path(s, start, i, out)?;
                }
            }
            _ => i += 1,
        }
    }
    Some(())
}

/// `input` spans `start..end`; records the path it reads and returns where
/// scanning goes on. `None`: a use that is not a static read.
fn read_path(s: &[u8], start: usize, end: usize, out: &mut Vec<Path>) -> Option<usize> {
    let mut path = Vec::new();
    let mut i = end;
    loop {
        match s.get(i) {
            Some(b'.') if s.get(i + 1).copied().is_some_and(is_ident) => {
                let a = i + 1;
                i = a;
                while s.get(i).copied().is_some_and(is_ident) {
                    i += 1;
                }
                path.push(std::str::from_utf8(s.get(a..i)?).ok()?.to_string());
            }
            Some(b'[') => match string_at(s, skip_space(s, i + 1)) {
                Some((key, j)) if s.get(skip_space(s, j)) == Some(&b']') => {
                    path.push(key);
                    i = skip_space(s, j) + 1;
                }
                // A dynamic index: all of what is before it is read.
                _ => break,
            },
            _ => break,
        }
    }
    if !path.is_empty() {
        out.push(path);
        return Some(i);
    }
    // Bare `input`: only `object.get(input, <literal path>, default)`.
    let before = std::str::from_utf8(s.get(..start)?).ok()?.trim_end();
    if !before.ends_with("object.get(") {
        return None;
    }
    let j = skip_space(s, end);
    if s.get(j) != Some(&b',') {
        return None;
    }
    let j = skip_space(s, j + 1);
    match s.get(j) {
        Some(b'"') => {
            let (key, k) = string_at(s, j)?;
            out.push(vec![key]);
            Some(k)
        }
        Some(b'[') => {
            let mut k = skip_space(s, j + 1);
            let mut p = Vec::new();
            loop {
                let (key, next) = string_at(s, k)?;
                p.push(key);
                k = skip_space(s, next);
                match s.get(k) {
                    Some(b',') => k = skip_space(s, k + 1),
                    Some(b']') => break,
                    _ => return None,
                }
            }
            if p.is_empty() {
                return None;
            }
            out.push(p);
            Some(k + 1)
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn reads(src: &str) -> Option<Vec<String>> {
        input_reads(&[("p.rego", src)]).map(|v| v.iter().map(|p| p.join(".")).collect())
    }

    #[test]
    fn static_paths_are_found_and_minimised() {
        let r = reads(
            r#"package p
            # input.commented.out is not a read
            a if input.agent.team == "x"
            b if input["request"]["method"] == "GET"
            c if input.agent.permissions[_] == "y"
            d := object.get(input, ["resource", "metadata", "team"], null)
            e := object.get(input, "action", null)
            f := "input.in.a.string"
            g := data.x.input
            "#,
        )
        .unwrap();
        assert_eq!(
            r,
            [
                "action",
                "agent.permissions",
                "agent.team",
                "request.method",
                "resource.metadata.team"
            ]
        );
        assert_eq!(
            reads("package p\na if input.x.y\nb if input.x").unwrap(),
            ["x"]
        );
    }

    #[test]
    fn any_other_use_of_input_means_the_whole_input() {
        for src in [
            "package p\na := input",
            "package p\na := count(input)",
            "package p\na := object.get(input, k, null)",
            "package p\na := object.get(input, [\"a\", k], null)",
            "package p\na if walk(input, [p, v])",
            "package p\na if b with input as {}",
            "package p\na := json.marshal(input)",
            "package p\na if input[k]",
        ] {
            assert_eq!(reads(src), None, "{src}");
        }
    }

    #[test]
    fn the_shipped_policies_read_a_static_set() {
        let r = input_reads(crate::bundle::MODULES).expect("the shipped policies are analysable");
        let joined: Vec<String> = r.iter().map(|p| p.join(".")).collect();
        assert!(joined.contains(&"agent.team".to_string()), "{joined:?}");
        assert!(
            !joined.iter().any(|p| p.starts_with("request.query")),
            "{joined:?}"
        );
        assert!(!joined.iter().any(|p| p == "request.id"), "{joined:?}");
    }
}
