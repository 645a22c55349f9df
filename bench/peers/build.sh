#!/usr/bin/env bash
# Builds the real Kubernetes components the tests and benchmarks compare with and run against,
# from their Go modules through the module proxy, into a cache (nothing built here is committed):
#   kube-apiserver and kube-proxy (k8s.io/kubernetes, its staging modules replaced by their
#   published versions)
#   etcd (go.etcd.io/etcd/server/v3, the version kube-apiserver's release is tested with)
#   coredns (github.com/coredns/coredns's server with the plugins a cluster DNS Corefile uses:
#     bind, errors, log, health, ready, prometheus, cache, kubernetes, loop, forward, reload and
#     loadbalance; the cloud-provider plugins of its default build are left out, which saves
#     most of its build)
#   kwok (sigs.k8s.io/kwok/cmd/kwok: simulated nodes and pods, without kubelets; its node, pod
#     and Lease heartbeat stages are copied from its module into bin/kwok-stages)
#   kube-controller-manager (k8s.io/kubernetes, for kube-apiserver's EndpointSlice controller)
#
# Usage: bench/peers/build.sh [COMPONENT...]   (default: kube-apiserver etcd)
# Prints the directory holding the binaries. A component already built at the pinned version is
# not built again. The cache is $SWITCHYARD_PEERS (default ~/.cache/switchyard-peers).
set -euo pipefail

K8S_VERSION=v1.34.4
STAGING_VERSION=v0.34.4
ETCD_VERSION=v3.6.4
COREDNS_VERSION=v1.15.0
KWOK_VERSION=v0.8.0
# k8s.io/kubernetes's go.mod points these at ./staging; outside its tree they are the published
# modules of the same release.
STAGING=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
  kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller)

cache=${SWITCHYARD_PEERS:-$HOME/.cache/switchyard-peers}
dir="$cache/kubernetes-$K8S_VERSION"
components=("$@")
[ ${#components[@]} -gt 0 ] || components=(kube-apiserver etcd)

command -v go >/dev/null || { echo "bench/peers/build.sh: the Go toolchain is required" >&2; exit 1; }
mkdir -p "$dir/bin"
if [ ! -f "$dir/go.sum" ]; then
  {
    echo "module switchyard.local/peers"
    echo
    echo "go 1.24.0"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    for m in "${STAGING[@]}"; do echo "replace k8s.io/$m => k8s.io/$m $STAGING_VERSION"; done
  } >"$dir/go.mod"
  (cd "$dir" && go mod download k8s.io/kubernetes && go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" >&2)
fi
# A component from another module is built in a module of its own under the cache, so that its
# dependencies do not move kube-apiserver's: go_build NAME VERSION GET PACKAGE [SETUP], where GET
# is what `go get` fetches, PACKAGE what `go build` builds, and SETUP (if given) a function run
# in the module's directory first, which writes a main package there (then `go mod tidy` runs).
go_build() {
  local name=$1 version=$2 get=$3 package=$4 setup=${5:-}
  local mdir="$cache/$name-$version"
  [ -x "$dir/bin/$name" ] && return 0
  mkdir -p "$mdir"
  echo "== building $name $version (once; cached in $mdir)" >&2
  local start; start=$(date +%s)
  printf 'module switchyard.local/%s\n\ngo 1.24.0\n' "$name" >"$mdir/go.mod"
  (
    cd "$mdir"
    if [ -n "$setup" ]; then "$setup"; fi
    go get "$get" >&2
    if [ -n "$setup" ]; then go mod tidy >&2; fi
    go build -trimpath -o "$dir/bin/$name.tmp" "$package"
  )
  mv "$dir/bin/$name.tmp" "$dir/bin/$name"
  echo "== built $name in $(( $(date +%s) - start )) s" >&2
}

# CoreDNS's own main is coremain.Run with every plugin registered by core/plugin; this one
# registers only those named above (the server type and the directive order are CoreDNS's).
coredns_main() {
  {
    echo 'package main'
    echo
    echo 'import ('
    echo '	_ "github.com/coredns/coredns/core/dnsserver"'
    echo '	"github.com/coredns/coredns/coremain"'
    for p in bind errors log health ready metrics cache kubernetes loop forward reload loadbalance; do
      echo "	_ \"github.com/coredns/coredns/plugin/$p\""
    done
    echo ')'
    echo
    echo 'func main() { coremain.Run() }'
  } >main.go
}

# kwok acts by Stages: its own "fast" node and pod stages and the Lease heartbeat, from its
# module, next to the binary.
kwok_stages() {
  [ -d "$dir/bin/kwok-stages" ] && return 0
  local src; src="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  mkdir -p "$dir/bin/kwok-stages.tmp"
  cp "$src/node/fast/node-initialize.yaml" "$src/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
    "$src/pod/fast/pod-ready.yaml" "$src/pod/fast/pod-complete.yaml" "$src/pod/fast/pod-delete.yaml" \
    "$dir/bin/kwok-stages.tmp/"
  mv "$dir/bin/kwok-stages.tmp" "$dir/bin/kwok-stages"
}

for c in "${components[@]}"; do
  case "$c" in
    etcd)
      go_build etcd "$ETCD_VERSION" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" go.etcd.io/etcd/server/v3
      continue ;;
    coredns)
      go_build coredns "$COREDNS_VERSION" "github.com/coredns/coredns@$COREDNS_VERSION" . coredns_main
      continue ;;
    kwok)
      go_build kwok "$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
      kwok_stages
      continue ;;
  esac
  if [ ! -x "$dir/bin/$c" ]; then
    echo "== building $c $K8S_VERSION (once; cached in $dir)" >&2
    start=$(date +%s)
    (cd "$dir" && go get "k8s.io/kubernetes/cmd/$c@$K8S_VERSION" >&2 && go build -trimpath -o "bin/$c.tmp" "k8s.io/kubernetes/cmd/$c")
    mv "$dir/bin/$c.tmp" "$dir/bin/$c"
    echo "== built $c in $(( $(date +%s) - start )) s" >&2
  fi
done
echo "$dir/bin"
