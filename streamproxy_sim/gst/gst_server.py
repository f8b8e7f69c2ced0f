"""What the GStreamer test servers (gst_camera.py, gst_record.py) share: auth, listening, lifetime.

Runs under Debian's /usr/bin/python3 (gi); the scripts import it from their own folder.
"""

import os
import signal
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, GstRtsp, GstRtspServer  # noqa: E402


def set_auth(server, factory, user, password, role, method="basic"):
    """Protect the factory: only `user` may use it, authenticated by Basic or Digest only."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", role)
    if method == "digest":
        # Digest only: a client that would send Basic is challenged for Digest (as cameras
        # configured for "digest authentication" do), so a client's digest path is exercised.
        auth.add_digest(user, password or "", token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    else:
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password or ""), token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
    server.set_auth(auth)
    perms = GstRtspServer.RTSPPermissions()
    perms.add_permission_for_role(role, "media.factory.access", True)
    perms.add_permission_for_role(role, "media.factory.construct", True)
    factory.set_permissions(perms)


def attach(server, bind, port, log):
    """Start listening; returns the GLib source id, or 0 after 10 s of failures (logged).

    A server restarted on the same port may find it briefly unavailable: retry for a while.
    """
    deadline = time.monotonic() + 10.0
    while True:
        try:
            source_id = server.attach(None)
        except GLib.Error as err:
            source_id = 0
            last_err = err.message
        else:
            last_err = "attach failed"
        if source_id:
            return source_id
        if time.monotonic() > deadline:
            log(f"cannot listen on {bind}:{port}: {last_err}")
            return 0
        time.sleep(0.2)


def install_lifetime(server, loop, log, exit_on_stdin_eof):
    """Quit the loop on SIGTERM/SIGINT (and when stdin closes: the parent died); reap dead sessions."""

    def shutdown(*_a):
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, shutdown)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, shutdown)
    if exit_on_stdin_eof:

        def on_stdin(_fd, _cond):
            try:
                data = os.read(0, 4096)
            except OSError:
                data = b""
            if not data:
                log("stdin closed: exiting")
                loop.quit()
                return GLib.SOURCE_REMOVE
            return GLib.SOURCE_CONTINUE

        GLib.io_add_watch(0, GLib.PRIORITY_DEFAULT, GLib.IOCondition.IN | GLib.IOCondition.HUP, on_stdin)

    # Sessions of clients that vanished (killed, no TEARDOWN) are reaped by the session pool.
    def cleanup():
        server.get_session_pool().cleanup()
        return GLib.SOURCE_CONTINUE

    GLib.timeout_add_seconds(2, cleanup)
