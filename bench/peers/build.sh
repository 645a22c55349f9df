#!/usr/bin/env bash
# Builds the real Kubernetes components the tests and benchmarks compare with and run against,
# from their Go modules through the module proxy, into a cache (nothing built here is committed):
#   kube-apiserver (k8s.io/kubernetes, its staging modules replaced by their published versions)
#
# Usage: bench/peers/build.sh [COMPONENT...]   (default: kube-apiserver)
# Prints the directory holding the binaries. A component already built at the pinned version is
# not built again. The cache is $SWITCHYARD_PEERS (default ~/.cache/switchyard-peers).
set -euo pipefail

K8S_VERSION=v1.34.4
STAGING_VERSION=v0.34.4
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
[ ${#components[@]} -gt 0 ] || components=(kube-apiserver)

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
for c in "${components[@]}"; do
  if [ ! -x "$dir/bin/$c" ]; then
    echo "== building $c $K8S_VERSION (once; cached in $dir)" >&2
    start=$(date +%s)
    (cd "$dir" && go get "k8s.io/kubernetes/cmd/$c@$K8S_VERSION" >&2 && go build -trimpath -o "bin/$c.tmp" "k8s.io/kubernetes/cmd/$c")
    mv "$dir/bin/$c.tmp" "$dir/bin/$c"
    echo "== built $c in $(( $(date +%s) - start )) s" >&2
  fi
done
echo "$dir/bin"
