#!/usr/bin/env bash
# Builds the switchyard container image (localhost/switchyard:VERSION) with buildah, without a
# registry: the release binary (or BINARY, if given), plus iptables (nft and legacy), nft,
# conntrack and ip from this machine's Debian packages, each with the shared libraries it links.
# The binary goes in without its debug information (symbols stay, so backtraces name functions),
# and an image this replaces under the same name is removed, so rebuilding does not pile up
# untagged images.
#
# Usage: deploy/image/build.sh [BINARY]        (needs buildah; run from anywhere)
# Prints the image name. Check it: buildah from --name t localhost/switchyard:0.1.0 &&
#   buildah run --network none t -- /switchyard --version
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$project/Cargo.toml" | head -n 1)
image=localhost/switchyard:$version
export PATH="$PATH:/usr/sbin:/sbin"

binary=${1:-}
if [ -z "$binary" ]; then
  (cd "$project" && cargo build --release -p switchyard >&2)
  binary=$project/target/release/switchyard
fi
for tool in buildah objcopy iptables-nft-restore iptables-legacy-restore nft conntrack ip; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is required (Debian: buildah binutils iptables nftables conntrack iproute2)" >&2; exit 1; }
done

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
root=$context/rootfs
mkdir -p "$root"/{tmp,run,etc,usr/sbin,usr/bin}
chmod 1777 "$root/tmp"

# Copies a file to the same path under the root, and every shared library it links.
add() {
  local f=$1
  mkdir -p "$root$(dirname "$f")"
  cp -L "$f" "$root$f"
  ldd "$f" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
    [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
  done
}

objcopy --strip-debug "$binary" "$root/switchyard"
chmod 0755 "$root/switchyard"
add "$root/switchyard"
for f in /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/nft /usr/sbin/conntrack /bin/ip; do add "$f"; done
# nft reads protocol and service names from these.
cp /etc/protocols /etc/services "$root/etc/"
# iptables loads its matches and targets at run time.
for m in /usr/lib/x86_64-linux-gnu/xtables/*.so; do add "$m"; done
# The names the agent runs, pointing at the multi-call binaries; plain `iptables` is nft, as on
# current distributions (the DaemonSet names the backend explicitly).
for v in nft legacy; do
  for c in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do
    suffix=${c#iptables}; suffix=${suffix#ip6tables}
    fam=${c%%-*}
    ln -sf "xtables-$v-multi" "$root/usr/sbin/$fam-$v$suffix"
  done
done
for c in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do
  ln -sf xtables-nft-multi "$root/usr/sbin/$c"
done
ln -sf /bin/ip "$root/usr/sbin/ip"
# iptables takes this lock; the DaemonSet mounts the host's over it.
touch "$root/run/xtables.lock"
echo "root:x:0:0:root:/:/switchyard" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"

cp "$here/Containerfile" "$context/Containerfile"
old=$(buildah images --quiet --no-trunc "$image" 2>/dev/null || true)
buildah build --quiet --layers=false --network none -f "$context/Containerfile" -t "$image" "$context" >&2
new=$(buildah images --quiet --no-trunc "$image")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
  # Left untagged by the build; kept only if a container still uses it.
  buildah rmi "$old" >/dev/null 2>&1 || true
fi
echo "$image"
