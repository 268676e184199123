#!/usr/bin/env bash
# Builds, with podman and from the package registries only, local images equal in substance to the
# upstream bases the Dockerfile names (Docker Hub and gcr.io are not reachable here):
#   localhost/bre/debian:bookworm                 Debian bookworm, minbase, from debootstrap and the Debian
#                                                 mirror apt uses on this machine (stands in for debian:bookworm)
#   localhost/bre/beam_python3.11_sdk:2.77.0      that + Debian's Python 3.11 + apache-beam[gcp]==2.77.0 from
#                                                 PyPI + /opt/apache/beam/boot built from Beam's Go module at
#                                                 the same version (stands in for apache/beam_python3.11_sdk)
# Each step is skipped when its image (or built file) is already in the cache: .cache/container/.
# Needs root, podman, runc, debootstrap and Go (installs the first three with apt-get when missing).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=container/env.sh
source "$HERE/env.sh"
BEAM_VERSION=2.77.0
DEBIAN_IMAGE=localhost/bre/debian:bookworm
SDK_IMAGE=localhost/bre/beam_python3.11_sdk:$BEAM_VERSION
log() { echo "standins.sh: $*" >&2; }
secs() { echo $(( $(date +%s) - $1 ))s; }

missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} with apt-get"
  t=$(date +%s)
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >&2
  log "apt-get install: $(secs "$t")"
fi

# 1. Debian bookworm from the mirror apt is set up with (deb822 or one-line sources).
if ! podman image exists "$DEBIAN_IMAGE"; then
  mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
            | grep -E '^(URIs:|deb) ' | grep -oE 'https?://[^ ]+/debian/?' | head -1 || true)"
  mirror="${BRE_DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}"
  log "debootstrap bookworm from $mirror"
  t=$(date +%s)
  rootfs="$BRE_CONTAINER_CACHE/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$BRE_CONTAINER_CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$BRE_CONTAINER_CACHE/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
  log "debian image: $(secs "$t")"
fi

# 2. Beam's boot entrypoint, from Beam's Go module through the Go proxy (the binary is named `container`).
boot="$BRE_CONTAINER_CACHE/boot-$BEAM_VERSION/boot"
if [ ! -x "$boot" ]; then
  command -v go >/dev/null || { log "Go is needed to build Beam's boot entrypoint"; exit 1; }
  log "go install github.com/apache/beam/sdks/v2/python/container@v$BEAM_VERSION"
  t=$(date +%s)
  gobin="$BRE_CONTAINER_CACHE/boot-$BEAM_VERSION/bin"
  mkdir -p "$gobin"
  GOBIN="$gobin" CGO_ENABLED=0 go install "github.com/apache/beam/sdks/v2/python/container@v$BEAM_VERSION" >&2
  mv "$gobin/container" "$boot"
  log "boot: $(secs "$t")"
fi

# 3. The Beam SDK image's substance: Python 3.11 as the system interpreter, Beam installed into it,
#    boot at /opt/apache/beam/boot as the entrypoint.
if ! podman image exists "$SDK_IMAGE"; then
  log "building $SDK_IMAGE"
  t=$(date +%s)
  context="$BRE_CONTAINER_CACHE/sdk-context"
  rm -rf "$context" && mkdir -p "$context"
  cp "$boot" "$context/boot"
  cp /etc/ssl/certs/ca-certificates.crt "$context/host-ca.crt"  # see standin-beam-sdk.Dockerfile
  podman build --isolation chroot --network host -f "$HERE/standin-beam-sdk.Dockerfile" \
    --build-arg "BASE_IMAGE=$DEBIAN_IMAGE" --build-arg "BEAM_VERSION=$BEAM_VERSION" -t "$SDK_IMAGE" "$context" >&2
  rm -rf "$context"
  log "beam sdk image: $(secs "$t")"
fi
echo "DEBIAN_IMAGE=$DEBIAN_IMAGE"
echo "BEAM_SDK_IMAGE=$SDK_IMAGE"
