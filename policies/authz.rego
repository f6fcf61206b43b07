# agentplane base policy: the seed's rules, made correct Rego v1.
#
# Entrypoint: data.mcp.authz. The filter allows a request only when `allow`
# is true AND `deny` is empty; every deny carries a human-readable reason.
# The input document is described in README.md ("Input document").
#
# Seed fixes: one combined decision instead of four independent `allow`
# rules (any of which used to grant access on its own); the action comes from
# input.action, not a path index; off-hours really denies; HTTP methods, not
# CRUD words; a clock (input.request.time_ns) that tests can fix.
#
# Cost: the reasons live in `reasons` (one rule body per reason). `deny`
# evaluates them only when `fast_ok`, one body, cannot prove that none holds.
# `fast_ok` must imply that `reasons` is empty (the OPA differential test
# checks this on its whole corpus); it may be stricter, which only costs time.
package mcp.authz

cfg := data.mcp.config

default allow := false

# On the fast path `fast_ok` already holds every positive check below.
allow if {
	fast_ok
	count(deny) == 0
}

allow if {
	not fast_ok
	count(deny) == 0
	token_valid
	token_not_expired
	has_permission_for_action
	layer_allows
}

token_valid if input.jwt.valid == true

# Defined even when the claim is absent, so both engines agree on `not`.
exp := object.get(input, ["jwt", "payload", "exp"], null)

token_not_expired if {
	is_number(exp)
	input.request.time_ns < exp * 1000000000
}

required_permission := cfg.action_permissions[input.action]

has_permission_for_action if required_permission in input.agent.permissions

default deny := set()

deny := reasons if not fast_ok

# Every requirement at once; each line negates one or more `reasons`.
fast_ok if {
	input.jwt.valid == true
	is_number(exp)
	input.request.time_ns < exp * 1000000000
	is_string(input.action)
	cfg.action_permissions[input.action] in input.agent.permissions
	every needed in object.get(cfg.service_permissions, input.resource.id, []) {
		needed in input.agent.permissions
	}
	input.resource.registered == true
	environment_ok
	team_ok
	not high_risk_off_hours
	layers_clear
}

environment_ok if input.agent.environment == "production"

environment_ok if not input.resource.metadata.environment == "production"

team_ok if input.resource.metadata.team == input.agent.team

team_ok if input.resource.metadata.team in cfg.shared_teams

team_ok if input.resource.metadata.shared == true

high_risk_off_hours if {
	input.request.method in cfg.high_risk_methods
	off_hours
}

# --- token -------------------------------------------------------------

reasons contains "token is not valid" if not token_valid

reasons contains "token has no numeric exp claim" if not is_number(exp)

reasons contains "token has expired" if {
	is_number(exp)
	not token_not_expired
}

# --- action and permissions ----------------------------------------------

reasons contains msg if {
	not is_string(input.action)
	msg := sprintf("no action is defined for resource type %v", [input.resource.type])
}

reasons contains msg if {
	is_string(input.action)
	not cfg.action_permissions[input.action]
	msg := sprintf("action %v requires a permission the policy does not know", [input.action])
}

reasons contains msg if {
	not required_permission in input.agent.permissions
	msg := sprintf("missing permission %v for action %v", [required_permission, input.action])
}

# Some services demand extra permissions on top of the action's.
reasons contains msg if {
	some needed in cfg.service_permissions[input.resource.id]
	not needed in input.agent.permissions
	msg := sprintf("service %v requires permission %v", [input.resource.id, needed])
}

# --- resource ------------------------------------------------------------

reasons contains msg if {
	input.resource.registered == false
	msg := sprintf("service %v is not registered", [input.resource.id])
}

# Only production agents reach production resources.
reasons contains msg if {
	input.resource.metadata.environment == "production"
	input.agent.environment != "production"
	msg := sprintf("production resource %v requires a production agent, not %v", [input.resource.id, input.agent.environment])
}

# Teams reach their own resources, resources of shared teams, and resources
# marked shared.
reasons contains msg if {
	owner := input.resource.metadata.team
	owner != input.agent.team
	not owner in cfg.shared_teams
	not input.resource.metadata.shared == true
	msg := sprintf("resource %v belongs to team %v, not %v", [input.resource.id, owner, input.agent.team])
}

# --- time ----------------------------------------------------------------

hour_utc := (input.request.time_ns - (input.request.time_ns % 3600000000000)) / 3600000000000 % 24

off_hours if hour_utc < cfg.business_hours.start_hour_utc

off_hours if hour_utc >= cfg.business_hours.end_hour_utc

reasons contains msg if {
	high_risk_off_hours
	msg := sprintf("%v is not permitted outside business hours (%v:00-%v:00 UTC)", [input.request.method, cfg.business_hours.start_hour_utc, cfg.business_hours.end_hour_utc])
}

# --- decision lifetime -----------------------------------------------------

# The filter's decision cache (config `decision_cache`) may reuse this
# decision for the same request (same verified token, method, path, host and
# input headers) until this time, in ns since the epoch, exclusive. Time
# enters this policy only through the token's expiry and the UTC hour (for
# business hours), so the decision holds until the next of those changes.
# Keep this true when adding a time-dependent rule; a policy that cannot say
# leaves this rule out and nothing is cached. The core's cache-safety test
# checks it on the decision corpus. Nothing here reads input.request.id.
next_hour_ns := (input.request.time_ns - (input.request.time_ns % 3600000000000)) + 3600000000000

valid_until_ns := min({next_hour_ns, exp * 1000000000}) if is_number(exp)

valid_until_ns := next_hour_ns if not is_number(exp)
