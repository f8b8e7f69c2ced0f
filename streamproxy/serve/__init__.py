"""What viewers talk to, a room per protocol (MediaMTX's internal/servers/<proto>/), lowest first:

* `limits.py`   over-limit events of any listener (counted, logged at most once a second);
* `rtsp/`       the embedded RTSP server (`server.py`) and one viewer session (`session.py`);
* `onvif/`      the ONVIF device: SOAP (`soap.py`), device+media ver10 (`service.py`), Media2
                (`media2.py`), a camera's own device port (`device.py`), WS-Discovery (`discovery.py`);
* `webrtc.py`   WebRTC/WHEP sessions (aiortc packetizes the shared H.264 packets);
* `publish.py`  push to an external RTSP server (ANNOUNCE/RECORD);
* `http/`       the HTTP listener on top: page (`web/`), JSON API, /metrics, WHEP and ONVIF routes
                (`server.py`), its connection limits (`limits.py`).

A sub-room imports only from those before it in this list (tests/test_architecture.py).
"""
