#!/usr/bin/env bash
# Builds the worker image from the repository's Dockerfile, unchanged, with podman, on the local
# stand-ins for its base (container/standins.sh), and prints IMAGE=<name>. Layers are cached in
# .cache/container/ (podman's vfs store): a rebuild after a source change reruns only `pip install /app`.
#   BRE_IMAGE       the tag (default localhost/bre/embed-worker:dev)
#   BRE_TENSORFLOW  the Dockerfile's TENSORFLOW build argument (default tensorflow==2.21.*, the CPU
#                   build: CI's choice; pass 'tensorflow[and-cuda]==2.21.*' for the production build)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
IMAGE="${BRE_IMAGE:-localhost/bre/embed-worker:dev}"
TENSORFLOW="${BRE_TENSORFLOW:-tensorflow==2.21.*}"
bases="$(bash "$HERE/standins.sh")"  # fails the script if standins.sh fails
eval "$bases"
# shellcheck source=container/env.sh
source "$HERE/env.sh"
t=$(date +%s)
podman build --isolation chroot --network host --layers -f "$ROOT/Dockerfile" \
  --build-arg "BEAM_SDK_IMAGE=$BEAM_SDK_IMAGE" --build-arg "TENSORFLOW=$TENSORFLOW" -t "$IMAGE" "$ROOT" >&2
echo "build.sh: $IMAGE built in $(( $(date +%s) - t ))s, $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes" >&2
echo "IMAGE=$IMAGE"
