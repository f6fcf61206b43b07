# Transactions: a Txn-Token from another agentplane hop, verified by the
# filter, gives `input.transaction` (null without one): its `sub`, `txn`,
# `scope`, actors and the rest (docs/identity.md, "Signed identity for
# upstreams").
#
# Rule: a call made inside a transaction never gains permissions the
# transaction did not carry. The permissions it may use are cut by the
# transaction's `scope` (authz.rego's `agent_permissions`); a transaction
# without a scope list grants nothing.
package mcp.authz

transaction := object.get(input, "transaction", null)

default transaction_scope := []

transaction_scope := s if {
	s := input.transaction.scope
	is_array(s)
}
