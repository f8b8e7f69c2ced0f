#!/usr/bin/env python3
"""Bulk-mode speed: `streamproxy anonymize` vs `deface` on the same 720p clip, in the same run.

The 720p input is made once per run in a temp dir: the first N frames (default 250 = 10 s at 25 fps) of
../shared/eval/videos/MOT17-13-SDP-raw.h265 (960x540 street scene, small faces) scaled to 1280x720 and
encoded with libx264 (veryfast, crf 18) into an mp4. Without the evaluation data a synthetic 720p clip
(moving noise, no faces) is used instead, and the run says so.

Measured per configuration: wall-clock seconds of the whole command (process start, model load, decode,
detection, obfuscation, encode, mux), frames/s = input frames / wall s, x realtime = fps / 25, and the
speed relative to deface's default run. Every output's decoded frame count is checked with
`ffprobe -count_frames` against the input's.

Baselines (in-process PyAV, no process start, no detection): decode + libx264 ultrafast encode (the
ceiling the FACTS table measures), and decode + libx264 superfast crf 21 (the encoder settings our bulk
mode uses), so the detection+obfuscation share of our time is visible.

Encoders differ by tool default: ours libx264 superfast crf 21; deface (imageio-ffmpeg) libx264 preset
medium crf 25 (quality 5).

Run:  .venv/bin/python bench/bulk_speed.py            (bench/setup_deface.sh first)
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    DEFACE_BIN,
    DEFAULT_EVAL_DIR,
    OURS_BIN,
    cpu_note,
    deface_available,
    ffprobe_frame_count,
    ours_available,
    run_timed,
)

log = logging.getLogger(__name__)

FPS = 25
WIDTH, HEIGHT = 1280, 720
SOURCE = "videos/MOT17-13-SDP-raw.h265"


@dataclass
class Row:
    name: str
    wall_s: float | None
    frames_out: int | None
    note: str = ""


def make_input(eval_dir: Path, dst: Path, frames: int) -> str:
    """Write the 720p H.264 test clip; returns a description of where it came from."""
    src = eval_dir / SOURCE
    with av.open(str(dst), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "18", "g": str(2 * FPS)}
        n = 0

        def put(frame: av.VideoFrame) -> None:
            frame.pts, frame.time_base = n, Fraction(1, FPS)
            for pkt in vs.encode(frame):
                out.mux(pkt)

        if src.exists():
            # Looped when more frames are asked than the clip has (bench/files_speed.py's 10 minutes).
            passes = 0
            while n < frames:
                with av.open(str(src), format="hevc") as inp:
                    vin = inp.streams.video[0]
                    vin.thread_type = "AUTO"
                    for f in inp.decode(vin):
                        if n >= frames:
                            break
                        put(f.reformat(width=WIDTH, height=HEIGHT, format="yuv420p", threads=1))
                        n += 1
                passes += 1
            what = f"{SOURCE} first {n} frames scaled to {WIDTH}x{HEIGHT}" + (
                f" ({passes} loops)" if passes > 1 else ""
            )
        else:
            rng = np.random.default_rng(0)
            base = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            for i in range(frames):
                img = np.roll(base, 8 * i, axis=1)
                put(av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p", threads=1))
                n += 1
            what = f"SYNTHETIC {n} frames {WIDTH}x{HEIGHT} (no eval data at {src}; no faces)"
        for pkt in vs.encode(None):
            out.mux(pkt)
    return what


def bare_transcode(src: Path, dst: Path, options: dict[str, object]) -> float:
    """Decode + libx264 encode with PyAV, no detection: the ceiling for any anonymizer's bulk speed."""
    t0 = time.perf_counter()
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        vs.options = options
        vs.thread_type = "AUTO"
        for f in inp.decode(vin):
            f.pict_type = av.video.frame.PictureType.NONE
            for pkt in vs.encode(f):
                out.mux(pkt)
        for pkt in vs.encode(None):
            out.mux(pkt)
    return time.perf_counter() - t0


def parse_cfg(spec: str) -> tuple[str, list[str]]:
    name, _, args = spec.partition("=")
    return name, args.split()


# The presets (balanced is the default); fast is in the recall table, run it here with --ours "fast=--quality fast".
DEFAULT_OURS = ["balanced=--quality balanced", "best=--quality best"]
DEFAULT_DEFACE = ["default", "scale640=--scale 640x360"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR)
    ap.add_argument(
        "--frames", type=int, default=250, help="input length in frames (25 fps); default %(default)s"
    )
    ap.add_argument(
        "--ours",
        action="append",
        default=None,
        metavar="NAME=ARGS",
        help=f"our configuration (repeatable); default {DEFAULT_OURS}",
    )
    ap.add_argument(
        "--deface",
        action="append",
        default=None,
        metavar="NAME=ARGS",
        help=f"deface configuration (repeatable); default {DEFAULT_DEFACE}",
    )
    ap.add_argument("--no-ours", action="store_true")
    ap.add_argument("--no-deface", action="store_true")
    ap.add_argument("--timeout", type=float, default=300, help="per configuration, seconds")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(message)s")

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="sp-bulk-") as tmp:
        work = Path(tmp)
        src = work / "in720.mp4"
        what = make_input(a.eval_dir, src, a.frames)
        n_in = ffprobe_frame_count(src)
        print(f"# bulk speed: input {what}; {n_in} frames by ffprobe; {cpu_note()}", flush=True)

        baselines: list[tuple[str, dict[str, object]]] = [
            ("bare: PyAV decode+x264 ultrafast", {"preset": "ultrafast", "tune": "zerolatency"}),
            ("bare: PyAV decode+x264 superfast crf21", {"preset": "superfast", "crf": "21"}),
        ]
        for name, opts in baselines:
            dst = work / f"bare{len(rows)}.mp4"
            rows.append(Row(name, bare_transcode(src, dst, opts), ffprobe_frame_count(dst), "in-process"))

        if not a.no_ours:
            ok, help_text = ours_available()
            if not ok:
                print(f"ours: not run ({help_text})")
            else:
                for spec in a.ours or DEFAULT_OURS:
                    name, args = parse_cfg(spec)
                    missing = [t for t in args if t.startswith("--") and t not in help_text]
                    if missing:
                        print(f"ours: {name} skipped: `streamproxy anonymize` has no {', '.join(missing)}")
                        continue
                    out_dir = work / f"ours-{name}"
                    print(f"# running ours:{name} {' '.join(args)}", flush=True)
                    res = run_timed(
                        [str(OURS_BIN), "anonymize", str(src), "--output", str(out_dir), "-q", *args],
                        a.timeout,
                    )
                    out = out_dir / src.name
                    note = "" if res.ok else f"rc {res.rc}: {res.output_tail[-300:]}"
                    rows.append(
                        Row(
                            f"ours:{name}",
                            res.wall_s if res.ok else None,
                            ffprobe_frame_count(out) if out.exists() else None,
                            note,
                        )
                    )
                    if res.ok:
                        # the CLI's own summary line (faces, fail-closed frames) is worth keeping next to the time
                        rows[-1].note = (
                            res.output_tail.strip().splitlines()[-1][:120] if res.output_tail.strip() else ""
                        )

        if not a.no_deface:
            ok, msg = deface_available()
            if not ok:
                print(f"deface: not run ({msg})")
            else:
                for spec in a.deface or DEFAULT_DEFACE:
                    name, args = parse_cfg(spec)
                    out = work / f"deface-{name}.mp4"
                    print(f"# running deface:{name} {' '.join(args)}", flush=True)
                    res = run_timed([str(DEFACE_BIN), str(src), "-o", str(out), *args], a.timeout)
                    note = "" if res.ok else f"rc {res.rc}: {res.output_tail[-300:]}"
                    rows.append(
                        Row(
                            f"deface:{name}",
                            res.wall_s if res.ok else None,
                            ffprobe_frame_count(out) if out.exists() else None,
                            note,
                        )
                    )

    ref = next((r.wall_s for r in rows if r.name == "deface:default" and r.wall_s), None)
    print()
    head = ["config", "wall s", "frames/s", "x realtime", "vs deface", "frames out/in", "note"]
    table = []
    for r in rows:
        fps = n_in / r.wall_s if (r.wall_s and n_in) else None
        table.append(
            [
                r.name,
                f"{r.wall_s:.1f}" if r.wall_s else "FAILED",
                f"{fps:.1f}" if fps else "-",
                f"{fps / FPS:.2f}" if fps else "-",
                f"{ref / r.wall_s:.2f}x" if (ref and r.wall_s) else "-",
                f"{r.frames_out}/{n_in}" + ("" if r.frames_out == n_in else " MISMATCH"),
                r.note,
            ]
        )
    widths = [max(len(x[i]) for x in [head, *table]) for i in range(len(head))]
    print(" | ".join(h.ljust(widths[i]) for i, h in enumerate(head)))
    print("-+-".join("-" * w for w in widths))
    for row in table:
        print(" | ".join(c.ljust(widths[i]) for i, c in enumerate(row)))
    return 0 if all(r.wall_s and r.frames_out == n_in for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
