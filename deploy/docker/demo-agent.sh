#!/bin/sh
# The compose stack's demo agent: registers itself with the identity
# provider (RFC 7591, with the stack's initial access token) and stores its
# API key in OpenBao (dev: with the root token), then runs the
# seed's support workflow through Envoy. Every call is decided by agentplane.
set -eu
reg=$(agentplane-agent register --idp "$IDP_URL" --initial-access-token "$INITIAL_ACCESS_TOKEN" \
  --name demo-support --type support --team customer-success --env production \
  --perm skills:invoke --perm data:read \
  --vault "$BAO_ADDR" --vault-token "$BAO_TOKEN" --secret api_key=demo-support-key)
field() { printf '%s\n' "$reg" | sed -n "s/.*\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" | head -1; }
client_id=$(field client_id)
AGENTPLANE_CLIENT_SECRET=$(field client_secret)
export AGENTPLANE_CLIENT_SECRET
exec agentplane-agent run /workflows/support.yaml --idp "$IDP_URL" --client-id "$client_id" \
  --sidecar "$SIDECAR_URL" --input customer_id=42 --input ticket_text="my order arrived broken"
