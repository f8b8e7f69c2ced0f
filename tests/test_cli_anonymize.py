"""`streamproxy anonymize` as a new user meets it: output folder inside the input, Ctrl+C, the progress
line, what the summary counts, errors in words, the audit record. The command runs in a subprocess."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import pytest
from facekit import background, make_video, paste_face

from streamproxy.anonymize import collect_jobs

CLI = [sys.executable, "-m", "streamproxy.cli", "anonymize"]


def run_cli(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def photo(path: Path, face_width: int = 140, size: tuple[int, int] = (480, 360)) -> Path:
    img = background(*size)
    paste_face(img, 20, 20, face_width)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


@pytest.mark.parametrize("out_rel", ["bad", "bad/out"])
def test_an_output_folder_inside_the_input_is_never_taken_for_input(
    tmp_path: Path, model_dir: Path, out_rel: str
) -> None:
    bad = tmp_path / "bad"
    photo(bad / "a.jpg")
    photo(bad / "sub" / "b.png")
    out = tmp_path / out_rel
    for _ in range(2):  # two runs in a row
        jobs, errors = collect_jobs([bad], out)
        assert not errors
        srcs = sorted(str(j.src.relative_to(bad)) for j in jobs)
        assert srcs == ["a.jpg", "sub/b.png"], "the second run's job list has none of the first run's outputs"
        r = run_cli(bad, "-o", out, "-q")
        assert r.returncode == 0, r.stderr
        assert "2 file(s) anonymized, 0 failed" in r.stderr
    dest = out / "bad"
    written = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.suffix in (".jpg", ".png"))
    assert written == ["a.jpg", "sub/b.png"], "no bad/bad/bad/... after the second run"


def test_ctrl_c_stops_cleanly_with_one_line_and_exit_130(tmp_path: Path, model_dir: Path) -> None:
    src = tmp_path / "long.mp4"
    still_video(src, frames=400)
    photo(tmp_path / "later.png")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*CLI, str(src), str(tmp_path / "later.png"), "-o", str(out), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".*part*")):  # the video is being written
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no temporary output within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted: 0 of 2 file(s) done; the file in progress was not written" in err
    assert not list(out.rglob(".*part*")), "no temporary file left"
    assert not (out / "long.mp4").exists() and not (out / "later.png").exists(), "nothing after the interrupt"
    [record] = out.glob("anonymize-*.audit.json")  # the record of what was done: the cancelled file
    assert [f["state"] for f in json.loads(record.read_text())["files"]] == ["cancelled"]


def still_video(path: Path, frames: int) -> None:
    """A long, cheap video: one small picture with a face, repeated (long enough to interrupt)."""
    img = background(320, 240)
    paste_face(img, 100, 40, 100)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        for _ in range(frames):
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)


def run_on_tty(args: list[str | Path], timeout: float = 240) -> tuple[int, str]:
    """The command with its stderr on a terminal (a pty): (exit status, what the terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other end closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    os.close(master)
    return rc, b"".join(chunks).decode(errors="replace")


def test_progress_line_on_a_terminal_only_and_never_with_quiet(tmp_path: Path, model_dir: Path) -> None:
    src = tmp_path / "clip.mp4"
    make_video(src, frames=60, audio=False)
    rc, shown = run_on_tty([src, "-o", tmp_path / "o1", "--no-audit"])
    assert rc == 0, shown
    lines = [seg for seg in shown.split("\r") if "frame/s" in seg]
    assert lines, shown
    assert all(seg.startswith("file 1/1  ") and " frames  " in seg and "clip.mp4" in seg for seg in lines)
    assert all("ETA " in seg for seg in lines) and "it/s" not in shown, "frame/s always, tqdm's gone"
    assert len(lines) <= 4 * 60, "at most ~4 updates a second"
    rc, shown = run_on_tty([src, "-o", tmp_path / "o2", "--no-audit", "-q"])
    assert rc == 0 and "frame/s" not in shown and "1 file(s) anonymized" in shown
    r = run_cli(src, "-o", tmp_path / "o3", "--no-audit")  # not a terminal: the summary only
    assert r.returncode == 0 and "frame/s" not in r.stderr and "\r" not in r.stderr


def test_the_summary_counts_faces_not_detections(tmp_path: Path, model_dir: Path) -> None:
    """A photo with one large face (the magnified passes find its eyes and mouth too) and a video of one
    face: one face each, and the summary says what it counts."""
    big = photo(tmp_path / "in" / "big.png", face_width=600, size=(800, 600))
    make_video(tmp_path / "in" / "clip.mp4", frames=30)
    r = run_cli(big, tmp_path / "in" / "clip.mp4", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "1 photo(s): 1 face(s) masked" in r.stderr, r.stderr
    assert "1 video(s), 30 frame(s): 1 face(s) tracked, masked in 30 frame(s)" in r.stderr, r.stderr
    assert "audio removed from 1 video(s); --keep-audio keeps it" in r.stderr
    [js] = (tmp_path / "out").glob("anonymize-*.audit.json")
    [page] = (tmp_path / "out").glob("anonymize-*.html")
    assert str(js) in r.stderr and str(page) in r.stderr, "the summary says where the record is"
    record = json.loads(js.read_text())
    assert [f["input"]["name"] for f in record["files"]] == ["big.png", "clip.mp4"]
    assert record["totals"]["faces"] == 2 and record["settings"]["audio"] == "removed"
    assert (tmp_path / "out" / "big.png.audit.json").exists() and (
        tmp_path / "out" / "clip.mp4.audit.json"
    ).exists()


def test_a_corrupt_video_is_said_in_words_and_no_audit_writes_no_record(
    tmp_path: Path, model_dir: Path
) -> None:
    bad = tmp_path / "holiday.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(5000))
    good = photo(tmp_path / "p.png")
    r = run_cli(bad, good, "-o", tmp_path / "out", "-q", "--no-audit")
    assert r.returncode == 1
    assert (
        f"error: {bad}: not a video file that can be read (damaged, incomplete, or another kind of file)"
        in r.stderr
    )
    assert "Errno" not in r.stderr and "Invalid data" not in r.stderr
    assert "1 file(s) anonymized, 1 failed" in r.stderr
    assert not list((tmp_path / "out").rglob("*.audit.json")) and not list((tmp_path / "out").glob("*.html"))
