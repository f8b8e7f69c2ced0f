"""The ONVIF device (Profile S): SOAP parsing and WS-Security (soap.py), device and media ver10
(service.py), Media2 ver20 (media2.py), WS-Discovery (discovery.py)."""
