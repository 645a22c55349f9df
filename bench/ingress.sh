#!/usr/bin/env bash
# Ingress router benchmark: wrk through Switchyard, nginx and HAProxy (one worker thread each)
# to the same backend, then Switchyard again with 10,000 more hosts in its table.
# Needs: wrk, nginx, haproxy (apt-get install wrk nginx-light haproxy).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p switchyard -p switchyard-bench
exec target/release/ingress-bench --switchyard target/release/switchyard "$@"
