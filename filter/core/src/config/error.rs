//! Why a configuration was refused: [`ConfigError`], and [`invalid`], the
//! one way a section's check names a field and what to fix in it.

use std::fmt;

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not valid JSON, or a field of the wrong type, or an unknown field.
    Syntax(String),
    /// A field whose value is not acceptable.
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The embedded policy does not compile or lacks the entrypoint.
    Policy(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Syntax(m) => write!(f, "plugin configuration is not valid: {m}"),
            ConfigError::Invalid { field, problem } => {
                write!(f, "plugin configuration field `{field}`: {problem}")
            }
            ConfigError::Policy(m) => write!(f, "policy: {m}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A field's value is not acceptable: its dotted path, and what is wrong
/// with it and how to fix it.
pub(crate) fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}
