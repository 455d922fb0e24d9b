"""Shared fixtures: a tiny random-weight CLIPSeg with the real CLIP tokenizer, built once per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_THROWAWAY_CACHE: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    # Random models built by the tests go to a throwaway cache (random-full alone is 577 MB), removed when the
    # run ends; nothing touches the network.
    global _THROWAWAY_CACHE
    if "TEXTMASK_CACHE" not in os.environ:
        _THROWAWAY_CACHE = tempfile.mkdtemp(prefix="textmask-test-cache-")
        os.environ["TEXTMASK_CACHE"] = _THROWAWAY_CACHE
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _THROWAWAY_CACHE is not None:
        shutil.rmtree(_THROWAWAY_CACHE, ignore_errors=True)
        del os.environ["TEXTMASK_CACHE"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``save_pretrained`` folder: tiny random CLIPSeg (ViT patch 16, 352 input) + CLIP tokenizer files."""
    from textmask.testmodels import build_random_model

    return build_random_model("tiny", tmp_path_factory.mktemp("models") / "tiny-clipseg")


@pytest.fixture(scope="session")
def tiny_session(tiny_model_dir: Path):
    """The textmask session over the tiny model (CPU, float32)."""
    import textmask

    return textmask.load(str(tiny_model_dir))


@pytest.fixture()
def vision_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every vision-tower pass (``Segmenter.encode_pixels``) made during the test, in order."""
    from textmask.engine import Segmenter

    passes: list[int] = []
    real = Segmenter.encode_pixels

    def counting(self, pixels, sizes):
        passes.append(len(sizes))
        return real(self, pixels, sizes)

    monkeypatch.setattr(Segmenter, "encode_pixels", counting)
    return passes


@pytest.fixture(scope="session")
def reference(tiny_model_dir: Path):
    """The reference pipeline: transformers' own processor and model, loaded independently."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    processor = CLIPSegProcessor.from_pretrained(str(tiny_model_dir))
    model = CLIPSegForImageSegmentation.from_pretrained(str(tiny_model_dir)).eval()
    return processor, model
