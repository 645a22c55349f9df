#!/usr/bin/env bash
# Gateway API route changes side by side with the Ingress path: propagation from the API to the
# router, failed requests under load while routes change, and the agent's memory per route.
# Needs: kubectl, and Go to fetch the Gateway API CRDs (bench/peers/gateway-api.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
crds=$(bench/peers/gateway-api.sh)
cargo build --release -p switchyard -p switchyard-bench
exec target/release/gateway-bench --switchyard target/release/switchyard --crds "$crds" "$@"
