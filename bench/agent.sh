#!/usr/bin/env bash
# Node agent benchmark: network programming latency with 1,000 Services, and the userspace proxy
# against direct connections, in one run of `switchyard up`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p switchyard -p switchyard-bench
exec target/release/agent-bench --switchyard target/release/switchyard "$@"
