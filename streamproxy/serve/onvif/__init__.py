"""The ONVIF device (Profile S): SOAP parsing and WS-Security (soap.py), device and media ver10
(service.py), Media2 ver20 (media2.py), a camera as a device on its own port (device.py),
WS-Discovery (discovery.py)."""
