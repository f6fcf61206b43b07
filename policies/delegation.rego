# Delegation (RFC 8693): a token whose `act` claim names who acts for its
# subject. The filter gives `input.delegation`: null when the subject acts
# itself, else {subject, actor, actor_type, actor_permissions, chain,
# depth, may_act}. Only `actor` (the outermost `act`) is acting now; the
# rest of `chain` is history.
#
# Rules (data: mcp.config.delegation):
# - a chain may be at most `max_depth` actors long;
# - an actor's agent type must be one `may_act_for` lists for the
#   subject's agent type;
# - a delegated call never gains permissions: it may use only the
#   permissions both the token (the subject's grant) and the current actor
#   hold (authz.rego's `agent_permissions`).
package mcp.authz

delegation := object.get(input, "delegation", null)

delegation_cfg := object.get(cfg, "delegation", {})

max_delegation_depth := object.get(delegation_cfg, "max_depth", 0)

# Actor types allowed to act for the subject's agent type.
actor_types_allowed := object.get(object.get(delegation_cfg, "may_act_for", {}), agent_type_of_subject, [])

agent_type_of_subject := object.get(input, ["agent", "type"], null)

actor_type := object.get(input, ["delegation", "actor_type"], null)

delegated_permissions := [p |
	some p in token_permissions
	p in actor_permissions
]

# A list even when absent or null: absent actor permissions grant nothing.
default actor_permissions := []

actor_permissions := p if {
	p := input.delegation.actor_permissions
	is_array(p)
}

delegation_ok if delegation == null

delegation_ok if {
	delegation != null
	delegation.depth <= max_delegation_depth
	actor_type in actor_types_allowed
}

reasons contains msg if {
	delegation != null
	delegation.depth > max_delegation_depth
	msg := sprintf("delegation chain of %v actors is longer than the %v allowed", [delegation.depth, max_delegation_depth])
}

reasons contains msg if {
	delegation != null
	not actor_type in actor_types_allowed
	msg := sprintf("an agent of type %v may not act for a %v agent", [actor_type, agent_type_of_subject])
}
