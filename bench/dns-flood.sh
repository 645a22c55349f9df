#!/usr/bin/env bash
# Cluster DNS under a flood of names to forward, to an upstream that never answers: open files,
# memory, and the latency of a cluster name during the flood.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p switchyard -p switchyard-bench
exec target/release/dns-flood --switchyard target/release/switchyard "$@"
