//! The `policy` section: which Rego document decides and which regorus
//! engine evaluates it.

use super::error::{invalid, ConfigError};
use serde::Deserialize;

/// Which Rego document decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// A package (`data.mcp.authz`: its `allow` and `deny` rules decide) or a
    /// rule whose value is a boolean or a response object.
    pub entrypoint: String,
    /// `"native"` (default), `"rvm"` or `"interpreter"`.
    pub engine: EngineChoice,
    /// `"agentplane"` (default) or `"envoy"`: opa-envoy-plugin's input
    /// members too (`attributes`, `parsed_path`, ...: [`crate::ext_authz`]).
    pub input: InputShape,
    /// Share of decisions (0 to 1, by decision id) the shadow revision
    /// built into the filter also decides, without enforcing.
    pub shadow_sample: f64,
}

/// The input document's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputShape {
    /// agentplane's own members only.
    #[default]
    Agentplane,
    /// agentplane's, and opa-envoy-plugin's beside them.
    Envoy,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            entrypoint: "data.mcp.authz".into(),
            engine: EngineChoice::Native,
            input: InputShape::Agentplane,
            shadow_sample: 0.0,
        }
    }
}

/// Which regorus engine evaluates requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// The policy compiled to Rust when the filter was built
    /// (`policy/native`): the build's entrypoint only, and only a package
    /// the generator translates; otherwise the RVM, as `"rvm"`. A complete
    /// rule with conflicting values is an error (and denies), as in OPA.
    #[default]
    Native,
    /// The register VM (bytecode compiled once at configure time), falling
    /// back to the interpreter for bundles it cannot compile. Like OPA
    /// without strict builtin errors, builtin errors are undefined; unlike
    /// OPA, a complete rule with conflicting values is undefined rather
    /// than an error.
    Rvm,
    /// The tree interpreter: conflicting complete-rule values are errors
    /// (and deny), as in OPA. Slower.
    Interpreter,
}

impl PolicyConfig {
    /// Checks the section.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.shadow_sample) {
            return Err(invalid("policy.shadow_sample", "must be between 0 and 1"));
        }
        if !is_rego_path(&self.entrypoint) {
            return Err(invalid(
                "policy.entrypoint",
                format!(
                    "{:?} is not a Rego data path like \"data.mcp.authz\"",
                    self.entrypoint
                ),
            ));
        }
        Ok(())
    }
}

/// `data.` and dot-separated Rego identifiers, like `data.mcp.authz`.
fn is_rego_path(s: &str) -> bool {
    let mut parts = s.split('.');
    parts.next() == Some("data")
        && s.len() > 5
        && parts.all(|p| {
            let mut c = p.chars();
            c.next()
                .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
                && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        })
}
