#!/usr/bin/python3
"""A recording RTSP server for tests: gst-rtsp-server in RECORD mode, as MediaMTX is to a publisher.

Runs under Debian's /usr/bin/python3 (the interpreter that has the `gi` GStreamer bindings), so it
imports nothing from streamproxy and needs no numpy. Accepts ANNOUNCE/SETUP/RECORD (TCP
interleaved) on one mount and decodes what is pushed to it:

    rtph264depay name=depay0 ! h264parse ! avdec_h264 ! videoconvert ! I420 ! appsink

Prints on stdout, one line each, flushed:

    READY <url>                      once the server listens
    FRAME <n> <width>x<height>       each decoded frame (n counts across publisher sessions)
    DUMP <path> <width>x<height>     the frame written to --dump (raw I420), once, at --dump-at

A frame only appears after H.264 decoding succeeded, so FRAME lines are proof that what was
published is decodable video. Exits cleanly on SIGTERM/SIGINT, and on EOF of stdin with
--exit-on-stdin-eof (so that it never outlives the process that started it).
"""

import argparse
import os
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402
from gst_server import attach, install_lifetime, set_auth  # noqa: E402 (same folder: the script's)

LAUNCH = (
    "( rtph264depay name=depay0 ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=I420 "
    "! appsink name=sink emit-signals=true sync=false max-buffers=4 drop=false )"
)


def log(msg):
    print(f"gst_record: {msg}", file=sys.stderr, flush=True)


def emit(line):
    # stdout is read line by line by the test; one write per line keeps lines whole across threads.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Counter:
    def __init__(self, dump_path, dump_at):
        self.lock = threading.Lock()
        self.frames = 0
        self.dump_path = dump_path
        self.dump_at = dump_at
        self.dumped = False

    def on_sample(self, sink):
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.EOS
        s = sample.get_caps().get_structure(0)
        width, height = s.get_value("width"), s.get_value("height")
        with self.lock:
            self.frames += 1
            n = self.frames
            dump = self.dump_path is not None and not self.dumped and n >= self.dump_at
            if dump:
                self.dumped = True
        if dump:
            buf = sample.get_buffer()
            ok, info = buf.map(Gst.MapFlags.READ)
            if ok:
                try:
                    tmp = self.dump_path + ".tmp"
                    with open(tmp, "wb") as f:
                        f.write(bytes(info.data)[: width * height * 3 // 2])
                    os.replace(tmp, self.dump_path)
                finally:
                    buf.unmap(info)
                emit(f"DUMP {self.dump_path} {width}x{height}")
        emit(f"FRAME {n} {width}x{height}")
        return Gst.FlowReturn.OK


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--path", default="pub")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument(
        "--auth",
        choices=("basic", "digest"),
        default="basic",
        help="with --user: how the publisher must sign",
    )
    p.add_argument("--dump", help="write one decoded frame here (raw I420)")
    p.add_argument("--dump-at", type=int, default=10, help="which decoded frame to write (1-based)")
    p.add_argument("--exit-on-stdin-eof", action="store_true")
    args = p.parse_args()

    Gst.init(None)
    missing = [
        e
        for e in ("rtph264depay", "h264parse", "avdec_h264", "appsink")
        if Gst.ElementFactory.find(e) is None
    ]
    if missing:
        log(
            f"missing GStreamer elements: {', '.join(missing)} (rtph264depay: gstreamer1.0-plugins-good; "
            "avdec_h264: gstreamer1.0-libav; h264parse: gstreamer1.0-plugins-bad)"
        )
        return 2

    counter = Counter(args.dump, args.dump_at)
    loop = GLib.MainLoop()
    server = GstRtspServer.RTSPServer()
    server.set_address(args.bind)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
    factory.set_launch(LAUNCH)
    factory.set_shared(False)  # one media per publisher session
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP)
    # No jitter-buffer delay: frames are counted as soon as they arrive (loopback does not reorder).
    factory.set_latency(0)

    def on_media_configure(_factory, media):
        sink = media.get_element().get_by_name("sink")
        sink.connect("new-sample", counter.on_sample)
        log("publisher connected")
        media.connect("unprepared", lambda _m: log("publisher session ended"))

    factory.connect("media-configure", on_media_configure)

    if args.user is not None:
        set_auth(server, factory, args.user, args.password, "publisher", args.auth)

    mount = "/" + args.path.strip("/")
    server.get_mount_points().add_factory(mount, factory)

    source_id = attach(server, args.bind, args.port, log)
    if not source_id:
        return 1
    install_lifetime(server, loop, log, args.exit_on_stdin_eof)

    emit(f"READY rtsp://{args.bind}:{server.get_bound_port()}{mount}")
    try:
        loop.run()
    finally:
        GLib.source_remove(source_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
