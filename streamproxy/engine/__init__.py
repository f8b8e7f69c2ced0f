"""The anonymization engine: detect (detect.py) → track (track.py) → obfuscate (obfuscate.py), driven by
anonymizer.py; the face models (models.py). Shared by the live path and bulk mode."""
