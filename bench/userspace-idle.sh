#!/usr/bin/env bash
# Idle connections through the userspace proxy: the node agent's open files and memory with
# 10,000 of them held. Flags after `--` go to `switchyard up`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p switchyard -p switchyard-bench
exec target/release/userspace-idle --switchyard target/release/switchyard "$@"
