#!/usr/bin/env bash
# Cluster DNS benchmark: Switchyard vs NSD vs Knot on the same 10,000-Service zone, one worker each.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in dnsperf nsd knotd; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install dnsperf nsd knot" >&2; exit 1; }
done
cargo build --release -p switchyard -p switchyard-bench
exec target/release/dns-bench --switchyard target/release/switchyard "$@"
