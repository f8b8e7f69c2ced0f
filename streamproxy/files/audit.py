"""The record of what was done to each file and each job, for a data protection officer to file.

A file's record (`file_record`) is written beside its output as `<output>.audit.json` by
`anonymize.Batch.run`; a job's record (`job_record`) gathers its files' records and is written by the
CLI (`anonymize-<UTC time>.audit.json`) and by the Files page (`streamproxy-job-<id>.audit.json`), with
the same record as a printable page (`report_html`).

What a record holds: the tool and its version; the input and the output by name, size and SHA-256;
duration and frames; the models used (name, file, SHA-256 of the file on disk and of what was
loaded); the effective settings; what was found (faces and plates per 10-second band of video, or the
whole photo; distinct faces); the frames that failed closed and why; the audio; the user; when
(ISO 8601, UTC). Names only, never a folder path: the record travels with the outputs.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamproxy import __version__

log = logging.getLogger(__name__)

TOOL = "streamproxy"
# Bands of video the record counts faces and plates in: a reader can find the minute that matters
# without a line per frame (an hour of video is 360 bands).
BAND_S = 10.0

# Why frames failed closed, in words (the codes are engine/anonymizer.py's and engine/text.py's).
FAIL_REASONS: dict[str, str] = {
    "detector_error": "the face detector failed on the frame",
    "detector_timeout": "the face detector was too late",
    "model_missing": "no face detector model was available",
    "text_detector_error": "the text detector failed on the frame",
}


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB pieces (videos can be many GB)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def utc_iso(when: float | str | datetime | None) -> str:
    """ISO 8601 in UTC, to the second: from a Unix time, a datetime, or a string kept as it is."""
    if when is None:
        return ""
    if isinstance(when, str):
        return when
    if isinstance(when, datetime):
        dt = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    else:
        dt = datetime.fromtimestamp(float(when), UTC)
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def file_info(path: Path | None) -> dict[str, Any] | None:
    """Name, size and SHA-256 of a file; None when there is no file."""
    if path is None:
        return None
    p = Path(path)
    return {"name": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}


def file_record(
    *,
    src: Path,
    dst: Path | None,
    kind: str,
    state: str,
    error: str = "",
    duration_s: float | None = None,
    frames: int = 0,
    models: list[dict[str, Any]] | None = None,
    settings: Mapping[str, Any] | None = None,
    audio: str = "",
    faces: int = 0,
    bands: list[dict[str, Any]] | None = None,
    fail_closed: Mapping[str, int] | None = None,
    widened_frames: int = 0,
    user: str = "",
    started: float | str | datetime | None = None,
    finished: float | str | datetime | None = None,
) -> dict[str, Any]:
    """One file's record. `dst` is the written output (None: nothing was written); `faces` the
    distinct faces (a photo's faces masked, a video's faces tracked); `bands` what was found per
    band ({start_s, end_s, frames, frames_with_faces, faces_masked, plates}); `fail_closed` frames
    failed closed by reason code (FAIL_REASONS)."""
    reasons = {k: int(v) for k, v in (fail_closed or {}).items() if v}
    band_list = list(bands or [])
    try:
        inp = file_info(src)
    except OSError as err:  # gone or unreadable since: the record says so rather than failing
        inp = {"name": Path(src).name, "size": None, "sha256": None, "error": err.strerror or str(err)}
    return {
        "tool": TOOL,
        "version": __version__,
        "kind": kind,
        "state": state,
        "error": error,
        "input": inp,
        "output": file_info(dst) if dst is not None else None,
        "duration_s": None if duration_s is None else round(float(duration_s), 3),
        "frames": int(frames),
        "models": list(models or []),
        "settings": dict(settings or {}),
        "audio": audio,
        "found": {
            "faces": int(faces),
            "face_masks": sum(int(b.get("faces_masked", 0)) for b in band_list),
            "frames_with_faces": sum(int(b.get("frames_with_faces", 0)) for b in band_list),
            "plates": sum(int(b.get("plates", 0)) for b in band_list),
            "bands": band_list,
        },
        "fail_closed": {
            "frames": sum(reasons.values()),
            "reasons": reasons,
            "why": {k: FAIL_REASONS.get(k, k) for k in reasons},
        },
        "widened_frames": int(widened_frames),
        "user": user,
        "started": utc_iso(started),
        "finished": utc_iso(finished),
    }


def job_record(
    job_id: int | str | None,
    user: str,
    started: float | str | datetime | None,
    finished: float | str | datetime | None,
    settings: Mapping[str, Any],
    files: list[dict[str, Any]],
) -> dict[str, Any]:
    """A job's record: who, when, with what settings, and each file's record (`file_record`, or the
    little that is known of a file that never ran: {input: {name}, state, error})."""
    states: dict[str, int] = {}
    for f in files:
        states[str(f.get("state", "?"))] = states.get(str(f.get("state", "?")), 0) + 1
    models: dict[tuple[str, str], dict[str, Any]] = {}
    for f in files:
        for m in f.get("models") or []:
            models.setdefault((str(m.get("name", "")), str(m.get("sha256", ""))), m)

    def total(key: str) -> int:
        return sum(int((f.get("found") or {}).get(key, 0) or 0) for f in files)

    return {
        "tool": TOOL,
        "version": __version__,
        "job": job_id,
        "user": user,
        "started": utc_iso(started),
        "finished": utc_iso(finished),
        "settings": dict(settings),
        "models": list(models.values()),
        "totals": {
            "files": len(files),
            "states": states,
            "faces": total("faces"),
            "plates": total("plates"),
            "frames": sum(int(f.get("frames", 0) or 0) for f in files),
            "fail_closed_frames": sum(int((f.get("fail_closed") or {}).get("frames", 0) or 0) for f in files),
        },
        "files": files,
    }


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    """Write a record atomically: a temporary name beside it, renamed when complete."""
    _write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_job_files(folder: Path, stem: str, record: Mapping[str, Any]) -> tuple[Path, Path]:
    """A job's record as `<stem>.audit.json` and `<stem>.html` in `folder`; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    js, page = folder / f"{stem}.audit.json", folder / f"{stem}.html"
    write_json(js, record)
    _write_text(page, report_html(record))
    return js, page


# --- the printable report ----------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em; color: #111; }
h1 { font-size: 1.5em; margin: 0 0 .2em; } h2 { font-size: 1.15em; margin: 1.5em 0 .4em; }
table { border-collapse: collapse; margin: .3em 0 1em; width: 100%; }
th, td { border: 1px solid #bbb; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #eee; } td.num { text-align: right; white-space: nowrap; }
.hash { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .8em; word-break: break-all; }
.bad { color: #a00; font-weight: bold; } .meta { color: #444; margin: 0; }
@media print {
  body { margin: 0; font-size: 10pt; } th { background: #ddd !important; }
  tr, td, th { page-break-inside: avoid; break-inside: avoid; } h2 { page-break-after: avoid; }
}
"""


def _e(value: Any) -> str:
    if isinstance(value, bool):
        value = "yes" if value else "no"
    return html.escape("" if value is None else str(value), quote=True)


def _flat(prefix: str, value: Any) -> Iterable[tuple[str, Any]]:
    """Settings as (dotted key, value) rows."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flat(f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(value, list | tuple):
        yield prefix, ", ".join(str(v) for v in value)
    else:
        yield prefix, value


def _size(n: Any) -> str:
    if not isinstance(n, int | float) or isinstance(n, bool):
        return ""
    units = ["bytes", "KB", "MB", "GB", "TB"]
    k = 0 if n <= 0 else min(len(units) - 1, int(math.log(n, 1000)))
    return f"{n / 1000**k:.1f} {units[k]}" if k else f"{int(n)} bytes"


def _file_cell(info: Any) -> str:
    if not isinstance(info, Mapping):
        return "—"
    parts = [f"<b>{_e(info.get('name'))}</b>"]
    if info.get("size") is not None:
        parts.append(_e(_size(info.get("size"))))
    if info.get("sha256"):
        parts.append(f'<span class="hash">SHA-256 {_e(info.get("sha256"))}</span>')
    if info.get("error"):
        parts.append(f'<span class="bad">{_e(info.get("error"))}</span>')
    return "<br>".join(parts)


def _found_cell(f: Mapping[str, Any]) -> str:
    found = f.get("found") or {}
    if not isinstance(found, Mapping) or not found or f.get("state") != "done":
        return ""
    faces = int(found.get("faces", 0) or 0)
    if f.get("kind") == "video":
        s = (
            f"{faces} face(s) tracked; {int(found.get('face_masks', 0) or 0)} face mask(s) in "
            f"{int(found.get('frames_with_faces', 0) or 0)} of {int(f.get('frames', 0) or 0)} frame(s)"
        )
    else:
        s = f"{faces} face(s) masked"
    plates = int(found.get("plates", 0) or 0)
    if plates:
        s += f"; {plates} text mask(s) (plates and other text)"
    return _e(s)


def _fail_cell(f: Mapping[str, Any]) -> str:
    fc = f.get("fail_closed") or {}
    if not isinstance(fc, Mapping) or not fc.get("frames"):
        return "none"
    why = fc.get("why") or {}
    rows = [
        f"{int(n)} frame(s): {_e(why.get(k, FAIL_REASONS.get(str(k), k)))}"
        for k, n in (fc.get("reasons") or {}).items()
    ]
    return '<span class="bad">' + "<br>".join(rows) + "</span>"


def _state_cell(f: Mapping[str, Any]) -> str:
    state = str(f.get("state", ""))
    text = {"done": "anonymized", "failed": "failed", "cancelled": "cancelled"}.get(state, state)
    if f.get("error"):
        return f'<span class="bad">{_e(text)}: {_e(f.get("error"))}</span>'
    return _e(text)


def report_html(job: Mapping[str, Any]) -> str:
    """A job's record as one self-contained printable HTML page: no script, no external asset,
    every value escaped (file names are whatever the uploader called them)."""
    files = [f for f in job.get("files") or [] if isinstance(f, Mapping)]
    totals = job.get("totals") or {}
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Anonymization record {_e(job.get('job') or '')}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Anonymization record"
        + (f" — job {_e(job.get('job'))}" if job.get("job") is not None else "")
        + "</h1>",
        f'<p class="meta">Tool: {_e(job.get("tool", TOOL))} {_e(job.get("version", ""))}</p>',
        f'<p class="meta">User: {_e(job.get("user") or "—")}</p>',
        f'<p class="meta">Started: {_e(job.get("started"))} · Finished: {_e(job.get("finished"))} (UTC)</p>',
    ]
    if isinstance(totals, Mapping) and totals:
        states = totals.get("states") or {}
        st = ", ".join(f"{int(n)} {_e(k)}" for k, n in states.items()) if isinstance(states, Mapping) else ""
        out.append(
            f'<p class="meta">Files: {int(totals.get("files", len(files)) or 0)} ({st}); '
            f"faces: {int(totals.get('faces', 0) or 0)}; frames failed closed: "
            f"{int(totals.get('fail_closed_frames', 0) or 0)}</p>"
        )
    out.append("<h2>Settings</h2><table><tr><th>Setting</th><th>Value</th></tr>")
    for key, value in _flat("", job.get("settings") or {}):
        out.append(f"<tr><td>{_e(key)}</td><td>{_e(value)}</td></tr>")
    out.append("</table>")
    models = [m for m in job.get("models") or [] if isinstance(m, Mapping)]
    if models:
        out.append(
            "<h2>Models</h2><table><tr><th>Model</th><th>Used for</th><th>File</th><th>SHA-256</th></tr>"
        )
        for m in models:
            hashes = f"file {_e(m.get('sha256'))}"
            if m.get("loaded_sha256") and m.get("loaded_sha256") != m.get("sha256"):
                hashes += f"<br>as loaded {_e(m.get('loaded_sha256'))}"
            out.append(
                f"<tr><td>{_e(m.get('name'))}</td><td>{_e(m.get('role'))}</td><td>{_e(m.get('file'))}"
                f'<br>{_e(m.get("package"))}</td><td class="hash">{hashes}</td></tr>'
            )
        out.append("</table>")
    out.append(
        "<h2>Files</h2><table><tr><th>#</th><th>Input</th><th>Output</th><th>Result</th><th>Found</th>"
        "<th>Failed closed</th><th>Audio</th><th>Frames</th></tr>"
    )
    for i, f in enumerate(files, 1):
        duration = f.get("duration_s")
        frames = f"{int(f.get('frames', 0) or 0)}"
        if isinstance(duration, int | float):
            frames += f"<br>{duration:.1f} s"
        out.append(
            f'<tr><td class="num">{i}</td><td>{_file_cell(f.get("input"))}</td><td>{_file_cell(f.get("output"))}</td>'
            f"<td>{_state_cell(f)}</td><td>{_found_cell(f)}</td><td>{_fail_cell(f)}</td>"
            f'<td>{_e(f.get("audio") or "—")}</td><td class="num">{frames}</td></tr>'
        )
    out.append("</table>")
    for i, f in enumerate(files, 1):
        bands = (f.get("found") or {}).get("bands") if isinstance(f.get("found"), Mapping) else None
        if f.get("kind") != "video" or not bands:
            continue
        name = (f.get("input") or {}).get("name", "") if isinstance(f.get("input"), Mapping) else ""
        out.append(
            f"<h2>File {i}: {_e(name)}, per {BAND_S:g} seconds</h2><table><tr><th>From (s)</th><th>To (s)</th>"
            "<th>Frames</th><th>Frames with a face</th><th>Face masks</th><th>Text masks</th></tr>"
        )
        for b in bands:
            out.append(
                f'<tr><td class="num">{_e(b.get("start_s"))}</td><td class="num">{_e(b.get("end_s"))}</td>'
                f'<td class="num">{_e(b.get("frames"))}</td><td class="num">{_e(b.get("frames_with_faces"))}</td>'
                f'<td class="num">{_e(b.get("faces_masked"))}</td><td class="num">{_e(b.get("plates"))}</td></tr>'
            )
        out.append("</table>")
    out.append("</body></html>\n")
    return "\n".join(out)
