"""The HTTP listener: page (web/), JSON API, /metrics, WHEP and the ONVIF routes (server.py); its
connection and request limits (limits.py)."""
