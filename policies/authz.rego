# agentplane base policy: the seed's rules, made correct Rego v1.
#
# Entrypoint: data.mcp.authz. The filter allows a request only when `allow`
# is true AND `deny` is empty; every deny carries a human-readable reason.
# The input document is described in docs/input.md.
#
# Seed fixes: one combined decision instead of four independent `allow`
# rules (any of which used to grant access on its own); the action comes from
# input.action, not a path index; off-hours really denies; HTTP methods, not
# CRUD words; a clock (input.request.time_ns) that tests can fix.
#
# Cost: the reasons live in `request_reasons` (one rule body per reason;
# `reasons` picks them, or a session end's own). `deny` evaluates them only
# when `fast_ok`, one body, does not hold. `fast_ok` must imply that
# `reasons` is empty, and its failure must produce at least one reason (the
# OPA differential test checks both on its whole corpus).
#
# Absent or null data denies: a resource without a string `team` or
# `environment` in its metadata is refused, never treated as open.
package mcp.authz

cfg := data.mcp.config

default allow := false

# `fast_ok` is the one statement of what a request needs: every
# requirement at once. Nothing else allows, so a requirement that lacks a
# deny reason can never let a request through; it only leaves the refusal
# unexplained (the filter then says "no policy rule allowed the request",
# and the differential test fails on it).
allow if fast_ok

token_valid if input.jwt.valid == true

# Defined even when the claim is absent, so both engines agree on `not`.
exp := object.get(input, ["jwt", "payload", "exp"], null)

token_not_expired if {
	is_number(exp)
	clock_ok
	input.request.time_ns < exp * 1000000000
}

required_permission := cfg.action_permissions[action]

has_permission_for_action if required_permission in agent_permissions

# Every scope (permission) a refused request lacked, for the 403's
# `WWW-Authenticate: Bearer error="insufficient_scope", scope="..."`: the
# action's permission and any a service or a tool needs on top, so a client
# steps up once (RFC 6750 §3.1: space-separated, sorted).
missing_scope := concat(" ", sort([s | some s in missing_scopes])) if {
	not fast_ok
	count(missing_scopes) > 0
}

missing_scopes contains required_permission if {
	is_string(required_permission)
	not required_permission in agent_permissions
}

missing_scopes contains p if {
	some p in array.concat(object.get(cfg.service_permissions, resource_id, []), tool_permissions)
	is_string(p)
	not p in agent_permissions
}

default deny := set()

deny := reasons if not fast_ok

# The reasons of a refusal: a session end has its own few requirements.
reasons := session_reasons if {
	session_end
} else := request_reasons

# Ending one's own session (cfg.session_actions: DELETE on an MCP endpoint)
# needs only a valid token at a registered service: no permission, team,
# layer or time window keeps an agent from closing what it opened (the
# filter binds a session to the principal that opened it).
session_end if action in object.get(cfg, "session_actions", [])

fast_ok if {
	session_end
	input.jwt.valid == true
	is_number(exp)
	clock_ok
	input.request.time_ns < exp * 1000000000
	is_string(resource_id)
	registered == true
}

session_reasons contains "token is not valid" if not token_valid

session_reasons contains "token has no numeric exp claim" if not is_number(exp)

session_reasons contains "token has expired" if {
	is_number(exp)
	clock_ok
	not token_not_expired
}

session_reasons contains "request has no numeric time" if not clock_ok

session_reasons contains "resource has no id" if not is_string(resource_id)

session_reasons contains msg if {
	registered != true
	msg := sprintf("service %v is not registered", [resource_id])
}

# Every requirement at once; each line negates one or more `reasons`.
fast_ok if {
	input.jwt.valid == true
	is_number(exp)
	clock_ok
	input.request.time_ns < exp * 1000000000
	is_string(action)
	cfg.action_permissions[action] in agent_permissions
	is_string(resource_id)
	every needed in object.get(cfg.service_permissions, resource_id, []) {
		needed in agent_permissions
	}
	registered == true
	environment_ok
	team_ok
	not high_risk_off_hours
	not destructive_off_hours
	layers_clear
	tools_ok
	delegation_ok
	workload_ok
}

# Read with defaults: under `not`, OPA and regorus disagree about
# undefined operands, so nothing here is ever undefined.
resource_team := object.get(input.resource, ["metadata", "team"], null)

resource_environment := object.get(input.resource, ["metadata", "environment"], null)

resource_id := object.get(input, ["resource", "id"], null)

registered := object.get(input, ["resource", "registered"], null)

agent_team := object.get(input, ["agent", "team"], null)

agent_environment := object.get(input, ["agent", "environment"], null)

action := object.get(input, "action", null)

# The permissions a request may use: the token's, and for a delegated call
# (policies/delegation.rego) only those its current actor holds as well;
# inside a transaction (policies/transaction.rego) only those its scope
# carries too.
agent_permissions := [p |
	some p in own_permissions
	p in transaction_scope
] if transaction != null else := own_permissions

own_permissions := delegated_permissions if delegation != null else := token_permissions

token_permissions := object.get(input, ["agent", "permissions"], [])

environment_ok if {
	is_string(resource_environment)
	agent_environment == "production"
}

environment_ok if {
	is_string(resource_environment)
	resource_environment != "production"
}

team_ok if {
	is_string(resource_team)
	resource_team == agent_team
}

team_ok if {
	is_string(resource_team)
	resource_team in cfg.shared_teams
}

team_ok if {
	is_string(resource_team)
	input.resource.metadata.shared == true
}

# Time windows: high-risk HTTP methods on plain HTTP services; on MCP
# services the HTTP method says nothing about risk (DELETE ends a session,
# every call is a POST), so the window applies to destructive tools.
high_risk_off_hours if {
	object.get(input.resource, "protocol", "http") != "mcp"
	input.request.method in cfg.high_risk_methods
	off_hours
}

destructive_off_hours if {
	is_string(mcp_tool)
	mcp_tool in object.get(cfg, "destructive_tools", [])
	off_hours
}

# --- token -------------------------------------------------------------

request_reasons contains "token is not valid" if not token_valid

request_reasons contains "token has no numeric exp claim" if not is_number(exp)

request_reasons contains "token has expired" if {
	is_number(exp)
	clock_ok
	not token_not_expired
}

request_reasons contains "request has no numeric time" if not clock_ok

# --- action and permissions ----------------------------------------------

request_reasons contains msg if {
	not is_string(action)
	msg := sprintf("no action is defined for resource type %v", [object.get(input, ["resource", "type"], null)])
}

request_reasons contains msg if {
	is_string(action)
	not cfg.action_permissions[action]
	msg := sprintf("action %v requires a permission the policy does not know", [action])
}

request_reasons contains msg if {
	not required_permission in agent_permissions
	msg := sprintf("missing permission %v for action %v", [required_permission, action])
}

# Some services demand extra permissions on top of the action's.
request_reasons contains msg if {
	some needed in cfg.service_permissions[resource_id]
	not needed in agent_permissions
	msg := sprintf("service %v requires permission %v", [resource_id, needed])
}

# --- resource ------------------------------------------------------------

request_reasons contains msg if {
	registered != true
	msg := sprintf("service %v is not registered", [resource_id])
}

request_reasons contains "resource has no id" if not is_string(resource_id)

request_reasons contains msg if {
	not is_string(resource_environment)
	msg := sprintf("resource %v has no environment in its metadata", [resource_id])
}

request_reasons contains msg if {
	not is_string(resource_team)
	msg := sprintf("resource %v has no owning team in its metadata", [resource_id])
}

# Only production agents reach production resources.
request_reasons contains msg if {
	resource_environment == "production"
	agent_environment != "production"
	msg := sprintf("production resource %v requires a production agent, not %v", [resource_id, agent_environment])
}

# Teams reach their own resources, resources of shared teams, and resources
# marked shared.
request_reasons contains msg if {
	owner := resource_team
	is_string(owner)
	owner != agent_team
	not owner in cfg.shared_teams
	object.get(input.resource, ["metadata", "shared"], null) != true
	msg := sprintf("resource %v belongs to team %v, not %v", [resource_id, owner, agent_team])
}

# --- time ----------------------------------------------------------------

# The filter always sets input.request.time_ns to an integer. Anything else
# denies with its own reason: compared with `<`, null sorts below every
# number (an expired token would pass), and the hour arithmetic on it is
# undefined, which `not off_hours` would read as "in business hours".
clock_ok if {
	is_number(input.request.time_ns)
	round(input.request.time_ns) == input.request.time_ns
	# A whole number written as a float passes the line above, but `%` on
	# it is an error in regorus (undefined on the RVM).
	is_number(input.request.time_ns % 3600000000000)
}

hour_utc := (input.request.time_ns - (input.request.time_ns % 3600000000000)) / 3600000000000 % 24 if clock_ok

off_hours if hour_utc < cfg.business_hours.start_hour_utc

off_hours if hour_utc >= cfg.business_hours.end_hour_utc

request_reasons contains msg if {
	high_risk_off_hours
	msg := sprintf("%v is not permitted outside business hours (%v:00-%v:00 UTC)", [input.request.method, cfg.business_hours.start_hour_utc, cfg.business_hours.end_hour_utc])
}

request_reasons contains msg if {
	destructive_off_hours
	msg := sprintf("tool %v is not permitted outside business hours (%v:00-%v:00 UTC)", [mcp_tool, cfg.business_hours.start_hour_utc, cfg.business_hours.end_hour_utc])
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
next_hour_ns := (input.request.time_ns - (input.request.time_ns % 3600000000000)) + 3600000000000 if clock_ok

valid_until_ns := min({next_hour_ns, exp * 1000000000}) if is_number(exp)

valid_until_ns := next_hour_ns if not is_number(exp)
