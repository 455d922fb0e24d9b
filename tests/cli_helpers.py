"""Helpers shared by the CLI and video tests: run the real entry point, or the same code in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from textmask.cli import main

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
GATED = Path(__file__).with_name("gated_textmask.py")  # textmask with engine calls held by a gate file


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m textmask ARGS`` in a fresh interpreter, as a user would."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "textmask", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def invoke(*args: str, input: bytes | str | None = None):
    """Run the CLI in-process (same code as the entry point; the loaded model is reused)."""
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def mask_levels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def files_in(folder: Path) -> set[str]:
    """Every file under ``folder`` (hidden ones included), as relative POSIX paths."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
