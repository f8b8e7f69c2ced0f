#!/usr/bin/env bash
# Puts the demo camera's scene where the demo finds it (streamproxy_sim/plaza.py), idempotently: OpenCV's
# sample video vtest.avi (8 MB: a plaza seen from a wall camera, people walking), as Debian ships it in
# opencv-doc. Nothing to do, and no network, when opencv-doc is installed or the copy is already there.
#
#   scripts/fetch-plaza-video.sh           fetch it when missing
#   scripts/fetch-plaza-video.sh --check   only report; exit 1 when missing
#
# Not the whole opencv-doc package (313 MB installed with its dependencies, HTML docs, for one video):
# apt-get downloads its .deb (96 MB; apt checks it against the signed archive index), only the video is
# unpacked from it, its SHA-256 is checked (the walkers' head tracks in plaza.py were measured on this
# exact file) and the .deb is deleted. No root needed, except for `apt-get update` when this machine has no package lists.
# A failure is a warning, not an error: the demo then shows its synthetic scene, and says so.
set -euo pipefail

debian=/usr/share/doc/opencv-doc/examples/data/vtest.avi
dest="${XDG_CACHE_HOME:-$HOME/.cache}/streamproxy/demo/vtest.avi"
sha256=45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf

check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

for f in "$debian" "$dest"; do
  if [ -f "$f" ]; then
    echo "fetch-plaza-video: present ($f)"
    exit 0
  fi
done
if [ "$check_only" = 1 ]; then
  echo "fetch-plaza-video: missing (neither $debian nor $dest)"
  exit 1
fi

warn() {
  echo "fetch-plaza-video: WARNING: $*; the demo will show its synthetic scene instead" >&2
  exit 0
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's download sandbox user (_apt) writes into it
download() {
  (cd "$work" && apt-get -o Acquire::Retries=3 download -q opencv-doc) >"$work/log" 2>&1
}
if ! download; then
  # A machine without package lists (a fresh container): refresh them (root), then try again.
  if [ "$(id -u)" -eq 0 ]; then
    as_root=(env)
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo env)
  else
    cat "$work/log" >&2
    warn "apt-get download opencv-doc failed, and no root to run apt-get update"
  fi
  "${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null ||
    warn "apt-get update failed"
  download || { cat "$work/log" >&2; warn "apt-get download opencv-doc failed"; }
fi
debs=("$work"/opencv-doc_*.deb)
[ -f "${debs[0]}" ] || warn "apt-get download gave no opencv-doc .deb"
dpkg-deb --fsys-tarfile "${debs[0]}" |
  tar -xO ./usr/share/doc/opencv-doc/examples/data/vtest.avi >"$work/vtest.avi" ||
  warn "no vtest.avi in ${debs[0]##*/}"
echo "$sha256  $work/vtest.avi" | sha256sum --check --quiet >/dev/null 2>&1 ||
  warn "the vtest.avi in ${debs[0]##*/} is not the one the demo was made for (SHA-256 differs)"
mkdir -p "$(dirname "$dest")"
mv "$work/vtest.avi" "$dest.tmp.$$"
mv "$dest.tmp.$$" "$dest"
echo "fetch-plaza-video: $dest (from ${debs[0]##*/})"
