//! The entry points the filter reads from a package: which of its rules
//! (`allow`, `deny`, `valid_until_ns`, `missing_scope`, `visible`,
//! `limits`, `approval`, `exchange`) the package declares, and the
//! generated module that gathers them into one decision rule so a single
//! evaluation decides. What the decision means is read in `verdict.rs`.

use super::PolicyError;
use regorus::Engine;

/// Name of the module agentplane adds to a package entrypoint.
const ENTRY_MODULE: &str = "__agentplane_entry.rego";

/// The rules a package may declare besides `allow`: (rule, the decision
/// object's key, its value when the rule is undefined or not declared).
pub(super) const OPTIONAL: [(&str, &str, &str); 7] = [
    ("deny", "deny", "[]"),
    // 0: "do not reuse".
    ("valid_until_ns", "valid_until_ns", "0"),
    ("missing_scope", "scope", "null"),
    ("visible", "visible", "null"),
    ("limits", "limits", "null"),
    ("approval", "approval", "null"),
    ("exchange", "exchange", "null"),
];

/// One rule that gathers `allow` (false when undefined) and every rule of
/// [`OPTIONAL`] the package declares (`declared`), each with its default,
/// so a single evaluation decides.
fn entry_module(package: &str, declared: impl Fn(&str) -> bool) -> String {
    let mut out = format!(
        "package {package}\n\n\
         default __agentplane_allow := false\n\
         __agentplane_allow := allow\n\n"
    );
    let mut members = vec!["\"allow\": __agentplane_allow".to_string()];
    for (rule, key, default) in OPTIONAL {
        out.push_str(&format!("default __agentplane_{key} := {default}\n"));
        if declared(rule) {
            out.push_str(&format!("__agentplane_{key} := {rule}\n"));
        }
        out.push('\n');
        members.push(format!("\"{key}\": __agentplane_{key}"));
    }
    out.push_str(&format!(
        "__agentplane_decision := {{{}}}\n",
        members.join(", ")
    ));
    out
}

/// The names of the modules whose package is `entrypoint` (`packages`:
/// each module's package, in the same order): none when it names a rule.
pub(super) fn in_package<'m>(
    modules: &[(&'m str, &str)],
    packages: &[String],
    entrypoint: &str,
) -> Vec<&'m str> {
    modules
        .iter()
        .zip(packages)
        .filter(|(_, p)| p.as_str() == entrypoint)
        .map(|((name, _), _)| *name)
        .collect()
}

/// Checks that package `entrypoint` (its modules `in_package`) declares an
/// `allow` rule and adds the module that gathers its rules. Returns the
/// generated decision rule's path and whether the package declares
/// `limits`.
pub(super) fn add(
    engine: &mut Engine,
    in_package: &[&str],
    entrypoint: &str,
) -> Result<(String, bool), PolicyError> {
    let declared = |rule: &str| -> Result<bool, PolicyError> {
        for m in in_package {
            if engine
                .has_declared_rule_rooted_at(m, rule)
                .map_err(|e| PolicyError::Compile(e.to_string()))?
            {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if !declared("allow")? {
        return Err(PolicyError::Entrypoint(format!(
            "package {entrypoint} declares no `allow` rule"
        )));
    }
    let package = entrypoint.strip_prefix("data.").unwrap_or(entrypoint);
    let limits = declared("limits")?;
    let mut has = Vec::new();
    for (rule, _, _) in OPTIONAL {
        if declared(rule)? {
            has.push(rule);
        }
    }
    let module = entry_module(package, |r| has.contains(&r));
    engine
        .add_policy(ENTRY_MODULE.to_string(), module)
        .map_err(|e| PolicyError::Compile(format!("{ENTRY_MODULE}: {e}")))?;
    Ok((format!("{entrypoint}.__agentplane_decision"), limits))
}
