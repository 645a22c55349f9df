#!/usr/bin/env bash
# The EndpointSlice controller at scale: Pod Ready flips -> slice updated (p50/p99), and end to end
# through the node agent, with 1,000 Services over 10,000 Pods in `switchyard up`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p switchyard -p switchyard-bench
exec target/release/endpointslice-bench --switchyard target/release/switchyard "$@"
