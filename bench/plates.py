#!/usr/bin/env python3
"""Licence plates: are the plates readable by OCR read no more after `--objects faces,plates`?

On ../shared/eval/videos/MOT17-13-SDP-raw.h265 (960x540, raw HEVC, a street filmed from a bus):
1. the full RapidOCR pipeline (detector + recogniser, `rapidocr-onnxruntime==1.4.4`, a bench-only tool
   in its own venv, never a product dependency) reads every `--step`-th input frame magnified 2x;
   regions whose string looks like a plate (letters and digits, >= 4 characters) are kept;
2. each kept region is read again on its own (a crop around it, magnified to 96 px high: the strongest
   read this OCR has) in the input and in the anonymized output of the same frame;
3. `streamproxy anonymize` runs on the whole clip without and with plates (the CLI's own engine
   config, in process, timed): whole-run frames/s, and the text detector's ms per run.
A plate counts as readable when the crop read gives a plate-like string (or the string read before).

Setup (once):  python -m venv /tmp/ocrvenv && /tmp/ocrvenv/bin/pip install rapidocr-onnxruntime==1.4.4 av
Run:           .venv/bin/python bench/plates.py [--step 5] [--text-width 0] [--ocr-python /tmp/ocrvenv/bin/python]
The clip is read in place; nothing of it is copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT.parent / "shared" / "eval" / "videos" / "MOT17-13-SDP-raw.h265"
PLATE = re.compile(r"^(?=.*[A-Z])(?=.*\d)[A-Z0-9]{4,}$")
CROP_H = 96


def plate_like(text: str) -> str | None:
    t = re.sub(r"[^A-Z0-9]", "", text.upper())
    return t if PLATE.match(t) else None


# --- OCR worker: runs in the OCR venv (rapidocr, av, cv2; no streamproxy) ---------------------------


def _ocr_worker(spec_path: str) -> None:
    import av
    import cv2
    import numpy as np
    from rapidocr_onnxruntime import RapidOCR

    spec = json.loads(Path(spec_path).read_text())
    ocr = RapidOCR()
    want = set(spec["frames"])
    regions: dict[str, list[list[float]]] = spec.get("regions", {})
    out: dict[str, Any] = {}
    fmt = "hevc" if spec["video"].endswith((".h265", ".hevc")) else None
    with av.open(spec["video"], format=fmt) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i > max(want):
                break
            if i not in want:
                continue
            img = f.to_ndarray(format="bgr24", threads=1)
            rec: dict[str, Any] = {}
            if spec["mode"] == "scan":
                big = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
                res, _ = ocr(big)
                rec["hits"] = [
                    {"text": t, "score": float(s), "box": [float(np.min(np.array(b)[:, 0])) / 2,
                     float(np.min(np.array(b)[:, 1])) / 2, float(np.max(np.array(b)[:, 0])) / 2,
                     float(np.max(np.array(b)[:, 1])) / 2]}
                    for b, t, s in (res or [])
                ]  # fmt: skip
            reads = []
            for x1, y1, x2, y2 in regions.get(str(i), []):
                h = max(1.0, y2 - y1)
                cx1, cy1 = max(0, int(x1 - h)), max(0, int(y1 - h))
                cx2, cy2 = min(img.shape[1], int(x2 + h)), min(img.shape[0], int(y2 + h))
                crop = img[cy1:cy2, cx1:cx2]
                k = CROP_H / h
                crop = cv2.resize(crop, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
                res, _ = ocr(crop)
                reads.append([t for _b, t, _s in (res or [])])
            rec["reads"] = reads
            out[str(i)] = rec
    print(json.dumps(out))


def ocr(python: str, video: Path, mode: str, frames: list[int], regions: dict[str, list[list[float]]]) -> Any:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"video": str(video), "mode": mode, "frames": frames, "regions": regions}, f)
    proc = subprocess.run(
        [python, __file__, "--ocr-worker", f.name], capture_output=True, text=True, timeout=3600
    )
    Path(f.name).unlink()
    if proc.returncode != 0:
        raise SystemExit(f"OCR worker failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the bench ---------------------------------------------------------------------------------------


def anonymize(
    clip: Path, out: Path, objects: str, text_width: int, text_every: int | None
) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from streamproxy.anonymize import collect_jobs, iter_results
    from streamproxy.cli import _engine_from_args, build_parser

    argv = ["anonymize", str(clip), "-o", str(out), "-q", "--objects", objects]
    if text_every is not None:
        argv += ["--text-every", str(text_every)]
    cfg = _engine_from_args(build_parser().parse_args(argv))
    if "plates" in objects:
        cfg = cfg.model_copy(update={"text": cfg.text.model_copy(update={"input_width": text_width})})
    jobs, errors = collect_jobs([clip], out)
    assert not errors, errors
    t0 = time.perf_counter()
    (res,) = iter_results(jobs, cfg)
    wall = time.perf_counter() - t0
    if not res.ok:
        raise SystemExit(f"anonymize failed: {res.error}")
    print(f"  streamproxy {' '.join(argv[:1] + argv[4:])}: {res.frames} frames in {wall:.1f} s = "
          f"{res.frames / wall:.2f} fps, {res.text_regions} text masks, {res.fail_closed_frames} failed closed")  # fmt: skip
    return {"fps": res.frames / wall, "seconds": wall, "frames": float(res.frames)}


def masked_fractions(
    faces_clip: Path, plates_clip: Path, frames: list[int], regions: dict[str, list[list[float]]]
) -> dict[str, list[float]]:
    """Share of each region's pixels the text mask changed (plates output vs the faces-only output)."""
    import av
    import numpy as np

    def read(path: Path) -> dict[int, np.ndarray]:
        out = {}
        with av.open(str(path), format="hevc") as c:
            for i, f in enumerate(c.decode(video=0)):
                if i > max(frames):
                    break
                if i in frames:
                    out[i] = f.to_ndarray(format="bgr24", threads=1).astype(np.int16)
        return out

    a, b = read(faces_clip), read(plates_clip)
    res: dict[str, list[float]] = {}
    for i in frames:
        for x1, y1, x2, y2 in regions[str(i)]:
            d = np.abs(
                a[i][int(y1) : int(y2) + 1, int(x1) : int(x2) + 1]
                - b[i][int(y1) : int(y2) + 1, int(x1) : int(x2) + 1]
            )
            res.setdefault(str(i), []).append(float((d.max(axis=2) > 8).mean()))
    return res


def text_ms(clip: Path, frames: list[int], text_width: int) -> tuple[float, str]:
    import av

    sys.path.insert(0, str(ROOT))
    from streamproxy.config import EngineConfig
    from streamproxy.engine.text import create_text_detector

    det = create_text_detector(EngineConfig.model_validate({"objects": ["faces", "plates"],
                                                            "text": {"input_width": text_width}}))  # fmt: skip
    times: list[float] = []
    size = ""
    with av.open(str(clip), format="hevc") as c:
        for i, f in enumerate(c.decode(video=0)):
            if i > max(frames):
                break
            if i in frames:
                det.detect_frame(f)
                times.append(det.last_ms)
                size = "x".join(map(str, det.work_size(f.width, f.height)))
    times.sort()
    return times[len(times) // 2], size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ocr-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--clip", type=Path, default=CLIP)
    ap.add_argument("--step", type=int, default=5, help="OCR every k-th input frame")
    ap.add_argument("--text-width", type=int, default=0, help="engine.text.input_width (0: auto)")
    ap.add_argument("--text-every", type=int, default=None, help="--text-every for the plates run")
    ap.add_argument("--ocr-python", default="/tmp/ocrvenv/bin/python")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "plates-scan.json",
                    help="the input scan's OCR results, reused while --clip and --step are the same")  # fmt: skip
    args = ap.parse_args()
    if args.ocr_worker:
        _ocr_worker(args.ocr_worker)
        return 0
    if not args.clip.exists():
        print(
            f"plates: {args.clip} not found (the shared evaluation data); nothing to measure", file=sys.stderr
        )
        return 1
    if not Path(args.ocr_python).exists():
        print(
            f"plates: no OCR venv at {args.ocr_python}; see the setup line in this file's docstring",
            file=sys.stderr,
        )
        return 1
    import av

    with av.open(str(args.clip), format="hevc") as c:
        n = sum(1 for _ in c.decode(video=0))
    frames = list(range(0, n, args.step))
    key = f"{args.clip}:{args.step}"
    cached = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    if cached.get("key") != key:
        t0 = time.perf_counter()
        scan = ocr(args.ocr_python, args.clip, "scan", frames, {})
        cached = {"key": key, "scan": scan}
        args.cache.write_text(json.dumps(cached))
        print(f"OCR scan of {len(frames)} input frames (2x): {time.perf_counter() - t0:.0f} s")
    scan = cached["scan"]
    regions: dict[str, list[list[float]]] = {}
    strings: dict[str, list[str]] = {}
    for i, rec in scan.items():
        for hit in rec["hits"]:
            t = plate_like(hit["text"])
            if t:
                regions.setdefault(i, []).append(hit["box"])
                strings.setdefault(i, []).append(t)
    checked = sorted(map(int, regions))
    print(f"{n} frames; OCR every {args.step}th (2x); plate-like strings in {len(checked)} frames: "
          + ", ".join(f"{i}:{'/'.join(strings[str(i)])}" for i in checked))  # fmt: skip
    if not checked:
        return 1

    with tempfile.TemporaryDirectory(prefix="plates-") as tmp:
        print("bulk runs (whole clip):")
        faces = anonymize(args.clip, Path(tmp) / "faces", "faces", 0, None)
        plates = anonymize(args.clip, Path(tmp) / "plates", "faces,plates", args.text_width, args.text_every)
        out_clip = Path(tmp) / "plates" / args.clip.name
        faces_clip = Path(tmp) / "faces" / args.clip.name
        before = ocr(args.ocr_python, args.clip, "crop", checked, regions)
        # The control: the faces-only output has been through the same decode and encode.
        control = ocr(args.ocr_python, faces_clip, "scan", checked, regions)
        after = ocr(args.ocr_python, out_clip, "scan", checked, regions)
        masked = masked_fractions(faces_clip, out_clip, checked, regions)
    ms, size = text_ms(args.clip, checked, args.text_width)

    def readable(reads: list[str], hits: list[dict[str, Any]], box: list[float], s: str) -> bool:
        """A plate-like string (or the one read before) in the crop read or in the 2x scan over the box."""
        over = [h["text"] for h in hits if h["box"][0] < box[2] and h["box"][2] > box[0]
                and h["box"][1] < box[3] and h["box"][3] > box[1]]  # fmt: skip
        texts = [re.sub(r"[^A-Z0-9]", "", t.upper()) for t in reads + over]
        return any(plate_like(t) or s in t for t in texts)

    tally = {"input": 0, "faces": 0, "plates": 0, "masked": 0}
    total = 0
    for i in checked:
        for j, s in enumerate(strings[str(i)]):
            total += 1
            box = regions[str(i)][j]
            tally["input"] += 1  # found by the 2x scan of the input: readable by definition
            rc = readable(control[str(i)]["reads"][j], control[str(i)]["hits"], box, s)
            ra = readable(after[str(i)]["reads"][j], after[str(i)]["hits"], box, s)
            tally["faces"] += rc
            tally["plates"] += ra
            tally["masked"] += masked[str(i)][j] > 0.5
            print(f"  frame {i}: {s!r} box {[round(v) for v in box]}: crop read input {before[str(i)]['reads'][j]}, "
                  f"faces-only output {control[str(i)]['reads'][j]} ({'readable' if rc else 'not read'}), "
                  f"faces,plates output {after[str(i)]['reads'][j]} ({'readable' if ra else 'not read'}); "
                  f"{masked[str(i)][j]:.0%} of the box changed by the text mask")  # fmt: skip
    print(f"plate strings found by the 2x scan of the input: {total}; still readable (2x scan or crop read): "
          f"faces-only output {tally['faces']}, --objects faces,plates output {tally['plates']}; "
          f"regions covered by a text mask: {tally['masked']}/{total}")  # fmt: skip
    print(f"text detector: {ms:.0f} ms per run at {size} (median over the {len(checked)} frames checked); "
          f"bulk fps: faces {faces['fps']:.2f}, faces,plates {plates['fps']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
