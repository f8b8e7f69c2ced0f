#!/usr/bin/env bash
# Installs the Debian 12 packages streamproxy needs, idempotently: when every package is already
# installed it changes nothing and touches no network (no `apt-get update`).
#
#   scripts/install-system-deps.sh           the demo's packages (scripts/demo.sh, scripts/setup.sh)
#   scripts/install-system-deps.sh --test    the demo's and the tests' (scripts/test.sh, CI)
#   ... --check                              only report; exit 1 when something is missing
#   ... --list                               print the package names, one a line
#
# Runs as root (CI) or through sudo. What each package is for:
#   the demo (and the tests):
#   python3-venv                    the project's virtualenv (.venv)
#   python3-gi, python3-gst-1.0,    the simulated camera: GStreamer's RTSP server, run by
#   gir1.2-gst-rtsp-server-1.0      Debian's /usr/bin/python3 (streamproxy_sim/gst/gst_camera.py)
#   gstreamer1.0-rtsp               the gst-rtsp-server library
#   gstreamer1.0-plugins-base       appsrc, videoconvert
#   gstreamer1.0-plugins-good       rtph264pay/rtph265pay, rtspsrc (GStreamer as a viewer)
#   gstreamer1.0-plugins-ugly       x264enc (the camera's H.264 encoder)
#   gstreamer1.0-plugins-bad        h264parse (the demo camera's pre-encoded clip), x265enc (H.265);
#                                   Debian's gst-rtsp-server depends on it anyway
#   fonts-dejavu-core               text on the "camera offline" slate
#   the tests only:
#   ffmpeg                          ffprobe/ffmpeg/ffplay: real RTSP clients
#   gstreamer1.0-libav              avdec_h264 (GStreamer as a decoding viewer)
#   gstreamer1.0-tools              gst-launch-1.0, gst-inspect-1.0
#   chromium, chromium-driver       the WebRTC viewer in browser tests
#   firefox-esr                     the second WebRTC viewer in browser tests (tests/test_firefox.py)
#   prometheus                      promtool: checks the /metrics exposition
#   libonvif-dev, libxml2-dev,      a real ONVIF C client (tests/onvif_c/addcam.c), built by
#   gcc, libc6-dev, pkg-config      tests/test_onvif_libonvif.py against Debian's libonvif
# The demo camera's scene (OpenCV's sample video) is not a package here: scripts/fetch-plaza-video.sh.
set -euo pipefail

PACKAGES=(
  python3-venv
  python3-gi
  python3-gst-1.0
  gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-rtsp
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-ugly
  gstreamer1.0-plugins-bad
  fonts-dejavu-core
)
TEST_PACKAGES=(
  ffmpeg
  gstreamer1.0-libav
  gstreamer1.0-tools
  chromium
  chromium-driver
  firefox-esr
  prometheus
  libonvif-dev
  libxml2-dev
  gcc
  libc6-dev
  pkg-config
)

check_only=0
list_only=0
for arg in "$@"; do
  case "$arg" in
    --check) check_only=1 ;;
    --list) list_only=1 ;;
    --test) PACKAGES+=("${TEST_PACKAGES[@]}") ;;
    *) echo "usage: $0 [--test] [--check | --list]" >&2; exit 2 ;;
  esac
done
if [ "$list_only" = 1 ]; then
  printf '%s\n' "${PACKAGES[@]}"
  exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  if [ "$status" != "installed" ]; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-system-deps: all ${#PACKAGES[@]} Debian packages present"
  exit 0
fi
echo "install-system-deps: missing: ${missing[*]}"
if [ "$check_only" = 1 ]; then
  exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=(env)
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo env)
else
  echo "install-system-deps: not root and no sudo: install these as root: ${missing[*]}" >&2
  exit 1
fi

# Wait for a dpkg lock held by another apt (another job, unattended-upgrades) instead of failing.
apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update -q
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -q \
  --no-install-recommends "${missing[@]}"

# Verify: a package name that does not exist or failed to configure must fail the script.
still=()
for pkg in "${missing[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  [ "$status" = "installed" ] || still+=("$pkg")
done
if [ "${#still[@]}" -ne 0 ]; then
  echo "install-system-deps: still missing after install: ${still[*]}" >&2
  exit 1
fi
# The prometheus package is here for promtool and for tests that start their own server on
# loopback; its packaged service (port 9090) is not wanted where systemd would start it.
if printf '%s\n' "${missing[@]}" | grep -qx prometheus && command -v systemctl >/dev/null 2>&1; then
  "${as_root[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
echo "install-system-deps: installed ${missing[*]}"
