"""Embedded RTSP server: each camera's anonymized stream at rtsp://HOST:PORT/<name>."""

from .server import RtspServer, build_sdp

__all__ = ["RtspServer", "build_sdp"]
