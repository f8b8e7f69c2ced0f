#!/usr/bin/env python3
"""Review before export (issue #23): what the review costs a run, and what a re-render costs.

On the 720p clip bench/bulk_speed.py makes (the first N frames of ../shared/eval/videos/MOT17-13 scaled
to 1280x720; a synthetic clip without faces when the evaluation data is absent, and the run says so),
in one process, with the CLI's default engine settings and the models loaded once:

* run:            Batch.run without a review folder (detection, masks, encode);
* run + review:   Batch.run with a review folder (+ the review log and the 640 px proxy, encoded in a
                  thread of its own): the difference is the review's cost (target: a few percent);
* re-render:      Batch.rerender from that review log with a few edits (a track removed, a track kept
                  visible over a range, an added mask, a zone): no detector runs; the review proxy is
                  made again from the new frames at the same time (proxy=True, the default);
* re-render, no proxy: the same with proxy=False, as the Files page runs it (and the CLI's --edits): the
                  user's wait, until the output is done;
* proxy remake:   Batch.remake_proxy after it: the review proxy made again from the new output (the
                  page says "updating the review video" meanwhile), its own wall time;
* decode+encode:  the bare floor: decode the clip and encode it with the output's encoder settings
                  (anonymize._video_stream), one thread after the other, nothing else.

Target: re-render <= decode+encode (+ a little for the obfuscation): it decodes, masks and encodes in
three threads, as a run does; the page's re-render (no proxy) is what the user waits for. Each configuration runs --repeat times (default 2), alternating; the
best wall time is reported. Audit records are off (their SHA-256s are disk reads, not the engine).

Run:  .venv/bin/python bench/rerender_speed.py [--frames 250] [--repeat 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import DEFAULT_EVAL_DIR, cpu_note
from bulk_speed import make_input

from streamproxy.anonymize import Batch, Job, _input_timing, _out_codec, _video_stream
from streamproxy.files import edits as E

log = logging.getLogger(__name__)


def bare(src: Path, dst: Path) -> tuple[float, int]:
    """Decode + encode with the run's encoder settings, serially: (wall s, frames)."""
    t0 = time.perf_counter()
    n = 0
    encoder, fmt = _out_codec(dst)
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        rate, tb = _input_timing(vin)
        vout = _video_stream(out, encoder, vin.codec_context.width, vin.codec_context.height, rate, tb)
        for f in inp.decode(vin):
            f.pict_type = av.video.frame.PictureType.NONE
            for pkt in vout.encode(f):
                out.mux(pkt)
            n += 1
        for pkt in vout.encode(None):
            out.mux(pkt)
    return time.perf_counter() - t0, n


def some_edits(log_: E.ReviewLog) -> E.Edits:
    """A few edits of each kind on whatever the clip holds (tracks where there are some)."""
    tracks = sorted(E.link_tracks(log_), key=lambda t: -(t.last - t.first))
    n, w, h = len(log_.frames), log_.width, log_.height
    items: list[dict[str, Any]] = []
    if tracks:
        items.append({"op": "remove", "track": tracks[0].id})
    if len(tracks) > 1:
        t = tracks[1]
        items.append({"op": "keep", "track": t.id, "from": t.first, "to": (t.first + t.last) // 2})
    items.append({"op": "add", "boxes": {"0": [w * 0.1, h * 0.1, w * 0.2, h * 0.25],
                                         str(n - 1): [w * 0.3, h * 0.2, w * 0.4, h * 0.35]}})  # fmt: skip
    items.append({"op": "zone", "box": [w * 0.8, h * 0.8, w, h]})
    return E.parse_edits({"format": E.FORMAT, "edits": items}, n, log_=log_)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR)
    ap.add_argument("--frames", type=int, default=250, help="input length in frames (25 fps)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per configuration (best kept)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(message)s")

    from streamproxy.cli import _engine_from_args, build_parser

    with tempfile.TemporaryDirectory(prefix="sp-rerender-") as tmp:
        work = Path(tmp)
        src = work / "in720.mp4"
        what = make_input(a.eval_dir, src, a.frames)
        print(f"# re-render speed: input {what}; {cpu_note()}", flush=True)
        cfg = _engine_from_args(build_parser().parse_args(["anonymize", str(src), "-o", str(work)]))
        t0 = time.perf_counter()
        batch = Batch(cfg, audit=False)
        # Detectors start at the first file: the first round is slower; the best of --repeat is kept.
        print(f"# batch made in {time.perf_counter() - t0:.1f} s (not counted)", flush=True)
        best: dict[str, float] = {}
        frames: dict[str, int] = {}
        edits: E.Edits | None = None

        def keep(name: str, wall: float, n: int) -> None:
            best[name] = min(best.get(name, wall), wall)
            frames[name] = n

        for r in range(max(1, a.repeat)):
            t = time.perf_counter()
            res = batch.run(Job(src, work / f"plain{r}.mp4", "video"))
            assert res.ok, res.error
            keep("run", time.perf_counter() - t, res.frames)
            review = work / f"review{r}"
            t = time.perf_counter()
            res = batch.run(Job(src, work / f"reviewed{r}.mp4", "video"), review_dir=review)
            assert res.ok, res.error
            keep("run + review", time.perf_counter() - t, res.frames)  # the review put in place included
            log_ = E.read_log(review)
            edits = some_edits(log_)
            t = time.perf_counter()
            res = batch.rerender(Job(src, work / f"reviewed{r}.mp4", "video"), review, edits)
            assert res.ok, res.error
            keep("re-render", time.perf_counter() - t, res.frames)
            job = Job(src, work / f"reviewed{r}.mp4", "video")
            t = time.perf_counter()
            res = batch.rerender(job, review, edits, proxy=False)
            assert res.ok, res.error
            keep("re-render, no proxy", time.perf_counter() - t, res.frames)
            t = time.perf_counter()
            assert batch.remake_proxy(job, review), "the proxy remake failed (see the log)"
            keep("proxy remake", time.perf_counter() - t, res.frames)
            keep("decode+encode", *bare(src, work / f"bare{r}.mp4"))
        assert edits is not None
        print(
            f"# edits: {edits.counts()}; tracks in the clip: {len(E.link_tracks(E.read_log(work / 'review0')))}"
        )

    base = best["run"]
    floor = best["decode+encode"]
    print()
    head = ["config", "wall s", "frames/s", "vs run", "vs decode+encode"]
    rows = [
        [k, f"{v:.2f}", f"{frames[k] / v:.1f}", f"{(v / base - 1) * 100:+.1f}%", f"{v / floor:.2f}x"]
        for k, v in best.items()
    ]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    print(" | ".join(h.ljust(widths[i]) for i, h in enumerate(head)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(widths[i]) for i, c in enumerate(row)))
    review_cost = (best["run + review"] / base - 1) * 100
    print(
        f"\nreview log + proxy: {review_cost:+.1f}% of a run; re-render: {best['re-render'] / floor:.2f}x decode+encode"
    )
    page = best["re-render, no proxy"]
    print(
        f"Files page: output done in {page:.2f} s ({page / floor:.2f}x decode+encode), the review video "
        f"{best['proxy remake']:.2f} s later (together {(page + best['proxy remake']) / floor:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
