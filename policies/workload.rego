# Workload binding: a token registered with a workload (the namespaced
# `workload_id` claim, set at registration, so no filter rebuild per agent)
# is accepted only from that workload: the connection's verified peer
# certificate must name it as its SPIFFE ID (input.source.spiffe_id, read
# when the filter's `source.peer_certificate` is on). Tokens without the
# claim are not bound. Where no certificate is seen (an agent on loopback
# to its own sidecar), a bound token is refused: fail closed.
package mcp.authz

bound_workload := object.get(input, ["agent", "workload_id"], null)

peer_spiffe_id := object.get(input, ["source", "spiffe_id"], null)

workload_ok if not is_string(bound_workload)

workload_ok if {
	is_string(bound_workload)
	peer_spiffe_id == bound_workload
}

request_reasons contains msg if {
	is_string(bound_workload)
	peer_spiffe_id != bound_workload
	msg := sprintf("token is bound to workload %v; the request came from %v", [bound_workload, peer_spiffe_id])
}
