"""`streamproxy files` as a user starts it: its own process, the real engine, restarts.

* it prints the page's URL, listens on 127.0.0.1 only, lists roots by name (never their paths);
* killed in the middle of a video (SIGKILL: a crash, a power cut): after the restart the video is
  failed "interrupted by a restart", its temporary output is gone, no output is shown as done, and
  the photo queued behind it still runs;
* stopped with Ctrl+C in the middle of a video: it exits 0 at once (no traceback), and after the
  restart the video runs again from the start and finishes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import av
import cv2
import pytest
from facekit import background, paste_face

pytestmark = pytest.mark.slow


class FilesProcess:
    def __init__(self, root: Path, data: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamproxy", "files", "--root", f"work={root}", "--port", "0",
             "--data-dir", str(data), "--log-level", "INFO"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert line.startswith("Files page: http://127.0.0.1:"), line + self.stderr()
        self.base = line.split()[-1].removesuffix("/files")

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            self.base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def job(self, job_id: int) -> dict[str, Any]:
        job = self.get(f"/api/files/jobs/{job_id}")
        assert isinstance(job, dict)
        return job

    def until(self, job_id: int, cond: Any, what: str, timeout: float = 120) -> dict[str, Any]:
        for _ in range(int(timeout / 0.1)):
            job = self.job(job_id)
            if cond(job):
                return job
            time.sleep(0.1)
        raise AssertionError(f"not seen in {timeout} s: {what}: {self.job(job_id)}")

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        assert self.proc.stderr is not None and self.proc.stdout is not None
        err = self.proc.stderr.read().decode(errors="replace")
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc, err


FRAMES = 400  # long enough to be stopped in the middle (16 s of video)


def _long_video(path: Path, frames: int) -> None:
    """A face walking to and fro over a background (facekit.make_video's walk leaves the picture)."""
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 640, 360, "yuv420p"
        for i in range(frames):
            img = background(640, 360)
            paste_face(img, 40 + abs((i * 6) % 800 - 400), 60, 130)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)


@pytest.fixture
def work(tmp_path: Path, model_dir: Path) -> Path:
    root = tmp_path / "work"
    (root / "in").mkdir(parents=True)
    _long_video(root / "in" / "a-clip.mp4", FRAMES)
    img = background(640, 480)
    paste_face(img, 200, 100, 180)
    cv2.imwrite(str(root / "in" / "b-photo.jpg"), img)
    return root


def _start_job(svc: FilesProcess) -> int:
    job = svc.post(
        "/api/files/jobs",
        {"inputs": [{"root": "work", "path": "in"}], "output": {"root": "work", "path": "out"}},
    )
    job_id = int(job["id"])
    svc.until(
        job_id, lambda j: j["files"][0]["state"] == "running" and j["files"][0]["done"] > 5, "video running"
    )
    return job_id


def test_a_crash_mid_video_never_shows_half_an_output(work: Path, tmp_path: Path) -> None:
    svc = FilesProcess(work, tmp_path / "data")
    roots = svc.get("/api/files/roots")
    assert str(work) not in json.dumps(roots) and "work" in json.dumps(roots)
    job_id = _start_job(svc)
    part = work / "out" / "in" / ".a-clip.part.mp4"
    for _ in range(300):  # the muxer creates it with its first packet
        if part.exists():
            break
        time.sleep(0.1)
    assert part.exists(), "the video is written under a temporary name"
    rc, _ = svc.stop(signal.SIGKILL)
    assert rc == -signal.SIGKILL
    svc = FilesProcess(work, tmp_path / "data")
    try:
        job = svc.until(job_id, lambda j: j["state"] == "done", "job done after the restart")
        video, photo = job["files"]
        assert video["state"] == "failed" and "interrupted by a restart" in video["error"]
        assert video["output"] is None
        assert photo["state"] == "done"
        assert not part.exists() and not (work / "out" / "in" / "a-clip.mp4").exists()
        assert (work / "out" / "in" / "b-photo.jpg").exists()
    finally:
        rc, err = svc.stop(signal.SIGINT)
    assert rc == 0 and "Traceback" not in err


def test_ctrl_c_mid_video_then_restart_runs_it_again(work: Path, tmp_path: Path) -> None:
    svc = FilesProcess(work, tmp_path / "data")
    job_id = _start_job(svc)
    rc, err = svc.stop(signal.SIGINT)
    assert rc == 0 and "Traceback" not in err, err
    assert not (work / "out" / "in" / ".a-clip.part.mp4").exists()
    svc = FilesProcess(work, tmp_path / "data")
    try:
        job = svc.until(job_id, lambda j: j["state"] == "done", "job done after the restart", timeout=240)
        assert [f["state"] for f in job["files"]] == ["done", "done"], job["files"]
        assert job["files"][0]["result"]["frames"] == FRAMES
    finally:
        svc.stop(signal.SIGINT)
