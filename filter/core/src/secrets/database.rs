//! Dynamic database credentials (`database/creds/<role>`): where a read's
//! answer keeps them (`data`, leased for `lease_duration` seconds) and the
//! two headers they go out in (username and password).

use super::plan::{string_fields, usable, Fields, Need, Secret, SEC};
use serde_json::Value;

/// The credential fields and their lease in nanoseconds (a missing lease
/// is 0: the credentials serve the waiting requests and are not cached).
pub(super) fn parse(v: &Value) -> Option<(Fields, u64)> {
    let fields = string_fields(v.get("data")?.as_object()?);
    let lease = v.get("lease_duration").and_then(Value::as_u64).unwrap_or(0);
    Some((fields, lease.saturating_mul(SEC)))
}

impl Need {
    /// Secret #`i`'s username and password, each into its header if one
    /// is configured.
    pub(super) fn database_headers(
        &self,
        i: usize,
        fields: &Fields,
        out: &mut Vec<(String, Secret)>,
    ) -> Result<(), String> {
        if let Some(h) = &self.spec.username_header {
            out.push((
                h.to_ascii_lowercase(),
                usable(fields, i, "username")?.clone(),
            ));
        }
        if let Some(h) = &self.spec.password_header {
            out.push((
                h.to_ascii_lowercase(),
                usable(fields, i, "password")?.clone(),
            ));
        }
        Ok(())
    }
}
