#!/usr/bin/env bash
# Fetches the official Gateway API CRDs (standard channel) through the Go module proxy: the
# module sigs.k8s.io/gateway-api at the pinned version publishes them under config/crd/standard.
# Nothing fetched is committed; the module cache keeps it.
#
# Usage: bench/peers/gateway-api.sh   Prints the directory holding the CRD files.
set -euo pipefail

VERSION=v1.6.1
command -v go >/dev/null || { echo "bench/peers/gateway-api.sh: the Go toolchain is required" >&2; exit 1; }
# Outside any module, so that no go.mod is consulted or changed.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
module_dir=$(cd "$work" && go mod download -json "sigs.k8s.io/gateway-api@$VERSION" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
echo "$module_dir/config/crd/standard"
