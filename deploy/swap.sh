#!/bin/sh
# Hot-swaps the agentplane filter in a running Envoy that loads it through
# file-based dynamic configuration (ECDS, `config_discovery` with a
# `path_config_source`; docs/deploying.md, "Policy changes as rebuilds").
#
#   deploy/swap.sh ECDS_DIR NEW.wasm
#
# Copies the module into ECDS_DIR under its content hash (a file Envoy is
# using is never overwritten), writes the ECDS document pointing at it to a
# temporary file in the same directory and renames it over ecds.yaml: one
# atomic step, which Envoy's directory watch picks up. Streams already
# running finish on the filter they started with; new ones get the new one.
set -eu
dir=$1
wasm=$2
[ -f "$dir/ecds.yaml" ] || { echo "swap.sh: no $dir/ecds.yaml" >&2; exit 2; }
sum=$(sha256sum "$wasm" | cut -c1-16)
target="$dir/agentplane-$sum.wasm"
[ -f "$target" ] || { cp "$wasm" "$target.tmp" && mv "$target.tmp" "$target"; }
tmp="$dir/.ecds.yaml.tmp"
sed "s#filename: .*#filename: \"$target\"#" "$dir/ecds.yaml" >"$tmp"
grep -q "filename: \"$target\"" "$tmp" || { echo "swap.sh: no code filename in ecds.yaml" >&2; rm -f "$tmp"; exit 2; }
mv "$tmp" "$dir/ecds.yaml"
echo "swapped in $target"
