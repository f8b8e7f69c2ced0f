#!/usr/bin/env python3
"""The re-identification measure of `../shared/eval/videos_gt/score_reid.py`, for many outputs of one clip at once.

Runs under bench/.venv-reid/bin/python (dlib-bin, face-recognition-models, av, numpy: bench/setup_reid.sh), never
under the project's venv. bench/reid.py calls it; `--check` compares it with the shared scorer.

Same attacker and same numbers as score_reid.py (checked equal on the same files): dlib's ResNet descriptor of the
original face and of the anonymized pixels at the same place, both aligned on the ORIGINAL face's five landmarks;
distance < 0.6 = re-identified ("verified"); rank-1 identification = the nearest of the clip's people (mean original
descriptor each) is the right one; chance = 1 / people. Face-frames: visible_fraction >= 0.9, width >= --min-w, every
--every-th frame. The difference is cost only: the original's descriptors are computed once and reused for every
anonymized video (the shared scorer recomputes them per call: half its time).

    reid_measure.py ORIG.mp4 GT.json --json-out R.json NAME=ANON.mp4 [NAME=ANON.mp4 ...]

Writes {NAME: {reid_rate, ident_rate, chance, people, scored, dist_median, dist_p10, by_face: {...}}}.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import av
import dlib
import face_recognition_models as frm
import numpy as np

THRESHOLD = 0.6


def scored_rows(
    gt: dict[str, Any], every: int, min_w: float
) -> dict[int, list[tuple[int, float, float, float, float]]]:
    rows: dict[int, list[tuple[int, float, float, float, float]]] = defaultdict(list)
    for fi, fid, x, y, w, h, vis in gt["boxes"]:
        if vis >= 0.9 and w >= min_w and int(fi) % every == 0:
            rows[int(fi)].append((int(fid), x, y, w, h))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("orig", type=Path)
    ap.add_argument("gt", type=Path)
    ap.add_argument("outputs", nargs="+", metavar="NAME=ANON.mp4")
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--min-w", type=float, default=40.0)
    ap.add_argument("--json-out", type=Path, required=True)
    a = ap.parse_args()

    gt = json.loads(a.gt.read_text())
    rows = scored_rows(gt, a.every, a.min_w)
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    # The original: landmarks and descriptor of every scored face-frame, once.
    shapes: dict[tuple[int, int], Any] = {}
    d0: dict[tuple[int, int], np.ndarray] = {}
    with av.open(str(a.orig)) as src:
        for i, fr in enumerate(src.decode(video=0)):
            if i not in rows:
                continue
            x0 = fr.to_ndarray(format="rgb24", threads=1)
            for fid, x, y, w, h in rows[i]:
                r = dlib.rectangle(int(x), int(y), int(x + w), int(y + h))
                shape = sp(x0, r)
                shapes[(i, fid)] = shape
                d0[(i, fid)] = np.array(rec.compute_face_descriptor(x0, shape, 1))
    gallery: dict[int, list[np.ndarray]] = defaultdict(list)
    for (_, fid), d in d0.items():
        gallery[fid].append(d)
    ids = sorted(gallery)
    means = np.stack([np.mean(gallery[k], axis=0) for k in ids]) if ids else np.zeros((0, 128))
    # The attacker's own false matches: original face-frames of two DIFFERENT people of the clip under 0.6. A
    # mask cannot be expected to verify less often than a stranger's face does.
    keys = sorted(d0)
    if keys:
        D = np.stack([d0[k] for k in keys])
        who = np.array([fid for _, fid in keys])
        dd = np.linalg.norm(D[:, None, :] - D[None, :, :], axis=2)
        other = who[:, None] != who[None, :]
        impostor = float((dd[other] < THRESHOLD).mean()) if other.any() else 0.0
    else:
        impostor = 0.0

    results: dict[str, Any] = {}
    for spec in a.outputs:
        name, _, path = spec.partition("=")
        dists: list[float] = []
        hits = 0
        by_face: dict[int, list[int]] = defaultdict(
            lambda: [0, 0, 0]
        )  # fid -> [scored, verified, rank-1 hits]
        with av.open(path) as out:
            for i, fr in enumerate(out.decode(video=0)):
                if i not in rows:
                    continue
                y0 = fr.to_ndarray(format="rgb24", threads=1)
                for fid, *_ in rows[i]:
                    d1 = np.array(rec.compute_face_descriptor(y0, shapes[(i, fid)], 1))
                    dist = float(np.linalg.norm(d0[(i, fid)] - d1))
                    hit = ids[int(np.argmin(np.linalg.norm(means - d1, axis=1)))] == fid
                    dists.append(dist)
                    hits += hit
                    bf = by_face[fid]
                    bf[0] += 1
                    bf[1] += dist < THRESHOLD
                    bf[2] += hit
        d = np.array(dists)
        n = len(d)
        results[name] = {
            "reid_rate": float((d < THRESHOLD).mean()) if n else 0.0,
            "ident_rate": hits / n if n else 0.0,
            "chance": 1.0 / max(1, len(ids)),
            "people": len(ids),
            "scored": n,
            "dist_median": float(np.median(d)) if n else None,
            "dist_p10": float(np.percentile(d, 10)) if n else None,
            "impostor_rate": impostor,
            "by_face": {str(k): v for k, v in sorted(by_face.items())},
        }
        r = results[name]
        print(f"{name}: reid_rate={r['reid_rate']:.4f} ident_rate={r['ident_rate']:.4f} people={r['people']} scored={n}",
              flush=True)  # fmt: skip
    a.json_out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
