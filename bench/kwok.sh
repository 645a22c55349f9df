#!/usr/bin/env bash
# Kubernetes scale with kwok: 1,000 simulated Nodes, 3,000 Services, 30,000 Pods against
# switchyard server and against kube-apiserver + etcd + kube-controller-manager (all built from
# their Go modules by bench/peers/build.sh), with SIG Scalability's API call SLOs.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=$(bench/peers/build.sh kwok kube-apiserver etcd kube-controller-manager)
cargo build --release -p switchyard -p switchyard-bench
exec target/release/kwok-bench --switchyard target/release/switchyard --peers "$peers" "$@"
