"""The hub's Subscription: the bounded buffer and its forward-only clock (the one place timestamps
are repaired for RTSP, WebRTC and publish)."""

from __future__ import annotations

from streamproxy.hub import DEFAULT_FRAME_INTERVAL, CodecInfo, StreamHub, Subscription
from streamproxy.rtsp.rtp import PayloadCache
from streamproxy.types import EncodedPacket

STEP = 3600  # 25 fps on the 90 kHz clock


def hub(fps: float | None = 25.0, buffer_packets: int = 50) -> StreamHub:
    h = StreamHub("cam", buffer_packets)
    if fps is not None:
        h.set_codec(CodecInfo(160, 120, fps, b"\x67\x42\xc0\x1e", b"\x68\xce"))
    return h


def pkt(pts: int, keyframe: bool = False, nxt: int | None = None, data: bytes | None = None) -> EncodedPacket:
    return EncodedPacket(
        data=data if data is not None else b"\x00\x00\x01\x65" + pts.to_bytes(8, "big"),
        pts90k=pts,
        keyframe=keyframe,
        decoded_at=0.0,
        encoded_at=0.0,
        next_pts90k=nxt,
    )


def take(h: StreamHub, sub: Subscription, packets: list[EncodedPacket]) -> list[int]:
    out = []
    for p in packets:
        h.publish(p)
        got = sub.get_nowait()
        assert got is not None
        out.append(got.pts90k)
    return out


def test_starts_at_zero_and_keeps_the_encoders_spacing() -> None:
    h = hub()
    sub = h.subscribe("rtsp")
    base = 5_000_000
    assert take(h, sub, [pkt(base, True), pkt(base + 3600), pkt(base + 7300)]) == [0, 3600, 7300]


def test_a_jump_back_steps_one_frame_from_the_last_and_keeps_the_new_spacing() -> None:
    """The encoder restarted (new resolution, camera reconnected): its clock starts over."""
    h = hub()
    sub = h.subscribe("webrtc")
    got = take(h, sub, [pkt(90_000, True), pkt(93_600), pkt(0, True), pkt(3600), pkt(7200)])
    assert got == [0, 3600, 3600 + STEP, 3600 + STEP + 3600, 3600 + STEP + 7200]


def test_repeats_never_repeat() -> None:
    h = hub()
    sub = h.subscribe("publish")
    got = take(h, sub, [pkt(1000, True), pkt(1000), pkt(1000), pkt(4600)])
    assert got == [0, STEP, 2 * STEP, 3 * STEP], "a repeat steps on; what follows keeps going forward"


def test_a_jump_forward_keeps_the_real_gap() -> None:
    """A camera outage of 2 s is 2 s on the viewer's clock too (RTCP SR maps it to wall time)."""
    h = hub()
    sub = h.subscribe("rtsp")
    got = take(h, sub, [pkt(500, True), pkt(4100), pkt(4100 + 180_000)])
    assert got == [0, 3600, 3600 + 180_000]


def test_step_is_the_codecs_frame_interval_or_a_default_without_one() -> None:
    h = hub(fps=10.0)
    sub = h.subscribe("rtsp")
    assert take(h, sub, [pkt(50, True), pkt(50)]) == [0, 9000]
    h2 = hub(fps=None)
    sub2 = h2.subscribe("rtsp")
    assert take(h2, sub2, [pkt(50, True), pkt(10)]) == [0, DEFAULT_FRAME_INTERVAL]


def test_clock_base_and_the_announced_next_timestamp_move_with_the_packet() -> None:
    h = hub()
    sub = h.subscribe("rtsp", clock_base=1_000_000)
    h.publish(pkt(200, True, nxt=3800))
    first = sub.get_nowait()
    assert first is not None and (first.pts90k, first.next_pts90k) == (1_000_000, 1_003_600)
    h.publish(pkt(100, True, nxt=3700))  # back in time: the announcement moves with the repair
    second = sub.get_nowait()
    assert second is not None and (second.pts90k, second.next_pts90k) == (1_003_600, 1_007_200)
    h.publish(pkt(9000, nxt=9000))  # an announcement that is not ahead is dropped, not sent wrong
    third = sub.get_nowait()
    assert third is not None and third.pts90k == 1_003_600 + 8900 and third.next_pts90k is None


def test_each_viewer_has_its_own_clock_and_shares_the_data() -> None:
    h = hub()
    early = h.subscribe("rtsp")
    h.publish(pkt(10_000, True))
    h.publish(pkt(13_600))
    late = h.subscribe("webrtc")
    shared = pkt(17_200, True)
    h.publish(shared)
    got_early = [p.pts90k for p in iter(early.get_nowait, None)]
    got_late = late.get_nowait()
    assert got_early == [0, 3600, 7200]
    assert got_late is not None and got_late.pts90k == 0, "a late viewer starts its own clock at 0"
    assert got_late.data is shared.data, "the payload is shared, only the timestamps are the viewer's"
    cache = PayloadCache()
    retimed = h.subscribe("rtsp")
    h.publish(pkt(20_800, True))
    a, b = late.get_nowait(), retimed.get_nowait()
    assert a is not None and b is not None and a.pts90k != b.pts90k
    assert cache.get(a) is cache.get(b), "one packetization serves viewers on different clocks"


def test_an_overflow_drops_to_the_next_keyframe_and_the_clock_keeps_the_lost_time() -> None:
    h = hub(buffer_packets=2)
    lost: list[tuple[str, int]] = []
    h.on_slow_viewer_drop = lambda protocol, n: lost.append((protocol, n))
    sub = h.subscribe("rtsp")
    assert take(h, sub, [pkt(0, True)]) == [0]
    for pts in (3600, 7200, 10_800):  # the third: too slow, everything queued goes
        h.publish(pkt(pts))
    assert lost == [("rtsp", 3)] and sub.get_nowait() is None  # reported once, with the viewer's protocol
    h.publish(pkt(14_400))  # not a keyframe: still waiting
    assert sub.get_nowait() is None
    h.publish(pkt(18_000, True))
    got = sub.get_nowait()
    assert got is not None and got.pts90k == 18_000, "the frames lost were real time"


# --- forced keyframes: joins and PLIs coalesced per camera ----------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def run_encoder(
    h: StreamHub,
    clock: FakeClock,
    seconds: float,
    on_frame: object = None,
    fps: int = 25,
    latency_frames: int = 2,
) -> list[bool]:
    """A camera's encoder in simulated time: it takes the hub's keyframe request once per frame (no
    keyframe otherwise: a GOP longer than the run), and its packets reach the hub `latency_frames`
    later, as a real encoder's do. Returns which published packets were keyframes."""
    in_flight: list[EncodedPacket] = []
    out: list[bool] = []
    for i in range(round(seconds * fps)):
        clock.t += 1 / fps
        if callable(on_frame):
            on_frame(i)
        in_flight.append(pkt(i * STEP, keyframe=i == 0 or h.take_keyframe_request()))
        if len(in_flight) > latency_frames:
            p = in_flight.pop(0)
            h.publish(p)
            out.append(p.keyframe)
    return out


def test_join_storm_is_coalesced_and_every_viewer_starts_at_a_keyframe() -> None:
    clock = FakeClock()
    h = StreamHub("cam", 50, keyframe_min_interval_s=1.0, clock=clock)
    subs: list[tuple[float, Subscription]] = []
    first: dict[int, tuple[float, EncodedPacket]] = {}

    def on_frame(i: int) -> None:
        if 25 <= i < 100 and i % 5 != 4:  # from 1 s on, 20 joins/s for 3 s (60 viewers)
            subs.append((clock.t, h.subscribe("rtsp")))
        for n, (_, s) in enumerate(subs):
            p = s.get_nowait()
            if p is not None and n not in first:
                first[n] = (clock.t, p)
            while s.get_nowait() is not None:
                pass

    keyframes = run_encoder(h, clock, 6.0, on_frame)
    assert len(subs) == 60
    # 3 s of storm: the first join fires at once, the rest are coalesced into one a second.
    assert h.keyframes_forced <= 4, h.keyframes_forced
    assert sum(keyframes[25:]) == h.keyframes_forced
    assert h.keyframe_requests_coalesced >= 50
    # Every viewer got a picture, a keyframe first, within the interval + the encoder's latency.
    assert len(first) == 60
    for n, (joined, _) in enumerate(subs):
        at, p = first[n]
        assert p.keyframe
        assert at - joined <= 1.0 + 3 / 25 + 1e-6, (n, at - joined)


def test_first_request_after_a_quiet_interval_fires_at_once_and_a_pli_is_deferred_not_dropped() -> None:
    clock = FakeClock()
    h = StreamHub("cam", 50, keyframe_min_interval_s=1.0, clock=clock)
    h.request_keyframe()
    assert h.take_keyframe_request()  # at once
    assert not h.take_keyframe_request()  # served once
    h.publish(pkt(0, keyframe=True))
    clock.t += 0.3
    h.request_keyframe()  # a PLI inside the interval, after the keyframe went out: deferred
    assert not h.take_keyframe_request()
    clock.t += 0.69
    assert not h.take_keyframe_request()
    clock.t += 0.02
    assert h.take_keyframe_request()  # at the interval's end
    assert h.keyframes_forced == 2
    # A join while a forced keyframe is on its way (taken, not yet published) is served by it.
    clock.t += 0.1
    h.request_keyframe()
    clock.t += 5
    assert not h.take_keyframe_request()
    h.publish(pkt(STEP, keyframe=True))
    clock.t += 5
    h.request_keyframe()  # quiet for long: at once again
    assert h.take_keyframe_request()


def test_a_gop_keyframe_serves_a_deferred_request() -> None:
    clock = FakeClock()
    h = StreamHub("cam", 50, keyframe_min_interval_s=1.0, clock=clock)
    h.request_keyframe()
    assert h.take_keyframe_request()
    h.publish(pkt(0, keyframe=True))
    clock.t += 0.2
    h.request_keyframe()  # deferred
    h.publish(pkt(STEP, keyframe=True))  # the encoder's own GOP keyframe came first
    clock.t += 1.0
    assert not h.take_keyframe_request()
    assert h.keyframes_forced == 1


def test_no_interval_means_no_coalescing_and_a_lost_keyframe_is_asked_again() -> None:
    clock = FakeClock()
    h = StreamHub("cam", 50, keyframe_min_interval_s=0.0, clock=clock)
    for _ in range(3):
        h.request_keyframe()
        assert h.take_keyframe_request()
    h2 = StreamHub("cam", 50, keyframe_min_interval_s=1.0, clock=clock)
    h2.request_keyframe()
    assert h2.take_keyframe_request()  # taken, but its keyframe never reaches the hub (encoder restart)
    clock.t += 1.5
    h2.request_keyframe()  # not held back by the lost one once the interval is over
    assert h2.take_keyframe_request()
