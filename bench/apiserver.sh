#!/usr/bin/env bash
# Control-plane benchmark: switchyard server vs kube-apiserver + etcd (built from their Go modules
# by bench/peers/build.sh) and raw etcd puts (Debian etcd-server), same machine, same run.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
peers=$(bench/peers/build.sh kube-apiserver etcd)
cargo build --release -p switchyard -p switchyard-bench --features switchyard-bench/peers
exec target/release/apiserver-bench --switchyard target/release/switchyard --etcd "$(command -v etcd)" \
  --peers "$peers" "$@"
