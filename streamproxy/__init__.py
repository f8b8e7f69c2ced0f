"""streamproxy: a real-time anonymizing proxy for CCTV, and a bulk anonymizer for files."""

__version__ = "0.1.0"
