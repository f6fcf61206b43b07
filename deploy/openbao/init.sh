#!/bin/sh
# OpenBao setup for agentplane: the one list of steps that both the compose
# stack's `openbao-init` job and the loopback demo and end-to-end tests
# (tests/src/lib.rs: Bao::setup_agents, Bao::setup_database) run, so the
# two cannot drift. Idempotent: running it twice changes nothing.
#
# Environment:
#   BAO_ADDR, BAO_TOKEN     the server and a token allowed to configure it
#   ISSUER, AUDIENCE        the agents' token issuer and audience
#   JWKS_URL | JWT_PUBKEY   where the issuer's keys are (URL), or its PEM key
#   STEPS                   "agents" (default), "database", or "agents database"
#   PG_HOST, PG_PORT, PG_PASSWORD   the database engine's PostgreSQL (superuser
#                           postgres); DB_TTL the issued logins' lifetime (1h)
set -eu

step_agents() {
  # JWT auth: an agent logs in with its own token; its `sub` is its alias.
  bao auth list -format=json | grep -q '"jwt/"' || bao auth enable jwt
  if [ -n "${JWKS_URL:-}" ]; then
    bao write auth/jwt/config jwks_url="$JWKS_URL" bound_issuer="$ISSUER"
  else
    bao write auth/jwt/config jwt_validation_pubkeys="$JWT_PUBKEY" bound_issuer="$ISSUER"
  fi
  accessor=$(bao read -field=accessor sys/auth/jwt)
  # Each agent reads only secret/data/mcp/agents/<its own sub>/* (entity
  # alias templating), and its database role.
  bao policy write agent-kv - <<POLICY
path "secret/data/mcp/agents/{{identity.entity.aliases.$accessor.name}}/*" { capabilities = ["read"] }
path "database/creds/readonly" { capabilities = ["read"] }
POLICY
  bao write auth/jwt/role/agent role_type=jwt bound_audiences="$AUDIENCE" \
    user_claim=sub token_policies=agent-kv token_ttl=1h
}

step_database() {
  # Short-lived PostgreSQL logins, one per agent session.
  bao secrets list -format=json | grep -q '"database/"' || bao secrets enable database
  bao write database/config/pg plugin_name=postgresql-database-plugin \
    connection_url="postgresql://{{username}}:{{password}}@$PG_HOST:$PG_PORT/postgres?sslmode=disable" \
    username=postgres password="$PG_PASSWORD" allowed_roles=readonly
  bao write database/roles/readonly db_name=pg \
    creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';" \
    default_ttl="${DB_TTL:-1h}" max_ttl=1h
}

for step in ${STEPS:-agents}; do
  case "$step" in
    agents) step_agents ;;
    database) step_database ;;
    *) echo "init.sh: unknown step $step" >&2; exit 2 ;;
  esac
done
echo "openbao: agentplane setup done (${STEPS:-agents})"
