"""One camera's live path: ingest (source.py) → worker (pipeline.py, with the latency controller in
controller.py) → encoder (encode.py) → the hub."""
