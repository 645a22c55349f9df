#!/usr/bin/env bash
# Ingress router benchmark: Switchyard, nginx and HAProxy (one worker thread each) to the same
# backend — HTTP/1.1 keep-alive, HTTP/1.1 over TLS and HTTP/2 over TLS, access log off and on,
# with each proxy's CPU time per request — then Switchyard again with 10,000 more hosts.
# Needs: wrk, h2load, nginx, haproxy, openssl
#   (apt-get install wrk nghttp2-client nginx-light haproxy openssl).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p switchyard -p switchyard-bench
exec target/release/ingress-bench --switchyard target/release/switchyard "$@"
