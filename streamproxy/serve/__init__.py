"""What viewers talk to: our RTSP server (rtsp_server.py, rtsp_session.py), WebRTC/WHEP (webrtc.py),
push to an external server (publish.py), HTTP page, API and metrics (http.py, web/)."""
