#!/usr/bin/env bash
# eBPF proxy benchmark: socket-level translation against the iptables proxy (nft), the
# nftables proxy and no service at all — programming time of 10,000 Services x 10 endpoints and
# of one change, new-connection rate and short-exchange latency through the 1st and the 10,000th
# ClusterIP versus straight to the pod. Runs in network namespaces and a cgroup it creates; needs
# root, a kernel with BTF and the iptables and nftables packages.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p switchyard-bench --bin ebpf-bench
exec target/release/ebpf-bench "$@"
