"""The atomic store: every output is written under a hidden temporary name and renamed into place, so an
interrupted run never leaves a half-written file under a final name, and a rerun resumes where it stopped.

:class:`Store` writes into a local folder (atomic renames) or into any pyarrow filesystem (``s3://``, ``gs://``,
``hdfs://``...: object stores publish an object only once it is complete; other filesystems get a hidden
temporary name and a move). Temporaries left by a killed run are removed on the next start
(:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_OBJECT_STORES = ("s3", "gcs", "gs", "abfs", "az")  # filesystems where an object appears whole or not at all


def temporary_name(path: Path) -> Path:
    """The hidden name ``path`` is written under before the rename: ``.<name>.<pid>.part``."""
    return path.with_name(f".{path.name}.{os.getpid()}.part")


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?:part|old)$")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows: assume it is alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


def remove_stale_temporaries(outdir: str | os.PathLike, min_age_s: float = 120, max_age_s: float = 24 * 3600) -> int:
    """Remove the temporary files and folders (``.<name>.<pid>.part``/``.old``) a killed run left behind.

    A temporary is removed when its process is gone and it has not changed for ``min_age_s`` (a run on
    another machine writing into a shared folder has a pid this machine does not know, but its temporaries
    keep changing while it writes). On Windows, where a pid cannot be checked safely, only temporaries older
    than ``max_age_s`` go. A live process's temporaries (a parallel run) are left alone. Final names are never
    touched: they only ever hold complete files. Returns how many were removed.
    """
    root = Path(outdir)
    if not root.is_dir():
        return 0
    removed = 0
    now = time.time()
    for current, dirnames, filenames in os.walk(root):
        for entry in [*dirnames, *filenames]:
            match = _TEMPORARY.match(entry)
            if match is None:
                continue
            path = Path(current) / entry
            try:
                age = now - path.lstat().st_mtime
                stale = age > min_age_s and not _process_alive(int(match["pid"]))
                if os.name == "nt":
                    stale = age > max_age_s
            except (OSError, ValueError, OverflowError):
                continue
            if stale:
                _remove(path)
                removed += 1
        dirnames[:] = [d for d in dirnames if not _TEMPORARY.match(d)]
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on any error remove it.

    Works for files and folders (a PNG sequence). An existing ``path`` is replaced: files atomically, folders
    by moving the old one aside first. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    _remove(temporary)
    try:
        yield temporary
        if temporary.is_dir() and path.is_dir():
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.replace(path, old)
            os.replace(temporary, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written there; raise ``OSError`` saying why not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".textmask-write-test-"):
            pass
    except OSError as exc:
        raise OSError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from None
    return folder


def save_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (parent folders are created)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


@dataclass(frozen=True)
class Store:
    """Where a run's outputs go: a local folder (``filesystem`` None) or a path in a pyarrow filesystem.

    Attributes:
        root: the output folder (a local path, or a path inside ``filesystem``).
        filesystem: a ``pyarrow.fs.FileSystem``, or None for the local disk.
    """

    root: str
    filesystem: Any = None

    @classmethod
    def open(cls, output_dir: str | os.PathLike, filesystem: Any = None) -> Store:
        """A local folder, ``file://...``, or a URI pyarrow understands (``s3://bucket/masks``, ``gs://...``,
        ``hdfs://...``); with an explicit pyarrow ``filesystem``, ``output_dir`` is a path inside it."""
        text = os.fspath(output_dir)
        if filesystem is not None:
            return cls(text.rstrip("/") or "/", filesystem)
        if text.startswith("file://"):
            return cls(text[len("file://") :])
        if "://" in text:
            import pyarrow.fs

            fs, root = pyarrow.fs.FileSystem.from_uri(text)
            return cls(root.rstrip("/"), fs)
        return cls(text)

    @property
    def local(self) -> bool:
        return self.filesystem is None

    def check(self) -> None:
        """Create a local folder and prove a file can be written there; raise ``OSError`` saying why not."""
        if self.local:
            check_writable(self.root)

    def clean(self) -> int:
        """Remove the temporaries a killed run left in a local folder (see :func:`remove_stale_temporaries`)."""
        return remove_stale_temporaries(self.root) if self.local else 0

    def existing(self, paths: Sequence[str | os.PathLike] | None = None) -> set[str]:
        """Which of ``paths`` exist (POSIX strings); every file below the root when ``paths`` is None (one
        recursive listing: far cheaper on an object store than a request per file)."""
        if self.local:
            if paths is None:
                root = Path(self.root)
                return {p.as_posix() for p in root.rglob("*")} if root.is_dir() else set()
            return {Path(p).as_posix() for p in paths if os.path.lexists(p)}
        import pyarrow.fs

        if paths is None:
            selector = pyarrow.fs.FileSelector(self.root, recursive=True, allow_not_found=True)
            listed = self.filesystem.get_file_info(selector)
            return {info.path for info in listed if info.type == pyarrow.fs.FileType.File}
        wanted = [Path(p).as_posix() for p in paths]
        if not wanted:
            return set()
        found = self.filesystem.get_file_info(wanted)
        return {info.path for info in found if info.type != pyarrow.fs.FileType.NotFound}

    def write(self, path: str | os.PathLike, data: bytes) -> str:
        """Write one file so that no partial file ever has the final name; returns the path written."""
        if self.local:
            save_bytes(path, data)
            return os.fspath(path)
        fs, path = self.filesystem, Path(path).as_posix()
        parent, _, name = path.rpartition("/")
        if parent:
            fs.create_dir(parent, recursive=True)
        if any(store in str(getattr(fs, "type_name", "")).lower() for store in _OBJECT_STORES):
            with fs.open_output_stream(path) as stream:
                stream.write(data)
            return path
        temporary = f"{parent}/.{name}.{os.getpid()}.part" if parent else f".{name}.{os.getpid()}.part"
        try:
            with fs.open_output_stream(temporary) as stream:
                stream.write(data)
            fs.move(temporary, path)
        except BaseException:
            try:
                fs.delete_file(temporary)
            except Exception:  # already gone, or the filesystem is failing anyway
                pass
            raise
        return path
