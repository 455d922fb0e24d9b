"""The ``textmask`` command line: one small module per sub-command (``mask``, ``download``, ``info``, ``serve``),
each holding declarations and calls only; the group and what they share live in :mod:`.app`. Heavy imports (torch,
the engine, the server) happen inside the commands, so ``--help`` is instant."""

from __future__ import annotations

from . import download, info, mask, serve  # noqa: F401 - registers the sub-commands on the group
from .app import main, run

__all__ = ["main", "run"]
