#!/usr/bin/env bash
# Cluster DNS benchmark: Switchyard vs CoreDNS vs NSD vs Knot on the same 10,000-Service zone,
# one worker each, and the forwarded path (Switchyard and CoreDNS in front of unbound).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in dnsperf nsd knotd unbound; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install dnsperf nsd knot unbound" >&2; exit 1; }
done
peers=$(bench/peers/build.sh coredns)
cargo build --release -p switchyard -p switchyard-bench
exec target/release/dns-bench --switchyard target/release/switchyard --coredns "$peers/coredns" "$@"
