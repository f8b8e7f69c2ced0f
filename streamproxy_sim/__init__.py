"""Test and demo tools, outside the product: the simulated camera (camsim.py, gst/), the service in a
thread (harness.py). Needs the `demo` extra (scikit-image) and Debian's GStreamer for the cameras."""
