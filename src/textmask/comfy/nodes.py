"""textmask's ComfyUI nodes: declarations and conversion only; the work happens in the engine.

* ``SaltCLIPSegMasking`` and ``SaltCLIPSegLoader``: drop-ins for SaltAI's nodes, same ids, names, inputs and
  outputs, so saved workflows load and run unchanged (and produce the same masks, within 1/255).
* ``TextmaskCLIPSegLoader`` and ``TextmaskCLIPSegMasking``: the richer loader (model list, device, dtype) and
  masking node (several prompts, negatives, threshold, blur, grow/shrink, invert, normalization, previews).

This module imports nothing heavy: torch, transformers and the engine load when a node first runs.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("textmask")

DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"
DEVICE_CHOICES = ["auto", "cpu"]
DTYPE_CHOICES = ["auto", "float32", "float16", "bfloat16"]
NORMALIZE_CHOICES = ["minmax", "none", "seed"]
COMBINE_CHOICES = ["union", "intersection"]


class SaltCLIPSegMasking:
    """Drop-in for SaltAI's "Batch Image CLIPSeg Masking": same contract, same masks (within 1/255).

    Underneath: the model is loaded once per process, the batch runs in chunks on ComfyUI's device, and
    the seed's normalization and resizing are reproduced exactly (``normalize="seed"``).
    """

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE",),
                "text": ("STRING", {"default": "", "multiline": False}),
            },
            "optional": {
                "clipseg_model": ("CLIPSEG_MODEL",),
            },
        }

    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("masks", "mask_images")
    FUNCTION = "CLIPSeg_image"
    CATEGORY = "SALT/Masking"

    def CLIPSeg_image(self, images: Any, text: str | None = None, clipseg_model: Any = None) -> tuple[Any, Any]:
        """IMAGE ``[B, H, W, C]`` → masks ``[B, H, W]`` and mask images ``[B, H, W, 3]``, all at the first
        image's size, normalized as the seed node does."""
        from . import runtime

        batch = runtime.as_images(images)
        segmenter = runtime.segmenter_for(clipseg_model)
        prompt = "" if text is None else str(text)
        masks = runtime.run_masks(segmenter, batch, prompt, runtime.first_size(batch), normalize="seed")
        return masks, runtime.mask_to_image(masks)


class SaltCLIPSegLoader:
    """Drop-in for SaltAI's "CLIPSeg Model Loader (Salt)": a hub id or folder → ``(processor, model)``.

    Looks in ComfyUI's ``models/clipseg`` (Hugging Face cache layout, as SaltAI and WAS keep it) first, then
    the default Hugging Face cache; downloads only when missing and online. Loaded once per process; the
    pair is plain CPU float32, usable by SaltAI's and WAS's masking nodes too.
    """

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("STRING", {"default": DEFAULT_MODEL, "multiline": False}),
            },
        }

    RETURN_TYPES = ("CLIPSEG_MODEL",)
    RETURN_NAMES = ("clipseg_model",)
    FUNCTION = "clipseg_model"
    CATEGORY = "SALT/Loaders"

    def clipseg_model(self, model: str) -> tuple[Any]:
        from . import runtime

        return (runtime.load_pair(model, device="auto", dtype="float32"),)


def _model_choices() -> list[str]:
    try:
        from .folders import list_models

        return list_models()
    except Exception:  # a broken folder must not hide the node
        log.warning("textmask: could not list the clipseg model folders", exc_info=True)
        return [DEFAULT_MODEL]


class TextmaskCLIPSegLoader:
    """Load a CLIPSeg model found in ``models/clipseg`` (or the default hub id) and choose device and dtype.

    The output is the usual ``(CLIPSegProcessor, CLIPSegForImageSegmentation)`` pair (plain CPU float32, so
    other packs' CLIPSeg nodes can use it); textmask's nodes run it on the chosen device and dtype.
    """

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": (
                    _model_choices(),
                    {"tooltip": "Models found in ComfyUI/models/clipseg (folders, or Hugging Face cache as ORG/NAME)"},
                ),
                "device": (
                    DEVICE_CHOICES,
                    {"default": "auto", "tooltip": "auto: ComfyUI's device (GPU when it has one)"},
                ),
                "dtype": (
                    DTYPE_CHOICES,
                    {"default": "auto", "tooltip": "auto: float16 on GPUs where ComfyUI uses it, else float32"},
                ),
            },
        }

    RETURN_TYPES = ("CLIPSEG_MODEL",)
    RETURN_NAMES = ("clipseg_model",)
    FUNCTION = "load"
    CATEGORY = "textmask/loaders"
    DESCRIPTION = (
        "Loads a CLIPSeg model from ComfyUI/models/clipseg (or the default hub id) once per process. The output "
        "also works with SaltAI's and WAS Node Suite's CLIPSeg nodes."
    )

    def load(self, model: str, device: str = "auto", dtype: str = "auto") -> tuple[Any]:
        from . import runtime

        if device not in DEVICE_CHOICES:
            raise ValueError(f"device: {device!r} is not one of {DEVICE_CHOICES}")
        if dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype: {dtype!r} is not one of {DTYPE_CHOICES}")
        return (runtime.load_pair(model, device=device, dtype=dtype),)


class TextmaskCLIPSegMasking:
    """Text-prompted masks with the usual controls, and previews.

    Prompts (one per line) are combined (union: any, intersection: all); negative prompts are subtracted;
    then threshold, grow/shrink, blur and invert, in that order. Outputs the mask, a black-and-white mask
    image and a heat-map overlay on the input.
    """

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE",),
                "prompts": (
                    "STRING",
                    {"default": "", "multiline": True, "tooltip": "What to mask, one prompt per line"},
                ),
                "negative_prompts": (
                    "STRING",
                    {"default": "", "multiline": True, "tooltip": "What to remove from the mask, one per line"},
                ),
                "combine": (COMBINE_CHOICES, {"default": "union", "tooltip": "union: any prompt; intersection: all"}),
                "normalize": (
                    NORMALIZE_CHOICES,
                    {
                        "default": "minmax",
                        "tooltip": "minmax: stretch each map to 0..1; none: raw probability (steady across "
                        "frames); seed: SaltAI's (p - min) / max",
                    },
                ),
                "threshold": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Binarize above this; 0: off"},
                ),
                "blur": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 64.0, "step": 0.5, "tooltip": "Gaussian blur sigma, pixels"},
                ),
                "grow": (
                    "INT",
                    {"default": 0, "min": -256, "max": 256, "step": 1, "tooltip": "Grow (>0) or shrink (<0), pixels"},
                ),
                "invert": ("BOOLEAN", {"default": False}),
                "batch_size": (
                    "INT",
                    {"default": 8, "min": 1, "max": 256, "step": 1, "tooltip": "Images per forward pass"},
                ),
            },
            "optional": {
                "clipseg_model": ("CLIPSEG_MODEL",),
                "overlay_alpha": (
                    "FLOAT",
                    {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Heat-map opacity"},
                ),
            },
        }

    RETURN_TYPES = ("MASK", "IMAGE", "IMAGE")
    RETURN_NAMES = ("mask", "mask_image", "heatmap")
    FUNCTION = "mask"
    CATEGORY = "textmask/masking"
    DESCRIPTION = (
        "Masks what the prompts describe (one per line), minus the negative prompts; then threshold, grow/shrink, "
        "blur, invert. Outputs the mask, a black-and-white image of it and a heat-map preview."
    )

    def mask(
        self,
        images: Any,
        prompts: str,
        negative_prompts: str = "",
        combine: str = "union",
        normalize: str = "minmax",
        threshold: float = 0.0,
        blur: float = 0.0,
        grow: int = 0,
        invert: bool = False,
        batch_size: int = 8,
        clipseg_model: Any = None,
        overlay_alpha: float = 0.5,
    ) -> tuple[Any, Any, Any]:
        """IMAGE ``[B, H, W, C]`` → mask ``[B, H, W]``, mask image and heat-map ``[B, H, W, 3]``."""
        from ..postprocess import heatmap_overlay
        from . import runtime

        positive = runtime.prompt_lines(prompts, "prompts", required=True)
        negative = runtime.prompt_lines(negative_prompts, "negative_prompts", required=False)
        batch = runtime.as_images(images)
        size = runtime.first_size(batch)
        segmenter = runtime.segmenter_for(clipseg_model)
        masks = runtime.run_masks(
            segmenter,
            batch,
            positive,
            size,
            negative_prompts=negative,
            combine=combine,
            normalize=normalize,
            threshold=float(threshold) if threshold > 0 else None,
            blur=float(blur),
            grow=int(grow),
            invert=bool(invert),
            batch_size=int(batch_size),
        )
        preview = heatmap_overlay(runtime.stack_at(batch, size).to(masks.device), masks, float(overlay_alpha))
        return masks, runtime.mask_to_image(masks), preview


NODE_CLASS_MAPPINGS = {
    "SaltCLIPSegMasking": SaltCLIPSegMasking,
    "SaltCLIPSegLoader": SaltCLIPSegLoader,
    "TextmaskCLIPSegLoader": TextmaskCLIPSegLoader,
    "TextmaskCLIPSegMasking": TextmaskCLIPSegMasking,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "SaltCLIPSegMasking": "Batch Image CLIPSeg Masking",
    "SaltCLIPSegLoader": "CLIPSeg Model Loader (Salt)",
    "TextmaskCLIPSegLoader": "CLIPSeg Model Loader (textmask)",
    "TextmaskCLIPSegMasking": "CLIPSeg Masking (textmask)",
}
