"""Discovery: files, folders (recursive, filtered by ``--glob`` patterns) and ``-`` (one image on stdin) become
:class:`InputItem` s, each with a *key*: its path relative to the folder it was found in, without the suffix
(``holiday/beach``). Keys name the outputs (:mod:`textmask.batch.naming`), so they are unique per run.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import TextmaskError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm", ".tga"}
)
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg", ".gif"})
STDIN = "-"


class CollisionError(TextmaskError, ValueError):
    """Two different inputs would write the same output names."""


# ---------------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class InputItem:
    """One input of a run.

    Attributes:
        source: the file path (as given or found), or ``"-"`` for an image read from stdin.
        key: the output name stem: the path relative to the folder it was found in (or the file name),
            without the suffix, ``/``-separated (``"holiday/beach"``); ``"stdin"`` for stdin.
        kind: ``"image"`` or ``"video"``.
    """

    source: str
    key: str
    kind: str


@dataclass
class Discovery:
    """What :func:`discover_inputs` found: the items in a stable order, and how many files it ignored."""

    items: list[InputItem]
    ignored: int = 0


def _is_animated_gif(path: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as image:
            return bool(getattr(image, "is_animated", False))
    except Exception:  # unreadable: let it fail later as an image, with a clear message
        return False


def input_kind(path: str | os.PathLike) -> str:
    """``"video"`` for video suffixes (and animated GIFs), else ``"image"``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return "video" if _is_animated_gif(path) else "image"
    return "video" if suffix in VIDEO_SUFFIXES else "image"


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    """Case-insensitive ``fnmatch`` on the relative path, or on the bare name for patterns without ``/``."""
    relative = relative.lower()
    name = relative.rsplit("/", 1)[-1]
    for pattern in patterns:
        pattern = pattern.lower().removeprefix("**/")
        if fnmatch.fnmatchcase(relative, pattern) or ("/" not in pattern and fnmatch.fnmatchcase(name, pattern)):
            return True
    return False


def _walk(folder: Path, exclude: Path | None) -> Iterator[Path]:
    """Files under ``folder`` in sorted order, skipping hidden files and folders and ``exclude``."""
    exclude_resolved = exclude.resolve() if exclude is not None else None
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        kept = []
        for name in sorted(dirs):
            if name.startswith("."):
                continue
            if exclude_resolved is not None and (root_path / name).resolve() == exclude_resolved:
                continue
            kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            if not name.startswith("."):
                yield root_path / name


def discover_inputs(
    inputs: Iterable[str | os.PathLike],
    globs: Sequence[str] = (),
    exclude: str | os.PathLike | None = None,
) -> Discovery:
    """Expand files, folders and ``-`` into :class:`InputItem` s with unique keys.

    Args:
        inputs: file paths (taken whatever their suffix; a missing file becomes an item that fails with
            "file not found"), folders (searched recursively; hidden files and folders skipped), or ``"-"``.
        globs: patterns for files inside folders (``"*.jpg"``, ``"shots/**/*.png"``; case-insensitive).
            Without any, folders yield files with a known image or video suffix.
        exclude: a folder never searched (the output folder, when it lies inside an input folder).

    Raises:
        CollisionError: two different files would get the same key even with their suffixes kept.

    Keys are the relative path without the suffix; when two inputs share one (``a.png`` and ``a.jpg``), both
    keep their suffix instead (``a.png``, ``a.jpg``). The same file given twice is taken once.
    """
    exclude_path = Path(exclude) if exclude is not None else None
    found: list[tuple[str, str, str]] = []  # (source, relative path with suffix, kind)
    ignored = 0
    seen_sources: set[str] = set()

    def add(source: str, relative: str, kind: str) -> None:
        identity = source if source == STDIN else os.path.realpath(source)
        if identity not in seen_sources:
            seen_sources.add(identity)
            found.append((source, relative, kind))

    for raw in inputs:
        text = os.fspath(raw)
        if text == STDIN:
            add(STDIN, "stdin", "image")
            continue
        path = Path(text)
        if path.is_dir():
            for file in _walk(path, exclude_path):
                relative = file.relative_to(path).as_posix()
                if globs:
                    if not _matches(relative, globs):
                        ignored += 1
                        continue
                elif file.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                    ignored += 1
                    continue
                add(str(file), relative, input_kind(file))
        else:
            add(text, path.name, input_kind(path))

    keys = [input_key(relative) for _, relative, _ in found]
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    keys = [relative if counts[key] > 1 else key for key, (_, relative, _) in zip(keys, found)]
    owners: dict[str, str] = {}
    for key, (source, _, _) in zip(keys, found):
        if key in owners:
            raise CollisionError(
                f"inputs {owners[key]!r} and {source!r} would write the same output names ({key}.*); "
                "mask them in separate runs or into different output folders"
            )
        owners[key] = source
    items = [InputItem(source=source, key=key, kind=kind) for key, (source, _, kind) in zip(keys, found)]
    return Discovery(items=items, ignored=ignored)


def input_key(relative: str) -> str:
    """An input's key from its ``/``-separated path relative to its folder: the path without the suffix
    (``"2024/garden.jpg"`` → ``"2024/garden"``; ``"stdin"`` stays). :func:`discover_inputs` keeps the suffix
    instead when two inputs would share a key."""
    if relative == "stdin":
        return relative
    head, _, name = relative.rpartition("/")
    base = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{base}" if head else base
