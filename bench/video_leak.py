#!/usr/bin/env python3
"""Bulk-mode video leak: `streamproxy anonymize` per quality preset vs deface 1.5.0, in the same run.

A script, not a test: it prints a table per clip (and `--json` writes the same as JSON). The clips
with exact face boxes in `<repo>/../shared/eval/videos_gt` (`--gt-dir`; read in place, never copied:
their sources' licences are research-only) are anonymized by each configuration into a temp dir and
scored by the shared `score_leak.py` (frame-exact: every face-frame with visible_fraction >= 0.5 is
compared between original and output; see that folder's README for the criteria).

Configurations:
* ours, one row per preset in `--quality` (default fast,balanced,best):
  `streamproxy anonymize CLIP --output DIR -q --quality Q` (when the CLI has no `--quality` yet, one
  row with the defaults, named `ours:default`), plus one row per `--ours NAME=ARGS` (extra options);
* deface: `deface CLIP -o OUT.mp4 [--deface-args]` from bench/.venv-deface (bench/setup_deface.sh),
  default thresh 0.2, mask-scale 1.3, blur; `--no-deface` skips it.

Printed per row: leak % overall and by face width (< 20, 20-40, 40-80, >= 80 px; leaked / scored
face-frames), frames with a leaked face, the longest leaked run of one face, the over-masking (the
shared `score_overmask.py`: share of the picture changed outside the faces' grown boxes, per frame:
median / p90 / max, and the share of frames over 10 %), wall seconds of the whole command (process
start and model load included) and fps = clip frames / wall.

A clip of `../shared/eval/videos` without face boxes (`--clips short_hamilton_clip`) gets the
over-masking only, against an empty box list: the share of the whole picture that changed, to set
beside what deface changes on it and beside what the faces need: the share of the picture inside the
ellipses (mask_scale 1.3, the default) of the faces YuNet finds on the original at 1280 px, score 0.6
(printed as `faces' ellipses need`). Speed on this
2-core shared machine is noisy: compare rows of one run, and re-run before quoting.

    .venv/bin/python bench/video_leak.py                                  # both clips, 3 presets + deface
    .venv/bin/python bench/video_leak.py --clips dev_night --quality balanced --no-deface
    .venv/bin/python bench/video_leak.py --quality balanced --ours "t025=--threshold 0.25"
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    DEFACE_BIN,
    OURS_BIN,
    REPO,
    Overmask,
    cpu_note,
    deface_available,
    ours_available,
    parse_overmask,
    run_timed,
)

log = logging.getLogger("bench.video_leak")

DEFAULT_GT_DIR = REPO.parent / "shared" / "eval" / "videos_gt"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
NO_GT_DIR = REPO.parent / "shared" / "eval" / "videos"
CLIPS = ("dev_street", "dev_night", "dev_plaza")
BUCKETS = ("<20", "20-40", "40-80", ">=80")


@dataclass
class Row:
    name: str
    cmd: list[str]
    wall_s: float | None = None
    fps: float | None = None
    leak: float | None = None
    face_frames: int = 0
    leaked: int = 0
    frames_with_leak: int = 0
    by_width: dict[str, list[int]] = field(default_factory=dict)  # bucket -> [leaked, scored]
    longest_run: int = 0
    longest_run_face: int | None = None
    overmask: Overmask = field(default_factory=Overmask)
    error: str = ""


def score_overmask(gt_dir: Path, original: Path, gt: Path, video: Path, timeout_s: float, row: Row) -> None:
    cmd = [str(VENV_PYTHON), str(gt_dir / "score_overmask.py"), str(original), str(video), str(gt)]
    r = run_timed(cmd, timeout_s)
    if not r.ok:
        row.error = f"overmask scorer rc {r.rc}: {r.output_tail.strip()[-300:]}"
        return
    row.overmask = parse_overmask(r.output_tail)


def score(gt_dir: Path, clip: str, video: Path, work: Path, timeout_s: float, row: Row) -> None:
    original, gt = gt_dir / f"{clip}.mp4", gt_dir / f"{clip}.gt.json"
    if not gt.is_file():  # a clip without face boxes: over-masking of the whole picture only
        empty = work / f"{clip}.nogt.json"
        empty.write_text(json.dumps({"boxes": []}))
        score_overmask(gt_dir, NO_GT_DIR / f"{clip}.mp4", empty, video, timeout_s, row)
        return
    score_overmask(gt_dir, original, gt, video, timeout_s, row)
    out_json = work / f"score-{row.name.replace(':', '_')}-{clip}.json"
    cmd = [
        str(VENV_PYTHON), str(gt_dir / "score_leak.py"), "--original", str(gt_dir / f"{clip}.mp4"),
        "--anonymized", str(video), "--gt", str(gt_dir / f"{clip}.gt.json"), "--json-out", str(out_json), "--quiet",
    ]  # fmt: skip
    r = run_timed(cmd, timeout_s)
    if not r.ok or not out_json.is_file():
        row.error = f"scorer rc {r.rc}: {r.output_tail.strip()[-300:]}"
        return
    s = json.loads(out_json.read_text())
    row.face_frames, row.leaked = int(s["face_frames"]), int(s["leaked_face_frames"])
    row.leak = float(s["leak_rate"]) if row.face_frames else None
    row.frames_with_leak = int(s["frames_with_leak"])
    for b in BUCKETS:
        v = s["leak_rate_by_width"].get(b, {})
        row.by_width[b] = [int(v.get("leaked", 0)), int(v.get("face_frames", 0))]
    for fid, p in s["per_face"].items():
        if int(p["longest_leak_run"]) > row.longest_run:
            row.longest_run, row.longest_run_face = int(p["longest_leak_run"]), int(fid)


def run_row(row: Row, out: Path, frames: int, args: argparse.Namespace, clip: str, work: Path) -> Row:
    r = run_timed(row.cmd, args.timeout)
    if not r.ok or not out.is_file():
        row.error = f"rc {r.rc}: {r.output_tail.strip()[-300:]}"
        return row
    row.wall_s = r.wall_s
    row.fps = frames / r.wall_s if r.wall_s > 0 else None
    try:
        score(args.gt_dir, clip, out, work, args.timeout, row)
    finally:
        out.unlink(missing_ok=True)
    return row


def pct(n: int, d: int) -> str:
    return f"{100 * n / d:6.2f}" if d else "     -"


def table(clip: str, meta: dict[str, Any], rows: list[Row]) -> str:
    lines = [
        f"clip {clip}: {meta['width']}x{meta['height']}@{meta['fps']}, {meta['frames']} frames",
        f"{'config':>18} | leak % |" + "|".join(f"{b:>7} " for b in BUCKETS)
        + "| frames leaked | max run (face) | scored | over-masking median / p90 / max, frames > 10 % |  wall s |   fps",
    ]  # fmt: skip
    for r in rows:
        if r.error:
            lines.append(f"{r.name:>18} | ERROR {r.error}")
            continue
        buckets = "|".join(f"{pct(*r.by_width.get(b, [0, 0])):>7} " for b in BUCKETS)
        run = f"{r.longest_run} (id {r.longest_run_face})" if r.longest_run else "0"
        leak = f"{100 * r.leak:6.2f}" if r.leak is not None else "     -"
        lines.append(
            f"{r.name:>18} | {leak} |{buckets}| {r.frames_with_leak:>13} | {run:>14} | {r.face_frames:>6} "
            f"| {r.overmask.text():>47} | {r.wall_s or 0:7.1f} | {r.fps or 0:5.1f}"
        )
    return "\n".join(lines)


def ellipse_need(mp4: Path) -> Overmask:
    """Per frame, the share of the picture inside the default mask ellipses of the faces found on
    the original (YuNet, 1280 px, score >= 0.6): what masking those faces alone changes at most."""
    import av
    import cv2
    import numpy as np

    from streamproxy.config import DetectorConfig, ObfuscationConfig
    from streamproxy.engine.detect import create_detector

    det = create_detector(DetectorConfig(input_width=1280, threshold=0.6))
    factor = ObfuscationConfig().box_factor
    shares: list[float] = []
    with av.open(str(mp4)) as c:
        for f in c.decode(video=0):
            m = np.zeros((f.height, f.width), np.uint8)
            for d in det.detect_frame(f):
                b = d.box.scaled(factor)
                axes = (max(1, round(b.width / 2)), max(1, round(b.height / 2)))
                cv2.ellipse(m, (round(b.cx), round(b.cy)), axes, 0, 0, 360, 1, -1)
            shares.append(float(m.mean()))
    return Overmask.of(shares)


def probe_meta(mp4: Path) -> dict[str, Any]:
    """Size, rate and frame count of a clip without ground truth (decoded: the count is exact)."""
    import av

    with av.open(str(mp4)) as c:
        st = c.streams.video[0]
        frames = sum(1 for _ in c.decode(st))
        return {"width": st.width, "height": st.height, "fps": float(st.average_rate or 0), "frames": frames}


def parse_named(spec: str) -> tuple[str, list[str]]:
    name, _, rest = spec.partition("=")
    if not name or not _:
        raise SystemExit(f"video_leak: --ours wants NAME=ARGS, got {spec!r}")
    return name, shlex.split(rest)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--gt-dir", type=Path, default=DEFAULT_GT_DIR, help="clips, ground truth and score_leak.py"
    )
    ap.add_argument("--clips", default=",".join(CLIPS), help="comma-separated clip names (default both)")
    ap.add_argument(
        "--quality", default="fast,balanced,best", help="presets to run, comma-separated ('' = none)"
    )
    ap.add_argument("--ours", action="append", default=[], metavar="NAME=ARGS", help="extra configuration")
    ap.add_argument("--no-deface", action="store_true")
    ap.add_argument("--deface-args", default="", help="extra deface options (default: its defaults)")
    ap.add_argument("--timeout", type=float, default=1200.0, help="per command, seconds")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    if not (args.gt_dir / "score_leak.py").is_file():
        print(f"video_leak: {args.gt_dir}/score_leak.py not found (set --gt-dir)", file=sys.stderr)
        return 2
    ok, help_text = ours_available()
    if not ok:
        print(f"video_leak: {help_text}", file=sys.stderr)
        return 2
    configs: list[tuple[str, list[str]]] = []
    presets = [q for q in args.quality.split(",") if q]
    if presets and "--quality" in help_text:
        configs += [(f"ours:{q}", ["--quality", q]) for q in presets]
    elif presets:
        configs.append(("ours:default", []))  # this CLI has no presets yet
    configs += [(f"ours:{n}", a) for n, a in map(parse_named, args.ours)]
    run_deface = not args.no_deface
    if run_deface:
        dok, msg = deface_available()
        if not dok:
            print(f"video_leak: deface not run ({msg})", file=sys.stderr)
            run_deface = False

    print(f"# bulk-mode video leak, scored by {args.gt_dir / 'score_leak.py'}; {cpu_note()}")
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="video_leak-") as tmp:
        work = Path(tmp)
        for clip in [c for c in args.clips.split(",") if c]:
            mp4, gt_path = args.gt_dir / f"{clip}.mp4", args.gt_dir / f"{clip}.gt.json"
            if not gt_path.is_file() and (NO_GT_DIR / f"{clip}.mp4").is_file():
                mp4 = NO_GT_DIR / f"{clip}.mp4"
                meta = probe_meta(mp4)
            elif not mp4.is_file() or not gt_path.is_file():
                print(f"video_leak: {clip}: {mp4} or {gt_path} missing", file=sys.stderr)
                return 2
            else:
                gt = json.loads(gt_path.read_text())
                meta = {k: gt[k] for k in ("width", "height", "fps", "frames")}
            rows: list[Row] = []
            for name, extra in configs:
                out_dir = work / f"out-{len(rows)}"
                cmd = [str(OURS_BIN), "anonymize", str(mp4), "--output", str(out_dir), "-q", *extra]
                print(f"# {clip}: {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
                rows.append(run_row(Row(name, cmd), out_dir / mp4.name, meta["frames"], args, clip, work))
                shutil.rmtree(out_dir, ignore_errors=True)
            if run_deface:
                out = work / f"deface-{clip}.mp4"
                cmd = [str(DEFACE_BIN), str(mp4), "-o", str(out), *shlex.split(args.deface_args)]
                print(f"# {clip}: deface: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
                rows.append(run_row(Row("deface:default", cmd), out, meta["frames"], args, clip, work))
            print(table(clip, meta, rows), flush=True)
            if not gt_path.is_file():
                need = ellipse_need(mp4)
                print(f"{clip}: faces' ellipses need {need.text()}", flush=True)
            result[clip] = {"meta": meta, "rows": [asdict(r) for r in rows]}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 1 if any(r["error"] for c in result.values() for r in c["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
