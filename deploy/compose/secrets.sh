#!/bin/sh
# The compose stack's `secrets` job: on first start, fresh random values for
# the secrets its services share, so docker-compose.yml fixes none of them.
# Each lives in its own named volume, mounted only by the services that
# need it (see docker-compose.yml); a value already there is kept, so a
# restart changes nothing. Nothing secret is printed.
# Files (under SECRETS_DIR, /run/agentplane by default), and who mounts them:
#   idp/initial-access-token  the identity provider's initial access token
#                             (registration, key rotation): idp, demo-register
#   postgres/password         PostgreSQL's superuser password: postgres,
#                             openbao-init
#   grafana/admin-password    Grafana's admin password: grafana
# The root token and unseal key are not here: OpenBao makes them
# (deploy/openbao/init.sh, step bootstrap).
set -eu

# new FILE: 32 random bytes as hex, unless FILE already holds a value.
new() {
  if [ -s "$1" ]; then return 0; fi
  value=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  if [ "${#value}" -ne 64 ]; then
    echo "secrets.sh: could not read 32 random bytes" >&2
    exit 1
  fi
  # World-readable inside the volume: its readers run as different users
  # (node, postgres, nobody); which containers mount it is the boundary.
  printf '%s' "$value" >"$1.new"
  chmod 0444 "$1.new"
  mv "$1.new" "$1"
}

dir=${SECRETS_DIR:-/run/agentplane}
new "$dir/idp/initial-access-token"
new "$dir/postgres/password"
new "$dir/grafana/admin-password"
echo "secrets: ready"
