#!/usr/bin/python3
"""A simulated IP camera: GStreamer's gst-rtsp-server serving a raw I420 clip in a loop.

Runs under Debian's /usr/bin/python3 (the interpreter that has the `gi` GStreamer bindings), so it
imports nothing from streamproxy and needs no numpy. streamproxy_sim/camsim.py starts it.

    appsrc (I420, live, stamped with the running time) ! x264enc zerolatency ! rtph264pay name=pay0

Each frame is stamped with its wall-clock time (ms) as a barcode in the top-left corner just before
it is pushed, so that a viewer can measure glass-to-glass latency (camsim.read_stamp decodes it).
The media is shared: every client sees the same encode, as with a real camera.

With --replay FILE (H.264 only) nothing is encoded here: the clip was encoded once up front
(camsim.encode_clip) and its access units are pushed at the frame rate, in a loop, with live
timestamps -- a camera that encodes on its own hardware, costing this machine almost no CPU:

    appsrc (video/x-h264, byte-stream, au) ! h264parse ! rtph264pay config-interval=1 name=pay0

Replayed frames carry no wall-clock barcode (stamping needs a re-encode).

Prints "READY <url>" on stdout once the server listens; exits cleanly on SIGTERM/SIGINT, and on
EOF of stdin with --exit-on-stdin-eof (so that it never outlives the process that started it).
"""

import argparse
import mmap
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402
from gst_server import attach, install_lifetime, set_auth  # noqa: E402 (same folder: the script's)

# --- the barcode: keep in sync with streamproxy_sim/camsim.py -----------------------------------------
STAMP_ROWS = 2
STAMP_COLS = 28
STAMP_BITS = STAMP_ROWS * STAMP_COLS
STAMP_BLACK = 16
STAMP_WHITE = 235


def stamp_block(width):
    b = min(16, width // STAMP_COLS)
    b -= b % 2
    if b < 4:
        raise ValueError(f"frame width {width} is too narrow for the stamp")
    return b


def crc8(data):
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def stamp_bits(ms):
    ms &= (1 << 48) - 1
    value = (ms << 8) | crc8(ms.to_bytes(6, "big"))
    return [(value >> (STAMP_BITS - 1 - i)) & 1 for i in range(STAMP_BITS)]


def write_stamp(frame, width, height, ms):
    """Draw the barcode into an I420 frame (bytearray) in place; chroma under it set neutral."""
    b = stamp_block(width)
    bits = stamp_bits(ms)
    white, black = bytes([STAMP_WHITE]) * b, bytes([STAMP_BLACK]) * b
    for r in range(STAMP_ROWS):
        line = b"".join(white if bits[r * STAMP_COLS + c] else black for c in range(STAMP_COLS))
        for y in range(r * b, (r + 1) * b):
            off = y * width
            frame[off : off + len(line)] = line
    cw = width // 2
    grey = bytes([128]) * (STAMP_COLS * b // 2)
    for plane_off in (width * height, width * height + cw * (height // 2)):
        for y in range(STAMP_ROWS * b // 2):
            off = plane_off + y * cw
            frame[off : off + len(grey)] = grey


# --- serving ----------------------------------------------------------------------------------


def log(msg):
    print(f"gst_camera: {msg}", file=sys.stderr, flush=True)


TAKEN, DROPPED, OVER = "taken", "dropped", "over"  # what became of one pushed frame


class Pusher:
    """Stamps each frame with the pipeline's running time, hands it to one media's appsrc, and says
    what became of it: TAKEN, DROPPED (feed on) or OVER (the stream ended).

    We stamp here instead of appsrc's do-timestamp because do-timestamp races the pipeline's first
    PLAYING: GstPipeline gives its children the clock before GstBin gives each its base time, and a
    frame that appsrc's thread dequeues in between is stamped with the clock's absolute time (base
    time still 0). The RTP sink, which syncs, then waits hours for that frame, holding the encoder
    and everything behind it: the media's first session gets DESCRIBE, SETUP and PLAY answered and
    no packet, while the feeder runs on (1 to 3 in 100 camera starts on a busy 2-core machine, H.264
    and H.265 alike; gdb showed the streaming thread in gst_base_sink_wait_clock and appsrc's thread
    waiting behind it in a serialized query). A frame offered while the appsrc has no clock or no
    base time yet is dropped instead, as a sensor's frame is when nobody takes it (and logged when
    the clock had come without the base time: that is the window).

    FLUSHING is not the end either: appsrc answers it while the media changes state (preparing, a
    client's PLAY, a flush), and a sensor does not stop because nobody took one frame. EOS and
    errors end the stream, logged.
    """

    def __init__(self, appsrc, what):
        self.appsrc = appsrc
        self.what = what
        self.pushed = 0
        self.unclocked = 0  # frames dropped before the pipeline's clock and base time were set
        self.between = False  # a frame came between the clock and the base time
        self.flushing = 0  # frames refused while flushing, logged on the first and every 250th

    def running_time(self):
        clock = self.appsrc.get_clock()
        base = self.appsrc.get_base_time()
        if clock is None or base == 0:
            if clock is not None and not self.between:
                self.between = True
                log(f"{self.what}: the clock came before the base time; frame dropped")
            return None
        return clock.get_time() - base

    def __call__(self, buf):
        now = self.running_time()
        if now is None:
            if self.unclocked == 0:
                log(f"{self.what}: pipeline not running yet after {self.pushed} frames; frame dropped")
            self.unclocked += 1
            return DROPPED
        buf.pts = buf.dts = now
        ret = self.appsrc.emit("push-buffer", buf)
        if ret == Gst.FlowReturn.OK:
            if self.pushed == 0:
                log(f"{self.what}: first frame taken (after {self.unclocked} dropped unclocked)")
            self.pushed += 1
            return TAKEN
        if ret == Gst.FlowReturn.FLUSHING:
            if self.flushing % 250 == 0:
                log(f"{self.what}: appsrc flushing after {self.pushed} frames; frame dropped, feeding on")
            self.flushing += 1
            return DROPPED
        log(f"{self.what}: push-buffer {ret.value_nick} after {self.pushed} frames: stream over")
        return OVER


def pace(next_t, period, stopped):
    """Wait for the next frame's slot; returns the slot after it."""
    next_t += period
    delay = next_t - time.monotonic()
    if delay < -5 * period:
        return time.monotonic()  # far behind (machine stalled): skip ahead, don't burst
    if delay > 0:
        stopped.wait(delay)
    return next_t


class ClipFeeder:
    """Pushes the clip into one media's appsrc at the clip frame rate, in a thread, until stopped.

    A thread with a monotonic schedule (not a GLib timeout) keeps the pace even when the main loop
    is busy serving RTSP requests.
    """

    def __init__(self, appsrc, clip, width, height, fps, switch=None):
        self.appsrc = appsrc
        self.fps = fps
        self._use(clip, width, height)
        # (clip, width, height, after_s): change resolution mid-stream, as a camera whose settings
        # are changed by its admin does (new SPS in-band, same RTSP session).
        self.switch = switch
        self.stopped = threading.Event()
        self.push = Pusher(appsrc, "feeder")
        self.thread = threading.Thread(target=self.run, name="feeder", daemon=True)

    def _use(self, clip, width, height):
        self.clip = clip
        self.width, self.height = width, height
        self.frame_size = width * height * 3 // 2
        self.n_frames = len(clip) // self.frame_size

    def start(self):
        self.thread.start()

    def stop(self):
        self.stopped.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(2.0)

    def run(self):
        period = 1.0 / self.fps
        started = next_t = time.monotonic()
        i = 0
        while not self.stopped.is_set():
            if self.switch is not None and time.monotonic() - started >= self.switch[3]:
                clip, width, height, _ = self.switch
                self.switch = None
                caps = f"video/x-raw,format=I420,width={width},height={height},framerate={self.fps}/1"
                self.appsrc.set_property("caps", Gst.Caps.from_string(caps))
                self._use(clip, width, height)
                log(f"resolution switched to {width}x{height}")
            off = (i % self.n_frames) * self.frame_size
            frame = bytearray(self.clip[off : off + self.frame_size])
            write_stamp(frame, self.width, self.height, int(time.time() * 1000))
            buf = Gst.Buffer.new_wrapped(bytes(frame))
            buf.duration = int(Gst.SECOND / self.fps)
            if self.push(buf) == OVER:
                break
            i += 1
            next_t = pace(next_t, period, self.stopped)


# --- replay: pre-encoded access units --------------------------------------------------------------
# The file camsim.encode_clip writes: MAGIC, then per access unit (in decode order = display order,
# there are no B-frames) a 4-byte big-endian length, a flags byte (1 = keyframe) and the Annex-B bytes.
REPLAY_MAGIC = b"STREAMPROXY-AU1\n"


def read_access_units(path):
    """[(bytes, is_keyframe)] of a replay file; raises ValueError when it is not one."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(REPLAY_MAGIC):
        raise ValueError(f"{path}: not a replay file (bad magic)")
    aus = []
    off = len(REPLAY_MAGIC)
    while off < len(data):
        if off + 5 > len(data):
            raise ValueError(f"{path}: truncated at byte {off}")
        n = int.from_bytes(data[off : off + 4], "big")
        key = data[off + 4] & 1 == 1
        off += 5
        if n == 0 or off + n > len(data):
            raise ValueError(f"{path}: bad access unit length {n} at byte {off - 5}")
        aus.append((data[off : off + n], key))
        off += n
    if not aus or not aus[0][1]:
        raise ValueError(f"{path}: must start with a keyframe")
    return aus


class ReplayFeeder(ClipFeeder):
    """Pushes pre-encoded H.264 access units at the frame rate, looping (the clip starts with an IDR).

    No encoder runs here, so a replay camera costs a small fraction of a live one. Dropping an access
    unit would break every frame up to the next keyframe, so appsrc does not leak: when nothing
    consumes (the shared media is paused between a client's DESCRIBE and PLAY), the feeder stops
    pushing and, once the queue drains, resumes from the keyframe at or before the current position
    so that the stream continues decodably.
    """

    STALLED_LEVEL = 3  # buffers waiting inside appsrc: nobody consumes

    def __init__(self, appsrc, access_units, fps):
        self.appsrc = appsrc
        self.fps = fps
        self.aus = access_units
        self.keyframes = [i for i, (_, key) in enumerate(access_units) if key]
        self.switch = None
        self.stopped = threading.Event()
        self.push = Pusher(appsrc, "replay-feeder")
        self.thread = threading.Thread(target=self.run, name="replay-feeder", daemon=True)

    def _keyframe_at_or_before(self, i):
        return max(k for k in self.keyframes if k <= i)

    def run(self):
        period = 1.0 / self.fps
        next_t = time.monotonic()
        i = 0
        stalled = False
        while not self.stopped.is_set():
            pos = i % len(self.aus)
            if self.appsrc.get_property("current-level-buffers") >= self.STALLED_LEVEL:
                stalled = True
            else:
                if stalled:
                    stalled = False
                    pos = self._keyframe_at_or_before(pos)
                    i = pos
                data, key = self.aus[pos]
                buf = Gst.Buffer.new_wrapped(data)
                buf.duration = int(Gst.SECOND / self.fps)
                if not key:
                    buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
                result = self.push(buf)
                if result == OVER:
                    break
                if result == DROPPED:
                    stalled = True  # what follows needs this frame: resume from a keyframe
            i += 1
            next_t = pace(next_t, period, self.stopped)


def replay_launch_line(args):
    caps = (
        "video/x-h264,stream-format=byte-stream,alignment=au,"
        f"width={args.width},height={args.height},framerate={args.fps}/1"
    )
    # No leaky queue here: a dropped access unit would corrupt the frames that reference it
    # (ReplayFeeder paces itself instead). h264parse + config-interval=1 put SPS/PPS before every
    # IDR in-band, so a client that joins late decodes from the next keyframe.
    return (
        f'( appsrc name=src is-live=true format=time caps="{caps}" '
        "! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def launch_line(args):
    caps = f"video/x-raw,format=I420,width={args.width},height={args.height},framerate={args.fps}/1"
    # Live source, timestamped with the pipeline clock on push; a 2-frame leaky queue inside appsrc
    # drops old frames (like a real sensor) instead of building latency while nobody consumes.
    src = f'appsrc name=src is-live=true format=time max-buffers=2 leaky-type=downstream caps="{caps}"'
    gop = max(1, args.fps * 2)
    if args.codec == "h265":
        enc = (
            f"x265enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate={args.bitrate} "
            "! video/x-h265,profile=main ! rtph265pay name=pay0 pt=96 config-interval=1"
        )
    else:
        enc = (
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate={args.bitrate} "
            "threads=2 ! rtph264pay name=pay0 pt=96 config-interval=1"
        )
    return f"( {src} ! queue max-size-buffers=2 leaky=downstream ! {enc} )"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", help="raw I420 frames, width x height each")
    p.add_argument(
        "--replay", help="pre-encoded H.264 access units (camsim.encode_clip) to loop instead of encoding"
    )
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--path", default="cam")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--codec", choices=["h264", "h265"], default="h264")
    p.add_argument("--bitrate", type=int, default=3000, help="kbit/s")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--auth", choices=["basic", "digest"], default="basic", help="with --user")
    p.add_argument("--exit-on-stdin-eof", action="store_true")
    p.add_argument("--switch-clip", help="a second I420 clip to switch to mid-stream")
    p.add_argument("--switch-size", help="its WIDTHxHEIGHT")
    p.add_argument("--switch-after", type=float, default=2.0, help="seconds after the stream starts")
    args = p.parse_args()

    if (args.clip is None) == (args.replay is None):
        p.error("exactly one of --clip and --replay is required")
    if args.replay and (args.codec != "h264" or args.switch_clip):
        p.error("--replay serves H.264 only and cannot switch clips")

    Gst.init(None)
    if args.replay:
        needed = ["appsrc", "h264parse", "rtph264pay"]
    elif args.codec == "h265":
        needed = ["appsrc", "rtph265pay", "x265enc"]
    else:
        needed = ["appsrc", "rtph264pay", "x264enc"]
    missing = [e for e in needed if Gst.ElementFactory.find(e) is None]
    if missing:
        log(
            f"missing GStreamer elements: {', '.join(missing)} (x264enc: gstreamer1.0-plugins-ugly; x265enc: "
            "gstreamer1.0-plugins-bad; rtph26xpay: gstreamer1.0-plugins-good)"
        )
        return 2

    clip = access_units = None
    if args.replay:
        try:
            access_units = read_access_units(args.replay)
        except (OSError, ValueError) as err:
            log(f"replay: {err}")
            return 2
    else:
        frame_size = args.width * args.height * 3 // 2
        with open(args.clip, "rb") as f:
            clip = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if len(clip) < frame_size or len(clip) % frame_size:
            log(f"clip size {len(clip)} is not a whole number of {args.width}x{args.height} I420 frames")
            return 2

    switch = None
    if args.switch_clip:
        w2, h2 = (int(v) for v in args.switch_size.split("x"))
        with open(args.switch_clip, "rb") as f:
            clip2 = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if len(clip2) < w2 * h2 * 3 // 2 or len(clip2) % (w2 * h2 * 3 // 2):
            log(f"switch clip size {len(clip2)} is not a whole number of {w2}x{h2} I420 frames")
            return 2
        switch = (clip2, w2, h2, args.switch_after)

    loop = GLib.MainLoop()
    server = GstRtspServer.RTSPServer()
    server.set_address(args.bind)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(replay_launch_line(args) if access_units else launch_line(args))
    factory.set_shared(True)  # one encode for every client, like a camera
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP)

    feeders = set()
    lock = threading.Lock()

    def on_media_configure(_factory, media):
        appsrc = media.get_element().get_by_name("src")
        if access_units:
            feeder = ReplayFeeder(appsrc, access_units, args.fps)
        else:
            feeder = ClipFeeder(appsrc, clip, args.width, args.height, args.fps, switch)

        def on_unprepared(_media):
            feeder.stop()
            with lock:
                feeders.discard(feeder)

        media.connect("unprepared", on_unprepared)
        with lock:
            feeders.add(feeder)
        feeder.start()

    factory.connect("media-configure", on_media_configure)

    if args.user is not None:
        set_auth(server, factory, args.user, args.password, "viewer", args.auth)

    mount = "/" + args.path.strip("/")
    server.get_mount_points().add_factory(mount, factory)

    source_id = attach(server, args.bind, args.port, log)
    if not source_id:
        return 1
    install_lifetime(server, loop, log, args.exit_on_stdin_eof)

    url = f"rtsp://{args.bind}:{server.get_bound_port()}{mount}"
    print(f"READY {url}", flush=True)
    try:
        loop.run()
    finally:
        with lock:
            active = list(feeders)
        for feeder in active:
            feeder.stop()
        GLib.source_remove(source_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
