# Delegation (RFC 8693): a token whose `act` claim names who acts for its
# subject. The filter gives `input.delegation`: null when the subject acts
# itself, else {subject, actor, actor_type, actor_permissions, chain,
# depth, may_act, actors}. Only `actor` (the outermost `act`) is acting
# now; the rest of `chain` is history, but the call rides on it, so every
# actor in `actors` is held to what the current one is.
#
# Rules (data: mcp.config.delegation):
# - a chain may be at most `max_depth` actors long;
# - every actor's agent type must be one `may_act_for` lists for the
#   subject's agent type;
# - a delegated call never gains permissions: it may use only the
#   permissions the token (the subject's grant) and every actor hold
#   (authz.rego's `agent_permissions`).
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
	every a in delegation_actors {
		p in listed_permissions(a)
	}
]

# Every actor of the chain (the filter always gives them; an input
# without them is held to the current actor alone).
delegation_actors := a if {
	a := input.delegation.actors
	is_array(a)
} else := []

# An actor's permissions; none listed grants nothing.
listed_permissions(a) := p if {
	p := object.get(a, "permissions", null)
	is_array(p)
} else := []

chain_actor_type(a) := object.get(a, "type", null)

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
	every a in delegation_actors {
		chain_actor_type(a) in actor_types_allowed
	}
}

request_reasons contains msg if {
	delegation != null
	delegation.depth > max_delegation_depth
	msg := sprintf("delegation chain of %v actors is longer than the %v allowed", [delegation.depth, max_delegation_depth])
}

request_reasons contains msg if {
	delegation != null
	not actor_type in actor_types_allowed
	msg := sprintf("an agent of type %v may not act for a %v agent", [actor_type, agent_type_of_subject])
}

request_reasons contains msg if {
	delegation != null
	some a in delegation_actors
	not chain_actor_type(a) in actor_types_allowed
	msg := sprintf("an agent of type %v may not act for a %v agent", [chain_actor_type(a), agent_type_of_subject])
}
