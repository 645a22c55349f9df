#!/usr/bin/env bash
# Service proxies side by side: Switchyard (nftables, iptables, eBPF) and the real kube-proxy (iptables,
# nftables; built from k8s.io/kubernetes by bench/peers/build.sh) at 1,000 and 10,000 Services x
# 10 endpoints, fed by the same switchyard server: cold start, endpoint change -> connect, new
# connections/s, RSS and CPU. Runs in network namespaces, a cgroup and a bpffs it creates; needs
# root, BTF, and the iptables, nftables and conntrack packages.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in iptables nft conntrack; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install iptables nftables conntrack" >&2; exit 1; }
done
peers=$(bench/peers/build.sh kube-proxy)
cargo build --release -p switchyard -p switchyard-bench
exec target/release/proxies-bench --switchyard target/release/switchyard --peers "$peers" "$@"
