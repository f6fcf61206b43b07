# A policy written for opa-envoy-plugin (OPA's Envoy ext_authz plugin),
# unchanged: it reads only that plugin's input shape and answers with its
# result object. agentplane runs it with `policy.input: "envoy"` and
# `policy.entrypoint: "data.envoy.authz.allow"`; tests/opa/envoy_compat.py
# checks that OPA and the filter decide alike on the same requests.
package envoy.authz

import rego.v1

jwt := input.attributes.metadataContext.filterMetadata["envoy.filters.http.jwt_authn"].jwt_payload

http := input.attributes.request.http

readers := {"support-triage@clients"}

default allow := {
	"allowed": false,
	"http_status": 403,
	"body": "denied by envoy.authz",
	"headers": {"x-ext-authz-check": "denied"},
	"response_headers_to_add": {"x-policy": "envoy.authz"},
}

allow := {
	"allowed": true,
	"headers": {"x-ext-authz-check": "allowed", "x-reader": jwt.sub},
	"response_headers_to_add": {"x-policy": "envoy.authz"},
	"request_headers_to_remove": ["x-internal-debug"],
} if {
	http.method == "GET"
	input.parsed_path[0] == "reports"
	jwt.sub in readers
	not input.parsed_query.format
}

allow := {
	"allowed": true,
	"headers": {"x-ext-authz-check": "allowed"},
} if {
	http.method == "GET"
	input.parsed_path[0] == "reports"
	jwt.sub in readers
	input.parsed_query.format == ["csv"]
	http.headers["x-tenant"] == "acme"
}

allow := {"allowed": false, "http_status": 429, "body": "slow down"} if {
	http.method == "POST"
	input.parsed_body.method == "tools/call"
	input.parsed_body.params.name == "bulk_export"
}

allow := {"allowed": true} if {
	http.method == "POST"
	input.parsed_body.method == "tools/call"
	input.parsed_body.params.name != "bulk_export"
	startswith(http.headers["content-type"], "application/json")
}
