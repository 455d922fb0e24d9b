"""textmask: text-prompted segmentation masks from CLIPSeg, for one image, a batch, a folder or a video.

Quick start::

    import textmask
    session = textmask.load()                      # CIDAS/clipseg-rd64-refined, cached per process
    masks = session.mask(images, ["cat", "dog"], threshold=0.4)   # [B, H, W] in [0, 1]
    masks = session.mask(images, textmask.ImagePrompt("example.png"))  # mask what looks like the example

Imports are lazy: ``import textmask`` loads no torch until something is used. transformers is never needed:
textmask runs its own CLIPSeg modules (:mod:`textmask.clipseg`); it is only used to interoperate with it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "textmask.engine",
    "Segmenter": "textmask.engine",
    "session_from_hf": "textmask.engine",
    "ImageFeatures": "textmask.engine",
    "MaskOptions": "textmask.postprocess",
    "Target": "textmask.postprocess",
    "refine": "textmask.edges",
    "RefineOptions": "textmask.edges",
    "instances": "textmask.components",
    "Instances": "textmask.components",
    "track": "textmask.tracking",
    "Tracker": "textmask.tracking",
    "stabilize": "textmask.stabilization",
    "Stabilizer": "textmask.stabilization",
    "load_model": "textmask.model",
    "locate_model": "textmask.model",
    "clear_model_cache": "textmask.model",
    "DEFAULT_MODEL": "textmask.constants",
    "load_image": "textmask.images",
    "ImagePrompt": "textmask.prompts",
    "TextPrompt": "textmask.prompts",
    "Blend": "textmask.prompts",
    "average": "textmask.prompts",
    "TextmaskError": "textmask.errors",
    "ModelNotFoundError": "textmask.errors",
    "ModelLoadError": "textmask.errors",
    "InputError": "textmask.errors",
    "PromptError": "textmask.errors",
    "BackendUnavailable": "textmask.errors",
    "OutOfMemoryError": "textmask.engine",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from .components import Instances, instances
    from .constants import DEFAULT_MODEL
    from .edges import RefineOptions, refine
    from .engine import ImageFeatures, OutOfMemoryError, Segmenter, load, session_from_hf
    from .errors import (
        BackendUnavailable,
        InputError,
        ModelLoadError,
        ModelNotFoundError,
        PromptError,
        TextmaskError,
    )
    from .images import load_image
    from .model import clear_model_cache, load_model, locate_model
    from .postprocess import MaskOptions, Target
    from .prompts import Blend, ImagePrompt, TextPrompt, average
    from .stabilization import Stabilizer, stabilize
    from .tracking import Tracker, track


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'textmask' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
