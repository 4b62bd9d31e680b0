#!/usr/bin/env bash
# Builds kube-apiserver 1.20.2 and fetches etcd from Debian bookworm packages, for the
# Kubernetes integration tests. No Kubernetes binary is published on the registries this
# project may use, but Debian ships the full Kubernetes source, and it builds with the packaged
# Go 1.19. Nothing is installed system-wide: apt works on a private state folder and the .debs
# are unpacked with dpkg -x.
#
# Idempotent: when the binaries are already cached, it only prints the folder. The last line of
# stdout is always the bin folder (holding kube-apiserver and etcd); progress goes to stderr.
#
#   KUBE_CACHE_DIR   cache root (default ~/.cache/appgateway)
#   KUBE_DEB_MIRROR  Debian mirror URI (default: the one this machine's apt uses for bookworm)
set -euo pipefail

KUBE_VERSION=1.20.2
KUBE_DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE_ROOT=${KUBE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/appgateway}
BIN_DIR=$CACHE_ROOT/kube-$KUBE_VERSION/bin
WORK=$CACHE_ROOT/kube-build

log() { printf 'build-kube: %s\n' "$*" >&2; }

if [[ -x $BIN_DIR/kube-apiserver && -x $BIN_DIR/etcd ]]; then
    echo "$BIN_DIR"
    exit 0
fi

# One build at a time (parallel pytest sessions on one machine share the cache).
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/kube-build.lock"
flock 9
if [[ -x $BIN_DIR/kube-apiserver && -x $BIN_DIR/etcd ]]; then
    echo "$BIN_DIR"
    exit 0
fi

started=$SECONDS
rm -rf "$WORK"
trap 'rm -rf "$WORK" "$BIN_DIR.tmp"' EXIT  # 2.5 GB of sources and objects: never keep them
mkdir -p "$WORK"/{apt/lists/partial,apt/cache/archives/partial,debs,root,src}

# The mirror this machine already uses for bookworm main (one-line or deb822 sources).
find_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        awk '$1 == "deb" && / bookworm( |$)/ && / main/ {
                 for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit }
             }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
             /(^|\n)Suites:[^\n]*bookworm( |\n|$)/ && /(^|\n)Components:[^\n]*main/ {
                 for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { split($i, a, " "); print a[2]; exit }
             }' "$f"
    done
}
MIRROR=${KUBE_DEB_MIRROR:-$(find_mirror | head -n1)}
if [[ -z $MIRROR ]]; then
    log "no apt source for Debian bookworm main found; set KUBE_DEB_MIRROR"
    exit 1
fi
log "mirror $MIRROR"

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$WORK/apt/sources.list" <<EOF
deb [signed-by=$KEYRING] $MIRROR bookworm main
deb-src [signed-by=$KEYRING] $MIRROR bookworm main
EOF
APT_OPTS=(
    -o "Dir::Etc::SourceList=$WORK/apt/sources.list"
    -o "Dir::Etc::SourceParts=/nonexistent"
    -o "Dir::State::Lists=$WORK/apt/lists"
    -o "Dir::State::Status=/dev/null"
    -o "Dir::Cache=$WORK/apt/cache"
    -o "APT::Sandbox::User=root"
    -o "Debug::NoLocking=1"
    -q
)
log "apt-get update (private lists)"
apt-get "${APT_OPTS[@]}" update >&2

log "downloading sources and build tools"
(cd "$WORK/src" && apt-get "${APT_OPTS[@]}" source --download-only \
    "kubernetes=$KUBE_DEB_VERSION" >&2)
(cd "$WORK/debs" && apt-get "${APT_OPTS[@]}" download \
    golang-1.19-go golang-1.19-src golang-github-modern-go-reflect2-dev \
    rsync libpopt0 etcd-server >&2)
for deb in "$WORK"/debs/*.deb; do
    dpkg -x "$deb" "$WORK/root"
done

# Unpack the source package by hand (dpkg-source is not always installed): orig tarball(s),
# then the debian/ tarball, then the quilt series in order.
SRC=$WORK/src/kubernetes
mkdir -p "$SRC"
for t in "$WORK"/src/*.orig.tar.*; do
    case $t in
    *.orig.tar.*) tar -xf "$t" -C "$SRC" --strip-components=1 ;;
    esac
done
tar -xf "$WORK"/src/*.debian.tar.* -C "$SRC"
if [[ -f $SRC/debian/patches/series ]]; then
    while read -r p _; do
        [[ -z $p || $p == \#* ]] && continue
        patch -d "$SRC" -p1 --quiet --forward <"$SRC/debian/patches/$p" >&2
    done <"$SRC/debian/patches/series"
fi

# reflect2 1.0.1 reads Go runtime internals that changed in Go 1.18; 1.0.2 is packaged.
R2=$SRC/vendor/github.com/modern-go/reflect2
rm -rf "$R2"
cp -r "$WORK/root/usr/share/gocode/src/github.com/modern-go/reflect2" "$R2"
sed -i 's#^\(github.com/modern-go/reflect2\) v1\.0\.1$#\1 v1.0.2#' "$SRC/vendor/modules.txt"
sed -i 's#\(github.com/modern-go/reflect2\) v1\.0\.1$#\1 v1.0.2#' "$SRC/go.mod"

GOROOT=$WORK/root/usr/lib/go-1.19
log "building kube-apiserver with $("$GOROOT/bin/go" version)"
(
    cd "$SRC"
    export GOROOT PATH=$GOROOT/bin:$WORK/root/usr/bin:$PATH
    export LD_LIBRARY_PATH=$WORK/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export GOPATH=$WORK/gopath GOCACHE=$WORK/gocache GOFLAGS=-mod=vendor
    export CGO_ENABLED=0 GOPROXY=off GO111MODULE=on
    export KUBE_GIT_VERSION=v$KUBE_VERSION KUBE_GIT_TREE_STATE=clean
    make WHAT=cmd/kube-apiserver >&2
)

mkdir -p "$BIN_DIR.tmp"
cp "$SRC/_output/local/bin/linux/$("$GOROOT/bin/go" env GOARCH)/kube-apiserver" "$BIN_DIR.tmp/"
cp "$WORK/root/usr/bin/etcd" "$BIN_DIR.tmp/"
rm -rf "$BIN_DIR"
mv "$BIN_DIR.tmp" "$BIN_DIR"
log "done in $((SECONDS - started)) s"
echo "$BIN_DIR"
