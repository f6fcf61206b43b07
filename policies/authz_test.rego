# Tests for the base policy and the layered model, run by agentplane's own
# runner (regorus, `cargo test -p agentplane-core --test rego`) and by the
# real OPA engine in the differential test.
package mcp.authz_test

import data.mcp.authz

noon := 1746273600000000000 # 2025-05-03T12:00:00Z

early := 1746252000000000000 # 2025-05-03T06:00:00Z

support_agent := {
	"id": "support-triage@clients",
	"type": "support",
	"team": "customer-success",
	"environment": "production",
	"permissions": ["skills:invoke", "data:read"],
}

skill := {"type": "skill", "id": "sentiment-analysis", "registered": true, "metadata": {"team": "customer-success", "environment": "production"}}

req(agent, resource, action, method, now) := {
	"jwt": {"valid": true, "payload": {"sub": agent.id, "exp": 1746277200}},
	"agent": agent,
	"request": {"method": method, "path": [resource.id], "time_ns": now},
	"resource": resource,
	"action": action,
}

ok := req(support_agent, skill, "invoke_skill", "POST", noon)

test_allows_permitted_action if {
	authz.allow with input as ok
	count(authz.deny) == 0 with input as ok
}

test_deny_missing_permission if {
	inp := req(support_agent, skill, "write_data", "POST", noon)
	not authz.allow with input as inp
	authz.deny["missing permission data:write for action write_data"] with input as inp
}

test_deny_invalid_token if {
	inp := object.union(ok, {"jwt": {"valid": false}})
	not authz.allow with input as inp
	authz.deny["token is not valid"] with input as inp
}

test_deny_expired_token if {
	inp := object.union(ok, {"jwt": {"payload": {"exp": 1746270000}}})
	not authz.allow with input as inp
	authz.deny["token has expired"] with input as inp
}

test_deny_request_without_numeric_time if {
	# null sorts below every number: without the clock check an expired
	# token would pass, and a DELETE would count as in business hours.
	expired := {"jwt": {"payload": {"exp": 1746270000}}, "request": {"method": "DELETE"}}
	every t in [null, false, "1746270000000000000", {}, 1.5] {
		inp := object.union(object.union(ok, expired), {"request": {"time_ns": t}})
		not authz.allow with input as inp
		authz.deny["request has no numeric time"] with input as inp
	}
}

test_deny_token_without_exp if {
	inp := object.union(ok, {"jwt": {"payload": {"exp": null}}})
	not authz.allow with input as inp
	authz.deny["token has no numeric exp claim"] with input as inp
}

test_deny_unknown_action if {
	inp := object.union(ok, {"action": null})
	not authz.allow with input as inp
}

test_service_permissions_are_all_required if {
	res := {"type": "data", "id": "customer-data", "registered": true, "metadata": {"team": "customer-success", "environment": "production"}}
	inp := req(support_agent, res, "read_data", "GET", noon)
	not authz.allow with input as inp
	authz.deny["service customer-data requires permission customer:access"] with input as inp
	agent := object.union(support_agent, {"permissions": ["skills:invoke", "data:read", "customer:access"]})
	authz.allow with input as req(agent, res, "read_data", "GET", noon)
}

test_production_resources_need_production_agents if {
	agent := object.union(support_agent, {"environment": "staging"})
	inp := req(agent, skill, "invoke_skill", "POST", noon)
	not authz.allow with input as inp
	authz.deny["production resource sentiment-analysis requires a production agent, not staging"] with input as inp
}

test_staging_resources_are_open_to_any_environment if {
	agent := object.union(support_agent, {"environment": "staging"})
	res := object.union(skill, {"metadata": {"environment": "staging"}})
	authz.allow with input as req(agent, res, "invoke_skill", "POST", noon)
}

test_teams_reach_only_their_own_resources if {
	res := object.union(skill, {"metadata": {"team": "ml"}})
	inp := req(support_agent, res, "invoke_skill", "POST", noon)
	not authz.allow with input as inp
	authz.deny["resource sentiment-analysis belongs to team ml, not customer-success"] with input as inp
}

test_shared_resources_and_teams if {
	shared := object.union(skill, {"metadata": {"team": "ml", "shared": true}})
	authz.allow with input as req(support_agent, shared, "invoke_skill", "POST", noon)
	platform := object.union(skill, {"metadata": {"team": "platform"}})
	authz.allow with input as req(support_agent, platform, "invoke_skill", "POST", noon)
}

test_unregistered_service_is_denied if {
	res := {"type": "unknown", "id": "mystery", "registered": false, "metadata": {"team": "unknown", "environment": "unknown"}}
	inp := req(support_agent, res, null, "GET", noon)
	not authz.allow with input as inp
	authz.deny["service mystery is not registered"] with input as inp
}

test_off_hours_denies_high_risk_methods if {
	data_res := {"type": "data", "id": "tickets", "registered": true, "metadata": {"team": "customer-success", "environment": "production"}}
	agent := object.union(support_agent, {"permissions": ["skills:invoke", "data:read", "data:write"]})
	authz.allow with input as req(agent, data_res, "write_data", "DELETE", noon)
	inp := req(agent, data_res, "write_data", "DELETE", early)
	not authz.allow with input as inp
	authz.deny["DELETE is not permitted outside business hours (9:00-17:00 UTC)"] with input as inp
}

test_off_hours_allows_low_risk_methods if {
	data_res := {"type": "data", "id": "tickets", "registered": true, "metadata": {"team": "customer-success", "environment": "production"}}
	authz.allow with input as req(support_agent, data_res, "read_data", "GET", early)
}

test_business_hours_boundaries if {
	five_pm := 1746291600000000000 # 17:00:00Z
	authz.hour_utc == 17 with input as req(support_agent, skill, "invoke_skill", "PUT", five_pm)
	authz.off_hours with input as req(support_agent, skill, "invoke_skill", "PUT", five_pm)
	nine_am := 1746262800000000000 # 09:00:00Z
	not authz.off_hours with input as req(support_agent, skill, "invoke_skill", "PUT", nine_am)
}

test_layer_deny_overrides_allow if {
	agent := object.union(support_agent, {"id": "revoked-agent@clients"})
	inp := req(agent, skill, "invoke_skill", "POST", noon)
	not authz.allow with input as inp
	authz.deny["denied by the agent revoked-agent@clients layer: credentials revoked"] with input as inp
}

test_team_layer_deny if {
	agent := object.union(support_agent, {"team": "quarantine"})
	res := object.union(skill, {"metadata": {"team": "quarantine"}})
	inp := req(agent, res, "invoke_skill", "POST", noon)
	not authz.allow with input as inp
	authz.deny["denied by the team quarantine layer: team is quarantined"] with input as inp
}

test_agent_type_layer_denies_actions if {
	agent := object.union(support_agent, {"type": "experimental", "permissions": ["skills:invoke", "data:read", "data:write"]})
	data_res := {"type": "data", "id": "tickets", "registered": true, "metadata": {"team": "customer-success", "environment": "production"}}
	inp := req(agent, data_res, "write_data", "POST", noon)
	not authz.allow with input as inp
	authz.deny["action write_data denied by the agent type experimental layer"] with input as inp
	authz.allow with input as req(agent, data_res, "read_data", "GET", noon)
}

test_layers_must_allow if {
	not authz.allow with input as ok with data.global as {} with data.teams as {}
	authz.deny["no policy layer allows this agent"] with input as ok with data.global as {} with data.teams as {}
	authz.allow with input as ok with data.global as {} with data.teams as {"customer-success": {"allow": true}}
}

test_explicit_global_deny_wins if {
	not authz.allow with input as ok with data.global as {"allow": true, "deny": true}
	authz.deny["denied by the global layer"] with input as ok with data.global as {"allow": true, "deny": true}
}

# Absent (not null) exp: regorus and OPA once disagreed on `not` over an
# undefined argument; the differential corpus caught it.
test_deny_token_with_absent_exp if {
	inp := object.union(object.remove(ok, ["jwt"]), {"jwt": {"valid": true, "payload": {"sub": "support-triage@clients"}}})
	not authz.allow with input as inp
	authz.deny["token has no numeric exp claim"] with input as inp
}

# The fast path is taken for an ordinary allowed call and skipped when
# anything is wrong (the reasons are then computed one by one).
test_fast_path_for_ordinary_allow if {
	authz.fast_ok with input as ok
}

test_no_fast_path_when_denied if {
	inp := req(support_agent, skill, "write_data", "POST", noon)
	not authz.fast_ok with input as inp
	authz.deny == authz.reasons with input as inp
}

# The decision cache's lifetime: the next UTC hour, or the token's expiry
# when that comes first (ok's token expires at 13:00, noon + 1h).
test_valid_until_is_next_hour_or_expiry if {
	authz.valid_until_ns == 1746277200000000000 with input as ok
	later := object.union(ok, {"jwt": {"payload": {"exp": 1746273900}}})
	authz.valid_until_ns == 1746273900000000000 with input as later
	long := object.union(ok, {"jwt": {"payload": {"exp": 1846273900}}})
	at_1230 := object.union(long, {"request": {"time_ns": noon + 1800000000000}})
	authz.valid_until_ns == 1746277200000000000 with input as at_1230
	no_exp := object.union(ok, {"jwt": {"payload": {"exp": "soon"}}})
	authz.valid_until_ns == 1746277200000000000 with input as no_exp
}

# A resource whose metadata lacks an owning team (or has it null) is
# refused to every team, with a reason; so is one without an environment.
test_missing_or_null_resource_team_denies_every_team if {
	some meta in [{"environment": "production"}, {"team": null, "environment": "production"}, {"team": 7, "environment": "production"}]
	res := {"type": "data", "id": "orphan", "registered": true, "metadata": meta}
	agent := object.union(support_agent, {"permissions": ["data:read"]})
	inp := req(agent, res, "read_data", "GET", noon)
	not authz.allow with input as inp
	authz.deny["resource orphan has no owning team in its metadata"] with input as inp
}

test_missing_resource_environment_denies if {
	res := {"type": "skill", "id": "envless", "registered": true, "metadata": {"team": "customer-success"}}
	inp := req(support_agent, res, "invoke_skill", "POST", noon)
	not authz.allow with input as inp
	authz.deny["resource envless has no environment in its metadata"] with input as inp
}

test_agent_without_team_cannot_use_a_teams_resource if {
	agent := object.remove(support_agent, ["team"])
	inp := req(agent, skill, "invoke_skill", "POST", noon)
	not authz.allow with input as inp
}

# --- MCP tool rules (tools.rego) ---------------------------------------------

tickets_mcp := {"type": "tool", "id": "tickets-mcp", "registered": true, "metadata": {"team": "customer-success", "environment": "production"}}

tool_call(tool, args, perms) := object.union(
	req(object.union(support_agent, {"permissions": perms}), tickets_mcp, "call_tool", "POST", noon),
	{"mcp": {"kind": "request", "method": "tools/call", "id": 1, "tool": tool, "arguments": args}},
)

test_tool_call_with_permission_allowed if {
	authz.allow with input as tool_call("search_docs", {}, ["tools:call"])
}

test_tool_call_needs_the_call_permission if {
	not authz.allow with input as tool_call("search_docs", {}, ["tools:list"])
	"missing permission tools:call for action call_tool" in authz.deny with input as tool_call("search_docs", {}, ["tools:list"])
}

test_denied_tool_refused_for_every_agent if {
	inp := tool_call("run_shell", {}, ["tools:call", "tickets:delete"])
	not authz.allow with input as inp
	"tool run_shell is denied for every agent" in authz.deny with input as inp
}

test_tool_needing_extra_permission if {
	not authz.allow with input as tool_call("delete_ticket", {}, ["tools:call"])
	"tool delete_ticket requires permission tickets:delete" in authz.deny with input as tool_call("delete_ticket", {}, ["tools:call"])
	authz.allow with input as tool_call("delete_ticket", {}, ["tools:call", "tickets:delete"])
}

test_team_scoped_tool_only_for_own_team if {
	authz.allow with input as tool_call("lookup_ticket", {"team": "customer-success", "id": "T-1"}, ["tools:call"])
	other := tool_call("lookup_ticket", {"team": "ml", "id": "T-2"}, ["tools:call"])
	not authz.allow with input as other
	"tool lookup_ticket is limited to the agent's own team: argument team must be customer-success" in authz.deny with input as other
	not authz.allow with input as tool_call("lookup_ticket", {"id": "T-3"}, ["tools:call"])
}

test_tool_rules_ignore_requests_without_a_tool if {
	authz.allow with input as ok
}

test_missing_scope_names_the_permission_to_ask_for if {
	authz.missing_scope == "tools:call" with input as tool_call("search_docs", {}, ["tools:list"])
	authz.missing_scope == "tickets:delete" with input as tool_call("delete_ticket", {}, ["tools:call"])
	not authz.missing_scope with input as tool_call("search_docs", {}, ["tools:call"])
}

# Every missing scope at once, so a client steps up once.
test_missing_scope_names_every_missing_permission if {
	authz.missing_scope == "tickets:delete tools:call" with input as tool_call("delete_ticket", {}, ["tools:list"])
}

mcp_tickets := object.union(tickets_mcp, {"protocol": "mcp"})

end_session(perms, now) := req(object.union(support_agent, {"permissions": perms}), mcp_tickets, "end_session", "DELETE", now)

# An agent may always end its session: at night, without mcp:connect.
test_ending_a_session_is_allowed_at_night_and_without_permissions if {
	authz.allow with input as end_session(["mcp:connect"], early)
	authz.allow with input as end_session([], noon)
	count(authz.deny) == 0 with input as end_session([], early)
}

test_ending_a_session_still_needs_a_valid_token_at_a_registered_service if {
	expired := object.union(end_session([], noon), {"jwt": {"payload": {"exp": 1746270000}}})
	not authz.allow with input as expired
	authz.deny == {"token has expired"} with input as expired
	unknown := object.union(end_session([], noon), {"resource": {"registered": false}})
	not authz.allow with input as unknown
	"service tickets-mcp is not registered" in authz.deny with input as unknown
}

# On MCP services the time window applies to destructive tools, not to
# HTTP methods.
test_destructive_tools_only_in_business_hours if {
	perms := ["tools:call", "tickets:delete"]
	call := object.union(tool_call("delete_ticket", {}, perms), {"resource": {"protocol": "mcp"}})
	authz.allow with input as call
	night := object.union(call, {"request": {"time_ns": early}})
	not authz.allow with input as night
	"tool delete_ticket is not permitted outside business hours (9:00-17:00 UTC)" in authz.deny with input as night
	lookup := object.union(tool_call("search_docs", {}, perms), {"resource": {"protocol": "mcp"}, "request": {"time_ns": early}})
	authz.allow with input as lookup
}

tool_list(perms, listed) := object.union(
	req(object.union(support_agent, {"permissions": perms}), tickets_mcp, "list_tools", "POST", noon),
	{"mcp": {"kind": "request", "method": "tools/list", "id": 1, "listed": listed}},
)

test_a_tool_list_shows_only_callable_tools if {
	v := authz.visible with input as tool_list(["tools:list", "tools:call"], ["search_docs", "run_shell", "delete_ticket", "lookup_ticket", 7])
	v == {"search_docs", "lookup_ticket"}
	authz.visible == {"search_docs", "lookup_ticket", "delete_ticket"} with input as tool_list(["tools:list", "tools:call", "tickets:delete"], ["search_docs", "delete_ticket", "lookup_ticket"])
	count(authz.visible) == 0 with input as tool_list(["tools:list"], ["search_docs"])
}

# Tool-definition pinning: the filter says how a definition stands against
# its pin; a changed one is refused and hidden, any other state passes.
pinned_call(state) := object.union(
	tool_call("search_docs", {}, ["tools:call"]),
	{"mcp": {"tool_definition": {"digest": "sha256:00", "pin": state}}},
)

test_a_call_to_a_tool_changed_since_it_was_pinned_is_refused if {
	not authz.allow with input as pinned_call("changed")
	"tool definition changed since it was pinned" in authz.deny with input as pinned_call("changed")
	every state in ["matches", "unpinned", "unseen"] {
		authz.allow with input as pinned_call(state)
	}
}

test_a_tool_changed_since_it_was_pinned_is_hidden_from_lists if {
	inp := object.union(
		tool_list(["tools:list", "tools:call"], ["search_docs", "lookup_ticket"]),
		{"mcp": {"listed_definitions": {
			"search_docs": {"digest": "sha256:01", "pin": "changed"},
			"lookup_ticket": {"digest": "sha256:02", "pin": "matches"},
		}}},
	)
	authz.visible == {"lookup_ticket"} with input as inp
}

test_a_reviewed_only_service_hides_and_refuses_tools_without_a_reviewed_pin if {
	pins := {"tickets-mcp": {"reviewed_only": true, "tools": {"search_docs": "sha256:00"}}}
	authz.allow with input as pinned_call("matches") with data.mcp.pins as pins
	new_tool := tool_call("search_docs_v2", {}, ["tools:call"])
	not authz.allow with input as new_tool with data.mcp.pins as pins
	"tool has no reviewed pin" in authz.deny with input as new_tool with data.mcp.pins as pins
	authz.allow with input as new_tool
	listing := tool_list(["tools:list", "tools:call"], ["search_docs", "search_docs_v2"])
	authz.visible == {"search_docs"} with input as listing with data.mcp.pins as pins
	authz.visible == {"search_docs", "search_docs_v2"} with input as listing
}

# Limits (policies/limits.rego).

experimental_agent := object.union(support_agent, {"id": "lab-agent@clients", "type": "experimental"})

test_limits_come_from_the_agent_type_layer if {
	inp := req(experimental_agent, skill, "invoke_skill", "POST", noon)
	names := {l.name | some l in authz.limits} with input as inp
	names == {"experimental"}
}

test_limits_come_from_the_agent_layer if {
	batch := object.union(support_agent, {"id": "batch-runner@clients"})
	inp := req(batch, skill, "invoke_skill", "POST", noon)
	some l in authz.limits with input as inp
	l == {"name": "batch-runner.in_flight", "by": ["agent"], "in_flight": 2}
}

test_no_layer_limits_no_limits if {
	count(authz.limits) == 0 with input as ok
}

test_a_tool_named_in_data_is_limited_by_agent_and_tool if {
	some l in authz.limits with input as tool_call("delete_ticket", {}, ["tools:call"])
	l.name == "tool.delete_ticket"
	l.by == ["agent", "tool"]
	l.tools == ["delete_ticket"]
	l.rate == 1
	l.period_s == 60
}

test_an_invented_tool_gets_no_limit_of_its_own if {
	count(authz.limits) == 0 with input as tool_call("made_up_tool", {}, ["tools:call"])
}

# Delegation (policies/delegation.rego).

delegated(actor_type, actor_perms, depth) := object.union(ok, {"delegation": {
	"subject": support_agent.id,
	"actor": "orchestrator-1",
	"actor_type": actor_type,
	"actor_permissions": actor_perms,
	"chain": [sprintf("actor-%d", [i]) | some i in numbers.range(1, depth)],
	"depth": depth,
	"may_act": null,
}})

test_an_orchestrator_may_act_for_a_support_agent if {
	authz.allow with input as delegated("orchestrator", ["skills:invoke"], 1)
}

test_a_delegated_call_uses_only_permissions_both_hold if {
	inp := delegated("orchestrator", ["data:read"], 1)
	not authz.allow with input as inp
	authz.deny["missing permission skills:invoke for action invoke_skill"] with input as inp
}

test_a_chain_longer_than_allowed_is_refused if {
	inp := delegated("orchestrator", ["skills:invoke"], 3)
	not authz.allow with input as inp
	authz.deny["delegation chain of 3 actors is longer than the 2 allowed"] with input as inp
}

test_an_actor_type_not_listed_may_not_act if {
	inp := delegated("support", ["skills:invoke"], 1)
	not authz.allow with input as inp
	authz.deny["an agent of type support may not act for a support agent"] with input as inp
}

# Every actor of a chain, as the filter gives them (`actors`).
delegated_chain(actors) := object.union(ok, {"delegation": {
	"subject": support_agent.id,
	"actor": actors[0].sub,
	"actor_type": actors[0].type,
	"actor_permissions": actors[0].permissions,
	"actors": actors,
	"chain": [a.sub | some a in actors],
	"depth": count(actors),
	"may_act": null,
}})

orchestrator_actor(sub, perms) := {"sub": sub, "type": "orchestrator", "permissions": perms}

test_an_agent_that_may_not_act_cannot_pass_its_call_through_an_orchestrator if {
	inp := delegated_chain([
		orchestrator_actor("orchestrator-1", ["skills:invoke"]),
		{"sub": "lab-1", "type": "experimental", "permissions": ["skills:invoke"]},
	])
	not authz.allow with input as inp
	authz.deny["an agent of type experimental may not act for a support agent"] with input as inp
}

test_a_nested_actor_without_a_type_or_permissions_is_refused if {
	inp := delegated_chain([
		orchestrator_actor("orchestrator-1", ["skills:invoke"]),
		{"sub": "planner", "type": null, "permissions": null},
	])
	not authz.allow with input as inp
	authz.deny["an agent of type null may not act for a support agent"] with input as inp
	authz.deny["missing permission skills:invoke for action invoke_skill"] with input as inp
}

test_a_nested_actor_narrows_the_permissions_too if {
	inp := delegated_chain([
		orchestrator_actor("orchestrator-1", ["skills:invoke"]),
		orchestrator_actor("orchestrator-2", ["data:read"]),
	])
	not authz.allow with input as inp
	authz.deny["missing permission skills:invoke for action invoke_skill"] with input as inp
}

test_a_chain_of_actors_each_allowed_passes if {
	authz.allow with input as delegated_chain([
		orchestrator_actor("orchestrator-1", ["skills:invoke"]),
		orchestrator_actor("orchestrator-2", ["skills:invoke", "data:read"]),
	])
}

# Transactions (policies/transaction.rego).

in_transaction(scope) := object.union(ok, {"transaction": {
	"iss": "https://gateway.corp.example",
	"txn": "t-1",
	"sub": "alice@clients",
	"scope": scope,
	"actors": ["orchestrator@clients"],
	"svc": "support",
}})

test_a_call_inside_a_transaction_keeps_what_its_scope_carries if {
	authz.allow with input as in_transaction(["skills:invoke", "data:read"])
}

test_a_call_inside_a_transaction_never_gains_permissions if {
	inp := in_transaction(["data:read"])
	not authz.allow with input as inp
	authz.deny["missing permission skills:invoke for action invoke_skill"] with input as inp
}

test_a_transaction_without_a_scope_list_grants_nothing if {
	not authz.allow with input as in_transaction(null)
	not authz.allow with input as object.union(ok, {"transaction": {"txn": "t-1"}})
}

# Workload binding (policies/workload.rego).

bound(spiffe) := object.union(object.union(ok, {"agent": object.union(support_agent, {"workload_id": "spiffe://corp/ns/agents/sa/triage"})}), {"source": spiffe})

test_a_bound_token_passes_from_its_own_workload if {
	authz.allow with input as bound({"mtls": true, "spiffe_id": "spiffe://corp/ns/agents/sa/triage"})
}

test_a_bound_token_from_another_workload_is_refused if {
	inp := bound({"mtls": true, "spiffe_id": "spiffe://corp/ns/agents/sa/other"})
	not authz.allow with input as inp
	authz.deny["token is bound to workload spiffe://corp/ns/agents/sa/triage; the request came from spiffe://corp/ns/agents/sa/other"] with input as inp
}

test_a_bound_token_without_a_certificate_is_refused if {
	not authz.allow with input as bound(null)
}

test_an_unbound_token_needs_no_certificate if {
	authz.allow with input as object.union(ok, {"source": null})
}

test_a_tool_named_for_approval_needs_one if {
	a := authz.approval with input as tool_call("update_ticket", {"team": "t", "id": "T-1"}, ["tools:call"])
	a.approvers == ["alice"]
	a.ttl_s == 600
}

test_other_tools_need_no_approval if {
	not authz.approval with input as tool_call("lookup_ticket", {"team": "t"}, ["tools:call"])
	not authz.approval with input as tool_call("delete_ticket", {}, ["tools:call", "tickets:delete"])
	not authz.approval with input as tool_list(["tools:list"], ["update_ticket"])
}
