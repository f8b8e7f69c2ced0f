"""files/edits.py on its own: the review log, track linking, the edits format, what each edit masks
(every op and their combinations, fail closed), and the add-mask follower on a real encoded video."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from facekit import background, face_crop

from streamproxy.config import EngineConfig
from streamproxy.engine.obfuscate import obfuscate, planes_from_bgr
from streamproxy.files import edits as E
from streamproxy.files.edits import Edits, FrameMasks, ReviewFrame, ReviewLog
from streamproxy.types import Box

W, H = 320, 240
A0 = Box(20, 20, 80, 90)  # face A, moving right 4 px a frame
B0 = Box(200, 100, 260, 170)  # face B, still


def frame(i: int, masks: tuple[Box, ...] = (), **kw: Any) -> ReviewFrame:
    return ReviewFrame(i, i * 512, masks, tuple((m.scaled(0.7), 0.9) for m in masks), **kw)


def a_at(i: int) -> Box:
    return A0.mapped(1, 1, dx=4 * i)


def two_faces(n: int = 20, gap: range = range(0)) -> ReviewLog:
    """A log: face A on every frame except `gap`, face B on frames 5..n-1; frame 12 failed closed."""
    frames = []
    for i in range(n):
        masks = ([] if i in gap else [a_at(i)]) + ([B0] if i >= 5 else [])
        fail = "detector_error" if i == 12 else ""
        frames.append(frame(i, () if fail else tuple(masks), fail=fail))
    head = {"format": E.LOG_FORMAT, "kind": "video", "width": W, "height": H, "fps": 25.0, "frames": n}
    return ReviewLog(head, frames)


def doc(*edits: dict[str, Any]) -> dict[str, Any]:
    return {"format": E.FORMAT, "input": {"name": "clip.mp4", "sha256": ""}, "edits": list(edits)}


# --- log --------------------------------------------------------------------------------------


def test_log_round_trip_keeps_exact_floats_and_refuses_a_short_log(tmp_path: Path) -> None:
    odd = Box(1 / 3, 2.000000001, 100.12345678901234, 7e-5 + 50)
    rows = [frame(0, (odd,)), frame(1, (), fail="detector_error", drop=True), frame(2, (A0,), text=(B0,))]
    head = {"kind": "video", "width": W, "height": H, "fps": 25.0, "time_base": "1/12800"}
    E.write_log(tmp_path, head, rows, "ab" * 32)
    log_ = E.read_log(tmp_path)
    assert log_.header["frames"] == 3 and log_.header["input_sha256"] == "ab" * 32
    assert log_.frames[0].masks == (odd,), "masks must round-trip exactly (a re-render gives the same pixels)"
    assert log_.frames[1].drop and log_.frames[1].fail == "detector_error" and log_.frames[1].face_fail
    assert log_.frames[2].text == (B0,)
    assert not list(tmp_path.glob(".*")), "no temporary file left"
    # A log whose frame lines do not match its header is refused.
    import gzip

    with gzip.open(tmp_path / E.LOG_NAME, "rt") as f:
        lines = f.read().splitlines()
    with gzip.open(tmp_path / E.LOG_NAME, "wt") as f:
        f.write("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="frame line"):
        E.read_log(tmp_path)


def test_log_writer_abort_leaves_nothing(tmp_path: Path) -> None:
    w = E.LogWriter(tmp_path / "r", {"kind": "video", "width": W, "height": H})
    w.add(frame(0, (A0,)))
    w.abort()
    assert list((tmp_path / "r").iterdir()) == []


# --- tracks -----------------------------------------------------------------------------------


def test_link_tracks_ids_by_first_appearance_gaps_and_scores() -> None:
    log_ = two_faces(30, gap=range(15, 18))  # A missing 3 frames: same track
    tracks = E.link_tracks(log_)
    assert [(t.id, t.first, t.last) for t in tracks] == [(1, 0, 29), (2, 5, 29)]
    a, b = tracks
    assert 12 not in a.boxes and 16 not in a.boxes, "no mask on the failed frame nor in the gap"
    assert a.boxes[3] == (a_at(3), 0.9)
    assert b.slots[6] == 1 and a.slots[6] == 0
    # The same log linked again: the same tracks (deterministic), cached on the log.
    assert E.link_tracks(two_faces(30, gap=range(15, 18))) == tracks
    assert E.link_tracks(log_) is tracks


def test_link_tracks_a_long_gap_starts_a_new_track() -> None:
    tracks = E.link_tracks(two_faces(30, gap=range(15, 15 + E.LINK_GAP + 1)))
    assert [(t.id, t.first, t.last) for t in tracks] == [(1, 0, 14), (2, 5, 29), (3, 21, 29)]


def test_link_pairs_are_box_iou_exactly_with_its_ties() -> None:
    """The array IoU (link_tracks' speed) gives the very pairs, values and order of a loop over
    Box.iou: random boxes on a small grid, so equal IoUs, touching edges and empty boxes occur."""
    rng = np.random.default_rng(7)

    def box() -> Box:
        x, y = (float(v) for v in rng.integers(0, 6, 2) * 5)
        return Box(x, y, x + float(rng.choice([0, 10, 20])), y + float(rng.choice([0, 10, 20])))

    ties = 0
    for _ in range(1000):
        masks = tuple(box() for _ in range(int(rng.integers(0, 6))))
        active = {int(t): (0, box()) for t in rng.choice(50, int(rng.integers(0, 8)), replace=False)}
        loop = sorted(
            (-m.iou(a[1]), tid, mi)
            for mi, m in enumerate(masks)
            for tid, a in active.items()
            if m.iou(a[1]) >= E.LINK_IOU
        )
        got = E._pairs(masks, active)
        assert got == loop
        ties += len(loop) - len({p[0] for p in loop})
    assert ties > 20, "the grid gave equal IoUs to order by track and mask"


# --- the edits format -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "edits: expected a JSON object"),
        ({"format": "other/1", "edits": []}, "format: expected"),
        (doc({"op": "blur"}), r"edits\[0\]\.op: unknown edit 'blur'"),
        (doc({"op": "remove", "track": 9}), r"edits\[0\]\.track: no such track \(9\)"),
        (doc({"op": "remove", "track": "1"}), r"edits\[0\]\.track: expected a track number"),
        (doc({"op": "keep", "track": 1, "from": 10, "to": 3}), r"edits\[0\]\.from: 10 is after to \(3\)"),
        (doc({"op": "keep", "track": 1, "from": 40}), r"edits\[0\]\.from: frame 40 is outside the file"),
        (doc({"op": "only", "tracks": []}), r"edits\[0\]\.tracks: expected a list"),
        (doc({"op": "only", "tracks": [1, 7]}), r"edits\[0\]\.tracks\[1\]: no such track"),
        (doc({"op": "zone", "box": [1, 2, 3]}), r"edits\[0\]\.box: expected a box"),
        (doc({"op": "zone", "box": [10, 10, 5, 20]}), r"edits\[0\]\.box: an empty box"),
        (doc({"op": "zone", "box": [1, 2, float("nan"), 4]}), r"edits\[0\]\.box: expected four numbers"),
        (doc({"op": "zone", "box": [400, 300, 500, 400]}), r"edits\[0\]\.box: .* outside the picture"),
        (doc({"op": "add", "boxes": {}}), r"edits\[0\]\.boxes: an added mask needs at least one box"),
        (doc({"op": "add", "boxes": {"x": [1, 2, 3, 4]}}), r"edits\[0\]\.boxes\.x: expected a frame number"),
        (doc({"op": "add", "boxes": {"3": [1, 2, 3]}}), r"edits\[0\]\.boxes\.3: expected a box"),
        (doc({"op": "remove", "track": 1}, {"op": "zone"}), r"edits\[1\]\.box: expected a box"),
    ],
)
def test_parse_edits_names_the_key(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        E.parse_edits(data, 20, log_=two_faces())


def test_parse_edits_refuses_edits_made_for_another_file() -> None:
    log_ = two_faces()
    log_.header["input_sha256"], log_.header["input_name"] = "a" * 64, "clip.mp4"
    with pytest.raises(ValueError, match=r"input\.sha256: these edits were made for another file"):
        E.parse_edits({**doc(), "input": {"name": "clip.mp4", "sha256": "b" * 64}}, 20, log_=log_)
    # Without an input, the log's is taken.
    e = E.parse_edits({"edits": []}, 20, log_=log_)
    assert (e.input_name, e.input_sha256) == ("clip.mp4", "a" * 64)


def test_edits_json_round_trips() -> None:
    data = doc(
        {"op": "remove", "track": 1, "from": None, "to": None},
        {"op": "keep", "track": 2, "from": 3, "to": 9},
        {"op": "only", "tracks": [1, 2], "from": 10, "to": None},
        {"op": "add", "id": "a1", "keyframes": {"4": [1, 2, 30, 40.5]}, "boxes": {"4": [1, 2, 30, 40.5],
         "6": [5, 2, 34, 40.5]}, "from": 4, "to": 6},
        {"op": "zone", "box": [0, 0, 10.25, 10], "from": None, "to": None},
    )  # fmt: skip
    e = E.parse_edits(data, 20, log_=two_faces())
    assert e.counts() == {"remove": 1, "keep": 1, "only": 1, "add": 1, "zone": 1}
    again = E.parse_edits(E.edits_json(e), 20, log_=two_faces())
    assert again == e
    add = e.edits[3]
    assert add.boxes[5] == Box(3, 2, 32, 40.5), "frames between given boxes are interpolated"


def test_an_added_mask_covers_its_range_from_a_few_boxes() -> None:
    e = E.parse_edits(doc({"op": "add", "boxes": {"8": [10, 10, 20, 20]}, "from": 5, "to": 9}), 20)
    add = e.edits[0]
    assert sorted(add.boxes) == [5, 6, 7, 8, 9] and set(add.boxes.values()) == {Box(10, 10, 20, 20)}
    # Without from/to, the range is the frames the boxes cover.
    e = E.parse_edits(doc({"op": "add", "boxes": {"3": [0, 0, 9, 9], "5": [2, 0, 11, 9]}}), 20)
    assert (e.edits[0].start, e.edits[0].end, sorted(e.edits[0].boxes)) == (3, 5, [3, 4, 5])


# --- masks_for --------------------------------------------------------------------------------


def masks(frame_no: int, *edits: dict[str, Any], log_: ReviewLog | None = None) -> FrameMasks:
    log_ = log_ or two_faces()
    return E.masks_for(frame_no, log_, E.link_tracks(log_), E.parse_edits(doc(*edits), 20, log_=log_))


def test_no_edits_give_the_logged_masks_in_order() -> None:
    log_ = two_faces()
    fm = masks(7, log_=log_)
    assert fm == FrameMasks(log_.frames[7].masks, (), (), (), None)


def test_remove_and_keep_drop_the_tracks_own_mask_in_range_only() -> None:
    for op in ("remove", "keep"):
        assert masks(7, {"op": op, "track": 1}).faces == (B0,)
        assert masks(7, {"op": op, "track": 2, "from": 8}).faces == (a_at(7), B0)
        assert masks(8, {"op": op, "track": 2, "from": 8}).faces == (a_at(8),)
        assert masks(3, {"op": op, "track": 1, "to": 2}).faces == (a_at(3),)


def test_only_shows_the_chosen_tracks_boxes_and_keep_adds_to_them() -> None:
    fm = masks(7, {"op": "only", "tracks": [2]})
    assert fm.visible == (B0,) and fm.faces == (a_at(7),), "the other face keeps its mask"
    fm = masks(7, {"op": "only", "tracks": [2]}, {"op": "keep", "track": 1})
    assert fm.visible == (a_at(7), B0) and fm.faces == ()
    # A chosen track absent from the frame: nothing visible, the whole frame obfuscated.
    fm = masks(3, {"op": "only", "tracks": [2]})
    assert fm.visible == () and fm.faces == (a_at(3),)
    assert masks(3, {"op": "only", "tracks": [2], "from": 5}).visible is None


def test_add_and_zone_mask_their_boxes_in_range() -> None:
    add = {"op": "add", "boxes": {"6": [1, 1, 11, 11], "8": [5, 1, 15, 11]}}
    zone = {"op": "zone", "box": [100, 100, 120, 130], "from": 7}
    assert masks(7, add, zone).added == (Box(3, 1, 13, 11),)
    assert masks(7, add, zone).zones == (Box(100, 100, 120, 130),)
    assert masks(6, add, zone).zones == () and masks(9, add, zone).added == ()


def test_a_frame_that_failed_closed_stays_whole_whatever_the_edits() -> None:
    everything = (
        {"op": "remove", "track": 1},
        {"op": "keep", "track": 2},
        {"op": "only", "tracks": [1, 2]},
        {"op": "zone", "box": [0, 0, 10, 10]},
    )
    fm = masks(12, *everything)
    assert fm.face_fail and fm.whole and fm.visible is None
    log_ = two_faces()
    log_.frames[13] = frame(13, (), fail="detector_error", drop=True)
    assert masks(13, *everything, log_=log_).drop, "a dropped frame stays dropped"
    log_.frames[14] = frame(14, (a_at(14), B0), text=(Box(0, 0, 9, 9),), fail=E.TEXT_FAIL, text_fail=True)
    fm = masks(14, *everything, log_=log_)
    assert fm.text_fail and fm.whole and not fm.face_fail and fm.faces == (a_at(14), B0)


# --- render -----------------------------------------------------------------------------------

CFG = EngineConfig()


def picture() -> np.ndarray:
    return background(W, H, seed=3)


def rendered(fm: FrameMasks, img: np.ndarray | None = None) -> np.ndarray:
    out = (picture() if img is None else img).copy()
    E.render(planes_from_bgr(out), fm, CFG, clip=True)
    return out


def region(img: np.ndarray, b: Box) -> np.ndarray:
    x1, y1, x2, y2 = b.int_bounds()
    return img[max(0, y1) : y2, max(0, x1) : x2]


def test_render_without_edits_is_the_engines_obfuscation() -> None:
    fm = masks(7)
    want = picture()
    obfuscate(planes_from_bgr(want), [m.clipped(W, H) for m in fm.faces], CFG.obfuscation)
    assert np.array_equal(rendered(fm), want)


def test_keep_uncovers_the_face_but_not_a_mask_overlapping_it() -> None:
    log_ = two_faces()
    over = Box(60, 40, 110, 100)  # a third mask overlapping face A on frame 7
    log_.frames[7] = frame(7, (a_at(7), B0, over))
    fm = masks(7, {"op": "keep", "track": 1}, log_=log_)
    assert fm.faces == (B0, over)
    out, orig = rendered(fm), picture()
    only_a = Box(a_at(7).x1, a_at(7).y1, over.x1 - 1, a_at(7).y2)
    assert np.array_equal(region(out, only_a), region(orig, only_a)), "the kept face is visible"
    inside = Box(over.x1 + 15, over.y1 + 20, over.x2 - 15, over.y2 - 20)  # the ellipse's middle
    assert not np.array_equal(region(out, inside), region(orig, inside)), "the overlapping mask stays"


def test_only_obfuscates_everything_but_the_chosen_box_and_keeps_masks_inside_it() -> None:
    log_ = two_faces()
    inner = Box(210, 110, 230, 130)  # a small mask inside face B's box
    log_.frames[7] = frame(7, (a_at(7), B0, inner))
    fm = masks(7, {"op": "only", "tracks": [2]}, log_=log_)
    assert fm.visible == (B0,)
    out, orig = rendered(fm), picture()
    assert np.array_equal(region(out, Box(240, 140, 260, 170)), region(orig, Box(240, 140, 260, 170)))
    assert not np.array_equal(region(out, inner), region(orig, inner)), "a mask inside stays"
    x1, y1, x2, y2 = B0.int_bounds()
    outside = np.ones((H, W), bool)
    outside[y1:y2, x1:x2] = False
    changed = np.abs(out.astype(int) - orig.astype(int)).max(axis=2) > 2
    assert changed[outside].mean() > 0.9, "everything outside the chosen box is obfuscated"


def test_render_add_and_zone() -> None:
    fm = masks(
        7, {"op": "add", "boxes": {"7": [100, 20, 160, 80]}}, {"op": "zone", "box": [10, 150, 60, 200]}
    )
    out, orig = rendered(fm), picture()
    corner = Box(100, 20, 106, 26)  # a box, not an ellipse: its corners are covered too
    assert not np.array_equal(region(out, corner), region(orig, corner))
    assert (region(out, Box(10, 150, 60, 200)) == 0).all(), "a zone is filled solid"
    assert np.array_equal(out[:, 270:], orig[:, 270:]), "nothing else is touched"


def test_render_of_a_failed_frame_ignores_the_edits() -> None:
    plain = rendered(masks(12))
    edited = rendered(masks(12, {"op": "remove", "track": 1}, {"op": "only", "tracks": [1]}))
    assert np.array_equal(plain, edited)
    assert (np.abs(plain.astype(int) - picture().astype(int)).max(axis=2) > 2).mean() > 0.9


# --- follow -----------------------------------------------------------------------------------

FW, FH, N = 320, 240, 40


def target_at(i: int) -> Box:
    return Box(40 + 4 * i, 60 + i, 40 + 4 * i + 64, 60 + i + 76)


def follow_video(path: Path, vanish_from: int | None = None) -> None:
    """The astronaut's face moving right and down over a static textured background."""
    face = cv2.resize(face_crop(), (64, 76), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(5)
    noisy = background(FW, FH, seed=2).astype(int) + rng.integers(-40, 40, (FH, FW, 3))
    bg: np.ndarray[Any, np.dtype[np.uint8]] = np.clip(noisy, 0, 255).astype(np.uint8)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = FW, FH, "yuv420p"
        vs.options = {"crf": "18"}
        for i in range(N):
            img = bg.copy()
            if vanish_from is None or i < vanish_from:
                b = target_at(i)
                img[int(b.y1) : int(b.y2), int(b.x1) : int(b.x2)] = face
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)


def test_follow_finds_the_target_both_ways_and_keeps_keyframes(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    follow_video(video)
    boxes = E.follow(video, 20, target_at(20), 0, N - 1)
    assert sorted(boxes) == list(range(N))
    ious = [boxes[i].iou(target_at(i)) for i in range(N)]
    assert min(ious) > 0.7, ious
    # A keyframe the user placed (a little off the truth) is kept exactly.
    placed = target_at(35).mapped(1, 1, dx=3)
    boxes = E.follow(video, 20, target_at(20), 10, 38, {35: placed})
    assert sorted(boxes) == list(range(10, 39)) and boxes[35] == placed and boxes[20] == target_at(20)
    assert min(boxes[i].iou(target_at(i)) for i in range(10, 39)) > 0.6


def test_follow_keeps_a_lost_target_and_grows_it_within_bounds(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    follow_video(video, vanish_from=25)
    boxes = E.follow(video, 10, target_at(10), 10, N - 1)
    last = boxes[24]
    assert last.iou(target_at(24)) > 0.7
    size0 = max(target_at(10).width, target_at(10).height)
    for i in range(25, N):
        b = boxes[i]
        assert b.area >= last.area * 0.99, f"frame {i}: a lost target's box never shrinks"
        assert max(b.width, b.height) <= E.FOLLOW_MAX_GROW * size0 + 1
        assert b.intersection(last) > 0.8 * last.area, f"frame {i}: it stays where the target was last"
    assert boxes[N - 1].area > last.area, "and grows a little"


def test_follow_refuses_bad_ranges_and_too_long_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    video = tmp_path / "v.mp4"
    follow_video(video)
    with pytest.raises(ValueError, match="from: 9 is after to"):
        E.follow(video, 9, target_at(9), 9, 5)
    with pytest.raises(ValueError, match=r"keyframes\.30: outside"):
        E.follow(video, 9, target_at(9), 5, 20, {30: target_at(30)})
    with pytest.raises(ValueError, match="fewer than asked"):
        E.follow(video, 9, target_at(9), 5, N + 5)
    monkeypatch.setattr(E, "FOLLOW_MAX_BYTES", 20 * 160 * 120)
    with pytest.raises(ValueError, match="split it into shorter ranges"):
        E.follow(video, 9, target_at(9), 0, N - 1)
    assert math.isfinite(E.follow(video, 9, target_at(9), 5, 15)[15].area)


def test_frame_masks_default_is_nothing() -> None:
    assert not FrameMasks().whole and Edits().counts() == {}


def test_the_follower_opens_raw_streams_as_the_run_does() -> None:
    from streamproxy.anonymize import RAW_FORMATS

    assert E.RAW_FORMATS == RAW_FORMATS
