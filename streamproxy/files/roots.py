"""The folders the Files page may touch (`files.roots`), and nothing outside them.

The browser names a root by its name and a path inside it, always relative ("2026/cam3"). A path is
refused, before anything on disk is read, when it is absolute, holds `..`, a NUL or a backslash; and
after resolving it (symlinks followed) when it lands outside its root: a link inside the root that
points at /etc is an escape too. The check is on the resolved path, so it also holds for links made
after the listing was shown. A refusal is `PathRefused` (the page answers 403 and the server logs it).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from streamproxy.anonymize import IMAGE_EXTS, VIDEO_EXTS

log = logging.getLogger(__name__)

MAX_LISTING = 5000  # entries of one folder shown; a larger folder is cut (and says so)


class PathRefused(Exception):
    """A path the page may not use: outside every root, or not a plain relative path."""


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    kind: str  # "dir" | "image" | "video" | "other"
    size: int
    mtime: float


def kind_of(name: str) -> str:
    ext = PurePosixPath(name).suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return "other"


def clean_relative(rel: str) -> PurePosixPath:
    """A client's path inside a root as parts, or PathRefused: no absolute path, no `..`, no NUL, no
    backslash (a Windows separator would be one name here and a folder step on a share)."""
    if "\x00" in rel or "\\" in rel:
        raise PathRefused("a path may not hold NUL or backslash characters")
    p = PurePosixPath(rel)
    if p.is_absolute() or rel.startswith("~"):
        raise PathRefused("absolute paths are not accepted: name a root and a path inside it")
    if any(part == ".." for part in p.parts):
        raise PathRefused("'..' is not accepted in a path")
    return PurePosixPath(*[part for part in p.parts if part not in ("", ".")])


class Roots:
    """Named folders from `files.roots` ({name: absolute path})."""

    def __init__(self, roots: dict[str, str]) -> None:
        self._roots = {name: Path(path) for name, path in roots.items()}

    def names(self) -> list[str]:
        return list(self._roots)

    def base(self, root: str) -> Path:
        try:
            return self._roots[root].resolve()
        except KeyError:
            raise PathRefused(f"no root named {root!r}") from None

    def resolve(self, root: str, rel: str, *, must_exist: bool = True) -> Path:
        """The real path of `rel` inside `root`; PathRefused when it is not inside it (symlinks followed)."""
        base = self.base(root)
        parts = clean_relative(rel)
        path = (base / parts).resolve()
        if path != base and not path.is_relative_to(base):
            raise PathRefused(f"{root}/{parts}: leads outside the root (a link to elsewhere)")
        if must_exist and not path.exists():
            raise FileNotFoundError(f"{root}/{parts}: no such file or folder")
        return path

    def contains(self, path: Path) -> bool:
        """Whether a real path lies inside one of the roots (for paths that come back from the database)."""
        real = path.resolve()
        return any(real == b or real.is_relative_to(b) for b in (p.resolve() for p in self._roots.values()))

    def listing(self, root: str, rel: str) -> tuple[list[Entry], bool]:
        """A folder's entries (folders first, then by name) and whether the list was cut at MAX_LISTING.
        Entries that are links leading outside the root are left out: the page never offers them."""
        folder = self.resolve(root, rel)
        if not folder.is_dir():
            raise NotADirectoryError(f"{root}/{clean_relative(rel)}: not a folder")
        base = self.base(root)
        out: list[Entry] = []
        cut = False
        with os.scandir(folder) as it:
            for de in it:
                if de.name.startswith("."):
                    continue  # hidden files and our own temporary outputs (.name.part.mp4)
                try:
                    real = Path(de.path).resolve()
                    if not real.is_relative_to(base):
                        continue
                    st = os.stat(real)
                except OSError:
                    continue
                if len(out) >= MAX_LISTING:
                    cut = True
                    break
                kind = "dir" if stat.S_ISDIR(st.st_mode) else kind_of(de.name)
                out.append(Entry(de.name, kind, st.st_size if kind != "dir" else 0, st.st_mtime))
        out.sort(key=lambda e: (e.kind != "dir", e.name.lower()))
        return out, cut
