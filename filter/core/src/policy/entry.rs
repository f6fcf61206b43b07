//! The entry points the filter reads from a package: which of its rules
//! (`allow`, `deny`, `valid_until_ns`, `missing_scope`, `visible`,
//! `limits`, `approval`) the package declares, and the generated module that gathers
//! them into one decision rule so a single evaluation decides. What the
//! decision means is read in `verdict.rs`.

use super::PolicyError;
use regorus::Engine;

/// Name of the module agentplane adds to a package entrypoint.
const ENTRY_MODULE: &str = "__agentplane_entry.rego";

/// One rule that gathers `allow` (false when undefined), `deny` (empty
/// when undefined or not declared) and `valid_until_ns` (0, "do not reuse",
/// when undefined or not declared) so a single evaluation decides.
fn entry_module(
    package: &str,
    has_deny: bool,
    has_valid_until: bool,
    has_scope: bool,
    has_visible: bool,
    has_limits: bool,
    has_approval: bool,
) -> String {
    let approval = if has_approval {
        "__agentplane_approval := approval\n"
    } else {
        ""
    };
    let limits = if has_limits {
        "__agentplane_limits := limits\n"
    } else {
        ""
    };
    let visible = if has_visible {
        "__agentplane_visible := visible\n"
    } else {
        ""
    };
    let scope = if has_scope {
        "__agentplane_scope := missing_scope\n"
    } else {
        ""
    };
    let deny = if has_deny {
        "__agentplane_deny := deny\n"
    } else {
        ""
    };
    let until = if has_valid_until {
        "__agentplane_valid_until := valid_until_ns\n"
    } else {
        ""
    };
    format!(
        "package {package}\n\n\
         default __agentplane_allow := false\n\
         __agentplane_allow := allow\n\n\
         default __agentplane_deny := []\n\
         {deny}\n\
         default __agentplane_valid_until := 0\n\
         {until}\n\
         default __agentplane_scope := null\n\
         {scope}\n\
         default __agentplane_visible := null\n\
         {visible}\n\
         default __agentplane_limits := null\n\
         {limits}\n\
         default __agentplane_approval := null\n\
         {approval}\n\
         __agentplane_decision := {{\"allow\": __agentplane_allow, \"deny\": __agentplane_deny, \"valid_until_ns\": __agentplane_valid_until, \"scope\": __agentplane_scope, \"visible\": __agentplane_visible, \"limits\": __agentplane_limits, \"approval\": __agentplane_approval}}\n"
    )
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
    let module = entry_module(
        package,
        declared("deny")?,
        declared("valid_until_ns")?,
        declared("missing_scope")?,
        declared("visible")?,
        limits,
        declared("approval")?,
    );
    engine
        .add_policy(ENTRY_MODULE.to_string(), module)
        .map_err(|e| PolicyError::Compile(format!("{ENTRY_MODULE}: {e}")))?;
    Ok((format!("{entrypoint}.__agentplane_decision"), limits))
}
