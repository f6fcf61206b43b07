# The seed's layered model: global, team, agent-type and agent layers from
# data. Any layer may deny (true, or a reason string) or deny some actions;
# at least one layer must allow. Lookups are by key, never scans, so the
# cost does not grow with the number of agents.
package mcp.authz

layers[name] := data.global if name := "global"

layers[name] := data.teams[input.agent.team] if name := sprintf("team %v", [input.agent.team])

layers[name] := data.agent_types[input.agent.type] if name := sprintf("agent type %v", [input.agent.type])

layers[name] := data.agents[input.agent.id] if name := sprintf("agent %v", [input.agent.id])

layer_allows if {
	some layer in layers
	layer.allow == true
}

deny contains "no policy layer allows this agent" if not layer_allows

deny contains msg if {
	some name, layer in layers
	layer.deny == true
	msg := sprintf("denied by the %v layer", [name])
}

deny contains msg if {
	some name, layer in layers
	is_string(layer.deny)
	msg := sprintf("denied by the %v layer: %v", [name, layer.deny])
}

deny contains msg if {
	some name, layer in layers
	input.action in layer.deny_actions
	msg := sprintf("action %v denied by the %v layer", [input.action, name])
}
