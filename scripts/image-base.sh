#!/usr/bin/env bash
# Makes sure the Dockerfile's base image, python:3.11-slim-bookworm, is in buildah's storage,
# and prints its name.
#
# It is used as it is when it is already there, and pulled when a registry can be reached.
# Otherwise (a machine that reaches only package registries) a stand-in of it is built from
# Debian bookworm packages with mmdebstrap: Debian's Python 3.11 with its headers, pip,
# ca-certificates, netbase and tzdata, `python3.11`/`python`/`pip` in /usr/local/bin as in the
# official image, and no EXTERNALLY-MANAGED marker (the official image has none either). The
# root filesystem tarball is cached, so later builds skip mmdebstrap. The stand-in carries the
# label appgateway.stand-in=true; `buildah images` shows it under the official name.
#
#   IMAGE_CACHE_DIR   where the tarball is kept (default ~/.cache/appgateway)
#   STORAGE_DRIVER    containers-storage driver (default vfs)
set -euo pipefail

BASE=docker.io/library/python:3.11-slim-bookworm
CACHE_ROOT=${IMAGE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/appgateway}
TARBALL=$CACHE_ROOT/stand-in-python3.11-bookworm.tar
BUILDAH=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")

log() { printf 'image-base: %s\n' "$*" >&2; }

if "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    echo "$BASE"
    exit 0
fi
if timeout 60 "${BUILDAH[@]}" pull --quiet "$BASE" >/dev/null 2>&1; then
    log "pulled $BASE"
    echo "$BASE"
    exit 0
fi
log "$BASE cannot be pulled: building a stand-in from Debian packages"

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/stand-in.lock"
flock 9
if [[ ! -s $TARBALL ]]; then
    started=$SECONDS
    sources=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] && grep -qE '^[^#]*bookworm' "$f" && sources+=("$f")
    done
    if ((${#sources[@]} == 0)); then
        log "no apt source for Debian bookworm found"
        exit 1
    fi
    # Documentation, translations and the static libpython are left out, as in the official
    # image; /usr is merged without the usrmerge package (which would bring perl).
    mmdebstrap --variant=minbase --quiet \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --include=ca-certificates,netbase,tzdata,python3.11,python3-pip,libpython3.11-dev \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --customize-hook='rm -f "$1"/usr/lib/python3.11/EXTERNALLY-MANAGED' \
        --customize-hook='rm -f "$1"/usr/lib/python3.11/config-3.11-*/libpython3.11*.a' \
        --customize-hook='for n in python3.11 python3 python; do ln -sf /usr/bin/python3.11 "$1/usr/local/bin/$n"; done' \
        --customize-hook='ln -sf /usr/bin/pip3 "$1/usr/local/bin/pip"' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        bookworm "$CACHE_ROOT/stand-in.tmp.tar" "${sources[@]}" >&2
    mv "$CACHE_ROOT/stand-in.tmp.tar" "$TARBALL"
    log "root filesystem built in $((SECONDS - started)) s"
fi

container=$("${BUILDAH[@]}" from scratch)
trap '"${BUILDAH[@]}" rm "$container" >/dev/null 2>&1 || true' EXIT
"${BUILDAH[@]}" add --quiet "$container" "$TARBALL" / >/dev/null
"${BUILDAH[@]}" config \
    --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --label appgateway.stand-in=true \
    --cmd python3 \
    "$container"
"${BUILDAH[@]}" commit --quiet "$container" "$BASE" >/dev/null
log "stand-in committed as $BASE"
echo "$BASE"
