#!/usr/bin/env bash
# Fetches prometheus and promtool from Debian bookworm's `prometheus` package, for the
# monitoring tests (tests/deploy/test_monitoring.py). Nothing is installed system-wide and no
# service is started: apt works on a private state folder (with this machine's apt sources) and
# the .deb is unpacked with dpkg -x, as scripts/build-kube.sh does for kube-apiserver.
#
# Idempotent: when the binaries are cached it only prints the folder. The last line of stdout is
# always the bin folder (holding prometheus and promtool); progress goes to stderr.
#
#   KUBE_CACHE_DIR   cache root (default ~/.cache/appgateway), shared with build-kube.sh
set -euo pipefail

CACHE_ROOT=${KUBE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/appgateway}
BIN_DIR=$CACHE_ROOT/prometheus/bin
WORK=$CACHE_ROOT/prometheus-fetch

log() { printf 'fetch-prometheus: %s\n' "$*" >&2; }

if [[ -x $BIN_DIR/prometheus && -x $BIN_DIR/promtool ]]; then
    echo "$BIN_DIR"
    exit 0
fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/prometheus-fetch.lock"
flock 9
if [[ -x $BIN_DIR/prometheus && -x $BIN_DIR/promtool ]]; then
    echo "$BIN_DIR"
    exit 0
fi

started=$SECONDS
rm -rf "$WORK"
trap 'rm -rf "$WORK" "$BIN_DIR.tmp"' EXIT
mkdir -p "$WORK"/{lists/partial,cache/archives/partial,debs,root}
APT_OPTS=(
    -o "Dir::State::Lists=$WORK/lists"
    -o "Dir::State::Status=/dev/null"
    -o "Dir::Cache=$WORK/cache"
    -o "APT::Sandbox::User=root"
    -o "Debug::NoLocking=1"
    -q
)
log "apt-get update (private lists)"
apt-get "${APT_OPTS[@]}" update >&2
(cd "$WORK/debs" && apt-get "${APT_OPTS[@]}" download prometheus >&2)
dpkg -x "$WORK"/debs/prometheus_*.deb "$WORK/root"

mkdir -p "$BIN_DIR.tmp"
cp "$WORK/root/usr/bin/prometheus" "$WORK/root/usr/bin/promtool" "$BIN_DIR.tmp/"
rm -rf "$BIN_DIR"
mv "$BIN_DIR.tmp" "$BIN_DIR"
log "$("$BIN_DIR/prometheus" --version 2>&1 | head -n1) in $((SECONDS - started)) s"
echo "$BIN_DIR"
