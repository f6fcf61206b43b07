# OpenBao for the compose stack: a real server, not dev mode, so there is
# no root token known in advance. The openbao-init job (deploy/openbao/
# init.sh, step "bootstrap") initializes it on first start, keeps the
# unseal key and the root token in a volume only that job mounts, and
# unseals it on every start.

storage "raft" {
  # The image's entrypoint hands /openbao/file to the openbao user; the
  # compose file mounts a named volume there, so data survives restarts.
  path    = "/openbao/file"
  node_id = "openbao"
}

listener "tcp" {
  address = "0.0.0.0:8200"
  # Plain HTTP only because OpenBao is reachable solely on the stack's
  # internal networks (no host port). Configure TLS here before it is
  # reachable from anywhere else.
  tls_disable = true
}

api_addr     = "http://openbao:8200"
cluster_addr = "http://openbao:8201"
ui           = false
