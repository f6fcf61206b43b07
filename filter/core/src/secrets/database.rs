//! Dynamic database credentials (`database/creds/<role>`): where a read's
//! answer keeps them (`data`, leased for `lease_duration` seconds) and the
//! two headers they go out in (username and password).

use super::plan::{string_fields, usable, Fields, Need, Secret, SEC};
use crate::config::SecretConfig;
use serde_json::Value;

/// The credential fields and their lease in nanoseconds (a missing lease
/// is 0: the credentials serve the waiting requests and are not cached).
pub(super) fn parse(v: &Value) -> Option<(Fields, u64)> {
    let fields = string_fields(v.get("data")?.as_object()?);
    let lease = v.get("lease_duration").and_then(Value::as_u64).unwrap_or(0);
    Some((fields, lease.saturating_mul(SEC)))
}

impl Need {
    /// Secret #`i`'s username and password, each into its header.
    pub(super) fn database_headers(
        &self,
        i: usize,
        fields: &Fields,
        out: &mut Vec<(String, Secret)>,
    ) -> Result<(), String> {
        let SecretConfig::Database {
            username_header,
            password_header,
            ..
        } = &self.spec
        else {
            return Err(format!("secret #{i} is not a database secret"));
        };
        out.push((
            username_header.to_ascii_lowercase(),
            usable(fields, i, "username")?.clone(),
        ));
        out.push((
            password_header.to_ascii_lowercase(),
            usable(fields, i, "password")?.clone(),
        ));
        Ok(())
    }
}
