#!/usr/bin/env bash
# Instructions per proxied request in user space: Switchyard's router (access log off, then on)
# and nginx, each under callgrind with instrumentation off until the load runs, over HTTP/1.1,
# HTTP/1.1 over TLS and HTTP/2 over TLS (as bench/ingress.sh loads them: wrk -c50 for the first
# two, h2load -c5 -m10 for HTTP/2). One load run warms the proxy up, callgrind counts a second
# one, and the count is divided by the requests the load tool saw answered. Unlike requests/s
# and CPU time, the figure does not move with the machine's speed, so it compares two builds run
# on different days. Placement as in bench/ingress.sh: one proxy on the last CPU, nginx's
# backend and the load tool on the first. Both proxies serve the same P-256 certificate.
# Needs: valgrind, wrk, h2load, nginx, curl, openssl
#   (apt-get install valgrind wrk nghttp2-client nginx-light curl openssl).
# Usage: bench/ingress-instructions.sh [BINARY ...]   (default: target/release/switchyard, built)
# PROTOCOLS="http1 browser tls h2" (the default) chooses what is measured; "browser" is HTTP/1.1
# with the twelve request fields a browser sends for a page (user agent, accepts, cookie,
# referer, fetch metadata), where per-field costs show.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  cargo build --release -p switchyard
  set -- target/release/switchyard
fi
for tool in valgrind callgrind_control wrk h2load nginx curl openssl; do
  command -v "$tool" >/dev/null || PATH="$PATH:/usr/sbin" command -v "$tool" >/dev/null || {
    echo "needs $tool (apt-get install valgrind wrk nghttp2-client nginx-light curl openssl)" >&2
    exit 1
  }
done
protocols=${PROTOCOLS:-http1 browser tls h2}
export PATH="$PATH:/usr/sbin"

cpus=$(taskset -pc $$ | sed 's/.*: //')
first=$(echo "$cpus" | tr ',' '\n' | head -1 | cut -d- -f1)
last=$(echo "$cpus" | tr ',' '\n' | tail -1 | cut -d- -f2)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_for() { # URL, Host header, what
  for _ in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $2" "$1")" = 200 ] && return 0
    sleep 0.5
  done
  echo "$3 never answered $1" >&2
  exit 1
}

backend=$(free_port)
cat >"$work/backend.conf" <<EOF
worker_processes 1; daemon off; pid $work/backend.pid; error_log $work/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$backend; location / { return 200 "ok\n"; } } }
EOF
taskset -c "$first" nginx -c "$work/backend.conf" -p "$work" &
pids+=($!)
wait_for "http://127.0.0.1:$backend/" x "the backend"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench.example -addext subjectAltName=DNS:bench.example,DNS:localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

# A page request's fields as a current browser writes them (besides Host).
browser=(
  -H 'User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0'
  -H 'Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8'
  -H 'Accept-Language: en-US,en;q=0.5' -H 'Accept-Encoding: gzip, deflate, br'
  -H 'Referer: https://bench.example/home' -H 'Cookie: session=4f2a9c1e7b3d5f60; theme=dark'
  -H 'Upgrade-Insecure-Requests: 1' -H 'Sec-Fetch-Dest: document'
  -H 'Sec-Fetch-Mode: navigate' -H 'Sec-Fetch-Site: same-origin' -H 'Priority: u=0, i'
)

# One load run of $1 (http1, browser, tls, h2) against ports $2 (plain) and $3 (TLS) for $4
# seconds; prints the requests answered.
load() {
  local out
  case $1 in
    http1 | browser | tls)
      local url="http://127.0.0.1:$2/api" extra=()
      [ "$1" = tls ] && url="https://localhost:$3/api"
      [ "$1" = browser ] && extra=("${browser[@]}")
      out=$(taskset -c "$first" wrk -t1 -c50 -d"$4"s -H 'Host: bench.example' "${extra[@]}" "$url")
      echo "$out" | awk '/requests in/ {print $1}'
      ;;
    h2)
      out=$(taskset -c "$first" h2load -t1 -c5 -m10 -D"$4" -H ':authority: bench.example' \
        "https://localhost:$3/api")
      echo "$out" | awk '/^requests:/ {print $8}'
      ;;
  esac
}

# Counts the instructions of process $1 (under callgrind) while $2 loads it (ports $3, $4).
count() {
  local pid=$1 requests total
  load "$2" "$3" "$4" 3 >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  requests=$(load "$2" "$3" "$4" 10)
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  total=$(cat "$work"/cg.$pid.* | awk '/^totals:/ {s += $2} END {print s}')
  rm -f "$work"/cg.$pid.*
  echo "$((total / requests)) instructions per request ($requests requests)"
}

for bin in "$@"; do
  for log in false true; do
    data="$work/data-$log"
    rm -rf "$data"
    api=$(free_port) http=$(free_port) https=$(free_port)
    RUST_LOG=warn,switchyard::access=info TOKIO_WORKER_THREADS=1 taskset -c "$last" \
      valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.%p" \
      "$bin" up --data-dir "$data" --listen "127.0.0.1:$api" \
      --metrics-listen "127.0.0.1:$(free_port)" --dns-listen "127.0.0.1:$(free_port)" \
      --ingress-http "127.0.0.1:$http" --ingress-https "127.0.0.1:$https" \
      --ingress-threads 1 --ingress-access-log "$log" --node-name bench \
      >"$work/switchyard.log" 2>&1 &
    pid=$!
    pids+=($pid)
    for _ in $(seq 1 600); do [ -f "$data/admin.kubeconfig" ] && break; sleep 0.5; done
    for _ in $(seq 1 600); do
      kubectl --kubeconfig "$data/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1 && break
      sleep 0.5
    done
    kubectl --kubeconfig "$data/admin.kubeconfig" create secret tls bench-tls \
      --cert "$work/cert.pem" --key "$work/key.pem" >/dev/null
    kubectl --kubeconfig "$data/admin.kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: default}
spec: {ports: [{port: 80, targetPort: $backend}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: backend-1, namespace: default, labels: {kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{port: $backend, protocol: TCP}]
endpoints: [{addresses: ["127.0.0.1"]}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bench, namespace: default, annotations: {switchyard.io/ssl-redirect: "false"}}
spec:
  tls: [{hosts: [bench.example, localhost], secretName: bench-tls}]
  rules:
  - host: bench.example
    http:
      paths: [{path: /api, pathType: Prefix, backend: {service: {name: backend, port: {number: 80}}}}]
EOF
    wait_for "http://127.0.0.1:$http/api" bench.example "switchyard up"
    for protocol in $protocols; do
      echo "switchyard $bin, $protocol, access log $( [ $log = true ] && echo on || echo off ):" \
        "$(count $pid "$protocol" "$http" "$https")"
    done
    kill $pid
    wait $pid 2>/dev/null || true
  done
done

proxy=$(free_port) proxy_tls=$(free_port)
cat >"$work/proxy.conf" <<EOF
worker_processes 1; master_process off; daemon off; pid $work/proxy.pid;
error_log $work/proxy.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream be { server 127.0.0.1:$backend; keepalive 256; }
  server { listen 127.0.0.1:$proxy; listen 127.0.0.1:$proxy_tls ssl http2;
    server_name bench.example localhost;
    ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
    location /api { proxy_pass http://be; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host \$host; } } }
EOF
taskset -c "$last" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.%p" \
  nginx -c "$work/proxy.conf" -p "$work" >"$work/nginx.log" 2>&1 &
pid=$!
pids+=($pid)
wait_for "http://127.0.0.1:$proxy/api" bench.example "nginx"
for protocol in $protocols; do
  echo "nginx, $protocol, access log off: $(count $pid "$protocol" "$proxy" "$proxy_tls")"
done
