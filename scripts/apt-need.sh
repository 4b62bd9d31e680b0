#!/usr/bin/env bash
# Installs the Debian packages whose command is missing, so a fresh CI machine gets the image
# and monitoring tools from `make` itself:
#
#   scripts/apt-need.sh buildah:buildah podman:podman runc:runc mmdebstrap:mmdebstrap
#
# Each argument is COMMAND:PACKAGE. Nothing happens when every command is already on PATH.
set -euo pipefail

missing=()
for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
((${#missing[@]})) || exit 0

if [[ $(id -u) -ne 0 ]]; then
    printf 'apt-need: run as root, or install these Debian packages first: %s\n' "${missing[*]}" >&2
    exit 1
fi
printf 'apt-need: installing %s\n' "${missing[*]}" >&2
apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
