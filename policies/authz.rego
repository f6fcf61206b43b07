package mcp.authz

default allow := false

allow if true
