#!/bin/sh
# OpenBao setup for agentplane: the one list of steps that both the compose
# stack's `openbao-init` job and the loopback demo and end-to-end tests
# (tests/src/bao.rs: Bao::setup_agents, Bao::setup_database) run, so the
# two cannot drift. Idempotent: running it twice changes nothing (but for
# the demo step's fresh single-use token).
#
# Steps (STEPS, in order; default "agents"):
#   bootstrap  a server started from deploy/openbao/openbao.hcl (not dev
#              mode): initialize it once (one unseal key), keeping the key
#              and the root token in BAO_INIT_DIR, unseal it on every run,
#              and use that root token (instead of BAO_TOKEN) for the
#              steps after it. Nothing secret is printed.
#   agents     JWT auth trusting the issuer, the per-agent KV policy, role agent
#   database   the database engine (PostgreSQL logins)
#   demo       the compose demo's registration token: see step_demo
#
# Environment:
#   BAO_ADDR, BAO_TOKEN     the server and a token allowed to configure it
#                           (BAO_TOKEN: not with bootstrap, which has its own)
#   BAO_INIT_DIR            bootstrap: where init.json (unseal key, root
#                           token) is kept; a directory only this job reads
#   ISSUER, AUDIENCE        the agents' token issuer and audience
#   JWKS_URL | JWT_PUBKEY   where the issuer's keys are (URL), or its PEM key
#   PG_HOST, PG_PORT, PG_PASSWORD | PG_PASSWORD_FILE   the database engine's
#                           PostgreSQL (superuser postgres); DB_TTL the
#                           issued logins' lifetime (1h)
#   DEMO_TOKEN_FILE         demo: where the registration token is written;
#                           DEMO_TOKEN_OWNER (uid:gid) who may read it
set -eu

step_bootstrap() {
  : "${BAO_INIT_DIR:?the bootstrap step needs BAO_INIT_DIR}"
  init="$BAO_INIT_DIR/init.json"
  status=$(bao status -format=json 2>/dev/null) || true
  case "$status" in
    *'"initialized": true'*) ;;
    *'"initialized": false'*)
      # Written aside and renamed: a failed run never replaces the keys of
      # a server that was initialized.
      (umask 077 && bao operator init -key-shares=1 -key-threshold=1 -format=json >"$init.new" \
        && mv "$init.new" "$init")
      ;;
    *) echo "init.sh: OpenBao at $BAO_ADDR does not answer" >&2; exit 1 ;;
  esac
  [ -s "$init" ] || { echo "init.sh: OpenBao is initialized but $init is missing" >&2; exit 1; }
  # `bao status` exits 2 while sealed. The key goes through stdin, never argv.
  if ! bao status >/dev/null 2>&1; then
    sed -n '/"unseal_keys_b64"/{n;s/^[^"]*"\([^"]*\)".*/\1/p;}' "$init" \
      | bao write sys/unseal key=- >/dev/null
  fi
  BAO_TOKEN=$(sed -n 's/^ *"root_token": *"\([^"]*\)".*/\1/p' "$init")
  [ -n "$BAO_TOKEN" ] || { echo "init.sh: no root token in $init" >&2; exit 1; }
  export BAO_TOKEN
  # Unsealed is not yet serving: integrated storage elects its leader first.
  tries=0
  until [ "$(bao read -field=is_self sys/leader 2>/dev/null)" = true ]; do
    tries=$((tries + 1))
    [ "$tries" -le 60 ] || { echo "init.sh: OpenBao did not become active" >&2; exit 1; }
    sleep 1
  done
}

step_agents() {
  # The agents' secrets: KV v2 at secret/ (a dev server has it already).
  bao secrets list -format=json | grep -q '"secret/"' || bao secrets enable -path=secret -version=2 kv
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
  # From a file, the password never appears in a command line.
  if [ -n "${PG_PASSWORD_FILE:-}" ]; then
    password="@$PG_PASSWORD_FILE"
  else
    password="$PG_PASSWORD"
  fi
  bao write database/config/pg plugin_name=postgresql-database-plugin \
    connection_url="postgresql://{{username}}:{{password}}@$PG_HOST:$PG_PORT/postgres?sslmode=disable" \
    username=postgres password="$password" allowed_roles=readonly
  bao write database/roles/readonly db_name=pg \
    creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';" \
    default_ttl="${DB_TTL:-1h}" max_ttl=1h
}

step_demo() {
  # The compose demo's registration job stores a newly registered agent's
  # first secret, and may do nothing else: KV "create" (not "update": no
  # overwriting another agent's key; no read), no default policy, one use,
  # 15 minutes. A fresh token on every run; the last one simply expires.
  : "${DEMO_TOKEN_FILE:?the demo step needs DEMO_TOKEN_FILE}"
  bao policy write demo-register - <<'POLICY'
path "secret/data/mcp/agents/+/credentials" { capabilities = ["create"] }
POLICY
  (umask 077 \
    && bao token create -policy=demo-register -no-default-policy -orphan -ttl=15m -use-limit=1 \
      -field=token >"$DEMO_TOKEN_FILE.new" \
    && if [ -n "${DEMO_TOKEN_OWNER:-}" ]; then chown "$DEMO_TOKEN_OWNER" "$DEMO_TOKEN_FILE.new"; fi \
    && mv "$DEMO_TOKEN_FILE.new" "$DEMO_TOKEN_FILE")
}

for step in ${STEPS:-agents}; do
  case "$step" in
    bootstrap) step_bootstrap ;;
    agents) step_agents ;;
    database) step_database ;;
    demo) step_demo ;;
    *) echo "init.sh: unknown step $step" >&2; exit 2 ;;
  esac
done
echo "openbao: agentplane setup done (${STEPS:-agents})"
