"""The package's rooms and the one-way rule (ARCHITECTURE.md): a room imports only from rooms below it.

Read from the source with `ast` (nothing is imported), so a wrong import fails here with the file and
line, before it can become an import loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "streamproxy"

# Lowest first. A module may import its own room and the rooms before it, never one after it.
ROOMS: list[tuple[str, set[str]]] = [
    (
        "ground",
        {
            "__init__",
            "types",
            "config",
            "redact",
            "host",
            "metrics",
            "status",
            "view",
            "h264",
            "hub",
            "supervisor",
        },
    ),
    ("engine", {"engine"}),
    ("rtsp", {"rtsp"}),
    ("live", {"live"}),
    ("files", {"anonymize", "files"}),
    ("serve", {"serve"}),
    ("top", {"camera", "app", "cli", "__main__"}),
]
RANK = {name: i for i, (name, _) in enumerate(ROOMS)}
# What the test and demo tools may not be: imported by the product (the demo imports them lazily,
# behind an optional extra, and says which extra is missing).
TOOLS = "streamproxy_sim"


def room_of(module: str) -> str:
    """'streamproxy.live.pipeline' -> 'live'; 'streamproxy.types' -> 'ground'."""
    first = module.split(".")[1] if "." in module else "__init__"
    for name, members in ROOMS:
        if first in members:
            return name
    raise AssertionError(f"{module}: in no room of ARCHITECTURE.md (add it to a room, or to ROOMS here)")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, lazy) for every import of the package in a file (lazy: inside a function)."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[int, str, bool]] = []
    pkg_parts = module_name(path).split(".")
    if path.name != "__init__.py":
        pkg_parts = pkg_parts[:-1]

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = pkg_parts[: len(pkg_parts) - (child.level - 1)]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module or ""
                out.append((child.lineno, name, lazy))
            elif isinstance(child, ast.Import):
                out.extend((child.lineno, a.name, lazy) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return out


def package_files() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_is_in_a_room() -> None:
    for path in package_files():
        room_of(module_name(path))


def test_imports_flow_one_way() -> None:
    wrong = []
    for path in package_files():
        me = module_name(path)
        mine = RANK[room_of(me)]
        for line, target, lazy in imports(path):
            if target.startswith(TOOLS):
                if not lazy:
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: imports the test/demo tools ({target})")
                continue
            if not target.startswith("streamproxy") or target == "streamproxy":
                continue
            theirs = RANK[room_of(target)]
            if theirs > mine:
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line}: {room_of(me)} imports {target} ({room_of(target)}), a room above it"
                )
    assert not wrong, "imports against the one-way rule (ARCHITECTURE.md):\n" + "\n".join(wrong)


# Inside serve/, a room per protocol, lowest first (serve/__init__.py): http/ sits on top of the others.
SERVE_ROOMS = ["limits", "rtsp", "onvif", "webrtc", "publish", "http"]


def serve_room(module: str) -> str:
    """'streamproxy.serve.onvif.soap' -> 'onvif'; 'streamproxy.serve.webrtc' -> 'webrtc'."""
    room = module.split(".")[2]
    assert room in SERVE_ROOMS, (
        f"{module}: in no room of serve/ (add it to serve/__init__.py and SERVE_ROOMS)"
    )
    return room


def test_serve_rooms_import_one_way() -> None:
    wrong = []
    for path in sorted((PKG / "serve").rglob("*.py")):
        me = module_name(path)
        if me == "streamproxy.serve":
            continue
        mine = SERVE_ROOMS.index(serve_room(me))
        for line, target, _ in imports(path):
            if not target.startswith("streamproxy.serve."):
                continue
            theirs = SERVE_ROOMS.index(serve_room(target))
            if theirs > mine:
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line}: {serve_room(me)} imports {target}, a room above it"
                )
    assert not wrong, "serve/ rooms importing against the order of serve/__init__.py:\n" + "\n".join(wrong)


def test_the_protocol_library_knows_neither_stages_nor_the_hub() -> None:
    """rtsp/ speaks RTSP/RTP/SDP; what it serves or reads is handed to it by serve/ and live/."""
    wrong = []
    for path in sorted((PKG / "rtsp").rglob("*.py")):
        for line, target, _ in imports(path):
            if target.startswith(
                ("streamproxy.hub", "streamproxy.engine", "streamproxy.live", "streamproxy.serve")
            ):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert not wrong, "rtsp/ imports beyond the protocol:\n" + "\n".join(wrong)


def test_no_import_loops() -> None:
    graph: dict[str, set[str]] = {}
    for path in package_files():
        me = module_name(path)
        graph[me] = set()
        for _, target, _lazy in imports(path):
            while target and target not in {module_name(p) for p in package_files()}:
                target = target.rpartition(".")[0]
            if target and target != me and target.startswith("streamproxy"):
                graph[me].add(target)
    state: dict[str, int] = {}

    def walk(v: str, stack: list[str]) -> None:
        state[v] = 1
        for w in graph.get(v, ()):
            if state.get(w) == 1:
                pytest.fail("import loop: " + " -> ".join([*stack[stack.index(w) :], w]))
            if w not in state:
                walk(w, [*stack, w])
        state[v] = 2

    for v in graph:
        if v not in state:
            walk(v, [v])


def test_the_rule_catches_a_wrong_import(tmp_path: Path) -> None:
    """The checker itself: an engine module importing the live room is reported."""
    bad = PKG / "engine" / "_probe_wrong_import.py"
    bad.write_text("from streamproxy.live import pipeline\n")
    try:
        with pytest.raises(AssertionError, match=r"engine imports streamproxy\.live"):
            test_imports_flow_one_way()
    finally:
        bad.unlink()


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in conftest.py and the *kit.py modules beside it, never in a test module."""
    wrong = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            wrong += [f"tests/{path.name}:{node.lineno}: imports {n}" for n in names if n.startswith("test_")]
    assert not wrong, "test modules importing test modules:\n" + "\n".join(wrong)


def test_the_wheel_carries_the_product_not_the_tools() -> None:
    """The packages setuptools puts in the wheel (pyproject's find rule): every room of the product,
    the page's assets with it, and nothing of the simulator or the demo (streamproxy_sim)."""
    import tomllib

    from setuptools import find_packages

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    rule = project["tool"]["setuptools"]["packages"]["find"]
    shipped = set(find_packages(where=str(ROOT), include=rule["include"]))
    assert not {p for p in shipped if p.startswith(TOOLS)}
    assert {
        "streamproxy",
        "streamproxy.serve.http",
        "streamproxy.serve.onvif",
        "streamproxy.engine",
    } <= shipped
    assert "serve/http/web/*" in project["tool"]["setuptools"]["package-data"]["streamproxy"]
    assert (PKG / "serve" / "http" / "web" / "index.html").is_file()


# PyAV >= 17 converts and scales frames with a pool of swscale threads unless told otherwise
# (`threads=0`, "auto"), and that pool can hang for good when a thread's cached SwsContext is set up
# again for another size: seen on this project's CI, the service's event loop stuck in
# `pthread_cond_destroy` under `avpriv_slicethread_free` while encoding a grid tile (a whole test run
# hung; a live service would have stopped answering). One thread each is what PyAV < 17 did, and on
# a 2-core box the pool bought nothing (PyAV issue 2200).
SWS_CALLS = ("reformat", "to_ndarray")


def _sws_calls_without_threads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in SWS_CALLS or not (node.keywords or node.args):
            continue  # to_ndarray() with no arguments converts nothing
        if not any(k.arg == "threads" for k in node.keywords):
            name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
            found.append(f"{name}:{node.lineno}: .{node.func.attr}(...) without threads=1")
    return found


def test_every_frame_conversion_runs_in_one_thread() -> None:
    """Every PyAV conversion or scaling, in the product, the simulator, the benchmarks and the tests,
    says `threads=1` (the reason above SWS_CALLS)."""
    found: list[str] = []
    for folder in ("streamproxy", "streamproxy_sim", "bench", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if ".venv" not in path.parts:
                found += _sws_calls_without_threads(path)
    assert not found, "\n".join(found)


def test_the_thread_rule_catches_a_conversion_without_it(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('def f(frame):\n    return frame.to_ndarray(format="bgr24")\n')
    assert _sws_calls_without_threads(probe) == ["probe.py:2: .to_ndarray(...) without threads=1"]
