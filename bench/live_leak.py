"""Frame-exact live leak benchmark: how many face-frames leave the proxy recognisable, per camera count.

A script, not a test: it prints a table (and `--json` writes the same as JSON). For each clip with exact
face boxes in `<repo>/../shared/eval/videos_gt` (read in place, never copied; `--gt-dir`):

0. (dev_plaza_1080 only) scale: dev_plaza scaled to 1920x1080 (swscale Lanczos, yuv420p) and written
   losslessly (libx264 qp 0, checked on the first frame) into the cache dir, with its ground truth scaled
   the same way (width/height 1920x1080, every box's x, y, w, h and the occluder columns x 1.5; the rest
   unchanged). Both cached by the source file's size + mtime, built atomically. From then on it is a clip
   like the others: the scaled video is the "original" of the scorers, the stamp and the bulk reference.
1. stamp: every frame of the clip is decoded and its index (+1; read_stamp rejects 0) is written as the
   camera simulator's barcode (`camsim.write_stamp`, top-left, 28x2 blocks) into the luma. The block size
   is the largest (16 px at 1280 wide and more: 448x32 px) whose area no ground-truth face box touches;
   frames whose face, grown by half its size per side (mask margin), comes near the stamp are reported.
   The stamped frames are a raw I420 clip in a cache dir outside the repository (`--cache-dir`, default
   ~/.cache/streamproxy/bench), served by `SimCamera(mode="replay")`: encoded once with libx264 at
   `--bitrate` (default 6000 kbps) and only packetized, looping, like a real camera.
2. bulk (the reference): `streamproxy anonymize <clip> --output <tmp>` with default settings.
3. camera (calibration): a PyAV viewer decodes the simulator directly, no proxy; expect ~100 % leak.
   This also checks that the stamp survives the camera's compression (the run stops if it does not).
4. proxy, for each N in `--cameras` (default 1,2,4,6): N simulators serving the same stamped clip, the
   whole service in this process (`AppThread`, bench/live.py's config, loopback only, no users). A PyAV
   viewer (a thread, TCP) decodes camera 0: `--warmup` seconds (default 25) after its first frame, then
   `--seconds` (default: `--loops` whole loops of the clip + 3 s). The warm-up is the latency controller's
   settling time: with 4 or more cameras it takes ~20-25 s after start (measured) to step the detector to
   what the load allows, and a window opened earlier scores the start-up, not the steady state. Each
   decoded frame's stamp gives its clip index; the first arrival of each index in the window is kept.
   `--min-face-px PX` sets privacy.min_face_px and `--no-gating` privacy.change_gating false, for every
   camera (bench/live.py's make_config passes `args.privacy` into the config's `privacy` section).

Scoring (the shared `score_leak.py`, run with the venv's python): the received frames, in clip order, are
written losslessly (FFV1, yuv420p exactly as decoded) to a temp dir; a frame that never arrived is filled
with the original frame and its `boxes` rows are removed from a copy of the ground truth, so it is
counted (column `missing`) but not scored. Reported per run: leak overall and by face width, leak of faces
>= 20 px, the longest run of leaked frames of one face, scored face-frames; for the proxy also viewer fps
and the pipelines' output fps (column: camera 0 and the slowest camera; a line per run: every camera's),
frames that never arrived, drops by reason (camera 0 and all cameras; `slow_viewer` from camera 0's hub),
added latency p50/p99 of camera 0 (/api/cameras, last 500 frames) and the worst camera's p99, the detector
settings of camera 0 over the window (/api/cameras polled once a second: each distinct `detector` dict with
its seconds) and the input widths it ran at beside its privacy floor (`privacy_floor`: 1280 for 720p, 1920
for 1080p at the default min_face_px 18), and CPU as % of one core: the proxy (this process minus the
viewer's and the poller's own threads), the viewer thread and the simulators.

Targets (the issue's): dev_street N=1,2 leak <= 1.5 % overall and <= 1.0 % for faces >= 20 px; N=4 (and
beyond) <= 2 %; dev_night no worse than bulk + 1 point. The headline gives the largest N that holds the
clip's frame rate on every camera (>= 96 %: 24.0 of 25 fps, at the viewer and at the slowest camera's
output) and its leak target, with the over-masking beside the leak. dev_plaza (a fixed camera): faces >=
20 px <= 0.5 %. dev_plaza_1080: the same bar as dev_plaza, and a fair comparison: every face is 1.5x wider
(24-210 px instead of 16-140) and the privacy floor scales with the frame (1920 instead of 1280), so the
detector sees each face at the same share of its input as in dev_plaza, with 1.5x the pixels; its >= 20 px
bucket holds every face-frame but a few cut by the frame's edge (dev_plaza's 388 scored face-frames under
20 px too). The upscaled picture is softer than a native 1080p camera's. Over-masking is printed beside every leak: the shared `score_overmask.py` on the bulk
output, and the same measure (bench/benchlib.py) on the frames the viewer received, the stamp's corner
left out (the camera changed it); `--clip all` runs dev_street, dev_night and dev_plaza (not
dev_plaza_1080: name it).

    .venv/bin/python bench/live_leak.py --cameras 1,2 --clip dev_street --json bench/out/live_leak.json
    .venv/bin/python bench/live_leak.py --clip dev_plaza_1080 --cameras 1,2,4   # 1080p, floor 1920
    .venv/bin/python bench/live_leak.py --cameras 1 --seconds 25 --warmup 10 --no-bulk   # a short trial

Everything is on 127.0.0.1, every wait has a timeout and child processes are stopped in `finally`. The
machine this was written on has 2 shared cores: re-run before relying on a number.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from streamproxy import metrics
from streamproxy_sim.camsim import (
    STAMP_COLS,
    STAMP_ROWS,
    SimCamera,
    cached_replay,
    frame_bytes,
    read_stamp,
    stamp_block,
    system_gst_available,
    write_stamp,
)
from streamproxy_sim.harness import AppThread

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    OURS_BIN,
    REPO,
    Overmask,
    cpu_note,
    overmask_keep,
    overmask_share,
    parse_overmask,
    run_timed,
)
from live import LOW_DELAY, CpuWindow, _wait, make_config

log = logging.getLogger("bench.live_leak")

CLIPS = ("dev_street", "dev_night", "dev_plaza")  # --clip all
# Clips made at set-up by scaling one of CLIPS (name: (source clip, width, height)); not in --clip all.
SCALED_CLIPS: dict[str, tuple[str, int, int]] = {"dev_plaza_1080": ("dev_plaza", 1920, 1080)}
DEFAULT_GT_DIR = REPO.parent / "shared" / "eval" / "videos_gt"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
BUCKETS = ("<20", "20-40", "40-80", ">=80")
FPS_HOLD = 0.96  # "holding 25 fps" = >= 24.0 frames/s out
MASK_NEAR = 0.5  # a face grown by this x its size per side near the stamp: the mask may cover it


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamproxy" / "bench"


# --- the clip and its stamp ------------------------------------------------------------------------------


@dataclass
class Clip:
    name: str
    mp4: Path
    gt_path: Path
    gt: dict[str, Any]
    width: int
    height: int
    fps: int
    frames: int


@dataclass
class StampInfo:
    block: int  # px per barcode block
    width: int  # stamp area, px
    height: int
    covered_frames: list[int] = field(default_factory=list)  # a gt box inside the stamp area (bad)
    near_frames: list[int] = field(default_factory=list)  # a grown gt box near it (mask may hide it)
    raw: str = ""
    replay: str = ""


def load_clip(gt_dir: Path, name: str, cache_dir: Path) -> Clip:
    """A clip of --gt-dir; a SCALED_CLIPS name is scaled from its source clip into `cache_dir` first."""
    mp4, gt_path = gt_dir / f"{name}.mp4", gt_dir / f"{name}.gt.json"
    if name in SCALED_CLIPS:
        src, width, height = SCALED_CLIPS[name]
        mp4, gt_path = gt_dir / f"{src}.mp4", gt_dir / f"{src}.gt.json"
    for p in (mp4, gt_path):
        if not p.is_file():
            raise SystemExit(f"live_leak: {p} not found (evaluation clips are read from --gt-dir {gt_dir})")
    if name in SCALED_CLIPS:
        gt_path = scaled_gt(gt_path, name, width, height, cache_dir)
        mp4 = scaled_video(mp4, name, width, height, json.loads(gt_path.read_text()), cache_dir)
    gt = json.loads(gt_path.read_text())
    fps = gt["fps"]
    if int(fps) != fps:
        raise SystemExit(f"live_leak: {name}: fps {fps} is not a whole number (the simulator needs one)")
    return Clip(name, mp4, gt_path, gt, int(gt["width"]), int(gt["height"]), int(fps), int(gt["frames"]))


def _cache_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def scaled_gt(src: Path, name: str, width: int, height: int, cache_dir: Path) -> Path:
    """`src`'s ground truth for the clip scaled to width x height (one factor for both sides): width,
    height, every box's x, y, w, h and the occluder columns scaled (columns outwards to whole pixels: the
    scorer reads them as ints); the rest unchanged. Cached by the source's size + mtime, built atomically."""
    path = cache_dir / f"{name}-{_cache_key(src)}.gt.json"
    if path.is_file():
        return path
    gt = json.loads(src.read_text())
    k = width / gt["width"]
    if abs(height / gt["height"] - k) > 1e-9:
        raise SystemExit(
            f"live_leak: {name}: {gt['width']}x{gt['height']} -> {width}x{height} is not one scale"
        )
    out = dict(gt)
    out["width"], out["height"] = width, height
    out["boxes"] = [[r[0], r[1], *(round(k * float(v), 4) for v in r[2:6]), *r[6:]] for r in gt["boxes"]]
    out["occluder_columns"] = [
        [r[0], math.floor(k * r[1]), math.ceil(k * r[2]), *r[3:]] for r in gt.get("occluder_columns", [])
    ]
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(out))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def scaled_video(src: Path, name: str, width: int, height: int, gt: dict[str, Any], cache_dir: Path) -> Path:
    """`src` scaled to width x height (swscale Lanczos, yuv420p), losslessly encoded (libx264 qp 0: the
    decoded frames are exactly the scaled ones, checked on the first), so the scorers compare like with
    like. Cached by the source's size + mtime, built atomically (tmp + os.replace)."""
    path = cache_dir / f"{name}-{_cache_key(src)}-{width}x{height}-qp0.mp4"
    if path.is_file() and path.stat().st_size > 0:
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fps = int(gt["fps"])
    tb = Fraction(1, fps)
    print(f"{name}: scaling {src.name} to {width}x{height} (lossless, once) ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    n = 0
    first: np.ndarray | None = None
    try:
        with av.open(str(src)) as inp, av.open(str(tmp), "w", format="mp4") as out:
            st = out.add_stream("libx264", rate=fps)
            st.width, st.height, st.pix_fmt = width, height, "yuv420p"
            st.options = {"qp": "0", "preset": "veryfast"}
            st.codec_context.time_base = tb
            st.codec_context.thread_count = 2
            for f in inp.decode(video=0):
                g = f.reformat(
                    width=width, height=height, format="yuv420p", interpolation="LANCZOS", threads=1
                )
                if first is None:
                    first = g.to_ndarray()
                g.pts, g.time_base = n, tb
                for pkt in st.encode(g):
                    out.mux(pkt)
                n += 1
            for pkt in st.encode(None):
                out.mux(pkt)
        if n != int(gt["frames"]):
            raise SystemExit(f"live_leak: {src} decodes to {n} frames, gt says {gt['frames']}")
        with av.open(str(tmp)) as c:
            back = next(c.decode(video=0)).to_ndarray(format="yuv420p", threads=1)
        if first is None or not np.array_equal(back, first):
            raise SystemExit(f"live_leak: {name}: the scaled video does not decode to the frames written")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("scaled %s: %d frames in %.1f s -> %s", name, n, time.monotonic() - t0, path)
    return path


def choose_stamp(clip: Clip) -> StampInfo:
    """The largest barcode block whose stamp area no face box touches; frames where one does if none."""
    boxes = clip.gt["boxes"]
    largest = stamp_block(clip.width)
    info: StampInfo | None = None
    for b in range(largest, 3, -2):
        sw, sh = STAMP_COLS * b, STAMP_ROWS * b
        covered = sorted({int(r[0]) for r in boxes if r[2] < sw and r[3] < sh and r[4] > 0 and r[5] > 0})
        info = StampInfo(b, sw, sh, covered)
        if not covered:
            break
    assert info is not None
    near: set[int] = set()
    for r in boxes:
        x, y, w, h = r[2:6]
        if x - MASK_NEAR * w < info.width and y - MASK_NEAR * h < info.height:
            near.add(int(r[0]))
    info.near_frames = sorted(near)
    return info


def stamped_raw(clip: Clip, stamp: StampInfo, cache_dir: Path) -> Path:
    """The clip with each frame's index+1 stamped, as raw I420, cached (built once, atomically)."""
    st = clip.mp4.stat()
    path = cache_dir / f"{clip.name}-{st.st_size}-{st.st_mtime_ns}-b{stamp.block}.i420"
    size = frame_bytes(clip.width, clip.height)
    if path.is_file() and path.stat().st_size == size * clip.frames:
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    h, w, sw = clip.height, clip.width, stamp.width
    n = 0
    t0 = time.monotonic()
    try:
        with av.open(str(clip.mp4)) as c, open(tmp, "wb") as out:
            for f in c.decode(video=0):
                if (f.width, f.height) != (w, h):
                    raise SystemExit(
                        f"live_leak: {clip.mp4} frame {n} is {f.width}x{f.height}, gt says {w}x{h}"
                    )
                a = np.ascontiguousarray(f.to_ndarray(format="yuv420p", threads=1))
                y = a[:h]
                u = a[h : h + h // 4].reshape(h // 2, w // 2)
                v = a[h + h // 4 :].reshape(h // 2, w // 2)
                write_stamp(y[:, :sw], n + 1, (u[:, : sw // 2], v[:, : sw // 2]))
                out.write(a.tobytes())
                n += 1
        if n != clip.frames:
            raise SystemExit(f"live_leak: {clip.mp4} decodes to {n} frames, gt says {clip.frames}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("stamped %s: %d frames in %.1f s -> %s", clip.name, n, time.monotonic() - t0, path)
    return path


def read_index(frame: Any, stamp: StampInfo, n_frames: int) -> int | None:
    """The clip index stamped into a decoded frame, or None (no stamp, or not an index of this clip)."""
    plane = frame.planes[0]
    rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
    value = read_stamp(np.ascontiguousarray(rows[: stamp.height, : stamp.width]))
    if value is None or not 1 <= value <= n_frames:
        return None
    return value - 1


# --- viewer and API poller ---------------------------------------------------------------------------------


@dataclass
class ViewStats:
    decoded: int = 0  # frames decoded in the window
    stamped: int = 0  # ... of which carried a readable index
    unstamped: int = 0
    wrong_size: int = 0
    unique: int = 0  # distinct indices received
    missing: int = 0  # indices never received (not scored)
    repeats: int = 0  # an index received again (a second loop)
    decode_errors: int = 0  # packets the decoder rejected (skipped)
    reconnects: int = 0  # the stream broke or stalled (> 5 s) and was reopened
    fps: float = 0.0
    cpu: float = 0.0  # the viewer thread, % of one core over the window
    first_frame_s: float | None = None
    errors: list[str] = field(default_factory=list)


class Viewer:
    """A PyAV client (RTSP over TCP) in a thread: reads each frame's index, keeps the first arrival of
    each index once `record` is set, until `halt`. Reconnects (a few times) if the stream breaks."""

    def __init__(
        self,
        url: str,
        clip: Clip,
        stamp: StampInfo,
        max_s: float,
        debug_dir: Path | None = None,
        label: str = "",
    ) -> None:
        self.url, self.clip, self.stamp = url, clip, stamp
        self.debug_dir, self.label = debug_dir, label
        self.record = threading.Event()
        self.halt = threading.Event()
        self.first = threading.Event()
        self.frames: dict[int, np.ndarray] = {}
        self.stats = ViewStats()
        self._cpu0: float | None = None
        self._cpu1: float | None = None
        self._deadline = time.monotonic() + max_s  # hard bound, whatever happens to the caller
        self._t_open = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="leak-viewer", daemon=True)

    def start(self) -> Viewer:
        self._t_open = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.halt.set()
        self._thread.join(15)
        if self._thread.is_alive():
            self.stats.errors.append("viewer thread did not stop within 15 s")

    def cpu_s(self) -> float:
        if self._cpu0 is None:
            return 0.0
        return (self._cpu1 if self._cpu1 is not None else time.thread_time()) - self._cpu0

    def _run(self) -> None:
        # Until halted (or the hard deadline): a broken or stalled stream is reopened, as a VMS would;
        # a packet the decoder rejects is counted and skipped, not a reason to disconnect.
        while not self.halt.is_set() and time.monotonic() < self._deadline:
            try:
                with av.open(self.url, options={"rtsp_transport": "tcp", **LOW_DELAY}, timeout=(10, 5)) as c:
                    stream = c.streams.video[0]
                    for pkt in c.demux(stream):
                        if self.halt.is_set() or time.monotonic() > self._deadline:
                            break
                        try:
                            frames = pkt.decode()
                        except av.error.InvalidDataError:
                            if self.record.is_set():
                                self.stats.decode_errors += 1
                            continue
                        for f in frames:
                            if not self.first.is_set():
                                self.stats.first_frame_s = time.monotonic() - self._t_open
                                self.first.set()
                            if self.record.is_set():
                                self._on_frame(f)
                if self.halt.is_set():
                    break
                self._error("stream ended")
            except Exception as err:
                self._error(f"{type(err).__name__}: {err}")
                self.halt.wait(0.5)
        if self._cpu0 is not None:
            self._cpu1 = time.thread_time()

    def _error(self, text: str) -> None:
        st = self.stats
        st.reconnects += 1
        if len(st.errors) < 5:
            st.errors.append(f"{time.monotonic() - self._t_open:.1f}s: {text}")

    def _on_frame(self, f: Any) -> None:
        if self._cpu0 is None:
            self._cpu0 = time.thread_time()
        st = self.stats
        st.decoded += 1
        idx = read_index(f, self.stamp, self.clip.frames)
        if idx is None:
            st.unstamped += 1
            if self.debug_dir is not None and st.unstamped <= 5:
                self.debug_dir.mkdir(parents=True, exist_ok=True)
                name = f"{self.label}-unstamped-{st.unstamped}-after-{st.decoded}.png"
                cv2.imwrite(str(self.debug_dir / name), f.to_ndarray(format="gray", threads=1))
            return
        st.stamped += 1
        if idx in self.frames:
            st.repeats += 1
            return
        if (f.width, f.height) != (self.clip.width, self.clip.height):
            st.wrong_size += 1
            return
        self.frames[idx] = f.to_ndarray(format="yuv420p", threads=1)


class ApiPoller:
    """GET /api/cameras once a second (in a thread) and keep (monotonic time, cameras) samples."""

    def __init__(self, port: int, max_s: float) -> None:
        self.url = f"http://127.0.0.1:{port}/api/cameras"
        self.samples: list[tuple[float, list[dict[str, Any]]]] = []
        self.errors = 0
        self.last_error = ""
        self.halt = threading.Event()
        self._cpu = 0.0
        self._deadline = time.monotonic() + max_s
        self._thread = threading.Thread(target=self._run, name="leak-poller", daemon=True)

    def start(self) -> ApiPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.halt.set()
        self._thread.join(10)

    def cpu_s(self) -> float:
        """This thread's CPU seconds so far (updated after each poll)."""
        return self._cpu

    def _run(self) -> None:
        c0 = time.thread_time()
        while not self.halt.is_set() and time.monotonic() < self._deadline:
            t = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    self.samples.append((t, json.loads(r.read())))
            except Exception as err:
                self.errors += 1
                self.last_error = f"{type(err).__name__}: {err}"
            self._cpu = time.thread_time() - c0
            self.halt.wait(max(0.0, 1.0 - (time.monotonic() - t)))
        self._cpu = time.thread_time() - c0


def detector_timeline(
    samples: list[tuple[float, list[dict[str, Any]]]], camera: str, t0: float, t1: float
) -> list[dict[str, Any]]:
    """Distinct detector settings of a camera in [t0, t1] with the seconds spent in each (in order of
    first use). `model` is left out (constant), `error` only when set; floats are rounded to 0.01."""
    pts: list[tuple[float, str]] = []
    for t, cams in samples:
        if not t0 - 1.0 <= t <= t1:
            continue
        det = next((c.get("detector") for c in cams if c.get("name") == camera), None)
        if not isinstance(det, dict):
            continue
        setting = {
            k: round(v, 2) if isinstance(v, float) else v
            for k, v in sorted(det.items())
            if k != "model" and not (k == "error" and v is None)
        }
        pts.append((max(t, t0), json.dumps(setting, sort_keys=True)))
    out: dict[str, float] = {}
    for i, (t, key) in enumerate(pts):
        end = pts[i + 1][0] if i + 1 < len(pts) else t1
        out[key] = out.get(key, 0.0) + max(0.0, end - t)
    return [{"setting": json.loads(k), "seconds": round(s, 1)} for k, s in out.items()]


def format_timeline(tl: list[dict[str, Any]], limit: int = 8) -> str:
    """'{k=v,...} 12s; ...' in order of first use; past `limit` settings, the rest is summed up."""
    if not tl:
        return "-"
    parts = []
    for e in tl[:limit]:
        s = ",".join(f"{k}={v}" for k, v in e["setting"].items())
        parts.append(f"{{{s}}} {e['seconds']:.0f}s")
    if len(tl) > limit:
        parts.append(f"+{len(tl) - limit} more settings {sum(e['seconds'] for e in tl[limit:]):.0f}s")
    return "; ".join(parts)


# --- scoring -------------------------------------------------------------------------------------------------


@dataclass
class Score:
    leak: float | None = None
    leak_ge20: float | None = None
    by_width: dict[str, float | None] = field(default_factory=dict)
    by_width_n: dict[str, list[int]] = field(default_factory=dict)  # [leaked, scored]
    face_frames: int = 0
    leaked: int = 0
    longest_run: int = 0
    longest_run_face: int | None = None
    frames_with_leak: int = 0
    missing: int = 0  # frames never received, left out of the ground truth
    overmask: Overmask = field(default_factory=Overmask)  # of the received frames (the stamp left out)
    scorer_s: float = 0.0
    error: str | None = None


def write_received(clip: Clip, received: dict[int, np.ndarray], out: Path) -> None:
    """All frames of the clip in order, losslessly (FFV1 yuv420p): received ones, else the original."""
    with av.open(str(clip.mp4)) as src, av.open(str(out), "w") as dst:
        st = dst.add_stream("ffv1", rate=clip.fps)
        st.width, st.height, st.pix_fmt = clip.width, clip.height, "yuv420p"
        st.codec_context.thread_count = 2
        st.codec_context.time_base = Fraction(1, clip.fps)
        for i, f in enumerate(src.decode(video=0)):
            arr = received.get(i)
            frame = av.VideoFrame.from_ndarray(
                arr if arr is not None else f.to_ndarray(format="yuv420p", threads=1), format="yuv420p"
            )
            frame.pts = i
            frame.time_base = Fraction(1, clip.fps)
            for pkt in st.encode(frame):
                dst.mux(pkt)
        for pkt in st.encode(None):
            dst.mux(pkt)


def run_scorer(clip: Clip, anonymized: Path, gt_path: Path, work: Path, args: argparse.Namespace) -> Score:
    out_json = work / f"score-{anonymized.stem}.json"
    cmd = [
        str(VENV_PYTHON), str(args.gt_dir / "score_leak.py"),
        "--original", str(clip.mp4), "--anonymized", str(anonymized), "--gt", str(gt_path),
        "--json-out", str(out_json), "--quiet",
    ]  # fmt: skip
    r = run_timed(cmd, args.scorer_timeout)
    sc = Score(scorer_s=r.wall_s)
    if not r.ok or not out_json.is_file():
        sc.error = f"scorer rc {r.rc}: {r.output_tail.strip()[-400:]}"
        return sc
    s = json.loads(out_json.read_text())
    if args.debug_dir is not None:  # per face-frame records: which faces leaked where
        args.debug_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(out_json, args.debug_dir / f"{clip.name}-{out_json.name}")
    sc.leak = s["leak_rate"] if s["face_frames"] else None
    sc.face_frames, sc.leaked = int(s["face_frames"]), int(s["leaked_face_frames"])
    sc.frames_with_leak = int(s["frames_with_leak"])
    ge_n = ge_l = 0
    for name in BUCKETS:
        b = s["leak_rate_by_width"].get(name, {})
        sc.by_width[name] = b.get("leak_rate")
        sc.by_width_n[name] = [int(b.get("leaked", 0)), int(b.get("face_frames", 0))]
        if name != "<20":
            ge_n += int(b.get("face_frames", 0))
            ge_l += int(b.get("leaked", 0))
    sc.leak_ge20 = ge_l / ge_n if ge_n else None
    for fid, p in s["per_face"].items():
        if int(p["longest_leak_run"]) > sc.longest_run:
            sc.longest_run, sc.longest_run_face = int(p["longest_leak_run"]), int(fid)
    return sc


def overmask_received(
    clip: Clip,
    received: dict[int, np.ndarray],
    stamp: StampInfo,
    reference: dict[int, np.ndarray] | None = None,
) -> Overmask:
    """Over-masking (benchlib: the shared score_overmask.py's measure) of the frames a viewer received;
    the frame-index stamp's corner, which the camera itself changed, is left out. Against `reference`
    (the camera's own frames, as decoded straight from it) where given, so the camera's compression is
    not counted: what is left is the proxy's masks and its own re-encode (`--encoder-kbps`)."""
    faces: dict[int, list[tuple[float, float, float, float]]] = {}
    for r in clip.gt["boxes"]:
        faces.setdefault(int(r[0]), []).append((float(r[2]), float(r[3]), float(r[4]), float(r[5])))
    shares: list[float] = []
    with av.open(str(clip.mp4)) as src:
        for i, f in enumerate(src.decode(video=0)):
            arr = received.get(i)
            ref = reference.get(i) if reference is not None else None
            if arr is None or (reference is not None and ref is None):
                continue
            y = f.to_ndarray(format="gray", threads=1) if ref is None else ref[: clip.height]
            keep = overmask_keep(y.shape, faces.get(i, []), [(0, 0, stamp.width, stamp.height)])
            shares.append(overmask_share(y, arr[: clip.height], keep))
    return Overmask.of(shares)


def score_received(
    clip: Clip,
    received: dict[int, np.ndarray],
    work: Path,
    label: str,
    args: argparse.Namespace,
    stamp: StampInfo | None = None,
    reference: dict[int, np.ndarray] | None = None,
) -> Score:
    missing = set(range(clip.frames)) - set(received)
    gt = dict(clip.gt)
    gt["boxes"] = [r for r in clip.gt["boxes"] if int(r[0]) not in missing]
    gt_path = work / f"{label}.gt.json"
    gt_path.write_text(json.dumps(gt))
    video = work / f"{label}.mkv"
    try:
        write_received(clip, received, video)
        sc = run_scorer(clip, video, gt_path, work, args)
    finally:
        video.unlink(missing_ok=True)
    sc.missing = len(missing)
    if stamp is not None:
        sc.overmask = overmask_received(clip, received, stamp, reference)
    return sc


# --- the steps -------------------------------------------------------------------------------------------


@dataclass
class Run:
    kind: str  # "bulk", "camera", "proxy"
    n: int = 0
    score: Score = field(default_factory=Score)
    view: ViewStats | None = None
    window_s: float = 0.0
    fps_out_cam0: float | None = None  # pipeline frames_out over the window
    fps_out_min: float | None = None  # slowest camera
    fps_out_all: list[float] = field(default_factory=list)  # every camera, cam0 first
    floor_width_cam0: int | None = None  # camera 0's privacy floor: the detector's smallest input width
    input_width_cam0: list[int] = field(default_factory=list)  # detector input widths cam0 ran at (window)
    fps_out_api_cam0: float | None = None  # mean of /api/cameras fps_out in the window
    dropped_cam0: dict[str, int] = field(default_factory=dict)
    dropped_all: dict[str, int] = field(default_factory=dict)
    lat_p50_cam0: float | None = None
    lat_p99_cam0: float | None = None
    lat_p99_max: float | None = None
    detector_model: str | None = None
    detector: list[dict[str, Any]] = field(default_factory=list)
    cpu_proxy: float | None = None
    cpu_viewer: float | None = None
    cpu_sims: float | None = None
    wall_s: float = 0.0  # bulk: the whole command
    target_ok: bool | None = None
    notes: list[str] = field(default_factory=list)


def bulk_step(clip: Clip, work: Path, args: argparse.Namespace) -> Run:
    run = Run("bulk")
    out_dir = work / "bulk"
    r = run_timed(
        [str(OURS_BIN), "anonymize", str(clip.mp4), "--output", str(out_dir), "-q"], args.bulk_timeout
    )
    run.wall_s = r.wall_s
    out = out_dir / clip.mp4.name
    if not r.ok or not out.is_file():
        run.score.error = f"anonymize rc {r.rc}: {r.output_tail.strip()[-400:]}"
        return run
    run.notes.append(f"bulk: {r.output_tail.strip().splitlines()[-1] if r.output_tail.strip() else ''}")
    try:
        run.score = run_scorer(clip, out, clip.gt_path, work, args)
        om = run_timed(
            [
                str(VENV_PYTHON),
                str(args.gt_dir / "score_overmask.py"),
                str(clip.mp4),
                str(out),
                str(clip.gt_path),
            ],
            args.scorer_timeout,
        )
        run.score.overmask = parse_overmask(om.output_tail)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return run


def make_sim(clip: Clip, stamp: StampInfo, i: int, args: argparse.Namespace) -> SimCamera:
    return SimCamera(
        path=f"cam{i}",
        width=clip.width,
        height=clip.height,
        fps=clip.fps,
        clip=stamp.raw,
        mode="replay",
        bitrate_kbps=args.bitrate,
    )


def camera_step(clip: Clip, stamp: StampInfo, work: Path, args: argparse.Namespace) -> Run:
    """The simulator read directly (no proxy): the calibration, and the check that the stamp survives."""
    run = Run("camera", n=1)
    sim = make_sim(clip, stamp, 0, args)
    viewer: Viewer | None = None
    try:
        sim.start()
        viewer = Viewer(
            sim.url, clip, stamp, args.seconds + 60, args.debug_dir, f"{clip.name}-camera"
        ).start()
        if not viewer.first.wait(20):
            run.notes.append("camera: no frame within 20 s")
        time.sleep(2.0)
        viewer.record.set()
        t0 = time.monotonic()
        time.sleep(args.seconds)
        viewer.halt.set()
        run.window_s = time.monotonic() - t0
    finally:
        if viewer is not None:
            viewer.stop()
        sim.stop()
    assert viewer is not None
    run.view = finish_view(viewer, clip, run.window_s)
    run.score = score_received(clip, viewer.frames, work, "camera", args, stamp)
    args.camera_frames = viewer.frames  # the proxy's over-masking is measured against these
    return run


def finish_view(viewer: Viewer, clip: Clip, window_s: float) -> ViewStats:
    v = viewer.stats
    v.unique = len(viewer.frames)
    v.missing = clip.frames - v.unique
    v.fps = v.decoded / window_s if window_s > 0 else 0.0
    v.cpu = viewer.cpu_s() / window_s * 100 if window_s > 0 else 0.0
    return v


def _sum_drops(total: dict[str, int], after: dict[str, int], before: dict[str, int]) -> None:
    for k, v in after.items():
        d = int(v) - int(before.get(k, 0))
        if d:
            total[k] = total.get(k, 0) + d


def _slow_viewer_drops(camera: str) -> int:
    """The camera's slow-viewer drops, as the one place that counts them exports them."""
    labels = {"camera": camera, "reason": "slow_viewer"}
    return int(metrics.REGISTRY.get_sample_value("streamproxy_frames_dropped_total", labels) or 0)


def proxy_step(clip: Clip, stamp: StampInfo, n: int, work: Path, args: argparse.Namespace) -> Run:
    run = Run("proxy", n=n)
    sims = [make_sim(clip, stamp, i, args) for i in range(n)]
    viewer: Viewer | None = None
    poller: ApiPoller | None = None
    host: AppThread | None = None
    try:
        for s in sims:
            s.start()
        host = AppThread(make_config(sims, args))
        app = host.start()
        pipes = list(app.pipelines.values())
        if not _wait(lambda: all(p.state == "live" and p.snapshot().frames_out > 0 for p in pipes), 30):
            run.notes.append("not all cameras live after 30 s")
        max_s = args.warmup + args.seconds + 90
        assert app.web is not None
        poller = ApiPoller(int(app.web.port), max_s).start()
        viewer = Viewer(
            host.rtsp_url("cam0"), clip, stamp, max_s, args.debug_dir, f"{clip.name}-proxy-n{n}"
        ).start()
        if not viewer.first.wait(20):
            run.notes.append("viewer: no frame from the proxy within 20 s")
        time.sleep(args.warmup)  # the latency controller settles (it changes at most once a second)
        slow0 = _slow_viewer_drops("cam0")
        before = [p.snapshot() for p in pipes]
        cpu = CpuWindow(sims)
        viewer_cpu0 = viewer.cpu_s()
        poller_cpu0 = poller.cpu_s()
        viewer.record.set()
        t0 = time.monotonic()
        time.sleep(args.seconds)
        viewer.halt.set()
        after = [p.snapshot() for p in pipes]
        wall, me, sims_cpu = cpu.end()
        t1 = time.monotonic()
        viewer.stop()
        poller.stop()
        run.window_s = wall
        # this process = proxy + viewer thread + poller thread
        v_cpu = (viewer.cpu_s() - viewer_cpu0) / wall * 100
        p_cpu = (poller.cpu_s() - poller_cpu0) / wall * 100
        run.cpu_proxy, run.cpu_viewer, run.cpu_sims = me - v_cpu - p_cpu, v_cpu, sims_cpu
        fps = [(a.frames_out - b.frames_out) / wall for a, b in zip(after, before, strict=True)]
        run.fps_out_cam0, run.fps_out_min, run.fps_out_all = fps[0], min(fps), fps
        for i, (a, b) in enumerate(zip(after, before, strict=True)):
            _sum_drops(run.dropped_all, asdict(a.dropped), asdict(b.dropped))
            if i == 0:
                _sum_drops(run.dropped_cam0, asdict(a.dropped), asdict(b.dropped))
        slow = _slow_viewer_drops("cam0") - slow0
        if slow:
            run.dropped_cam0["slow_viewer"] = slow
            run.dropped_all["slow_viewer"] = run.dropped_all.get("slow_viewer", 0) + slow
        lat0 = after[0].latency_ms
        run.lat_p50_cam0, run.lat_p99_cam0 = lat0.p50, lat0.p99
        p99s = [a.latency_ms.p99 for a in after]
        run.lat_p99_max = max((p for p in p99s if p is not None), default=None)
        run.detector_model = after[0].detector.model
        run.detector = detector_timeline(poller.samples, "cam0", t0, t1)
        floor = after[0].privacy_floor
        run.floor_width_cam0 = (floor or after[0].detector).min_input_width
        run.input_width_cam0 = sorted(
            {int(e["setting"]["input_width"]) for e in run.detector if "input_width" in e["setting"]}
            or {after[0].detector.input_width}
        )
        api_fps = [
            float(c.get("fps_out", 0.0))
            for t, cams in poller.samples
            if t0 <= t <= t1
            for c in cams
            if c.get("name") == "cam0"
        ]
        run.fps_out_api_cam0 = statistics.mean(api_fps) if api_fps else None
        if poller.errors:
            run.notes.append(f"/api/cameras: {poller.errors} failed polls ({poller.last_error})")
    finally:
        if viewer is not None:
            viewer.stop()
        if poller is not None:
            poller.stop()
        try:
            if host is not None:
                host.stop()
        except RuntimeError as err:
            run.notes.append(f"proxy stop: {err}")
        finally:
            for s in sims:
                s.stop()
    assert viewer is not None
    run.view = finish_view(viewer, clip, run.window_s)
    ref = getattr(args, "camera_frames", None)
    run.score = score_received(clip, viewer.frames, work, f"proxy-n{n}", args, stamp, ref)
    return run


# --- targets and report -------------------------------------------------------------------------------------


def leak_target(clip: Clip, n: int, sc: Score, bulk: Run | None) -> tuple[bool | None, str]:
    """(met?, what the target is) for a proxy run; None when it cannot be judged."""
    if sc.leak is None:
        return None, "no score"
    if clip.name == "dev_street":
        if n <= 2:
            ok = sc.leak <= 0.015 and (sc.leak_ge20 is None or sc.leak_ge20 <= 0.010)
            return ok, "<= 1.5 % and >= 20 px <= 1.0 %"
        return sc.leak <= 0.02, "<= 2 %"
    # a fixed camera: faces >= 20 px are what the issues set the bar on; the 1080p variant has the same bar
    if clip.name in ("dev_plaza", "dev_plaza_1080"):
        return (sc.leak_ge20 is not None and sc.leak_ge20 <= 0.005), ">= 20 px <= 0.5 %"
    if bulk is None or bulk.score.leak is None:
        return None, "bulk + 1 point (no bulk score)"
    return sc.leak <= bulk.score.leak + 0.01, f"<= bulk + 1 point ({100 * (bulk.score.leak + 0.01):.2f} %)"


def fps_held(clip: Clip, r: Run) -> bool:
    """The viewer and every camera's output (fps_out_min: the slowest) at >= FPS_HOLD of the clip's rate."""
    need = FPS_HOLD * clip.fps
    return r.view is not None and r.view.fps >= need and r.fps_out_min is not None and r.fps_out_min >= need


def largest_n_ok(clip: Clip, runs: list[Run]) -> int | None:
    """The largest camera count that held the frame rate on every camera and met the leak target."""
    bulk = next((r for r in runs if r.kind == "bulk"), None)
    ok = [
        r.n
        for r in runs
        if r.kind == "proxy" and fps_held(clip, r) and leak_target(clip, r.n, r.score, bulk)[0]
    ]
    return max(ok, default=None)


def _p(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _n(v: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _drops(d: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(d.items())) or "0"


def print_clip(clip: Clip, stamp: StampInfo, runs: list[Run], args: argparse.Namespace) -> None:
    print()
    print(
        f"clip {clip.name}: {clip.width}x{clip.height}@{clip.fps}, {clip.frames} frames "
        f"({clip.frames / clip.fps:g} s loop); stamp {stamp.width}x{stamp.height} px (block {stamp.block}); "
        f"camera bitrate {args.bitrate} kbps; privacy {_privacy_text(args)}; {cpu_note()}"
    )
    if stamp.covered_frames:
        print(
            f"  WARNING: a face box lies inside the stamp area in {len(stamp.covered_frames)} frames: "
            f"{stamp.covered_frames[:20]}"
        )
    if stamp.near_frames:
        print(
            f"  note: a face grown by {MASK_NEAR:g}x per side reaches the stamp in {len(stamp.near_frames)} "
            f"frames (its mask may hide the index there: counted missing)"
        )
    print(
        "  leak columns: % of scored face-frames leaked (overall, by face width px); 'max run' = longest run of "
        "leaked frames of one face; CPU as % of ONE core; over-mask = share of the picture changed outside the "
        "faces' grown boxes (received frames; the stamp corner left out): median / p90 / max per frame, and the "
        "share of frames over 10 %; the camera row against the clip (its compression), proxy rows against the "
        "camera's own frames (the masks and the proxy's re-encode)"
    )
    hdr = (
        f"{'run':>10} | {'leak %':>6} | {'<20':>6} | {'20-40':>6} | {'40-80':>6} | {'>=80':>6} | {'>=20':>6} | "
        f"{'max run':>10} | {'scored':>6} | {'missing':>7} | {'fps view/out0/min':>17} | "
        f"{'drops cam0 / all':>24} | {'p50/p99 0/max ms':>16} | {'CPU prx/view/sims':>17} | "
        f"{'over-mask med/p90/max, >10 %':>40} | target"
    )
    print(hdr)
    print("-" * (len(hdr) + 6))
    bulk = next((r for r in runs if r.kind == "bulk"), None)
    for r in runs:
        sc = r.score
        name = f"proxy N={r.n}" if r.kind == "proxy" else r.kind
        if sc.error:
            print(f"{name:>10} | ERROR: {sc.error}")
            continue
        fps = drops = lat = cpu = target = "-"
        missing = str(sc.missing) if r.kind != "bulk" else "-"
        if r.view is not None:
            fps = f"{r.view.fps:.1f}/{_n(r.fps_out_cam0, '{:.1f}')}/{_n(r.fps_out_min, '{:.1f}')}"
        if r.kind == "proxy":
            drops = f"{_drops(r.dropped_cam0)} / {_drops(r.dropped_all)}"
            lat = f"{_n(r.lat_p50_cam0)}/{_n(r.lat_p99_cam0)}/{_n(r.lat_p99_max)}"
            cpu = f"{_n(r.cpu_proxy)}/{_n(r.cpu_viewer)}/{_n(r.cpu_sims)}"
            ok, what = leak_target(clip, r.n, sc, bulk)
            target = f"{'-' if ok is None else 'ok' if ok else 'MISSED'} ({what})" + (
                "" if fps_held(clip, r) else f"; fps < {FPS_HOLD * clip.fps:.1f}"
            )
        elif r.kind == "camera":
            cpu = f"-/{_n(r.view.cpu if r.view else None)}/-"
            target = "calibration: expect ~100 %"
        else:
            target = f"reference ({r.wall_s:.0f} s)"
        run_s = f"{sc.longest_run}" + (f" (id {sc.longest_run_face})" if sc.longest_run else "")
        print(
            f"{name:>10} | {_p(sc.leak):>6} | {_p(sc.by_width.get('<20')):>6} | {_p(sc.by_width.get('20-40')):>6} | "
            f"{_p(sc.by_width.get('40-80')):>6} | {_p(sc.by_width.get('>=80')):>6} | {_p(sc.leak_ge20):>6} | "
            f"{run_s:>10} | {sc.face_frames:>6} | {missing:>7} | {fps:>17} | {drops:>24} | {lat:>16} | "
            f"{cpu:>17} | {sc.overmask.text():>40} | {target}"
        )
    for r in runs:
        name = f"proxy N={r.n}" if r.kind == "proxy" else r.kind
        if r.kind == "proxy":
            print(
                f"  {name} detector of cam0 ({r.detector_model}) over {r.window_s:.0f} s: {format_timeline(r.detector)}"
            )
            widths = "/".join(str(w) for w in r.input_width_cam0) or "-"
            print(
                f"  {name} cam0 detector input width {widths} px, privacy floor {_n(r.floor_width_cam0)} px "
                f"(frame {clip.width}x{clip.height}); output fps per camera: "
                + (", ".join(f"cam{i} {f:.1f}" for i, f in enumerate(r.fps_out_all)) or "-")
            )
        if r.view is not None:
            v = r.view
            print(
                f"  {name} viewer: {v.decoded} frames decoded in {r.window_s:.1f} s, {v.stamped} stamped, "
                f"{v.unstamped} unstamped, {v.unique} distinct of {clip.frames}, {v.repeats} repeats"
                + (f", {v.wrong_size} of a wrong size" if v.wrong_size else "")
                + (f"; api fps_out cam0 {r.fps_out_api_cam0:.1f}" if r.fps_out_api_cam0 is not None else "")
                + (f", {v.decode_errors} packets undecodable" if v.decode_errors else "")
                + (f"; {v.reconnects} reconnects, first errors: {v.errors[:3]}" if v.errors else "")
            )
        for note in r.notes:
            print(f"  {name}: {note}")
    best = largest_n_ok(clip, runs)
    bulk = next((r for r in runs if r.kind == "bulk"), None)
    # The run that held (with --cameras 4,4 the same N may run twice and hold only once).
    at = next(
        (
            r
            for r in runs
            if r.kind == "proxy"
            and r.n == best
            and fps_held(clip, r)
            and leak_target(clip, r.n, r.score, bulk)[0]
        ),
        None,
    )
    print(
        f"{clip.name}: largest N holding {clip.fps} fps on every camera (>= {FPS_HOLD * clip.fps:.1f} fps out of "
        f"each, and at the viewer) and the leak target at once: N={best if best is not None else 'none'}"
        + (
            f" (leak {_p(at.score.leak)} %, over-masking {at.score.overmask.text()})"
            if at is not None
            else ""
        )
    )


def _privacy_text(args: argparse.Namespace) -> str:
    priv: dict[str, Any] = getattr(args, "privacy", None) or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(priv.items())) or "defaults"


def outside_repo(path: Path, what: str) -> Path:
    p = path.expanduser().resolve()
    if p == REPO or REPO in p.parents:
        raise SystemExit(
            f"live_leak: {what} {p} is inside the repository; frames of the evaluation clips must stay outside"
        )
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--clip",
        choices=[*CLIPS, *SCALED_CLIPS, "all"],
        default="dev_street",
        help=f"a clip; all = {', '.join(CLIPS)} (dev_plaza_1080: dev_plaza scaled to 1920x1080 at set-up, "
        "into --cache-dir)",
    )
    p.add_argument("--cameras", default="1,2,4,6", help="comma-separated camera counts")
    p.add_argument(
        "--seconds",
        type=float,
        default=0.0,
        help="recording window per step (default: --loops loops of the clip + 3 s)",
    )
    p.add_argument("--loops", type=float, default=1.0, help="clip loops in the default window")
    p.add_argument(
        "--warmup",
        type=float,
        default=25.0,
        help="seconds after the viewer's first frame, before the window (default 25: the latency controller of "
        "4+ cameras takes ~20-25 s after start to settle, measured; an earlier window scores the start-up)",
    )
    p.add_argument("--bitrate", type=int, default=6000, help="camera (replay encode) bitrate, kbps")
    p.add_argument(
        "--encoder-kbps",
        type=int,
        default=None,
        help="the proxy's encoder bitrate (default: the product's); raise it (with --bitrate) so that "
        "re-encoding does not count as over-masking",
    )
    p.add_argument("--budget-ms", type=float, default=200.0)
    p.add_argument("--input-width", type=int, default=0, help="detector input width (0 = config default)")
    p.add_argument(
        "--min-face-px",
        type=float,
        default=None,
        help="privacy.min_face_px for every camera (default: the product's, 18): sets the privacy floor",
    )
    p.add_argument(
        "--no-gating",
        action="store_true",
        help="privacy.change_gating false for every camera (whole looks only)",
    )
    p.add_argument(
        "--gt-dir", type=Path, default=DEFAULT_GT_DIR, help="clips, ground truth and score_leak.py"
    )
    p.add_argument(
        "--cache-dir", type=Path, default=default_cache_dir(), help="stamped raw clips (outside the repo)"
    )
    p.add_argument("--no-bulk", action="store_true", help="skip the bulk-mode reference")
    p.add_argument(
        "--no-camera", action="store_true", help="skip the direct-camera calibration (and stamp check)"
    )
    p.add_argument("--scorer-timeout", type=float, default=900.0)
    p.add_argument("--bulk-timeout", type=float, default=1200.0)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--debug-dir",
        type=Path,
        help="keep the scorer's per-face-frame JSON and the first unstamped frames (PNG) here (outside the repo)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args.gt_dir = args.gt_dir.expanduser().resolve()
    if not (args.gt_dir / "score_leak.py").is_file():
        print(
            f"live_leak: no evaluation clips: {args.gt_dir}/score_leak.py not found (set --gt-dir)",
            file=sys.stderr,
        )
        return 2
    args.cache_dir = outside_repo(args.cache_dir, "--cache-dir")
    privacy: dict[str, Any] = {}  # bench/live.py's make_config writes it into the config's `privacy` section
    if args.min_face_px is not None:
        privacy["min_face_px"] = args.min_face_px
    if args.no_gating:
        privacy["change_gating"] = False
    args.privacy = privacy
    if args.debug_dir is not None:
        args.debug_dir = outside_repo(args.debug_dir, "--debug-dir")
    why = system_gst_available()
    if why:
        print(f"live_leak: cannot run the simulated cameras: {why}", file=sys.stderr)
        return 2
    if not OURS_BIN.exists() and not args.no_bulk:
        print(f"live_leak: {OURS_BIN} missing (or pass --no-bulk)", file=sys.stderr)
        return 2
    counts = [int(x) for x in args.cameras.split(",") if x.strip()]
    names = list(CLIPS) if args.clip == "all" else [args.clip]
    clips = [load_clip(args.gt_dir, nm, args.cache_dir) for nm in names]
    results: dict[str, Any] = {
        "machine": cpu_note(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "clips": {},
    }
    printed: list[tuple[Clip, StampInfo, list[Run]]] = []
    seconds_arg = args.seconds
    work = Path(tempfile.mkdtemp(prefix="live_leak-"))
    rc = 0
    try:
        for clip in clips:
            args.seconds = seconds_arg or args.loops * clip.frames / clip.fps + 3.0
            args.camera_frames = None
            stamp = choose_stamp(clip)
            print(
                f"{clip.name}: stamping {clip.frames} frames (block {stamp.block}) ...",
                file=sys.stderr,
                flush=True,
            )
            raw = stamped_raw(clip, stamp, args.cache_dir)
            stamp.raw = str(raw)
            print(f"{clip.name}: replay encode at {args.bitrate} kbps ...", file=sys.stderr, flush=True)
            stamp.replay = str(cached_replay(raw, clip.width, clip.height, clip.fps, args.bitrate))
            runs: list[Run] = []
            if not args.no_bulk:
                print(f"{clip.name}: bulk ...", file=sys.stderr, flush=True)
                runs.append(bulk_step(clip, work, args))
            if not args.no_camera:
                print(f"{clip.name}: camera directly ({args.seconds:.0f} s) ...", file=sys.stderr, flush=True)
                cam = camera_step(clip, stamp, work, args)
                runs.append(cam)
                v = cam.view
                if v is None or v.decoded == 0 or v.stamped < 0.9 * v.decoded:
                    got = f"{v.stamped} of {v.decoded}" if v else "none"
                    print(
                        f"live_leak: the stamp does not survive the camera ({got} decoded frames readable); "
                        "try a higher --bitrate",
                        file=sys.stderr,
                    )
                    printed.append((clip, stamp, runs))
                    rc = 1
                    break
            for n in counts:
                print(
                    f"{clip.name}: proxy N={n} ({args.warmup:.0f} s warm-up + {args.seconds:.0f} s) ...",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(proxy_step(clip, stamp, n, work, args))
            printed.append((clip, stamp, runs))
            results["clips"][clip.name] = {
                "stamp": asdict(stamp),
                "window_s": args.seconds,
                "runs": [asdict(r) for r in runs],
                "largest_n_ok": largest_n_ok(clip, runs),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for clip, stamp, runs in printed:
        print_clip(clip, stamp, runs, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return rc


if __name__ == "__main__":
    sys.exit(main())
