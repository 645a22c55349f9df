#!/usr/bin/env bash
# Load generator benchmark: `switchyard load` against wrk and oha (one core each) on the same
# nginx `return 200` backend, closed loop and open loop at a fixed rate.
# Needs: wrk, nginx (apt-get install wrk nginx-light); installs oha from crates.io into
# target/tools on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x target/tools/bin/oha ]; then
  cargo install --locked --root target/tools oha
fi
cargo build --release -p switchyard -p switchyard-bench
exec target/release/load-bench --switchyard target/release/switchyard --oha target/tools/bin/oha "$@"
