"""Names and defaults every layer shares, importable without torch: the default model, the random test
models, the option choices the faces offer, and textmask's own cache folder."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"
# random-tiny / random-full: random weights. The -outliers stand-ins are the same functions with trained-ViT-like
# activation statistics (per-channel post-LayerNorm ranges, outlier dimensions); -int8-breaker ones are built to
# break int8 (textmask.testmodels.add_outlier_channels).
RANDOM_SOURCES = (
    "random-tiny",
    "random-full",
    "random-tiny-outliers",
    "random-full-outliers",
    "random-tiny-int8-breaker",
    "random-full-int8-breaker",
)
RANDOM_MODEL_VERSION = 4  # bump when the random models' weights change; their cache folders are ``<source>-v<N>``
STAND_IN_VERSION = 1  # bump when the stand-ins' transform changes; their folders are ``<source>-v<N>.<M>``
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "bfloat16", "float16", "fast", "int8")  # int8: the OpenVINO backend
BACKENDS = ("auto", "torch", "openvino")
# The ComfyUI loader's choices ("auto": ComfyUI's device and dtype), declared by its node, checked by its runtime.
COMFY_DEVICES = ("auto", "cpu")
COMFY_DTYPES = ("auto", "float32", "float16", "bfloat16", "int8")
NORMALIZE_MODES = ("none", "minmax", "seed")
COMBINE_MODES = ("union", "intersection")
OUTPUT_KINDS = ("mask", "overlay", "cutout", "instances")  # instances: a JSON + a PNG each (videos: tracks)


def cache_root() -> Path:
    """Where textmask keeps what it builds (random models, converted models): ``$TEXTMASK_CACHE`` or
    ``~/.cache/textmask``."""
    return Path(os.environ.get("TEXTMASK_CACHE", Path.home() / ".cache" / "textmask")).expanduser()
