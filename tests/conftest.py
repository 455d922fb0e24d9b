"""Shared fixtures: a tiny random-weight CLIPSeg with the real CLIP tokenizer, built once per session.

Other CPUs on this one (issue 20). CPU kernels differ from machine to machine, and so do the last bits of float
results; the suite must pass on any of them. These variables make this machine take another CPU's kernel paths
(pytest's header shows which are in force):

* ``ATEN_CPU_CAPABILITY=avx2`` (or ``default``, plain SSE-era code): the vectorized ATen kernels (elementwise ops,
  reductions, softmax, interpolation...) that torch dispatches by CPU at start-up, instead of AVX-512;
* ``MKL_ENABLE_INSTRUCTIONS=AVX2`` (or ``SSE4_2``): the highest instruction set MKL's BLAS (torch's float32
  matmuls on the CPU) may use;
* ``ONEDNN_MAX_CPU_ISA=AVX2`` (or ``AVX``): the same for oneDNN (convolutions, some matmuls, bf16/int8 paths) and
  for OpenVINO's CPU plugin, which runs on its own copy of oneDNN (below AVX, at ``SSE41``, the plugin fails:
  "MVN node ... bad combination", an emulation limit, so the tests go no lower).

``.ci/run`` runs the whole suite natively and under the AVX2 paths, and the numerics-sensitive tests (marker
``numerics``: goldens, parity with transformers, batched against single calls, reduced precisions) under the
``default`` paths too.
"""

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


# The test files whose results depend on float rounding: what CI runs again under the oldest kernel paths.
NUMERICS_FILES = {
    "test_golden_outputs.py", "test_clipseg_runtime.py", "test_engine.py", "test_fast_mode.py", "test_openvino.py",
    "test_model.py", "test_visual_prompts.py", "test_refine.py", "test_detail.py", "test_postprocess.py",
    "test_resize.py", "test_comfy_nodes.py", "test_video.py", "test_properties.py", "test_instances.py",
    "test_heatmap.py", "test_session_from_hf.py", "test_matte.py", "test_tracking.py", "test_precision.py",
    "test_compat.py",
}  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in NUMERICS_FILES:
            item.add_marker(pytest.mark.numerics)


def pytest_report_header(config: pytest.Config) -> str:
    import torch

    variables = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")
    forced = ", ".join(f"{name}={os.environ[name]}" for name in variables if name in os.environ) or "none forced"
    return f"CPU kernels: ATen {torch.backends.cpu.get_cpu_capability()} ({forced})"


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
