"""Files: anonymize photos and videos as jobs (the Files page, `streamproxy files`).

* `roots.py`    the named folders the page may touch, and nothing outside them;
* `audit.py`    the record of what was done to each file and job (JSON and a printable report);
* `store.py`    jobs and their files in SQLite, in the service's data directory (they survive restarts);
* `manager.py`  the job queue: runs files through `streamproxy.anonymize.Batch` (the CLI's engine),
                with progress, thumbnails and cancel.

One room with `streamproxy/anonymize.py` (the engine the CLI and the page share): below `serve`, which
puts it on the web, and above `engine`, whose detectors it runs.
"""
