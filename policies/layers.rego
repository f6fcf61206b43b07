# The seed's layered model: global, team, agent-type and agent layers from
# data. Any layer may deny (true, or a reason string) or deny some actions;
# at least one layer must allow. Every layer is one keyed lookup, never a
# scan, so the cost does not grow with the number of agents; reasons are
# only formatted when a layer actually denies.
package mcp.authz

# Each layer is `{}` when data has none, never undefined: under `not`, OPA
# and regorus disagree about undefined operands.
default global_layer := {}

global_layer := data.global

default team_layer := {}

team_layer := data.teams[input.agent.team]

default type_layer := {}

type_layer := data.agent_types[input.agent.type]

default agent_layer := {}

agent_layer := data.agents[input.agent.id]

layer_allows if global_layer.allow == true

layer_allows if team_layer.allow == true

layer_allows if type_layer.allow == true

layer_allows if agent_layer.allow == true

request_reasons contains "no policy layer allows this agent" if not layer_allows

request_reasons contains layer_denial("global", global_layer) if global_layer.deny

request_reasons contains layer_denial(sprintf("team %v", [input.agent.team]), team_layer) if team_layer.deny

request_reasons contains layer_denial(sprintf("agent type %v", [input.agent.type]), type_layer) if type_layer.deny

request_reasons contains layer_denial(sprintf("agent %v", [input.agent.id]), agent_layer) if agent_layer.deny

request_reasons contains action_denial("global") if input.action in global_layer.deny_actions

request_reasons contains action_denial(sprintf("team %v", [input.agent.team])) if input.action in team_layer.deny_actions

request_reasons contains action_denial(sprintf("agent type %v", [input.agent.type])) if input.action in type_layer.deny_actions

request_reasons contains action_denial(sprintf("agent %v", [input.agent.id])) if input.action in agent_layer.deny_actions

# No layer denies the agent or its action (part of `fast_ok`).
layers_clear if {
	layer_allows
	not global_layer.deny
	not team_layer.deny
	not type_layer.deny
	not agent_layer.deny
	not input.action in object.get(global_layer, "deny_actions", [])
	not input.action in object.get(team_layer, "deny_actions", [])
	not input.action in object.get(type_layer, "deny_actions", [])
	not input.action in object.get(agent_layer, "deny_actions", [])
}

layer_denial(name, layer) := sprintf("denied by the %v layer", [name]) if layer.deny == true

layer_denial(name, layer) := sprintf("denied by the %v layer: %v", [name, layer.deny]) if is_string(layer.deny)

action_denial(name) := sprintf("action %v denied by the %v layer", [input.action, name])
