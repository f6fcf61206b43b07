# Limits: which rate limits and in-flight caps apply to a request.
#
# The filter counts them per request after an allow, across every Envoy
# worker (docs/limits.md). Each limit is an object:
#   {"name", "by", "rate", "period_s", "burst", "cost", "tools"}  a token bucket
#   {"name", "by", "in_flight", "tools"}                          an in-flight cap
# `by` lists what it counts by: global, agent, team, agent_type, service,
# tool. Names must be fixed strings from data: they label metrics.
#
# Every layer of the seed's model (global, team, agent type, agent) may
# list limits in data; a tool may have its own in `mcp.config.tool_limits`,
# counted per agent and tool. A request passes only when every limit that
# applies has room.
package mcp.authz

# One rule body for the four layers: a request's decision evaluates it
# whenever the decision cache misses, so it stays one pass.
limits contains l if some l in global_layer.limits

limits contains l if some l in team_layer.limits

limits contains l if some l in type_layer.limits

limits contains l if some l in agent_layer.limits

# A tool named in data is counted by name: the limit lists it in `tools`,
# so a name a client invents never mints a bucket of its own.
limits contains object.union(spec, {
	"name": concat(".", ["tool", input.mcp.tool]),
	"by": ["agent", "tool"],
	"tools": [input.mcp.tool],
}) if {
	input.action == "call_tool"
	spec := cfg.tool_limits[input.mcp.tool]
}
