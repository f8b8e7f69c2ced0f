#!/usr/bin/env python3
"""Anonymization recall of streamproxy vs deface, judged from output pixels only.

Both tools get the same lossless PNG copies of the evaluation images; each output is diffed against its input,
and a ground-truth face counts as anonymized when enough of its box was changed. The same rule is applied to
both tools, so neither tool's detector boxes are trusted: only what actually happened to the pixels counts.

Mask rule (identical for every tool):
  1. changed = max over RGB channels of |output - input| > TOL (TOL = 2; the PNG round trip is exact, the
     small tolerance only absorbs a colour-conversion rounding by a tool).
  2. close = morphological closing of ``changed`` with a 5x5 ellipse: fills the thin unchanged seams a blur
     leaves where the image is already flat.
  3. holes = connected regions of not-``close`` (8-connectivity) that do not touch the image border and are at
     most HOLE_MAX (32x32 = 1024) pixels: flat patches inside a blurred face (a blur of a flat patch is the
     same patch) are filled; large untouched regions enclosed by several masks are not.
  mask = close | holes.

A face is anonymized when >= 80 % of its ground-truth box (clipped to the image) lies inside the mask.
False-positive area = masked pixels outside every ground-truth box (WIDER: also the invalid-flagged ones)
grown like deface grows its boxes with --mask-scale 1.3 (each side moved out by 0.3 x the box size, i.e.
1.6x wider and taller), summed over images / summed image area. dogs.jpg has no human face: all its masked
area is false positive. bald_guys.jpg and Tom_Cruise_avp_2014_4.jpg have faces without boxes: they are run
but left out of every number.

Run:  .venv/bin/python bench/recall.py            (bench/setup_deface.sh first)
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    DEFACE_BIN,
    DEFAULT_EVAL_DIR,
    OURS_BIN,
    cpu_note,
    deface_available,
    ours_available,
    run_timed,
)

log = logging.getLogger(__name__)

TOL = 2
CLOSE_KERNEL = 5
HOLE_MAX = 32 * 32
COVER_MIN = 0.80
FP_GROW = 1.3  # deface's --mask-scale convention: each side moves out by (FP_GROW - 1) x box size
BUCKETS: list[tuple[str, float, float]] = [
    ("<10", 0, 10),
    ("10-20", 10, 20),
    ("20-40", 20, 40),
    (">=40", 40, float("inf")),
]
UNANNOTATED_WITH_FACES = {"bald_guys", "Tom_Cruise_avp_2014_4"}
NEGATIVE_IMAGES = {"dogs"}


@dataclass
class Face:
    x: int
    y: int
    w: int
    h: int
    valid: bool = True


@dataclass
class EvalImage:
    dataset: str  # "wider" | "dlib"
    stem: str  # unique file stem used in the temp input dir
    src: Path
    faces: list[Face] = field(default_factory=list)


@dataclass
class Config:
    name: str
    tool: str  # "ours" | "deface"
    args: list[str]


@dataclass
class ConfigResult:
    config: Config
    wall_s: float = 0.0
    error: str = ""
    missing: list[str] = field(default_factory=list)
    # per dataset: list of (face width, anonymized)
    faces: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    fp_px: dict[str, int] = field(default_factory=dict)
    area_px: dict[str, int] = field(default_factory=dict)
    negative_frac: dict[str, float] = field(default_factory=dict)
    images: int = 0  # images the tool was run on (all of them, the unscored ones too)


# ---------------------------------------------------------------------------------------------- ground truth


def load_wider(eval_dir: Path) -> list[EvalImage]:
    root = eval_dir / "widerface"
    img_root = root / "full_res" / "images"
    present = {p.relative_to(img_root).as_posix(): p for p in sorted(img_root.glob("*/*.jpg"))}
    lines = (root / "ground_truth" / "wider_face_val_bbx_gt.txt").read_text().split("\n")
    out: list[EvalImage] = []
    i = 0
    while i < len(lines):
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        n = int(lines[i + 1])
        # WIDER writes one dummy all-zero line for images with 0 faces
        rows = lines[i + 2 : i + 2 + max(n, 1)]
        i += 2 + max(n, 1)
        if name not in present:
            continue
        faces = []
        for row in rows[:n]:
            v = [int(t) for t in row.split()[:10]]
            faces.append(Face(v[0], v[1], v[2], v[3], valid=v[7] != 1))
        out.append(EvalImage("wider", Path(name).stem, present[name], faces))
    return out


def load_dlib(eval_dir: Path) -> list[EvalImage]:
    root = eval_dir / "dlib_faces"
    boxes: dict[str, list[Face]] = {}
    for xml_name in ("testing.xml", "training.xml"):
        tree = ET.parse(root / xml_name)
        for img in tree.getroot().iter("image"):
            file = img.get("file", "")
            for b in img.iter("box"):
                if b.get("ignore") == "1":
                    continue
                boxes.setdefault(file, []).append(
                    Face(
                        int(b.get("left", 0)),
                        int(b.get("top", 0)),
                        int(b.get("width", 0)),
                        int(b.get("height", 0)),
                    )
                )
    out = []
    for p in sorted(root.glob("*.jpg")):
        out.append(EvalImage("dlib", p.stem, p, boxes.get(p.name, [])))
    return out


# ---------------------------------------------------------------------------------------------- masks


def changed_mask(inp: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The pixel-change mask, exactly as described in the module docstring (same for every tool)."""
    diff = np.abs(inp.astype(np.int16) - out.astype(np.int16)).max(axis=2)
    changed = (diff > TOL).astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (CLOSE_KERNEL, CLOSE_KERNEL))
    closed = cv2.morphologyEx(changed, cv2.MORPH_CLOSE, k)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((closed == 0).astype(np.uint8), connectivity=8)
    h, w = closed.shape
    mask = closed.astype(bool)
    for lab in range(1, n):
        x, y, bw, bh, area = stats[lab]
        touches_border = x == 0 or y == 0 or x + bw == w or y + bh == h
        if not touches_border and area <= HOLE_MAX:
            mask |= labels == lab
    return mask


def box_coverage(mask: np.ndarray, f: Face) -> float:
    h, w = mask.shape
    x0, y0 = max(f.x, 0), max(f.y, 0)
    x1, y1 = min(f.x + max(f.w, 1), w), min(f.y + max(f.h, 1), h)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    return float(mask[y0:y1, x0:x1].mean())


def grown_exclusion(shape: tuple[int, int], faces: list[Face]) -> np.ndarray:
    h, w = shape
    ex = np.zeros((h, w), dtype=bool)
    s = FP_GROW - 1.0
    for f in faces:
        x0 = int(np.floor(f.x - s * f.w))
        y0 = int(np.floor(f.y - s * f.h))
        x1 = int(np.ceil(f.x + f.w + s * f.w))
        y1 = int(np.ceil(f.y + f.h + s * f.h))
        ex[max(y0, 0) : max(min(y1, h), 0), max(x0, 0) : max(min(x1, w), 0)] = True
    return ex


# ---------------------------------------------------------------------------------------------- running tools


def find_output(out_dir: Path, stem: str, tool: str) -> Path | None:
    if tool == "deface":
        # deface's own naming; its run dir also holds the input copies, so never fall back to <stem>.png
        cand = out_dir / f"{stem}_anonymized.png"
        return cand if cand.exists() else None
    # our CLI mirrors the input folder under --output (out/<input dir name>/<file>): search recursively
    hits = sorted(
        p for p in out_dir.rglob(f"{stem}.*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")
    )
    # prefer a lossless output when a tool writes several
    hits.sort(key=lambda p: p.suffix.lower() != ".png")
    return hits[0] if hits else None


def run_config(cfg: Config, input_dir: Path, work: Path, timeout_s: float) -> tuple[Path, float, str]:
    """Run one configuration over all PNGs in ``input_dir``; returns (dir with outputs, wall s, error text)."""
    if cfg.tool == "deface":
        # deface with a directory input and -o writes every file to the same -o path; without -o it writes
        # <name>_anonymized.png next to each input, all in one process (one model load), so run it on a copy.
        run_dir = work / cfg.name
        shutil.copytree(input_dir, run_dir)
        res = run_timed([str(DEFACE_BIN), str(run_dir), *cfg.args], timeout_s)
        out_dir = run_dir
    else:
        out_dir = work / cfg.name
        out_dir.mkdir(parents=True)
        res = run_timed(
            [str(OURS_BIN), "anonymize", str(input_dir), "--output", str(out_dir), *cfg.args], timeout_s
        )
    err = "" if res.ok else f"rc {res.rc}: {res.output_tail[-600:]}"
    return out_dir, res.wall_s, err


def read_bgr(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(path)
    return np.asarray(img)


def score(
    cfg: Config, images: list[EvalImage], input_dir: Path, out_dir: Path, save_dir: Path | None
) -> ConfigResult:
    r = ConfigResult(cfg, images=len(images))
    for im in images:
        inp = read_bgr(input_dir / f"{im.stem}.png")
        outp = find_output(out_dir, im.stem, cfg.tool)
        if outp is None:
            r.missing.append(im.stem)
            mask = np.zeros(inp.shape[:2], dtype=bool)
        else:
            out = cv2.imread(str(outp), cv2.IMREAD_COLOR)
            if out is None or out.shape != inp.shape:
                r.missing.append(f"{im.stem} (shape {None if out is None else out.shape})")
                mask = np.zeros(inp.shape[:2], dtype=bool)
            else:
                mask = changed_mask(inp, out)
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            vis = inp.copy()
            vis[mask] = (vis[mask] * 0.4 + np.array([0, 0, 255]) * 0.6).astype(np.uint8)
            for f in im.faces:
                ok = box_coverage(mask, f) >= COVER_MIN
                color = (0, 255, 0) if ok else (255, 0, 255)
                if not f.valid:
                    color = (128, 128, 128)
                cv2.rectangle(vis, (f.x, f.y), (f.x + f.w, f.y + f.h), color, 1)
            safe = cfg.name.replace(":", "_")
            cv2.imwrite(str(save_dir / f"{safe}__{im.stem}.png"), vis)
        if im.stem in UNANNOTATED_WITH_FACES:
            continue
        if im.stem in NEGATIVE_IMAGES:
            r.negative_frac[im.stem] = float(mask.mean())
            continue
        lst = r.faces.setdefault(im.dataset, [])
        for f in im.faces:
            if f.valid:
                lst.append((float(f.w), box_coverage(mask, f) >= COVER_MIN))
        ex = grown_exclusion((inp.shape[0], inp.shape[1]), im.faces)
        r.fp_px[im.dataset] = r.fp_px.get(im.dataset, 0) + int((mask & ~ex).sum())
        r.area_px[im.dataset] = r.area_px.get(im.dataset, 0) + mask.size
    return r


# ---------------------------------------------------------------------------------------------- report


def recall_str(faces: list[tuple[float, bool]], lo: float = 0, hi: float = float("inf")) -> str:
    sel = [ok for w, ok in faces if lo <= w < hi]
    if not sel:
        return "-"
    return f"{sum(sel) / len(sel):.3f} ({sum(sel)}/{len(sel)})"


def print_table(results: list[ConfigResult]) -> None:
    head = (
        ["config", "WIDER recall"]
        + [f"W {b[0]}" for b in BUCKETS]
        + [
            "dlib recall",
            "FP% WIDER",
            "FP% dlib",
            "dogs %",
            "wall s",
            "s/image",
            "no output",
        ]
    )
    n_images = max(1, max((r.images for r in results), default=1))
    rows = []
    for r in results:
        if r.error:
            rows.append([r.config.name, f"FAILED: {r.error.splitlines()[-1] if r.error else ''}"[:60]])
            continue
        wf = r.faces.get("wider", [])
        df = r.faces.get("dlib", [])
        row = [r.config.name, recall_str(wf)]
        row += [recall_str(wf, lo, hi) for _, lo, hi in BUCKETS]
        row.append(recall_str(df))
        for ds in ("wider", "dlib"):
            a = r.area_px.get(ds, 0)
            row.append(f"{100 * r.fp_px.get(ds, 0) / a:.2f}" if a else "-")
        row.append(f"{100 * r.negative_frac['dogs']:.2f}" if "dogs" in r.negative_frac else "-")
        row.append(f"{r.wall_s:.1f}")
        row.append(f"{r.wall_s / n_images:.2f}")
        row.append(str(len(r.missing)))
        rows.append(row)
    widths = [max(len(str(x[i])) for x in [head, *rows] if i < len(x)) for i in range(len(head))]
    print(" | ".join(h.ljust(widths[i]) for i, h in enumerate(head)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)))
    for r in results:
        if r.error:
            print(f"\n[{r.config.name}] error: {r.error}")
        if r.missing:
            print(f"[{r.config.name}] missing/invalid outputs (scored as unmasked): {', '.join(r.missing)}")


# ---------------------------------------------------------------------------------------------- main


def parse_cfg(spec: str, tool: str) -> Config:
    """``NAME=ARGS`` (ARGS split on spaces) or just ``NAME`` for no extra args."""
    name, _, args = spec.partition("=")
    return Config(f"{tool}:{name}", tool, args.split())


# The quality presets (streamproxy anonymize --quality; balanced is the default), side by side with deface.
DEFAULT_OURS = [
    "fast=--quality fast",
    "balanced=--quality balanced",
    "best=--quality best",
]
# deface 1.5.0's default --thresh is already 0.2; 0.1 shows its recall/false-positive trade-off
DEFAULT_DEFACE = ["default", "t0.1=--thresh 0.1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR)
    ap.add_argument(
        "--ours",
        action="append",
        default=None,
        metavar="NAME=ARGS",
        help=f"our configuration (repeatable); default: {DEFAULT_OURS}. Options our CLI lacks are dropped with a note.",
    )
    ap.add_argument(
        "--deface",
        action="append",
        default=None,
        metavar="NAME=ARGS",
        help=f"deface configuration (repeatable); default: {DEFAULT_DEFACE}",
    )
    ap.add_argument("--no-ours", action="store_true")
    ap.add_argument("--no-deface", action="store_true")
    ap.add_argument(
        "--ours-common",
        default="--style blur --mask-scale 1.3",
        help="args given to every ours configuration (default: %(default)s)",
    )
    ap.add_argument("--timeout", type=float, default=300, help="per configuration, seconds")
    ap.add_argument(
        "--save-vis", type=Path, default=None, help="write mask overlays here (e.g. bench/out/recall)"
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(message)s")

    if not (a.eval_dir / "widerface").is_dir():
        print(f"evaluation data not found at {a.eval_dir} (pass --eval-dir)")
        return 2
    images = load_wider(a.eval_dir) + load_dlib(a.eval_dir)
    stems = [im.stem for im in images]
    assert len(stems) == len(set(stems)), "image stems must be unique"

    configs: list[Config] = []
    if not a.no_ours:
        ok, help_text = ours_available()
        if not ok:
            print(f"ours: not run ({help_text})")
        else:
            for spec in a.ours or DEFAULT_OURS:
                cfg = parse_cfg(spec, "ours")
                missing = [t for t in cfg.args if t.startswith("--") and t not in help_text]
                if missing:
                    print(f"ours: {cfg.name} skipped: `streamproxy anonymize` has no {', '.join(missing)}")
                    continue
                common = [t for t in a.ours_common.split()]
                common_ok: list[str] = []
                i = 0
                while i < len(common):
                    # drop a common option (and its value) our CLI does not know rather than failing the run
                    opt = common[i]
                    val = (
                        common[i + 1 : i + 2]
                        if i + 1 < len(common) and not common[i + 1].startswith("--")
                        else []
                    )
                    if opt in help_text:
                        common_ok += [opt, *val]
                    i += 1 + len(val)
                cfg.args = common_ok + cfg.args
                configs.append(cfg)
    if not a.no_deface:
        ok, msg = deface_available()
        if not ok:
            print(f"deface: not run ({msg})")
        else:
            configs += [parse_cfg(s, "deface") for s in (a.deface or DEFAULT_DEFACE)]

    print(
        f"# recall benchmark: {sum(1 for im in images if im.dataset == 'wider')} WIDER images, "
        f"{sum(len([f for f in im.faces if f.valid]) for im in images if im.dataset == 'wider')} valid WIDER faces, "
        f"{sum(1 for im in images if im.dataset == 'dlib')} dlib images, "
        f"{sum(len(im.faces) for im in images if im.dataset == 'dlib')} dlib faces; {cpu_note()}"
    )
    print(
        f"# mask: max|diff|>{TOL}, close {CLOSE_KERNEL}x{CLOSE_KERNEL} ellipse, fill enclosed holes <= {HOLE_MAX} px;"
        f" face anonymized when >= {COVER_MIN:.0%} of its box is masked; FP outside GT boxes grown x{FP_GROW} per side"
    )

    results: list[ConfigResult] = []
    with tempfile.TemporaryDirectory(prefix="sp-recall-") as tmp:
        work = Path(tmp)
        input_dir = work / "input"
        input_dir.mkdir()
        for im in images:
            # PNG so the diff is exact: every tool reads the same lossless pixels and writes PNG back
            img = read_bgr(im.src)
            cv2.imwrite(str(input_dir / f"{im.stem}.png"), img)
        for cfg in configs:
            print(f"# running {cfg.name}: {' '.join(cfg.args) or '(defaults)'}", flush=True)
            out_dir, wall, err = run_config(cfg, input_dir, work, a.timeout)
            r = score(cfg, images, input_dir, out_dir, a.save_vis)
            r.wall_s, r.error = wall, err
            results.append(r)
            shutil.rmtree(out_dir, ignore_errors=True)
    print()
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
