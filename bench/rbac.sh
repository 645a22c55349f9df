#!/usr/bin/env bash
# What RBAC costs the API server: creates/s as a ServiceAccount under RBAC (1,000 RoleBindings
# present) against the admin token, 32 clients, alternating rounds of one server.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p switchyard -p switchyard-bench
exec target/release/rbac-bench --switchyard target/release/switchyard "$@"
