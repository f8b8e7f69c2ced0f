"""Prints the package's shape: files and lines per room, import floors and import loops.

    python bench/architecture.py [PACKAGE_DIR]      (default: ./streamproxy)

Floors: the length of the longest chain of package-internal imports (a module importing nothing
of the package is floor 1). Loops: strongly connected groups of modules in the import graph, lazy
imports (inside functions) included. Read from the source with `ast`; nothing is imported. Used for
the before/after numbers of the restructuring (issue 9): run it on an old tree from `git archive`.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(root: Path, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(root, path).split(".")
    pkg = me if path.name == "__init__.py" else me[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "streamproxy").resolve()
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    mods = {module_name(root, p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for target in imports(root, path):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and target != root.name:
                deps.add(target)
        graph[name] = deps

    rooms: dict[str, list[int]] = defaultdict(list)
    for path in mods.values():
        rel = path.relative_to(root)
        room = rel.parts[0] + "/" if len(rel.parts) > 1 else "(top level)"
        rooms[room].append(len(path.read_text().splitlines()))
    print(f"package {root}: {len(files)} files, {sum(sum(v) for v in rooms.values())} lines")
    for room in sorted(rooms):
        print(f"  {room:<14} {len(rooms[room]):>3} files {sum(rooms[room]):>6} lines")

    # Tarjan's strongly connected components: every component of more than one module is a loop.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    loops: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                loops.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strong(v)
    comp_of = {m: i for i, c in enumerate(loops) for m in c}

    floor: dict[str, int] = {}

    def depth(v: str, seen: frozenset[str]) -> int:
        if v in floor:
            return floor[v]
        best = 1
        for w in graph[v]:
            if w in seen or (v in comp_of and comp_of.get(w) == comp_of[v]):
                continue  # inside a loop: count the loop as one floor
            best = max(best, 1 + depth(w, seen | {v}))
        floor[v] = best
        return best

    floors = max(depth(v, frozenset()) for v in graph)
    # One longest chain, top down: what the floors are made of.
    chain = [max(graph, key=lambda v: floor[v])]
    while floor[chain[-1]] > 1:
        nxt = [w for w in graph[chain[-1]] if floor.get(w) == floor[chain[-1]] - 1]
        if not nxt:
            break
        chain.append(sorted(nxt)[0])
    print(f"import floors: {floors} (e.g. {' -> '.join(c.removeprefix(root.name + '.') for c in chain)})")
    print(f"import loops: {len(loops)}" + "".join(f"\n  {' <-> '.join(c)}" for c in loops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
