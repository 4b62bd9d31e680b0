#!/usr/bin/env bash
# Prepares the by-hand benchmarks: wrk (Debian package) and the two Go reference programs.
# Go comes from Debian's golang-1.19-go, unpacked with `dpkg -x` into bench/.build so nothing is
# installed system-wide. Idempotent: each step is skipped when its output already exists.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="$BENCH/.build"
DEBS="$BUILD/debs"
GOTREE="$BUILD/go"
export GOROOT="$GOTREE/usr/lib/go-1.19"
export GOPATH="$BUILD/gopath"
export GOCACHE="$BUILD/gocache"
export GOPROXY=off
export GOFLAGS=
export GO111MODULE=on
export GOTOOLCHAIN=local
export CGO_ENABLED=0
GO="$GOROOT/bin/go"

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update
        apt_updated=1
    fi
}

if ! command -v wrk >/dev/null 2>&1; then
    echo "setup: installing wrk"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk
fi

if [ ! -x "$GO" ]; then
    mkdir -p "$DEBS"
    if ! ls "$DEBS"/golang-1.19-go_*.deb >/dev/null 2>&1 \
        || ! ls "$DEBS"/golang-1.19-src_*.deb >/dev/null 2>&1; then
        echo "setup: downloading golang-1.19-go and golang-1.19-src"
        # apt-get download needs the package lists; fetch them only when they are missing.
        if ! apt-cache show golang-1.19-go >/dev/null 2>&1; then
            apt_update_once
        fi
        (cd "$DEBS" && apt-get download golang-1.19-go golang-1.19-src) || {
            apt_update_once
            (cd "$DEBS" && apt-get download golang-1.19-go golang-1.19-src)
        }
    fi
    echo "setup: unpacking Go into $GOTREE"
    mkdir -p "$GOTREE"
    for deb in "$DEBS"/golang-1.19-go_*.deb "$DEBS"/golang-1.19-src_*.deb; do
        dpkg -x "$deb" "$GOTREE"
    done
fi
"$GO" version

build() {
    local name="$1"
    local src="$BENCH/$name"
    local out="$BUILD/bin/$name"
    if [ -x "$out" ] && [ "$out" -nt "$src/main.go" ]; then
        echo "setup: $name is up to date"
        return
    fi
    echo "setup: building $name"
    local work="$BUILD/src/$name"
    mkdir -p "$work" "$BUILD/bin"
    cp "$src/main.go" "$work/main.go"
    printf 'module bench/%s\n\ngo 1.19\n' "$name" >"$work/go.mod"
    (cd "$work" && "$GO" build -trimpath -o "$out" .)
}

build goupstream
build goproxy
echo "setup: done ($BUILD/bin)"
