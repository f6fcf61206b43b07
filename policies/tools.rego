# MCP tool rules (docs/mcp.md): which tools an agent may call, and with
# which arguments. They apply to `tools/call` only (input.mcp.tool is a
# string); every other request passes them.
#
# data.mcp.config:
# - denied_tools: tools no agent may call (a deny list of dangerous tools);
# - tool_permissions: tool -> permissions needed on top of the action's;
# - team_scoped_tools: tool -> the argument that must name the agent's own
#   team (e.g. a ticket lookup only for the agent's team's tickets).
package mcp.authz

# Read with defaults, never undefined (see authz.rego).
mcp_tool := object.get(input, ["mcp", "tool"], null)

# Tool-definition pinning (docs/mcp.md#tool-pinning): how the called
# tool's definition stands against its pin (`matches`, `changed`,
# `unpinned`, `unseen`), and each listed tool's in a `tools/list`.
tool_pin := object.get(input, ["mcp", "tool_definition", "pin"], "unpinned")

# An object, whatever the input holds: object.get on anything else is an
# error on one engine and undefined on another.
default listed_definitions := {}

# A service whose pins say `reviewed_only`: a tool without a reviewed
# digest (a new one, a lookalike name) is hidden and refused.
# (data.mcp.pins by name: data.mcp also holds this package's rules.)
default all_pins := {}

all_pins := data.mcp.pins

service_pins := object.get(all_pins, object.get(input, ["resource", "id"], ""), {})

reviewed_only if object.get(service_pins, "reviewed_only", false) == true

reviewed(name) if {
	is_string(name)
	is_object(object.get(service_pins, "tools", {}))
	is_string(object.get(object.get(service_pins, "tools", {}), name, null))
}

unreviewed(name) if {
	reviewed_only
	not reviewed(name)
}

listed_definitions := d if {
	d := object.get(input, ["mcp", "listed_definitions"], {})
	is_object(d)
}

mcp_arguments := object.get(input, ["mcp", "arguments"], {})

denied_tools := object.get(cfg, "denied_tools", [])

tool_permissions := object.get(object.get(cfg, "tool_permissions", {}), mcp_tool, []) if is_string(mcp_tool)

default tool_permissions := []

team_argument := object.get(object.get(cfg, "team_scoped_tools", {}), mcp_tool, null) if is_string(mcp_tool)

default team_argument := null

# Part of `fast_ok`: each line negates one of the reasons below.
tools_ok if not is_string(mcp_tool)

tools_ok if {
	is_string(mcp_tool)
	not mcp_tool in denied_tools
	tool_pin != "changed"
	not unreviewed(mcp_tool)
	every needed in tool_permissions {
		needed in agent_permissions
	}
	team_argument_ok
}

team_argument_ok if team_argument == null

team_argument_ok if {
	is_string(team_argument)
	is_string(agent_team)
	object.get(mcp_arguments, team_argument, null) == agent_team
}

request_reasons contains msg if {
	is_string(mcp_tool)
	mcp_tool in denied_tools
	msg := sprintf("tool %v is denied for every agent", [mcp_tool])
}

# A server changed the tool after it was reviewed (or first seen): its
# new description or schema is not what was approved.
request_reasons contains "tool definition changed since it was pinned" if {
	is_string(mcp_tool)
	tool_pin == "changed"
}

request_reasons contains "tool has no reviewed pin" if {
	is_string(mcp_tool)
	unreviewed(mcp_tool)
}

request_reasons contains msg if {
	is_string(mcp_tool)
	some needed in tool_permissions
	not needed in agent_permissions
	msg := sprintf("tool %v requires permission %v", [mcp_tool, needed])
}

request_reasons contains msg if {
	is_string(mcp_tool)
	team_argument != null
	not team_argument_ok
	msg := sprintf("tool %v is limited to the agent's own team: argument %v must be %v", [mcp_tool, team_argument, agent_team])
}

# List filtering (docs/mcp.md): of the names a list response holds
# (input.mcp.listed, set by the filter when the response arrives), those
# the agent may see, in one evaluation. A tool is shown if the agent could
# call it: it has the call permission and the tool's own, and the tool is
# not denied, and its definition has not changed since it was pinned (a
# team-scoped tool is shown; its arguments are decided at call time). Prompts and resources the agent may list are all shown.
visible contains name if {
	input.mcp.method == "tools/list"
	some name in as_list(object.get(input, ["mcp", "listed"], []))
	is_string(name)
	tool_callable(name)
}

visible contains name if {
	input.mcp.method in {"prompts/list", "resources/list", "resources/templates/list"}
	some name in as_list(object.get(input, ["mcp", "listed"], []))
	is_string(name)
}

# A list, whatever the input holds: iterating a value that is not a
# collection is an error on one engine and nothing on another, so neither
# is ever asked to. (A function, not a rule: as a rule, regorus'
# interpreter found the list test below undefined where OPA passed it.)
as_list(x) := x if is_array(x)

as_list(x) := [] if not is_array(x)

tool_callable(name) if {
	object.get(cfg.action_permissions, "call_tool", null) in agent_permissions
	not name in denied_tools
	object.get(listed_definitions, [name, "pin"], "unpinned") != "changed"
	not unreviewed(name)
	every needed in object.get(object.get(cfg, "tool_permissions", {}), name, []) {
		needed in agent_permissions
	}
}

# Human approval (docs/mcp.md#approval): a call to a tool named in
# data.mcp.config.approval_tools goes on only once a person it names has
# approved exactly that call (its binding: docs/mcp.md#approval). The
# filter asks the approval service; an approval lives ttl_s seconds and
# passes one call.
approval := {"approvers": a.approvers, "ttl_s": a.ttl_s} if {
	is_string(mcp_tool)
	a := object.get(object.get(cfg, "approval_tools", {}), mcp_tool, null)
	is_object(a)
}
