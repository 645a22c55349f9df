#!/usr/bin/env bash
# Paged LISTs (500 per page) of 10,000 ConfigMaps while 32 writers create: writer p99 with and
# without the lists, alternating rounds of one server.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p switchyard -p switchyard-bench
exec target/release/paging-bench --switchyard target/release/switchyard "$@"
