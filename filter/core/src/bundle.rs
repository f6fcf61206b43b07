//! The Rego bundle embedded at build time (see `build.rs`): modules, data,
//! the revision hash that identifies them, the input paths they read, and
//! the program compiled from them for the default entrypoint.

/// The bundle compiled to regorus RVM bytecode by `build.rs`, in regorus'
/// binary program format (version-checked when loaded).
#[derive(Debug)]
pub struct Compiled {
    /// The configured entrypoint it was compiled for.
    pub entrypoint: &'static str,
    /// The rule the program evaluates (a package's generated decision rule).
    pub rule: &'static str,
    /// The entrypoint is a package (its `allow`/`deny` decide), not a rule.
    pub package: bool,
    /// The package declares a `limits` rule.
    pub limits: bool,
    /// `Program::serialize_binary` of the compiled program.
    pub program: &'static [u8],
    /// `data.json` as the rule tree of an otherwise empty program: regorus'
    /// binary value encoding, loaded without a JSON parse.
    pub data: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/bundle.rs"));
