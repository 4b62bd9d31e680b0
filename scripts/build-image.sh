#!/usr/bin/env bash
# `make image`: builds the Dockerfile with buildah, without a Docker daemon
# (--storage-driver vfs --isolation chroot work as root on any kernel, in a container too).
# The base image comes from scripts/image-base.sh (pulled, or a stand-in built from Debian
# packages). The build stage downloads uv and the locked wheels from PyPI; the build machine's
# CA bundle is mounted over the image's, so a TLS-inspecting proxy that the machine trusts is
# trusted inside the build too (nothing of it stays in the image).
#
#   IMAGE   the tag to build (default localhost/appgateway:0.1.0)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/appgateway:0.1.0}
BUILDAH=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
log() { printf 'build-image: %s\n' "$*" >&2; }

bash scripts/apt-need.sh buildah:buildah mmdebstrap:mmdebstrap
bash scripts/image-base.sh >/dev/null

mounts=()
for bundle in /etc/ssl/certs/ca-certificates.crt; do
    [[ -r $bundle ]] && mounts+=(--volume "$bundle:$bundle:ro")
done

started=$SECONDS
# No --layers: with the vfs driver every cached step is a full copy of the file system, and
# the steps that take the time (uv sync, the mypyc build) change with the sources anyway.
"${BUILDAH[@]}" build --isolation chroot --pull=never "${mounts[@]}" \
    --tag "$IMAGE" --file Dockerfile . >&2
"${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true  # the previous build's image, now untagged
log "$IMAGE built in $((SECONDS - started)) s; $("${BUILDAH[@]}" images --format '{{.Size}}' "$IMAGE")"
echo "$IMAGE"
