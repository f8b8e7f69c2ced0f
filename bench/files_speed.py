#!/usr/bin/env python3
"""The Files page vs the CLI on the same inputs, in the same run (issue #22's targets).

Inputs, made once per run in a temp dir:
* a folder of N photos (default 1000): the evaluation photos (../shared/eval: WIDER FACE sample, dlib
  faces, photos_from_pypi) copied round-robin under numbered names; without the evaluation data,
  generated 1024x768 pictures (noise, no faces), and the run says so;
* a 720p video of S seconds (default 600 = 10 min): ../shared/eval/videos/MOT17-13 (street, small
  faces) scaled to 1280x720 and looped, libx264 veryfast crf 20; synthetic without the data.

For each input, in this order: `streamproxy anonymize` (the CLI, a process of its own, wall clock from
start to exit, and its CPU seconds) and the Files page (`streamproxy files` serving the same folders as
roots: START by POST /api/files/jobs, wall clock from the POST to the job's `done` and the service's CPU
seconds over it, the service already running). While the page's job runs, a second client asks GET
/api/files/jobs/<id> as the page does (the whole job once, then `?since=<seq>`: the files changed since
its last answer) every second, and the answer times are reported (median, p99, max; target: within 100 ms;
each answer over 100 ms with when it came in the job), with the whole job's answer asked every 5th second
beside it (what another client that asks without `since` waits), and the service's resident memory (VmRSS)
is sampled every second: the photos job reports it after the first 10 % and at the end of the files
(target: it does not grow with the number of files).

The video's review (issue #23), after its page job: in headless Chromium (tests/browserkit.py) the
review page loaded 3 times: its first picture (navigation to `streamproxyReview.ready`, polled every
0.1 s as before; and the page's own performance.now() at that moment) and its tracks drawn (the page
asks for them beside the picture), then seeks to random frames (click to the frame shown), each timed;
skipped without Chromium. Then the answers the page and other clients get: GET .../review?tracks=0 (what
the page asks first), .../review/tracks (gzip and not: time, size) and the whole .../review.

Run:  .venv/bin/python bench/files_speed.py [--photos 1000] [--video-s 600] [--skip-video] [--skip-photos]
      [--page-only]   (no CLI runs: the page's jobs and the review only; --photos 0 skips the photos)
      [--repeat K]    (K rounds per input: the CLI first in rounds 1, 3, ..., the page first in 2, 4, ...)
e.g. the review of the 10-minute video alone: --page-only --photos 0 --video-s 600 (~15 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
EVAL = ROOT.parent / "shared" / "eval"
PY = str(ROOT / ".venv" / "bin" / "python")
FPS = 25
POLL_S = 1.0  # the status asks, as often as the page asks (files.js polls a running job once a second)


def make_photos(dst: Path, n: int) -> str:
    dst.mkdir(parents=True)
    sources = sorted(
        [*EVAL.glob("widerface/full_res/images/**/*.jpg"), *EVAL.glob("dlib_faces/*.jpg"),
         *EVAL.glob("photos_from_pypi/*.jpg")]
    )  # fmt: skip
    if sources:
        for i in range(n):
            src = sources[i % len(sources)]
            shutil.copyfile(src, dst / f"{i:05d}{src.suffix}")
        return f"{n} photos: {len(sources)} evaluation photos copied round-robin"
    import cv2

    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(dst / f"{i:05d}.jpg"), rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8))
    return f"{n} SYNTHETIC photos (no eval data at {EVAL}; no faces)"


def make_video(dst: Path, seconds: float) -> str:
    """bulk_speed's 720p clip (MOT17-13 scaled, looped to length; synthetic without the data)."""
    from bulk_speed import make_input

    return f"{seconds:.0f} s 720p: " + make_input(EVAL, dst, int(seconds * FPS))


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cli_run(inp: Path, out: Path) -> tuple[float, float]:
    """The CLI's wall clock and CPU seconds (user + system, all its threads, from its exit status)."""
    t0, c0 = time.perf_counter(), children_cpu_s()
    proc = subprocess.run(
        [PY, "-m", "streamproxy", "anonymize", str(inp), "-o", str(out), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=7200, check=False,
    )  # fmt: skip
    wall, cpu = time.perf_counter() - t0, children_cpu_s() - c0
    tail = proc.stdout.decode(errors="replace").strip().splitlines()[-1:]
    print(
        f"  cli: rc {proc.returncode}, {wall:.1f} s, CPU {cpu:.1f} s; {tail[0] if tail else ''}", flush=True
    )
    return wall, cpu


class Service:
    def __init__(self, work: Path) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "streamproxy", "files", "--root", f"work={work}", "--port", "0",
             "--data-dir", str(work / "data"), "--log-level", "WARNING"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if "http://" not in line:
            raise RuntimeError(f"streamproxy files did not start: {line!r}")
        self.base = line.split()[-1].removesuffix("/files")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            self.base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        """The service's CPU seconds so far (user + system, every thread): /proc/<pid>/stat."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def page_run(svc: Service, rel: str, out_rel: str, files: int) -> dict[str, Any]:
    t0, c0 = time.perf_counter(), svc.cpu_s()
    job = svc.post(
        "/api/files/jobs",
        {"inputs": [{"root": "work", "path": rel}], "output": {"root": "work", "path": out_rel}},
    )
    job_id = job["id"]
    answers: list[float] = []
    rss: list[tuple[int, float]] = []  # (files finished, MB)
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.wait(1.0):
            rss.append((last_done[0], svc.rss_mb()))

    last_done = [0]
    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    state = ""
    deadline = time.monotonic() + 7200
    seq: int | None = None
    whole: list[float] = []  # the whole job (every file), asked every 5th poll beside the page's ask
    slow: list[tuple[float, float]] = []  # (s since START, ms) of the page's asks over 100 ms
    polls = 0
    while time.monotonic() < deadline:
        polls += 1
        if seq is not None and polls % 5 == 0:
            a = time.perf_counter()
            svc.get(f"/api/files/jobs/{job_id}")
            whole.append((time.perf_counter() - a) * 1000)
        # As the page asks: the whole job once, then the files changed since the last answer.
        a = time.perf_counter()
        j = svc.get(f"/api/files/jobs/{job_id}" + (f"?since={seq}" if seq is not None else ""))
        answers.append((time.perf_counter() - a) * 1000)
        if answers[-1] > 100:  # when, in the job: its start, its middle, a file's end
            slow.append((a - t0, answers[-1]))
        seq = j["seq"]
        state = j["state"]
        last_done[0] = j["files_by_state"].get("done", 0) + j["files_by_state"].get("failed", 0)
        if state in ("done", "cancelled"):
            break
        time.sleep(POLL_S)
    wall, cpu = time.perf_counter() - t0, svc.cpu_s() - c0
    stop.set()
    sampler.join()
    print(f"  page: {state}, {wall:.1f} s, CPU {cpu:.1f} s; {j['summary']}", flush=True)
    if slow:
        print(
            "  answers over 100 ms: " + ", ".join(f"{ms:.0f} ms at +{at:.1f} s" for at, ms in slow),
            flush=True,
        )
    return {
        "wall": wall,
        "cpu": cpu,
        "answers_ms": answers,
        "whole_ms": whole,
        "rss": rss,
        "files": files,
        "id": job_id,
    }


def timed_get(url: str, headers: dict[str, str] | None = None) -> tuple[float, bytes, str]:
    """(ms, the body as sent, its Content-Encoding)."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=60) as r:
        body = r.read()
        encoding = r.headers.get("Content-Encoding", "")
    return (time.perf_counter() - t0) * 1000, body, encoding


def review_answers(svc: Service, job_id: int) -> dict[str, Any]:
    """The review's answers as another client gets them: time and size of each (the metadata alone,
    the tracks gzipped and not, the whole review)."""
    import gzip

    api = f"{svc.base}/api/files/jobs/{job_id}/files/0"
    ms, body, _ = timed_get(f"{api}/review?tracks=0")
    rv = json.loads(body)
    print(
        f"  review without tracks (?tracks=0, the page's first ask): {ms:.0f} ms, {len(body)} bytes",
        flush=True,
    )
    ms, packed, enc = timed_get(f"{api}/review/tracks", {"Accept-Encoding": "gzip"})
    raw = gzip.decompress(packed) if enc == "gzip" else packed
    ms2, plain, _ = timed_get(f"{api}/review/tracks")
    assert plain == raw
    tracks = json.loads(raw)["tracks"]
    print(f"  review/tracks: gzip {ms:.0f} ms, {len(packed) / 1e6:.2f} MB ({enc or 'not gzipped'}); "
          f"plain {ms2:.0f} ms, {len(plain) / 1e6:.2f} MB; {len(tracks)} tracks over {rv.get('frames')} "
          "frames", flush=True)  # fmt: skip
    ms, body, _ = timed_get(f"{api}/review")
    print(f"  whole review (tracks inline, other clients): {ms:.0f} ms, {len(body) / 1e6:.2f} MB", flush=True)
    return rv


def review_numbers(svc: Service, job_id: int, seeks: int = 10) -> None:
    """The review of the page job's video: the page in Chromium (as a person opens it after the job),
    then the answers the page and other clients get."""
    import asyncio

    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from browserkit import CHROMIUM, Chromium
    except ImportError as err:
        print(f"  review page: skipped ({err})")
        review_answers(svc, job_id)
        return
    if not Path(CHROMIUM).exists():
        print(f"  review page: skipped (no {CHROMIUM})")
        review_answers(svc, job_id)
        return
    state = "window.streamproxyReview"

    async def run() -> None:
        async with Chromium() as browser:
            url = f"{svc.base}/files/jobs/{job_id}/files/0/review"
            firsts, drawn, inpage = [], [], []
            for _ in range(3):
                t = time.perf_counter()
                await browser.goto(url, f"{state} && {state}.ready", 60)
                firsts.append(time.perf_counter() - t)
                got = await browser.wait_js(
                    f"{state}.tracksReady || {state}.tracksError ? [{state}.pictureMs, {state}.tracksMs, "
                    f"{state}.tracksError, {state}.review.tracks ? {state}.review.tracks.length : 0] : null",
                    120,
                    interval=0.01,
                )
                drawn.append(time.perf_counter() - t)
                inpage.append(got)
            print(f"  review page first picture: {', '.join(f'{x:.2f}' for x in firsts)} s (3 loads, navigation "
                  f"to ready polled every 0.1 s); tracks drawn at {', '.join(f'{x:.2f}' for x in drawn)} s",
                  flush=True)  # fmt: skip
            print("  in the page (performance.now() from navigation start): "
                  + "; ".join(f"picture {g[0]} ms, tracks {g[1]} ms ({g[3]} tracks{', ' + g[2] if g[2] else ''})"
                              for g in inpage if g), flush=True)  # fmt: skip
            frames = int(await browser.evaluate(f"{state}.frames") or 1)
            rng = np.random.default_rng(1)
            times = []
            for target in rng.integers(0, frames, seeks):
                t = time.perf_counter()
                await browser.evaluate(
                    "(() => { const v = document.getElementById('video'); "
                    f"v.currentTime = ({int(target)} + 0.5) / window.streamproxyReview.fps; return true; }})()"
                )
                await browser.wait_js(
                    "(() => { const v = document.getElementById('video'); return !v.seeking && v.readyState >= 2; })()",
                    30,
                    interval=0.01,
                )
                times.append(time.perf_counter() - t)
            print(f"  seek to a random frame: median {statistics.median(times) * 1000:.0f} ms, "
                  f"max {max(times) * 1000:.0f} ms ({len(times)} seeks)", flush=True)  # fmt: skip

    asyncio.run(run())
    review_answers(svc, job_id)


@dataclass
class Row:
    """One round of one input: the CLI's (wall, CPU) seconds, and the page's job."""

    kind: str
    round: int
    cli: tuple[float, float] | None
    page_s: float
    page_cpu_s: float
    answers_ms: list[float]
    whole_ms: list[float]
    rss_early_mb: float
    rss_end_mb: float


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=1000)
    ap.add_argument("--video-s", type=float, default=600)
    ap.add_argument("--skip-photos", action="store_true")
    ap.add_argument("--skip-video", action="store_true")
    ap.add_argument("--page-only", action="store_true", help="no CLI runs: the page's jobs and the review")
    ap.add_argument(
        "--repeat", type=int, default=1,
        help="CLI and page runs per input, alternating which goes first (one run each varies ~10 %% here)",
    )  # fmt: skip
    args = ap.parse_args()
    print(f"files_speed: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="files-speed-") as tmp:
        work = Path(tmp)
        cases = []
        if not args.skip_photos and args.photos > 0:
            cases.append(("photos", make_photos(work / "photos", args.photos), args.photos))
        if not args.skip_video:
            (work / "video").mkdir()
            cases.append(("video", make_video(work / "video" / "long.mp4", args.video_s), 1))
        svc = Service(work)
        try:
            for name, what, files in cases:
                print(f"{name}: {what}", flush=True)
                for r in range(max(1, args.repeat)):
                    # Alternating who goes first: a drift in the machine's load then falls on both sides.
                    cli = None
                    if not args.page_only and r % 2 == 0:
                        cli = cli_run(work / name, work / f"out-cli-{name}-{r}")
                    page = page_run(svc, name, f"out-page-{name}-{r}", files)
                    if not args.page_only and r % 2 == 1:
                        cli = cli_run(work / name, work / f"out-cli-{name}-{r}")
                    if name == "video" and r == 0:
                        review_numbers(svc, int(page["id"]))
                    rss = page["rss"]
                    at10 = [mb for done, mb in rss if done >= max(1, files // 10)][:1]
                    rows.append(
                        Row(name, r + 1, cli, page["wall"], page["cpu"], page["answers_ms"], page["whole_ms"],
                            at10[0] if at10 else float("nan"), rss[-1][1] if rss else float("nan"))
                    )  # fmt: skip
        finally:
            svc.close()
    print()
    print(
        "| input | CLI s | page s | page / CLI | CPU s, CLI / page (ratio) "
        "| status answer median / p99 / max ms (the page's ask) "
        "| the whole job, median / max ms | RSS at 10 % / end MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        a, w = row.answers_ms, row.whole_ms
        cli_wall, cli_cpu = row.cli if row.cli else (None, None)
        print(
            f"| {row.kind}{f' #{row.round}' if args.repeat > 1 else ''} "
            f"| {f'{cli_wall:.1f}' if cli_wall else '–'} | {row.page_s:.1f} "
            f"| {f'{row.page_s / cli_wall:.3f}' if cli_wall else '–'} "
            f"| {f'{cli_cpu:.0f} / {row.page_cpu_s:.0f} ({row.page_cpu_s / cli_cpu:.3f})' if cli_cpu else '–'} "
            f"| {statistics.median(a):.1f} / {pct(a, 0.99):.1f} / {max(a):.1f} ({len(a)} asks, "
            f"{sum(x > 100 for x in a)} over 100 ms) | "
            + (f"{statistics.median(w):.1f} / {max(w):.1f} ({len(w)} asks)" if w else "–")
            + f" | {row.rss_early_mb:.0f} / {row.rss_end_mb:.0f} |"
        )
    for kind in dict.fromkeys(row.kind for row in rows):
        mine = [(row.cli, row) for row in rows if row.kind == kind and row.cli]
        if len(mine) > 1:
            cli_s = sum(c[0] for c, _ in mine)
            cli_cpu = sum(c[1] for c, _ in mine)
            page_s = sum(row.page_s for _, row in mine)
            page_cpu = sum(row.page_cpu_s for _, row in mine)
            ratios = sorted(row.page_s / c[0] for c, row in mine)
            print(f"{kind}: {len(mine)} rounds, page / CLI over all: wall {page_s / cli_s:.3f} "
                  f"(per round {', '.join(f'{x:.3f}' for x in ratios)}), CPU {page_cpu / cli_cpu:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
