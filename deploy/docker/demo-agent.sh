#!/bin/sh
# The compose stack's demo agent: runs the seed's support workflow through
# Envoy with its own client credentials (written by the demo-register job:
# deploy/docker/demo-register.sh), and holds no other secret: no OpenBao
# token, no initial access token. Every call is decided by agentplane.
set -eu
cred() { sed -n "s/^$1=//p" "$CREDENTIALS_FILE" | head -1; }
client_id=$(cred client_id)
AGENTPLANE_CLIENT_SECRET=$(cred client_secret)
if [ -z "$client_id" ] || [ -z "$AGENTPLANE_CLIENT_SECRET" ]; then
  echo "demo-agent: no client credentials in $CREDENTIALS_FILE" >&2
  exit 1
fi
export AGENTPLANE_CLIENT_SECRET
exec agentplane-agent run /workflows/support.yaml --idp "$IDP_URL" --client-id "$client_id" \
  --sidecar "$SIDECAR_URL" --input customer_id=42 --input ticket_text="my order arrived broken"
