"""Drop-ins for the orphaned CLIPSeg packs: biegert/ComfyUI-CLIPSeg and WAS Node Suite's CLIPSeg nodes.

Same node ids, inputs, outputs, types and categories as the originals, so saved workflows (and Impact Pack's
``CLIPSegDetectorProvider``, which calls ``NODE_CLASS_MAPPINGS['CLIPSeg']().segment_image(...)``) run unchanged
with textmask alone; the outputs agree with the originals within 1/255 on the same weights. The work is the
engine's (:mod:`textmask.compat`); these classes only convert.

They are registered only when the original pack is not installed (:func:`available`): an installed pack is never
shadowed, and the log says which names textmask registered.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from ..constants import DEFAULT_MODEL

log = logging.getLogger("textmask")


class BiegertCLIPSeg:
    """biegert's ``CLIPSeg``: text → mask, heat-map overlay and black-and-white mask
    (:func:`textmask.compat.biegert_segment`)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "text": ("STRING", {"multiline": False}),
            },
            "optional": {
                "blur": ("FLOAT", {"min": 0, "max": 15, "step": 0.1, "default": 7}),
                "threshold": ("FLOAT", {"min": 0, "max": 1, "step": 0.05, "default": 0.4}),
                "dilation_factor": ("INT", {"min": 0, "max": 10, "step": 1, "default": 4}),
            },
        }

    CATEGORY = "image"
    RETURN_TYPES = ("MASK", "IMAGE", "IMAGE")
    RETURN_NAMES = ("Mask", "Heatmap Mask", "BW Mask")
    OUTPUT_TOOLTIPS = (
        "The mask [H, W] (a batch: [B, H, W]): CLIPSeg's map above threshold, blurred, stretched, dilated",
        "A viridis heat-map of the mask, half over the image",
        "The mask as a black-and-white image",
    )
    FUNCTION = "segment_image"
    DESCRIPTION = (
        "textmask's drop-in for biegert's CLIPSeg node (ComfyUI-CLIPSeg): same inputs and outputs, same masks "
        "within 1/255. Impact Pack's CLIPSegDetectorProvider uses it."
    )

    def segment_image(
        self, image: Any, text: str, blur: float = 7.0, threshold: float = 0.4, dilation_factor: int = 4
    ) -> tuple[Any, Any, Any]:
        """IMAGE ``[1, H, W, 3]`` → mask ``[H, W]``, heat-map and mask images ``[1, H, W, 3]`` (a batch of B images:
        mask ``[B, H, W]``)."""
        from ..compat import biegert_segment
        from . import runtime

        batch = runtime.as_images(image, "image")
        if isinstance(batch, list):
            batch = runtime.stack_at(batch, runtime.first_size(batch))
        segmenter = runtime.segmenter_for(None)
        mask, heatmap, bw = biegert_segment(
            segmenter, batch[..., :3], str(text or ""), blur, threshold, dilation_factor
        )
        out = runtime.output_device()
        return (mask[0] if mask.shape[0] == 1 else mask).to(out), heatmap.to(out), bw.to(out)


class BiegertCombineSegMasks:
    """biegert's ``CombineSegMasks``: the sum of two or three masks, with previews
    (:func:`textmask.compat.biegert_combine`)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "input_image": ("IMAGE",),
                "mask_1": ("MASK",),
                "mask_2": ("MASK",),
            },
            "optional": {
                "mask_3": ("MASK",),
            },
        }

    CATEGORY = "image"
    RETURN_TYPES = ("MASK", "IMAGE", "IMAGE")
    RETURN_NAMES = ("Combined Mask", "Heatmap Mask", "BW Mask")
    OUTPUT_TOOLTIPS = (
        "mask_1 + mask_2 (+ mask_3), as added (not clipped to 1)",
        "A viridis heat-map of the combined mask, half over the image",
        "The combined mask as a black-and-white image",
    )
    FUNCTION = "combine_masks"
    DESCRIPTION = "textmask's drop-in for biegert's CombineSegMasks node: the masks' sum, with previews."

    def combine_masks(self, input_image: Any, mask_1: Any, mask_2: Any, mask_3: Any = None) -> tuple[Any, Any, Any]:
        from ..compat import biegert_combine
        from . import runtime

        image = runtime.as_images(input_image, "input_image")
        if isinstance(image, list):
            image = image[0][None]
        masks = [mask for mask in (mask_1, mask_2, mask_3) if mask is not None]
        for name, mask in zip(("mask_1", "mask_2", "mask_3"), masks):
            runtime.check_mask(mask, name)
        return biegert_combine(image[..., :3], masks)


class WasCLIPSegMasking:
    """WAS Node Suite's ``CLIPSeg Masking`` (:func:`textmask.compat.was_masks`)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE",),
                "text": ("STRING", {"default": "", "multiline": False}),
            },
            "optional": {
                "clipseg_model": ("CLIPSEG_MODEL",),
            },
        }

    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("MASK", "MASK_IMAGE")
    OUTPUT_TOOLTIPS = (
        "The mask: [H, W] for one image; for a batch [B, H, W, 1], stretched over the whole batch (as WAS does)",
        "The mask as a black-and-white image",
    )
    FUNCTION = "CLIPSeg_image"
    CATEGORY = "WAS Suite/Image/Masking"
    DESCRIPTION = "textmask's drop-in for WAS Node Suite's CLIPSeg Masking: same inputs and outputs, same masks."

    def CLIPSeg_image(self, image: Any, text: str | None = None, clipseg_model: Any = None) -> tuple[Any, Any]:
        from ..compat import was_masks
        from . import runtime

        batch = runtime.as_images(image, "image")
        if isinstance(batch, list):
            batch = runtime.stack_at(batch, runtime.first_size(batch))
        mask, mask_image = was_masks(runtime.segmenter_for(clipseg_model), batch[..., :3], str(text or ""))
        out = runtime.output_device()
        return mask.to(out), mask_image.to(out)


_LETTERS = "abcdef"


class WasCLIPSegBatchMasking:
    """WAS Node Suite's ``CLIPSeg Batch Masking``: up to six images, each with its text
    (:func:`textmask.compat.was_batch_masks`)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        text = ("STRING", {"default": "", "multiline": False})
        return {
            "required": {
                "image_a": ("IMAGE",),
                "image_b": ("IMAGE",),
                "text_a": text,
                "text_b": text,
            },
            "optional": {
                "image_c": ("IMAGE",),
                "image_d": ("IMAGE",),
                "image_e": ("IMAGE",),
                "image_f": ("IMAGE",),
                "text_c": text,
                "text_d": text,
                "text_e": text,
                "text_f": text,
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("IMAGES_BATCH", "MASKS_BATCH", "MASK_IMAGES_BATCH")
    OUTPUT_TOOLTIPS = (
        "The connected images as one batch",
        "One mask per image [N, 1, H, W] (image i masked with text i), at image_a's size",
        "The masks as black-and-white images [N, H, W, 3]",
    )
    FUNCTION = "CLIPSeg_images"
    CATEGORY = "WAS Suite/Image/Masking"
    DESCRIPTION = "textmask's drop-in for WAS Node Suite's CLIPSeg Batch Masking: image i masked with text i."

    def CLIPSeg_images(self, image_a: Any, image_b: Any, text_a: str, text_b: str, **more: Any) -> tuple[Any, Any, Any]:
        from ..compat import was_batch_masks
        from ..errors import InputError
        from . import runtime

        images, texts = [], [str(text_a or ""), str(text_b or "")]
        for letter, image in zip(_LETTERS, (image_a, image_b, *(more.get(f"image_{x}") for x in _LETTERS[2:]))):
            if image is None:
                continue
            batch = runtime.as_images(image, f"image_{letter}")
            images.append(batch[0])  # WAS takes one image per input
        texts += [str(more[f"text_{x}"]) for x in _LETTERS[2:] if more.get(f"text_{x}")]
        if len(texts) != len(images):
            raise InputError(
                f"text_a..text_f: {len(texts)} non-empty texts for {len(images)} images; give each image its text"
            )
        if any(image.shape != images[0].shape for image in images):
            raise InputError("image_a..image_f: the images must share one size")
        segmenter = runtime.segmenter_for(None)
        batch, masks, mask_images = was_batch_masks(segmenter, [image[..., :3] for image in images], texts)
        out = runtime.output_device()
        return batch.to(out), masks.to(out), mask_images.to(out)


class WasCLIPSegModelLoader:
    """WAS Node Suite's ``CLIPSeg Model Loader``: a hub id or folder → the ``(processor, model)`` pair."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("STRING", {"default": DEFAULT_MODEL, "multiline": False}),
            },
        }

    RETURN_TYPES = ("CLIPSEG_MODEL",)
    RETURN_NAMES = ("clipseg_model",)
    OUTPUT_TOOLTIPS = ("A CLIPSeg (processor, model) pair, for the CLIPSeg Masking nodes",)
    FUNCTION = "clipseg_model"
    CATEGORY = "WAS Suite/Loaders"
    DESCRIPTION = "textmask's drop-in for WAS Node Suite's CLIPSeg Model Loader (models/clipseg, then the hub)."

    def clipseg_model(self, model: str) -> tuple[Any]:
        from . import runtime

        return (runtime.load_pair(model, device="auto", dtype="float32"),)


# pack → (its node ids → textmask's classes, how to recognise the pack installed in a custom_nodes folder)
BIEGERT = {"CLIPSeg": BiegertCLIPSeg, "CombineSegMasks": BiegertCombineSegMasks}
WAS = {
    "CLIPSeg Masking": WasCLIPSegMasking,
    "CLIPSeg Batch Masking": WasCLIPSegBatchMasking,
    "CLIPSeg Model Loader": WasCLIPSegModelLoader,
}


def _installed_packs(folders: list[str]) -> set[str]:
    """Which of the original packs sit in ComfyUI's ``custom_nodes`` folders (enabled ones; ComfyUI skips names
    ending in ``.disabled``): WAS Node Suite by its ``WAS_Node_Suite.py``, biegert's by a module that maps
    ``"CombineSegMasks"`` (its ``clipseg.py`` is copied into custom_nodes)."""
    found: set[str] = set()
    for folder in folders:
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            path = os.path.join(folder, entry)
            if entry.endswith(".disabled") or entry.startswith(".") or entry == "__pycache__":
                continue
            if os.path.isfile(os.path.join(path, "WAS_Node_Suite.py")):
                found.add("was")
            candidates = [path] if entry.endswith(".py") else [os.path.join(path, "__init__.py")]
            for candidate in candidates:
                try:
                    if os.path.getsize(candidate) < 1_000_000:
                        with open(candidate, encoding="utf-8", errors="ignore") as handle:
                            if '"CombineSegMasks"' in handle.read():
                                found.add("biegert")
                except OSError:
                    pass
    return found


def available() -> tuple[dict[str, type], dict[str, str]]:
    """The drop-ins to register now: those whose pack is neither loaded already (its ids in ComfyUI's
    ``nodes.NODE_CLASS_MAPPINGS``) nor installed in a ``custom_nodes`` folder (it may load after textmask).
    Logs what it registers and what it leaves to the installed pack. Outside ComfyUI: all of them."""
    nodes_module = sys.modules.get("nodes")
    loaded = set(getattr(nodes_module, "NODE_CLASS_MAPPINGS", {}) or {})
    installed: set[str] = set()
    folder_paths = sys.modules.get("folder_paths")
    if folder_paths is not None:
        try:
            installed = _installed_packs(list(folder_paths.get_folder_paths("custom_nodes")))
        except Exception:  # a ComfyUI without that folder name: rely on what is loaded
            log.debug("textmask: could not list the custom_nodes folders", exc_info=True)
    mappings: dict[str, type] = {}
    for pack, nodes, title in (("biegert", BIEGERT, "biegert's ComfyUI-CLIPSeg"), ("was", WAS, "WAS Node Suite")):
        if pack in installed or loaded & set(nodes):
            log.info("textmask: %s is installed; its CLIPSeg nodes stay its own", title)
            continue
        mappings.update(nodes)
        log.info("textmask: registered drop-ins for %s: %s", title, ", ".join(nodes))
    return mappings, {name: name for name in mappings}


__all__ = ["BIEGERT", "WAS", "available"]
