#!/usr/bin/env bash
# Instructions per proxied HTTP/1.1 request in user space: Switchyard's router (access log off,
# then on) and nginx, each under callgrind with instrumentation off until the load runs. One wrk
# run warms the proxy up, callgrind counts a second one, and the count is divided by wrk's
# requests. Unlike requests/s and CPU time, the figure does not move with the machine's speed,
# so it compares two builds run on different days. Flags as in bench/ingress.sh: one proxy on the
# last CPU, nginx's backend and wrk on the first.
# Needs: valgrind, wrk, nginx, curl (apt-get install valgrind wrk nginx-light curl).
# Usage: bench/ingress-instructions.sh [BINARY ...]   (default: target/release/switchyard, built)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  cargo build --release -p switchyard
  set -- target/release/switchyard
fi
for tool in valgrind callgrind_control wrk nginx curl; do
  command -v "$tool" >/dev/null || PATH="$PATH:/usr/sbin" command -v "$tool" >/dev/null ||
    { echo "needs $tool (apt-get install valgrind wrk nginx-light curl)" >&2; exit 1; }
done
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

# Counts the instructions of process $1 (under callgrind) while wrk loads port $2.
count() {
  local pid=$1 port=$2 out requests total
  taskset -c "$first" wrk -t1 -c50 -d3s -H 'Host: bench.example' "http://127.0.0.1:$port/api" >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  out=$(taskset -c "$first" wrk -t1 -c50 -d10s -H 'Host: bench.example' "http://127.0.0.1:$port/api")
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  total=$(cat "$work"/cg.$pid.* | awk '/^totals:/ {s += $2} END {print s}')
  rm -f "$work"/cg.$pid.*
  echo "$((total / requests)) instructions per request ($requests requests)"
}

for bin in "$@"; do
  for log in false true; do
    data="$work/data-$log"
    api=$(free_port) http=$(free_port)
    RUST_LOG=warn,switchyard::access=info TOKIO_WORKER_THREADS=1 taskset -c "$last" \
      valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.%p" \
      "$bin" up --data-dir "$data" --listen "127.0.0.1:$api" \
      --metrics-listen "127.0.0.1:$(free_port)" --dns-listen "127.0.0.1:$(free_port)" \
      --ingress-http "127.0.0.1:$http" --ingress-https "127.0.0.1:$(free_port)" \
      --ingress-threads 1 --ingress-access-log "$log" --node-name bench \
      >"$work/switchyard.log" 2>&1 &
    pid=$!
    pids+=($pid)
    for _ in $(seq 1 600); do [ -f "$data/admin.kubeconfig" ] && break; sleep 0.5; done
    for _ in $(seq 1 600); do
      kubectl --kubeconfig "$data/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1 && break
      sleep 0.5
    done
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
  rules:
  - host: bench.example
    http:
      paths: [{path: /api, pathType: Prefix, backend: {service: {name: backend, port: {number: 80}}}}]
EOF
    wait_for "http://127.0.0.1:$http/api" bench.example "switchyard up"
    echo "switchyard $bin, access log $( [ $log = true ] && echo on || echo off ): $(count $pid $http)"
    kill $pid
    wait $pid 2>/dev/null || true
  done
done

proxy=$(free_port)
cat >"$work/proxy.conf" <<EOF
worker_processes 1; master_process off; daemon off; pid $work/proxy.pid;
error_log $work/proxy.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream be { server 127.0.0.1:$backend; keepalive 256; }
  server { listen 127.0.0.1:$proxy; server_name bench.example;
    location /api { proxy_pass http://be; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host \$host; } } }
EOF
taskset -c "$last" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.%p" \
  nginx -c "$work/proxy.conf" -p "$work" >"$work/nginx.log" 2>&1 &
pid=$!
pids+=($pid)
wait_for "http://127.0.0.1:$proxy/api" bench.example "nginx"
echo "nginx, access log off: $(count $pid $proxy)"
