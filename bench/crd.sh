#!/usr/bin/env bash
# Custom resources: HTTPRoute (the official Gateway API CRD, fetched by bench/peers/gateway-api.sh)
# creates/s against ConfigMaps of the same size, and LIST of 10,000 HTTPRoutes; switchyard server
# and kube-apiserver + etcd (built by bench/peers/build.sh) in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=$(bench/peers/build.sh kube-apiserver etcd)
crds=$(bench/peers/gateway-api.sh)
cargo build --release -p switchyard -p switchyard-bench --bin switchyard --bin crd-bench
exec target/release/crd-bench --switchyard target/release/switchyard --crds "$crds" --peers "$peers" "$@"
