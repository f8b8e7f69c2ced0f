"""The RTSP/RTP/SDP protocol library: request parsing, auth, SDP, RTP packetizing and depacketizing,
our RTSP client. It knows neither the stages nor the hub (ARCHITECTURE.md); the server that serves
the hub is serve/rtsp/server.py."""
