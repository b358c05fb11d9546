#!/usr/bin/env bash
# Build snigate-router and snigate-broker as static binaries and the images
# snigate-router:dev and snigate-broker:dev around them (FROM scratch).
#
# usage: deploy/container/build.sh
#
# The binaries are glibc's, linked statically (+crt-static: the musl target is
# not installable here). Neither needs NSS at run time: the router resolves
# backends with its own DNS client (hickory: /etc/resolv.conf and /etc/hosts),
# the broker binds and accepts only. The broker image's default certificate,
# CA and password file are made here, with the binary itself, so every build has
# its own; they are marked as defaults, and the broker warns while they are used.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
triple="$(uname -m)-unknown-linux-gnu"
stage="$root/target/container"

echo "build.sh: static release build for $triple"
# --target keeps RUSTFLAGS off build scripts and proc macros, which run here.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$triple" -p snigate-router -p snigate-broker
bin="$root/target/$triple/release"
for b in snigate-router snigate-broker; do
  # A static binary needs no shared library (no NEEDED entry), scratch has none.
  if readelf -d "$bin/$b" | grep -q NEEDED; then
    echo "build.sh: $b needs shared libraries; expected a static binary" >&2
    exit 1
  fi
done

if [ -d "$stage" ]; then chmod -R u+w "$stage"; fi
rm -rf "$stage"
mkdir -p "$stage/router/etc/snigate/routes.d" "$stage/broker/etc/snigate/tls" "$stage/broker/etc/snigate/auth"

# Router: binary, configuration, the default route.
cp "$bin/snigate-router" "$stage/router/"
cp deploy/container/router/router.toml "$stage/router/etc/snigate/"
cp deploy/container/router/routes.d/default.toml "$stage/router/etc/snigate/routes.d/"

# Broker: binary, configuration, default TLS material and users.
cp "$bin/snigate-broker" "$stage/broker/"
cp deploy/container/broker/broker.toml "$stage/broker/etc/snigate/"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin/snigate-broker" certs --out "$tmp" --ca-name "snigate-broker default CA (public: replace it)" \
  snigate-broker --also localhost --also 127.0.0.1 >/dev/null
marker="# snigate-default: built into the image; its key is public. Mount your own over it."
{ echo "$marker"; cat "$tmp/snigate-broker.crt"; } >"$stage/broker/etc/snigate/tls/tls.crt"
{ echo "$marker"; cat "$tmp/snigate-broker.key"; } >"$stage/broker/etc/snigate/tls/tls.key"
cp "$tmp/ca.crt" "$stage/broker/etc/snigate/tls/ca.crt"
"$bin/snigate-broker" passwd -c -b "$tmp/passwd" admin admin
{ echo "# snigate-default: the image's built-in user admin/admin. Mount your own password file over it."; cat "$tmp/passwd"; } \
  >"$stage/broker/etc/snigate/auth/passwd"

# Owned by root (COPY makes them so), readable by group 0: any UID with GID 0
# reads them, none writes them. Keys are not world-readable.
find "$stage" -type d -exec chmod 0555 {} +
find "$stage" -type f -exec chmod 0444 {} +
chmod 0555 "$stage/router/snigate-router" "$stage/broker/snigate-broker"
chmod 0440 "$stage/broker/etc/snigate/tls/tls.key"

docker build --quiet -f deploy/container/Containerfile.router -t snigate-router:dev "$stage/router" >/dev/null
docker build --quiet -f deploy/container/Containerfile.broker -t snigate-broker:dev "$stage/broker" >/dev/null
for image in snigate-router:dev snigate-broker:dev; do
  size=$(docker image inspect --format '{{.Size}}' "$image")
  echo "build.sh: $image $size bytes ($((size / 1024)) KiB)"
done
