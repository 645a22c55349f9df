#!/usr/bin/env bash
# iptables proxy benchmark: Switchyard's rules against kube-proxy's layout (full load at
# 1,000 / 10,000 / 30,000 Services, one change, connection rate to the first and last Service)
# and the agent's network programming latency at 10,000 Services. Runs in network namespaces
# it creates; needs root and the iptables and conntrack packages.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p switchyard -p switchyard-bench
exec target/release/iptables-bench --switchyard target/release/switchyard "$@"
