"""Review before export (issue #23): the review log a run leaves, tracks, edits, and what they mask.

A video anonymized with a review folder (`anonymize.Batch.run(review_dir=...)`) leaves there
`log.jsonl.gz`: a header line, then one line per frame in order with the masks exactly as they were
rendered (full floats: a re-render from them gives the same pixels), the detections that counted,
the text masks, and whether the frame failed closed or was dropped; and `proxy.mp4`, the anonymized
frames small and seekable for the review page. A photo leaves a one-frame log.

The review page and the CLI's `--edits` act on tracks: `link_tracks` links the logged masks across
frames, deterministically, so the same log always gives the same track ids (the CLI detects again and
links again: same detections, same ids). Edits (`parse_edits`, documented in docs/edits-format.md)
remove or keep a track's mask, keep only some tracks visible, add a mask (`follow` follows it on the
original), or add a static zone. `masks_for` says what one frame gets and `render` applies it with
the engine's own obfuscation, in the engine's order, so that no edits give back the run's pixels.

Fail closed, whatever the edits: a frame that failed closed stays whole-frame obfuscated (a dropped
one stays dropped); keeping a face visible uncovers that face's own mask box only, never another
mask, text mask or zone overlapping it.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import shutil
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from streamproxy.config import EngineConfig
from streamproxy.engine.obfuscate import fill_zones, obfuscate, obfuscate_whole
from streamproxy.engine.text import text_obfuscation
from streamproxy.types import Box, Planes

log = logging.getLogger(__name__)

LOG_FORMAT = "streamproxy-review-log/1"
FORMAT = "streamproxy-edits/1"
LOG_NAME = "log.jsonl.gz"
PROXY_NAME = "proxy.mp4"
OPS = ("remove", "keep", "only", "add", "zone")
# The reason the text detector's failures are logged under (engine/text.py's fail-closed frames).
TEXT_FAIL = "text_detector_error"

# Linking masks into tracks: a mask continues the track whose last mask it overlaps this much (IoU),
# across gaps of up to LINK_GAP frames without a mask (a face the detector lost for a moment).
LINK_IOU = 0.2
LINK_GAP = 5

# The add-mask follower (template matching on the original's luma).
FOLLOW_MAX_WIDTH = 640  # frames are searched at most this wide (faster, and enough to follow a face)
FOLLOW_MIN_WIDTH = 160  # ... and at least this wide; a longer range than that allows is refused
FOLLOW_MAX_BYTES = 256 << 20  # the range's pictures kept in memory (both directions need them)
FOLLOW_SEARCH = 0.75  # the search window: the box grown by this many box sizes per side
FOLLOW_LOST_SCORE = 0.5  # a match below this (normalised correlation) is not the target
FOLLOW_GROW = 0.02  # a lost target: its box grows this much of its size per side and frame...
FOLLOW_MAX_GROW = 2.0  # ... up to this many times its size
FOLLOW_MIN_PX = 4.0  # a followed box is never smaller than this (frame pixels)
# Raw streams need their demuxer named, as the run names it (anonymize.RAW_FORMATS, which imports this
# module: a copy, that tests/test_edits.py checks is the same).
RAW_FORMATS = {".h264": "h264", ".264": "h264", ".h265": "hevc", ".265": "hevc", ".hevc": "hevc"}


# --- the review log ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReviewFrame:
    """One frame of the log: what the run rendered on it."""

    i: int
    pts: int
    masks: tuple[Box, ...]  # face masks, in the order they were rendered (before clipping)
    dets: tuple[tuple[Box, float], ...]  # detections that counted, where the detector ran
    text: tuple[Box, ...] = ()  # text masks (plates and other text)
    fail: str = ""  # why the frame failed closed ("" = it did not)
    drop: bool = False  # failed closed and dropped (the fail-closed action is drop)
    text_fail: bool = False  # the text detector failed on it (rendered whole after the faces)

    @property
    def face_fail(self) -> bool:
        """The face stage failed closed (whole frame instead of the face masks)."""
        return bool(self.fail) and self.fail != TEXT_FAIL


@dataclass(eq=False)
class ReviewLog:
    """A file's review log: `header` (format, kind, width, height, fps, rate, frames, time_base,
    input_sha256) and one `ReviewFrame` per frame, in order."""

    header: dict[str, Any]
    frames: list[ReviewFrame]
    _tracks: list[ReviewTrack] | None = field(default=None, repr=False)

    @property
    def width(self) -> int:
        return int(self.header["width"])

    @property
    def height(self) -> int:
        return int(self.header["height"])


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


def box_list(b: Box) -> list[float | int]:
    """A box as JSON: its exact floats (Python's repr round-trips), integers where whole."""
    return [_num(b.x1), _num(b.y1), _num(b.x2), _num(b.y2)]


def frame_json(f: ReviewFrame) -> dict[str, Any]:
    out: dict[str, Any] = {
        "i": f.i,
        "pts": f.pts,
        "masks": [box_list(m) for m in f.masks],
        # Detections are shown, not rendered: rounded.
        "dets": [[round(v, 1) for v in (b.x1, b.y1, b.x2, b.y2)] + [round(s, 3)] for b, s in f.dets],
        "text": [box_list(m) for m in f.text],
        "fail": f.fail,
        "drop": f.drop,
    }
    if f.text_fail:
        out["text_fail"] = True
    return out


def _frame_from_json(d: dict[str, Any]) -> ReviewFrame:
    return ReviewFrame(
        i=int(d["i"]),
        pts=int(d["pts"]),
        masks=tuple(Box(*map(float, m)) for m in d.get("masks", [])),
        dets=tuple((Box(*map(float, x[:4])), float(x[4])) for x in d.get("dets", [])),
        text=tuple(Box(*map(float, m)) for m in d.get("text", [])),
        fail=str(d.get("fail", "")),
        drop=bool(d.get("drop", False)),
        text_fail=bool(d.get("text_fail", False)),
    )


class LogWriter:
    """Writes a review log under temporary names; `finish` renames it into place, `abort` removes it.

    Frames are written as they come (compressed, nothing held in memory); the header, which needs the
    frame count and the input's SHA-256, is written at the end as the first gzip member of the final
    file, the frames' member appended after it (concatenated gzip members are one gzip stream)."""

    def __init__(self, review_dir: Path, header: dict[str, Any]) -> None:
        self.dir = review_dir
        self.header = dict(header)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._rows_path = self.dir / f".{LOG_NAME}.rows.part"
        self._rows: gzip.GzipFile | None = gzip.open(self._rows_path, "wb", compresslevel=5)
        self.frames = 0

    def add(self, frame: ReviewFrame) -> None:
        assert self._rows is not None
        self._rows.write(json.dumps(frame_json(frame), separators=(",", ":")).encode() + b"\n")
        self.frames += 1

    def finish(self, input_sha256: str) -> Path:
        assert self._rows is not None
        self._rows.close()
        self._rows = None
        head = {**self.header, "format": LOG_FORMAT, "frames": self.frames, "input_sha256": input_sha256}
        tmp = self.dir / f".{LOG_NAME}.part"
        try:
            with tmp.open("wb") as out:
                out.write(gzip.compress(json.dumps(head, separators=(",", ":")).encode() + b"\n"))
                with self._rows_path.open("rb") as rows:
                    shutil.copyfileobj(rows, out)
            dst = self.dir / LOG_NAME
            tmp.replace(dst)
            return dst
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            self._rows_path.unlink(missing_ok=True)

    def abort(self) -> None:
        if self._rows is not None:
            try:
                self._rows.close()
            except OSError:
                pass
            self._rows = None
        self._rows_path.unlink(missing_ok=True)
        (self.dir / f".{LOG_NAME}.part").unlink(missing_ok=True)


def write_log(review_dir: Path, header: dict[str, Any], frames: list[ReviewFrame], input_sha256: str) -> Path:
    """A whole log at once (a photo's one frame)."""
    w = LogWriter(review_dir, header)
    try:
        for f in frames:
            w.add(f)
        return w.finish(input_sha256)
    except BaseException:
        w.abort()
        raise


def read_log(review_dir: Path) -> ReviewLog:
    """The review log in `review_dir` (ValueError when it is not one)."""
    path = Path(review_dir) / LOG_NAME
    frames: list[ReviewFrame] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        header = json.loads(f.readline() or "null")
        if not isinstance(header, dict) or header.get("format") != LOG_FORMAT:
            raise ValueError(f"{path}: not a review log ({LOG_FORMAT})")
        for line in f:
            if line.strip():
                frames.append(_frame_from_json(json.loads(line)))
    if len(frames) != int(header.get("frames", -1)):
        raise ValueError(f"{path}: {len(frames)} frame line(s), the header says {header.get('frames')}")
    return ReviewLog(header, frames)


# --- tracks ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReviewTrack:
    """A face's masks over the frames it was masked in: frame -> (mask box, detection score or 0)."""

    id: int
    first: int
    last: int
    boxes: dict[int, tuple[Box, float]]
    # frame -> index of the track's mask in that frame's `ReviewFrame.masks`
    slots: dict[int, int] = field(default_factory=dict, compare=False, repr=False)


def _score(mask: Box, dets: tuple[tuple[Box, float], ...]) -> float:
    """The best detection whose centre lies in the mask (0: the mask came from tracking alone)."""
    best = 0.0
    for b, s in dets:
        if mask.x1 <= b.cx <= mask.x2 and mask.y1 <= b.cy <= mask.y2:
            best = max(best, s)
    return best


def _pairs(masks: tuple[Box, ...], active: dict[int, tuple[Any, ...]]) -> list[tuple[float, int, int]]:
    """(-IoU, track id, mask index) of every mask and active track overlapping by LINK_IOU, sorted.

    Box.iou's arithmetic on arrays: the same IEEE operations in the same order give the same values,
    so the same pairs and ties as a loop over Box.iou, ~8x faster in a crowd (~6 masks x ~70 active
    tracks a frame: one minute of MOT17-13 linked in 0.29 s instead of 2.45 s)."""
    if not active or not masks:
        return []
    tids = list(active)
    a = np.array([(b.x1, b.y1, b.x2, b.y2) for b in (active[t][1] for t in tids)], dtype=np.float64)
    m = np.array([(b.x1, b.y1, b.x2, b.y2) for b in masks], dtype=np.float64)
    w = np.minimum(m[:, None, 2], a[None, :, 2]) - np.maximum(m[:, None, 0], a[None, :, 0])
    h = np.minimum(m[:, None, 3], a[None, :, 3]) - np.maximum(m[:, None, 1], a[None, :, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    area_m = np.maximum(0.0, m[:, 2] - m[:, 0]) * np.maximum(0.0, m[:, 3] - m[:, 1])
    area_a = np.maximum(0.0, a[:, 2] - a[:, 0]) * np.maximum(0.0, a[:, 3] - a[:, 1])
    union = area_m[:, None] + area_a[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    mis, tis = np.nonzero(iou >= LINK_IOU)
    return sorted((-float(iou[mi, ti]), tids[ti], int(mi)) for mi, ti in zip(mis, tis, strict=True))


def link_tracks(log_: ReviewLog) -> list[ReviewTrack]:
    """The log's masks linked across frames into tracks, ids from 1 in order of first appearance.

    Deterministic (the CLI re-detects and re-links to find the ids an edits file names): frame by
    frame, mask-track pairs are taken by highest IoU (ties: lower track id, then lower mask index);
    a mask continues a track last seen at most LINK_GAP frames before it when they overlap LINK_IOU."""
    if log_._tracks is not None:
        return log_._tracks
    # id -> (last frame, last box, boxes, slots)
    active: dict[int, tuple[int, Box, dict[int, tuple[Box, float]], dict[int, int]]] = {}
    done: list[tuple[int, dict[int, tuple[Box, float]], dict[int, int]]] = []
    next_id = 1
    for fr in log_.frames:
        for tid in [t for t, a in active.items() if fr.i - a[0] - 1 > LINK_GAP]:
            a = active.pop(tid)
            done.append((tid, a[2], a[3]))
        if not fr.masks:
            continue
        pairs = _pairs(fr.masks, active)
        taken_m: set[int] = set()
        taken_t: set[int] = set()
        owner: dict[int, int] = {}
        for _neg, tid, mi in pairs:
            if tid in taken_t or mi in taken_m:
                continue
            taken_t.add(tid)
            taken_m.add(mi)
            owner[mi] = tid
        for mi, m in enumerate(fr.masks):
            got = owner.get(mi)
            if got is None:
                tid = next_id
                next_id += 1
                active[tid] = (fr.i, m, {}, {})
            else:
                tid = got
            _last, _box, boxes, slots = active[tid]
            boxes[fr.i] = (m, _score(m, fr.dets))
            slots[fr.i] = mi
            active[tid] = (fr.i, m, boxes, slots)
    done += [(tid, a[2], a[3]) for tid, a in active.items()]
    tracks = [
        ReviewTrack(tid, min(boxes), max(boxes), boxes, slots) for tid, boxes, slots in sorted(done) if boxes
    ]
    log_._tracks = tracks
    return tracks


# --- edits -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Edit:
    """One edit. `start`/`end`: the frame range (inclusive; None = the file's start/end)."""

    op: str
    start: int | None = None
    end: int | None = None
    track: int | None = None  # remove, keep
    tracks: tuple[int, ...] = ()  # only
    id: str = ""  # add
    keyframes: dict[int, Box] = field(default_factory=dict)  # add: the boxes the user placed
    boxes: dict[int, Box] = field(default_factory=dict)  # add: the box on each frame (followed)
    box: Box | None = None  # zone

    def covers(self, frame: int) -> bool:
        return (self.start is None or frame >= self.start) and (self.end is None or frame <= self.end)


@dataclass(frozen=True, slots=True)
class Edits:
    edits: tuple[Edit, ...] = ()
    input_name: str = ""
    input_sha256: str = ""
    by: str = ""
    saved: str = ""

    def counts(self) -> dict[str, int]:
        """Edits per op (the audit record's summary)."""
        out: dict[str, int] = {}
        for e in self.edits:
            out[e.op] = out.get(e.op, 0) + 1
        return out


def _frame_no(v: Any, key: str, frames: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        else:
            raise ValueError(f"{key}: expected a frame number, got {v!r}")
    if not 0 <= v < frames:
        raise ValueError(f"{key}: frame {v} is outside the file (frames 0 to {frames - 1})")
    return int(v)


def _box(v: Any, key: str, size: tuple[int, int] | None) -> Box:
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        raise ValueError(f"{key}: expected a box [x1, y1, x2, y2]")
    nums = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ValueError(f"{key}: expected four numbers [x1, y1, x2, y2], got {v!r}")
        nums.append(float(x))
    b = Box(*nums)
    if b.x2 <= b.x1 or b.y2 <= b.y1:
        raise ValueError(f"{key}: an empty box (x2 must be more than x1, y2 more than y1): {v!r}")
    if size is not None and b.clipped(*size).area <= 0:
        raise ValueError(f"{key}: the box {v!r} is outside the picture ({size[0]}x{size[1]})")
    return b


def _boxes(v: Any, key: str, frames: int, size: tuple[int, int] | None) -> dict[int, Box]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError(f'{key}: expected {{"frame": [x1, y1, x2, y2], ...}}')
    out: dict[int, Box] = {}
    for k, b in v.items():
        n = _frame_no(k, f"{key}.{k}", frames)
        out[n] = _box(b, f"{key}.{k}", size)
    return dict(sorted(out.items()))


def _track_id(v: Any, key: str, known: Collection[int] | None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{key}: expected a track number, got {v!r}")
    if known is not None and v not in known:
        raise ValueError(f"{key}: no such track ({v})")
    return v


def parse_edits(
    data: Any,
    frames: int,
    *,
    log_: ReviewLog | None = None,
    tracks: Collection[int] | None = None,
    size: tuple[int, int] | None = None,
) -> Edits:
    """An edits document (docs/edits-format.md) checked; ValueError names the key (`edits[2].track:
    no such track`). Track ids are checked against `tracks`, or the tracks of `log_` (whose size
    also bounds the boxes, unless `size` is given)."""
    if log_ is not None:
        if tracks is None:
            tracks = {t.id for t in link_tracks(log_)}
        if size is None:
            size = (log_.width, log_.height)
    frames = max(0, int(frames))
    if not isinstance(data, dict):
        raise ValueError("edits: expected a JSON object (docs/edits-format.md)")
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT:
        raise ValueError(f"format: expected {FORMAT!r}, got {fmt!r}")
    inp = data.get("input") or {}
    if not isinstance(inp, dict):
        raise ValueError('input: expected {"name": ..., "sha256": ...}')
    for k in ("name", "sha256"):
        if not isinstance(inp.get(k, ""), str):
            raise ValueError(f"input.{k}: expected text")
    items = data.get("edits", [])
    if not isinstance(items, list):
        raise ValueError("edits: expected a list of edits")
    out: list[Edit] = []
    for n, item in enumerate(items):
        key = f"edits[{n}]"
        if not isinstance(item, dict):
            raise ValueError(f"{key}: expected an object")
        op = item.get("op")
        if op not in OPS:
            raise ValueError(f"{key}.op: unknown edit {op!r} (one of {', '.join(OPS)})")
        if frames <= 0:
            raise ValueError(f"{key}: the file has no frames to edit")
        start = None if item.get("from") is None else _frame_no(item["from"], f"{key}.from", frames)
        end = None if item.get("to") is None else _frame_no(item["to"], f"{key}.to", frames)
        if start is not None and end is not None and start > end:
            raise ValueError(f"{key}.from: {start} is after to ({end})")
        if op in ("remove", "keep"):
            out.append(Edit(op, start, end, track=_track_id(item.get("track"), f"{key}.track", tracks)))
        elif op == "only":
            ids = item.get("tracks")
            if not isinstance(ids, list) or not ids:
                raise ValueError(f"{key}.tracks: expected a list of track numbers")
            chosen = tuple(_track_id(t, f"{key}.tracks[{j}]", tracks) for j, t in enumerate(ids))
            out.append(Edit(op, start, end, tracks=chosen))
        elif op == "zone":
            out.append(Edit(op, start, end, box=_box(item.get("box"), f"{key}.box", size)))
        else:  # add
            ident = item.get("id", f"a{n + 1}")
            if not isinstance(ident, str):
                raise ValueError(f"{key}.id: expected text")
            keys = _boxes(item.get("keyframes"), f"{key}.keyframes", frames, size)
            boxes = _boxes(item.get("boxes"), f"{key}.boxes", frames, size) or dict(keys)
            if not boxes:
                raise ValueError(f"{key}.boxes: an added mask needs at least one box")
            # The range of an added mask defaults to the frames its boxes cover.
            start = min(boxes) if start is None else start
            end = max(boxes) if end is None else end
            if start > end:
                raise ValueError(f"{key}.from: {start} is after to ({end})")
            out.append(Edit(op, start, end, id=ident, keyframes=keys, boxes=_filled(boxes, start, end)))
    name, sha = str(inp.get("name", "")), str(inp.get("sha256", ""))
    if log_ is not None:
        # The file the edits are for: the log's, unless the document says another (refused).
        want = str(log_.header.get("input_sha256") or "")
        if sha and want and sha != want:
            raise ValueError("input.sha256: these edits were made for another file (its SHA-256 differs)")
        name, sha = name or str(log_.header.get("input_name") or ""), sha or want
    by, saved = data.get("by", ""), data.get("saved", "")
    return Edits(
        tuple(out),
        input_name=name,
        input_sha256=sha,
        by=by if isinstance(by, str) else "",
        saved=saved if isinstance(saved, str) else "",
    )


def _filled(boxes: dict[int, Box], start: int, end: int) -> dict[int, Box]:
    """An added mask's box on every frame of start..end: the given boxes, linear between them, the
    nearest one held before the first and after the last (a hand-written file may give a few)."""
    keys = sorted(boxes)
    out: dict[int, Box] = {}
    j = 0
    for f in range(start, end + 1):
        while j + 1 < len(keys) and keys[j + 1] <= f:
            j += 1
        a = keys[j]
        if f in boxes:
            out[f] = boxes[f]
        elif f < keys[0]:
            out[f] = boxes[keys[0]]
        elif j + 1 >= len(keys):
            out[f] = boxes[a]
        else:
            b = keys[j + 1]
            out[f] = boxes[a].lerp(boxes[b], (f - a) / (b - a))
    return out


def edits_json(edits: Edits) -> dict[str, Any]:
    """The document of `edits` (what `parse_edits` reads back to the same edits)."""
    items: list[dict[str, Any]] = []
    for e in edits.edits:
        d: dict[str, Any] = {"op": e.op}
        if e.op in ("remove", "keep"):
            d["track"] = e.track
        elif e.op == "only":
            d["tracks"] = list(e.tracks)
        elif e.op == "zone":
            assert e.box is not None
            d["box"] = box_list(e.box)
        else:
            d["id"] = e.id
            d["keyframes"] = {str(k): box_list(b) for k, b in e.keyframes.items()}
            d["boxes"] = {str(k): box_list(b) for k, b in e.boxes.items()}
        d["from"], d["to"] = e.start, e.end
        items.append(d)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "input": {"name": edits.input_name, "sha256": edits.input_sha256},
        "edits": items,
    }
    if edits.by:
        doc["by"] = edits.by
    if edits.saved:
        doc["saved"] = edits.saved
    return doc


# --- what a frame gets -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameMasks:
    """What one frame gets, in the order `render` applies it (the engine's order): config privacy
    zones; the whole frame (face stage failed closed) or the face masks then the added masks; the
    whole frame again (text stage failed closed) or the text masks; the zones drawn in the review;
    and, where `visible` is set ("only"), everything obfuscated except those boxes."""

    faces: tuple[Box, ...] = ()
    added: tuple[Box, ...] = ()
    text: tuple[Box, ...] = ()
    zones: tuple[Box, ...] = ()
    visible: tuple[Box, ...] | None = None
    face_fail: bool = False
    text_fail: bool = False
    drop: bool = False

    @property
    def whole(self) -> bool:
        """The frame failed closed: obfuscated whole whatever the edits."""
        return self.face_fail or self.text_fail


_owner_cache: dict[int, tuple[list[ReviewTrack], dict[int, dict[int, int]]]] = {}


def _owners(tracks: list[ReviewTrack]) -> dict[int, dict[int, int]]:
    """frame -> {mask index -> track id}, built once per tracks list (a re-render asks every frame)."""
    hit = _owner_cache.get(id(tracks))
    if hit is not None and hit[0] is tracks:
        return hit[1]
    index: dict[int, dict[int, int]] = {}
    for t in tracks:
        for f, mi in t.slots.items():
            index.setdefault(f, {})[mi] = t.id
    if len(_owner_cache) >= 4:
        _owner_cache.pop(next(iter(_owner_cache)))
    _owner_cache[id(tracks)] = (tracks, index)  # the list is held: its id is not reused meanwhile
    return index


def masks_for(frame: int, log_: ReviewLog, tracks: list[ReviewTrack], edits: Edits) -> FrameMasks:
    """What frame `frame` gets with `edits` (see FrameMasks). Fail closed: a frame that failed
    closed keeps its whole-frame obfuscation (or stays dropped); "keep" and "only" uncover a track's
    own mask box and nothing that overlaps it."""
    fr = log_.frames[frame]
    active = [e for e in edits.edits if e.covers(frame)]
    zones = tuple(e.box for e in active if e.op == "zone" and e.box is not None)
    if fr.drop or fr.face_fail or fr.text_fail:
        return FrameMasks(fr.masks, (), fr.text, zones, None, fr.face_fail, fr.text_fail, fr.drop)
    owners = _owners(tracks).get(frame, {})
    hidden = {e.track for e in active if e.op in ("remove", "keep")}
    only = [e for e in active if e.op == "only"]
    visible: tuple[Box, ...] | None = None
    if only:
        shown = {t for e in only for t in e.tracks} | {e.track for e in active if e.op == "keep"}
        hidden |= shown
        visible = tuple(m for mi, m in enumerate(fr.masks) if owners.get(mi) in shown)
    faces = tuple(m for mi, m in enumerate(fr.masks) if owners.get(mi) not in hidden or mi not in owners)
    added = tuple(e.boxes[frame] for e in active if e.op == "add" and frame in e.boxes)
    return FrameMasks(faces, added, fr.text, zones, visible)


def _bounds(box: Box, scale: float, pw: int, ph: int) -> tuple[int, int, int, int] | None:
    x1, y1, x2, y2 = box.mapped(scale, scale).int_bounds()
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, pw), min(y2, ph)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def render(planes: Planes, fm: FrameMasks, cfg: EngineConfig, *, clip: bool) -> None:
    """Apply `fm` to a frame's planes in place, with the engine's obfuscation and in its order, so
    that a frame without edits gets the pixels the run gave it (`clip`: the masks are clipped to the
    frame first, as bulk video does; a still's are not)."""
    w, h = planes.width, planes.height

    def fit(boxes: tuple[Box, ...]) -> list[Box]:
        return [b.clipped(w, h) for b in boxes] if clip else list(boxes)

    obf = cfg.obfuscation
    fill_zones(planes, cfg.privacy_zones)
    if fm.face_fail:
        obfuscate_whole(planes, obf)
    else:
        obfuscate(planes, fit(fm.faces), obf)
        if fm.added:
            # What the user drew is what gets covered: boxes, not the ellipse inscribed in them.
            obfuscate(planes, fit(fm.added), obf.model_copy(update={"shape": "box"}))
    if fm.text_fail:
        obfuscate_whole(planes, obf)
    elif fm.text:
        obfuscate(planes, fit(fm.text), text_obfuscation(obf))
    for z in fm.zones:  # filled solid, as the config's privacy zones are
        for p in planes.planes:
            ph, pw = p.data.shape
            b = _bounds(z, p.scale, pw, ph)
            if b is not None:
                p.data[b[1] : b[3], b[0] : b[2]] = p.fill
    if fm.visible is not None and not fm.whole:
        # "only": the whole frame obfuscated except the chosen faces' mask boxes, which keep what
        # the steps above made of them (other masks, text and zones overlapping them stay).
        keep: list[tuple[int, int, int, int, int, np.ndarray]] = []
        for k, p in enumerate(planes.planes):
            ph, pw = p.data.shape
            for v in fm.visible:
                b = _bounds(v, p.scale, pw, ph)
                if b is not None:
                    keep.append((k, *b, p.data[b[1] : b[3], b[0] : b[2]].copy()))
        obfuscate_whole(planes, obf)
        for k, x1, y1, x2, y2, data in keep:
            planes.planes[k].data[y1:y2, x1:x2] = data


# --- following an added mask -------------------------------------------------------------------


def _frames_luma(video: Path, start: int, end: int) -> tuple[list[np.ndarray], float, tuple[int, int]]:
    """Grey pictures of frames start..end of `video` (decode order), scaled by the returned factor."""
    out: list[np.ndarray] = []
    scale = 1.0
    size = (0, 0)
    sw = sh = 0
    with av.open(str(video), format=RAW_FORMATS.get(video.suffix.lower())) as c:
        if not c.streams.video:
            raise ValueError("the original has no video")
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        i = 0
        for frame in c.decode(vs):
            if i > end:
                break
            if i >= start:
                if not out:
                    size = (frame.width, frame.height)
                    n = end - start + 1
                    scale = min(1.0, FOLLOW_MAX_WIDTH / frame.width)
                    fit = math.sqrt(FOLLOW_MAX_BYTES / max(1, n * frame.width * frame.height))
                    scale = min(scale, fit)
                    if frame.width * scale < FOLLOW_MIN_WIDTH and scale < 1.0:
                        most = int(FOLLOW_MAX_BYTES / ((FOLLOW_MIN_WIDTH / frame.width) ** 2 * frame.width
                                                       * frame.height))  # fmt: skip
                        raise ValueError(
                            f"to: a mask is followed over at most {most} frames at a time (asked {n}); "
                            "split it into shorter ranges"
                        )
                    sw, sh = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
                g = frame.reformat(width=sw, height=sh, format="gray", threads=1).to_ndarray()
                out.append(np.ascontiguousarray(g))
            i += 1
    if len(out) != end - start + 1:
        raise ValueError(f"to: the original has {start + len(out)} frames, fewer than asked ({end + 1})")
    return out, scale, size


def _patch(img: np.ndarray, b: Box) -> tuple[np.ndarray, float, float, float, float] | None:
    """The template of `b`: the picture inside it (clipped to the frame), the box's offset from the
    patch's corner, and the box's size."""
    h, w = img.shape
    x1, y1 = max(0, round(b.x1)), max(0, round(b.y1))
    x2, y2 = min(w, round(b.x2)), min(h, round(b.y2))
    if x2 - x1 < 4 or y2 - y1 < 4:
        return None
    return img[y1:y2, x1:x2].copy(), b.x1 - x1, b.y1 - y1, b.width, b.height


def _follow_one(
    lumas: list[np.ndarray], base: int, k0: int, box0: Box, stop: int, step: int
) -> Iterator[tuple[int, Box]]:
    """Template matching from frame k0 (box0, tracking coordinates) to `stop`, one frame at a time.

    The template is the target as last found (it changes as the target turns); a match under
    FOLLOW_LOST_SCORE means the target is lost: the box stays where it was seen last and grows a
    little each frame (up to FOLLOW_MAX_GROW times), until the template is found again (the box then
    takes the template's size back)."""
    b = box0
    size0 = max(box0.width, box0.height)
    got = _patch(lumas[k0 - base], b)
    for f in range(k0 + step, stop + step, step):
        img = lumas[f - base]
        h, w = img.shape
        found: Box | None = None
        if got is not None:
            tmpl, ox, oy, bw, bh = got
            th, tw = tmpl.shape
            pad = FOLLOW_SEARCH * max(b.width, b.height) + 8
            sx1, sy1 = max(0, math.floor(b.x1 - pad)), max(0, math.floor(b.y1 - pad))
            sx2, sy2 = min(w, math.ceil(b.x2 + pad)), min(h, math.ceil(b.y2 + pad))
            if sx2 - sx1 >= tw and sy2 - sy1 >= th and float(tmpl.std()) > 1.0:
                res = cv2.matchTemplate(img[sy1:sy2, sx1:sx2], tmpl, cv2.TM_CCOEFF_NORMED)
                _lo, score, _lo_at, at = cv2.minMaxLoc(res)
                if math.isfinite(score) and score >= FOLLOW_LOST_SCORE:
                    x, y = sx1 + at[0] + ox, sy1 + at[1] + oy
                    found = Box(x, y, x + bw, y + bh)
        if found is not None:
            b = found
            got = _patch(img, b) or got
        else:
            grow = FOLLOW_GROW * max(b.width, b.height)
            if max(b.width, b.height) + 2 * grow <= FOLLOW_MAX_GROW * size0:
                b = b.grown(grow)
        yield f, b


def follow(
    video: Path, frame: int, box: Box, start: int, end: int, keyframes: dict[int, Box] | None = None
) -> dict[int, Box]:
    """The box of an added mask on every frame of start..end, followed on the ORIGINAL video.

    `box` on `frame` and the user's `keyframes` are exact where they are; from each keyframe the
    target is followed forwards and backwards (template matching on the luma); between two
    keyframes the two followings are blended linearly (the one from the nearer keyframe weighs more),
    before the first and after the last the one following reaches. Frame numbers are decode order."""
    keys = {int(k): v for k, v in (keyframes or {}).items()}
    keys.setdefault(int(frame), box)
    if start > end:
        raise ValueError(f"from: {start} is after to ({end})")
    if start < 0:
        raise ValueError(f"from: {start} is before the first frame")
    for k in keys:
        if not start <= k <= end:
            raise ValueError(f"keyframes.{k}: outside from..to ({start}..{end})")
    lumas, s, (fw, fh) = _frames_luma(Path(video), start, end)
    ks = sorted(keys)
    scaled = {k: keys[k].mapped(s, s) for k in ks}
    fwd: dict[int, dict[int, Box]] = {}
    bwd: dict[int, dict[int, Box]] = {}
    for j, k in enumerate(ks):
        stop_f = ks[j + 1] if j + 1 < len(ks) else end
        stop_b = ks[j - 1] if j > 0 else start
        fwd[k] = dict(_follow_one(lumas, start, k, scaled[k], stop_f, 1)) if stop_f > k else {}
        bwd[k] = dict(_follow_one(lumas, start, k, scaled[k], stop_b, -1)) if stop_b < k else {}
    out: dict[int, Box] = {}
    for f in range(start, end + 1):
        if f in scaled:
            b = scaled[f]
        elif f < ks[0]:
            b = bwd[ks[0]][f]
        elif f > ks[-1]:
            b = fwd[ks[-1]][f]
        else:
            j = max(i for i, k in enumerate(ks) if k < f)
            a, c = ks[j], ks[j + 1]
            b = fwd[a][f].lerp(bwd[c][f], (f - a) / (c - a))
        b = b.mapped(1 / s, 1 / s)
        out[f] = _sane(b, fw, fh)
    return out


def _sane(b: Box, w: int, h: int) -> Box:
    """A followed box inside the frame and never smaller than FOLLOW_MIN_PX."""
    c = b.clipped(w, h)
    if c.width < FOLLOW_MIN_PX or c.height < FOLLOW_MIN_PX:
        cx = min(max(b.cx, FOLLOW_MIN_PX / 2), w - FOLLOW_MIN_PX / 2)
        cy = min(max(b.cy, FOLLOW_MIN_PX / 2), h - FOLLOW_MIN_PX / 2)
        c = Box.from_center(cx, cy, max(c.width, FOLLOW_MIN_PX), max(c.height, FOLLOW_MIN_PX)).clipped(w, h)
    return c


def header_rate(header: dict[str, Any]) -> Fraction:
    """The file's frame rate as a fraction (header "rate" "num/den", else its "fps")."""
    rate = header.get("rate")
    if isinstance(rate, str) and "/" in rate:
        return Fraction(rate)
    return Fraction(float(header.get("fps") or 25)).limit_denominator(1001)
