//! The Rego bundle embedded at build time (see `build.rs`): modules, data
//! and the revision hash that identifies them.

include!(concat!(env!("OUT_DIR"), "/bundle.rs"));
