"""What this machine offers textmask: versions, devices, threads, dtypes, and which models are present.

Used by ``textmask info``; any face may call :func:`environment` or :func:`find_models` (e.g. to list the
models a user can pick without downloading).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _folder_size(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size  # follows the HF cache's blob symlinks
        except OSError:
            pass
    return total


def _is_clipseg(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type") == "clipseg"
    except (OSError, ValueError, AttributeError):
        return False


def huggingface_cache() -> Path:
    """The default Hugging Face hub cache (``HF_HUB_CACHE`` / ``HF_HOME``, else ``~/.cache/huggingface/hub``)."""
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return Path.home() / ".cache" / "huggingface" / "hub"


def find_models(cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """CLIPSeg models present on this machine, without loading them.

    Looks in ``cache_dir`` (if given), the default Hugging Face cache, and textmask's own cache
    (``$TEXTMASK_CACHE``: the random-weight models).

    Returns:
        one dict per model: ``source`` (what to pass as ``--model``), ``path``, ``where``, ``size_mb``,
        ``safetensors`` (whether loadable without ``allow_pickle``), ``random`` (meaningless masks).
    """
    from .constants import RANDOM_SOURCES, cache_root
    from .model import _snapshot_in
    from .testmodels import random_model_folder

    found: list[dict[str, Any]] = []
    caches = [Path(cache_dir).expanduser()] if cache_dir else []
    caches.append(huggingface_cache())
    seen: set[Path] = set()
    for cache in caches:
        if not cache.is_dir() or cache.resolve() in seen:
            continue
        seen.add(cache.resolve())
        for repo in sorted(cache.glob("models--*")):
            snapshot = _snapshot_in(repo)
            if snapshot is None or not _is_clipseg(snapshot):
                continue
            found.append(
                {
                    "source": repo.name.removeprefix("models--").replace("--", "/"),
                    "path": str(snapshot),
                    "where": f"Hugging Face cache {cache}",
                    "size_mb": round(_folder_size(snapshot) / 1e6, 1),
                    "safetensors": any(snapshot.glob("*.safetensors")),
                    "random": False,
                }
            )
    for source in RANDOM_SOURCES:
        folder = random_model_folder(source)
        if (folder / "config.json").is_file():
            found.append(
                {
                    "source": source,
                    "path": str(folder),
                    "where": f"textmask cache {cache_root()}",
                    "size_mb": round(_folder_size(folder) / 1e6, 1),
                    "safetensors": any(folder.glob("*.safetensors")),
                    "random": True,
                }
            )
    return found


def is_random_model(folder: str | os.PathLike) -> bool:
    """True for a model folder textmask built with random weights (its masks are meaningless)."""
    readme = Path(folder) / "README.txt"
    try:
        return readme.is_file() and readme.read_text(encoding="utf-8").startswith("textmask random-")
    except OSError:
        return False


def _dtype_support(device: str) -> dict[str, str]:
    import torch

    from .model import cpu_has_native_bf16

    if device == "cpu":
        from .model import fast_precision, resolve_backend

        native = cpu_has_native_bf16()
        try:
            backend, precision = resolve_backend("auto", "cpu", "fast")
        except Exception:  # pragma: no cover - a broken OpenVINO: reported as torch
            backend, precision = "torch", None
        dtype, quantize = fast_precision(torch.device("cpu"))
        torch_fast = "torch int8 (dynamic)" if quantize else f"torch {str(dtype).removeprefix('torch.')}"
        return {
            "float32": "yes",
            "bfloat16": "yes, native (fast)" if native else "yes, emulated (usually slower than float32)",
            "float16": "no (refused on CPU: very slow)",
            "int8": "OpenVINO (--backend openvino; quantizing needs nncf)",
            "fast": f"openvino {precision}" if backend == "openvino" else torch_fast,
        }
    if device.startswith("cuda"):
        bf16 = torch.cuda.is_bf16_supported()
        return {
            "float32": "yes",
            "bfloat16": "yes" if bf16 else "no (this GPU lacks bfloat16)",
            "float16": "yes",
            "fast": "float16",
        }
    return {"float32": "yes", "bfloat16": "maybe", "float16": "yes", "fast": "float16"}


def environment(cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Versions, devices, threads, dtype support, model search places and the models present."""
    import torch

    from . import __version__
    from .constants import DEFAULT_MODEL, cache_root
    from .model import _hub_offline, resolve_device

    devices: list[dict[str, Any]] = [{"name": "cpu", "detail": platform.processor() or platform.machine()}]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({"name": f"cuda:{index}", "detail": f"{props.name}, {props.total_memory / 2**30:.0f} GiB"})
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append({"name": "mps", "detail": "Apple Metal"})
    for device in devices:
        device["dtypes"] = _dtype_support(device["name"])
    return {
        "textmask": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "pillow": _version("pillow"),
        "av": _version("av"),
        "openvino": _version("openvino"),
        "nncf": _version("nncf"),
        "auto_device": str(resolve_device("auto")),
        "devices": devices,
        "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
        "cpu_count": os.cpu_count(),
        "default_model": DEFAULT_MODEL,
        "model_search": {
            "huggingface_cache": str(huggingface_cache()),
            "cache_dir": str(cache_dir) if cache_dir else None,
            "textmask_cache": str(cache_root()),
            "offline": _hub_offline(),
        },
        "models": find_models(cache_dir),
        "precision_checks": _precision_checks(),
    }


def _precision_checks() -> list[dict[str, Any]]:
    """The reduced precisions checked against float32 on this machine (textmask.precision's cache), newest first."""
    from .precision import cached_checks

    return cached_checks()
