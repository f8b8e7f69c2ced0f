"""The anonymization engine, shared by the live path and bulk mode; it knows no cameras, threads or
viewers.

    anonymizer.py  detect → track → obfuscate for one stream or one file, failing closed; the ways in
    detect.py      face detectors (YuNet, CenterFace) on onnxruntime
    models.py      the pinned, hash-checked model files, and the face models' open-input-size edit
    track.py       tracks and their masks between detector runs
    temporal.py    bulk video: tracklets both ways in time
    obfuscate.py   blur / pixelate / solid fill of masks and privacy zones, in place on image planes
    change.py      live: where a detector run must look (change gating)
    pool.py        live: one pool of detector sessions for all cameras, earliest deadline first
    ahead.py       bulk video: detection ahead
    text.py        text regions (licence plates) for `objects: plates`

Two names that sound alike:
* look-ahead (anonymizer.py, text.py): a frame the detector does not run on is held until the next
  run, on a later frame, so that a face first seen there is masked back in the frames that waited;
* detection ahead (ahead.py): bulk video's worker threads run the detector on frames as soon as they
  are decoded, before the engine asks for them; every frame is still detected, in order.
"""
