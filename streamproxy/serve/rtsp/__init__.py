"""The embedded RTSP server (server.py) and one viewer session on it (session.py)."""
