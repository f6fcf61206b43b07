#!/bin/sh
# The compose stack's `demo-register` job: registers the demo agent with the
# identity provider (RFC 7591, with the provider's initial access token)
# and stores a fresh API key for it in OpenBao (with a single-use token
# that can only create an agent's first secret: deploy/openbao/init.sh,
# step demo). The agent itself gets neither: only its own client
# credentials, written to CREDENTIALS_FILE (a volume only the demo agent
# reads).
set -eu
umask 077
iat=$(cat "$INITIAL_ACCESS_TOKEN_FILE")
vault_token=$(cat "$BAO_TOKEN_FILE")
api_key=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
reg=$(agentplane-agent register --idp "$IDP_URL" --initial-access-token "$iat" \
  --name demo-support --type support --team customer-success --env production \
  --perm skills:invoke --perm data:read \
  --vault "$BAO_ADDR" --vault-token "$vault_token" --secret "api_key=$api_key")
field() { printf '%s\n' "$reg" | sed -n "s/.*\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" | head -1; }
client_id=$(field client_id)
client_secret=$(field client_secret)
if [ -z "$client_id" ] || [ -z "$client_secret" ]; then
  echo "demo-register: the registration answer has no client credentials" >&2
  exit 1
fi
printf 'client_id=%s\nclient_secret=%s\n' "$client_id" "$client_secret" >"$CREDENTIALS_FILE.new"
mv "$CREDENTIALS_FILE.new" "$CREDENTIALS_FILE"
echo "demo-register: registered $client_id"
