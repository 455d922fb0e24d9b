"""textmask's ComfyUI nodes: declarations and conversion only; the work happens in the engine.

* ``SaltCLIPSegMasking`` and ``SaltCLIPSegLoader``: drop-ins for SaltAI's nodes, same ids, names, inputs and
  outputs, so saved workflows load and run unchanged (and produce the same masks, within 1/255).
* ``TextmaskCLIPSegLoader`` and ``TextmaskCLIPSegMasking``: the richer loader (model list, device, dtype) and
  masking node (several prompts, negatives, threshold, blur, grow/shrink, invert, normalization, previews;
  optionally an example image too).
* ``TextmaskCLIPSegExampleMasking``: masks what looks like an example image (CLIPSeg's visual prompts).

This module imports nothing heavy: torch, transformers and the engine load when a node first runs.
"""

from __future__ import annotations

import logging
from typing import Any

from ..constants import BACKENDS, COMFY_DEVICES, COMFY_DTYPES, DEFAULT_MODEL

log = logging.getLogger("textmask")

DEVICE_CHOICES = list(COMFY_DEVICES)
DTYPE_CHOICES = list(COMFY_DTYPES)
BACKEND_CHOICES = list(BACKENDS)
NORMALIZE_CHOICES = ["minmax", "none", "seed"]
COMBINE_CHOICES = ["union", "intersection"]
EXAMPLE_MODE_CHOICES = ["separate", "blend"]
DETAIL_CHOICES = ["off", "auto", "2x2", "3x3", "4x4"]

# Inputs shared by the masking nodes (same names, ranges and tooltips everywhere).
_NORMALIZE = (
    NORMALIZE_CHOICES,
    {
        "default": "minmax",
        "tooltip": "minmax: stretch each map to 0..1; none: raw probability (steady across "
        "frames); seed: SaltAI's (p - min) / max",
    },
)
_THRESHOLD = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Binarize above this; 0: off"})
_BLUR = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 64.0, "step": 0.5, "tooltip": "Gaussian blur sigma, pixels"})
_GROW = ("INT", {"default": 0, "min": -256, "max": 256, "step": 1, "tooltip": "Grow (>0) or shrink (<0), pixels"})
_BATCH_SIZE = ("INT", {"default": 8, "min": 1, "max": 256, "step": 1, "tooltip": "Images per forward pass"})
_OVERLAY_ALPHA = ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Heat-map opacity"})
_DETAIL = (
    DETAIL_CHOICES,
    {
        "default": "off",
        "tooltip": "Detail for large images and small objects: also look at overlapping tiles at a higher scale "
        "(auto: from the image size), gated by the whole-image pass. Each tile costs one more model pass",
    },
)
_TEMPORAL_SMOOTHING = (
    "FLOAT",
    {
        "default": 0.0,
        "min": 0.0,
        "max": 0.95,
        "step": 0.05,
        "tooltip": "For a batch that is a video's frames, in order: average each prompt's map over time to cut "
        "flicker (0 off, 0.5 mild, 0.8 strong; lags on fast motion)",
    },
)
_STABILIZE = (
    "FLOAT",
    {
        "default": 0.0,
        "min": 0.0,
        "max": 0.95,
        "step": 0.05,
        "tooltip": "For a batch that is a video's frames, in order: steady masks that follow motion (the previous "
        "frame's maps warped along the optical flow, then blended; 0 off, 0.8 steady). Not with temporal_smoothing",
    },
)
_REFINE = (
    "BOOLEAN",
    {
        "default": False,
        "tooltip": "Move the mask's borders onto the image's edges at full resolution (before threshold, grow, blur)",
    },
)
_MATTE = (
    "BOOLEAN",
    {
        "default": False,
        "tooltip": "Refine as a matte: soft alpha where the truth is soft (hair, defocus, motion blur), crisp edges "
        "elsewhere (textmask.matte); overrides refine",
    },
)


_EXAMPLE_MASK = ("MASK", {"tooltip": "Marks the object in the example (1 = object); its background is then blanked"})
_INVERT_EXAMPLE_MASK = (
    "BOOLEAN",
    {
        "default": False,
        "tooltip": "Use 1 - example_mask. Load Image's MASK is 1 - alpha: turn this on to use a cut-out's shape",
    },
)


_MODEL_TOOLTIP = (
    "A CLIPSeg (processor, model) pair: for textmask's masking nodes, and SaltAI's and WAS Node Suite's too"
)
_MASKING_TOOLTIPS = (
    "Masks [B, H, W] in 0..1 at the first image's size, after threshold, grow/shrink, blur and invert",
    "The masks as black-and-white images [B, H, W, 3]",
    "A heat-map of each mask over its image [B, H, W, 3] (a preview)",
)


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
    OUTPUT_TOOLTIPS = (
        "Masks [B, H, W] in 0..1 at the first image's size, normalized as SaltAI's node does ((p - min) / max)",
        "The masks as black-and-white images [B, H, W, 3]",
    )
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
    OUTPUT_TOOLTIPS = (_MODEL_TOOLTIP,)
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
                    {
                        "default": "auto",
                        "tooltip": "auto: float16 on GPUs where ComfyUI uses it, else float32 (openvino: bfloat16 "
                        "where the CPU has it). int8: OpenVINO only",
                    },
                ),
            },
            "optional": {
                "backend": (
                    BACKEND_CHOICES,
                    {
                        "default": "auto",
                        "tooltip": "openvino: the vision tower on OpenVINO, CPU only (pip install "
                        "'textmask[openvino]'; converted once and cached); auto: openvino for int8, else torch",
                    },
                ),
            },
        }

    RETURN_TYPES = ("CLIPSEG_MODEL",)
    RETURN_NAMES = ("clipseg_model",)
    FUNCTION = "load"
    OUTPUT_TOOLTIPS = (_MODEL_TOOLTIP,)
    CATEGORY = "textmask/loaders"
    DESCRIPTION = (
        "Loads a CLIPSeg model from ComfyUI/models/clipseg (or the default hub id) once per process. The output "
        "also works with SaltAI's and WAS Node Suite's CLIPSeg nodes."
    )

    def load(self, model: str, device: str = "auto", dtype: str = "auto", backend: str = "auto") -> tuple[Any]:
        from . import runtime

        if device not in DEVICE_CHOICES:
            raise ValueError(f"device: {device!r} is not one of {DEVICE_CHOICES}")
        if dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype: {dtype!r} is not one of {DTYPE_CHOICES}")
        return (runtime.load_pair(model, device=device, dtype=dtype, backend=backend),)


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
                    {
                        "default": "",
                        "multiline": True,
                        "placeholder": "prompts: what to mask, one per line (e.g. a cat)",
                        "tooltip": "prompts: what to mask, one prompt per line",
                    },
                ),
                "negative_prompts": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "placeholder": "negative prompts: what to remove from the mask, one per line",
                        "tooltip": "negative_prompts: what to remove from the mask, one per line",
                    },
                ),
                "combine": (COMBINE_CHOICES, {"default": "union", "tooltip": "union: any prompt; intersection: all"}),
                "normalize": _NORMALIZE,
                "threshold": _THRESHOLD,
                "blur": _BLUR,
                "grow": _GROW,
                "invert": ("BOOLEAN", {"default": False}),
                "batch_size": _BATCH_SIZE,
            },
            "optional": {
                "clipseg_model": ("CLIPSEG_MODEL",),
                "overlay_alpha": _OVERLAY_ALPHA,
                "example": ("IMAGE", {"tooltip": "Also mask what looks like this example (a batch is averaged)"}),
                "example_mask": _EXAMPLE_MASK,
                "invert_example_mask": _INVERT_EXAMPLE_MASK,
                "example_mode": (
                    EXAMPLE_MODE_CHOICES,
                    {
                        "default": "separate",
                        "tooltip": "separate: the example is one more prompt, combined like the others; blend: "
                        "each text prompt is averaged with the example into one prompt",
                    },
                ),
                "example_weight": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.1,
                        "tooltip": "blend: the example's weight against each text prompt (1: equal)",
                    },
                ),
                "detail": _DETAIL,
                "temporal_smoothing": _TEMPORAL_SMOOTHING,
                "refine": _REFINE,
                "stabilize": _STABILIZE,
                "matte": _MATTE,
            },
        }

    RETURN_TYPES = ("MASK", "IMAGE", "IMAGE")
    RETURN_NAMES = ("mask", "mask_image", "heatmap")
    OUTPUT_TOOLTIPS = _MASKING_TOOLTIPS
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
        example: Any = None,
        example_mask: Any = None,
        invert_example_mask: bool = False,
        example_mode: str = "separate",
        example_weight: float = 1.0,
        detail: str = "off",
        temporal_smoothing: float = 0.0,
        refine: bool = False,
        stabilize: float = 0.0,
        matte: bool = False,
    ) -> tuple[Any, Any, Any]:
        """IMAGE ``[B, H, W, C]`` → mask ``[B, H, W]``, mask image and heat-map ``[B, H, W, 3]``."""
        from ..prompts import combine_prompts
        from . import runtime

        texts = runtime.prompt_lines(prompts, "prompts", required=example is None)
        negative = runtime.prompt_lines(negative_prompts, "negative_prompts", required=False)
        visual = runtime.example_prompt(example, example_mask, bool(invert_example_mask))
        positive = combine_prompts(texts, visual, mix=example_mode, example_weight=float(example_weight))
        return _mask_with_previews(
            images, positive, negative, clipseg_model, overlay_alpha, threshold, float(temporal_smoothing),
            combine=combine, normalize=normalize, blur=float(blur), grow=int(grow), invert=bool(invert),
            batch_size=int(batch_size), detail=detail, refine="matte" if matte else bool(refine),
            stabilize=float(stabilize),
        )  # fmt: skip


class TextmaskCLIPSegExampleMasking:
    """Masks what looks like an example image: CLIPSeg's visual ("one-shot") prompts.

    The example goes through CLIP's image tower once (a batch of examples is averaged into one prompt). With
    an ``example_mask`` marking the object, the example's background is blanked first (cropped to the object,
    blurred and darkened), as the CLIPSeg paper recommends. Then threshold, grow/shrink, blur and invert, as
    in the text masking node.
    """

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE",),
                "example": ("IMAGE", {"tooltip": "What to look for (a batch of examples is averaged into one)"}),
                "normalize": _NORMALIZE,
                "threshold": _THRESHOLD,
                "blur": _BLUR,
                "grow": _GROW,
                "invert": ("BOOLEAN", {"default": False}),
                "batch_size": _BATCH_SIZE,
            },
            "optional": {
                "example_mask": _EXAMPLE_MASK,
                "invert_example_mask": _INVERT_EXAMPLE_MASK,
                "example_background": (
                    "FLOAT",
                    {
                        "default": 0.1,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.05,
                        "tooltip": "With example_mask: how much of the example's background is kept (1: all)",
                    },
                ),
                "example_blur": (
                    "FLOAT",
                    {
                        "default": 3.0,
                        "min": 0.0,
                        "max": 64.0,
                        "step": 0.5,
                        "tooltip": "With example_mask: blur sigma of the example's background (pixels at 352 px)",
                    },
                ),
                "example_crop": (
                    "BOOLEAN",
                    {"default": True, "tooltip": "With example_mask: crop the example to the object"},
                ),
                "clipseg_model": ("CLIPSEG_MODEL",),
                "overlay_alpha": _OVERLAY_ALPHA,
            },
        }

    RETURN_TYPES = ("MASK", "IMAGE", "IMAGE")
    RETURN_NAMES = ("mask", "mask_image", "heatmap")
    OUTPUT_TOOLTIPS = _MASKING_TOOLTIPS
    FUNCTION = "mask"
    CATEGORY = "textmask/masking"
    DESCRIPTION = (
        "Masks what looks like the example image (optionally with a mask marking the object in it); then "
        "threshold, grow/shrink, blur, invert. Outputs the mask, a black-and-white image of it and a heat-map."
    )

    def mask(
        self,
        images: Any,
        example: Any,
        normalize: str = "minmax",
        threshold: float = 0.0,
        blur: float = 0.0,
        grow: int = 0,
        invert: bool = False,
        batch_size: int = 8,
        example_mask: Any = None,
        invert_example_mask: bool = False,
        example_background: float = 0.1,
        example_blur: float = 3.0,
        example_crop: bool = True,
        clipseg_model: Any = None,
        overlay_alpha: float = 0.5,
    ) -> tuple[Any, Any, Any]:
        """IMAGE ``[B, H, W, C]`` and example IMAGE ``[N, h, w, C]`` → mask ``[B, H, W]``, mask image and
        heat-map ``[B, H, W, 3]``."""
        from ..errors import PromptError
        from . import runtime

        if example is None:
            raise PromptError("example: connect an example IMAGE (what to look for)")
        visual = runtime.example_prompt(
            example,
            example_mask,
            bool(invert_example_mask),
            background=float(example_background),
            blur=float(example_blur),
            crop=bool(example_crop),
        )
        return _mask_with_previews(
            images, [visual], [], clipseg_model, overlay_alpha, threshold, normalize=normalize, blur=float(blur),
            grow=int(grow), invert=bool(invert), batch_size=int(batch_size),
        )  # fmt: skip


def _mask_with_previews(
    images: Any,
    prompts: list[Any],
    negative: list[Any],
    clipseg_model: Any,
    overlay_alpha: float,
    threshold: float,
    smoothing: float = 0.0,
    **options: Any,
) -> tuple[Any, Any, Any]:
    """The masking nodes' common run: masks ``[B, H, W]`` at the first image's size, the mask as an IMAGE and
    a heat-map preview ``[B, H, W, 3]``. ``threshold`` 0 is off; ``options`` are :class:`textmask.MaskOptions`
    fields; ``smoothing`` > 0 treats the batch as a video's frames, in order."""
    from ..postprocess import heatmap_overlay
    from . import runtime

    batch = runtime.as_images(images)
    size = runtime.first_size(batch)
    segmenter = runtime.segmenter_for(clipseg_model)
    options["threshold"] = float(threshold) if threshold > 0 else None
    masks = runtime.run_masks(
        segmenter, batch, prompts, size, negative_prompts=negative, smoothing=smoothing, **options
    )
    preview = heatmap_overlay(runtime.stack_at(batch, size).to(masks.device), masks, float(overlay_alpha))
    return masks, runtime.mask_to_image(masks), preview


# The Refine Mask and Matte nodes' input: how coarse the mask they are given is.
_COARSENESS = (
    "INT",
    {
        "default": 22,
        "min": 4,
        "max": 512,
        "step": 1,
        "tooltip": "How coarse the input mask is, in cells per image side: 22 for CLIPSeg, "
        "about 64 for SAM, more for a mask that is nearly right",
    },
)


class TextmaskRefineMask:
    """Refine any mask (CLIPSeg's, SAM's, another node's, a painted one) on the image's own edges.

    The mask's borders move onto the image's edges at the image's resolution, interiors saturate, and soft
    things (hair, fur, smoke) stay as soft as the photo shows them (:func:`textmask.refine`).
    """

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE",),
                "masks": ("MASK",),
            },
            "optional": {
                "softness": (
                    "FLOAT",
                    {
                        "default": 0.2,
                        "min": 0.05,
                        "max": 1.0,
                        "step": 0.05,
                        "tooltip": "Width of the refined edge ramp: larger keeps more soft values, smaller is crisper",
                    },
                ),
                "coarseness": _COARSENESS,
            },
        }

    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("The refined masks [B, H, W] in 0..1 at the images' size",)
    FUNCTION = "refine"
    CATEGORY = "textmask/masking"
    DESCRIPTION = "Moves a mask's borders onto the image's own edges, at the image's resolution."

    def refine(self, images: Any, masks: Any, softness: float = 0.2, coarseness: int = 22) -> tuple[Any]:
        """IMAGE ``[B, H, W, C]`` and MASK ``[B, h, w]`` (one of them may be a batch of one; a mask of another
        size is resized) → MASK ``[B, H, W]`` in [0, 1]."""
        from . import runtime

        return (runtime.refine_masks(images, masks, softness=float(softness), grid=int(coarseness)),)


class TextmaskMatte:
    """Soft alpha and clean cut-out colours from any mask (CLIPSeg's, SAM's, another node's, a painted one).

    Crisp where the image's edges are crisp, soft where the truth is soft (hair, defocus, motion blur), decided
    region by region (:func:`textmask.matte`); the foreground colours carry no fringe of the old background.
    """

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE",),
                "masks": ("MASK",),
            },
            "optional": {
                "background": (
                    "STRING",
                    {
                        "default": "#ffffff",
                        "multiline": False,
                        "tooltip": "The composite's background colour: a name (white), #RRGGBB or R,G,B",
                    },
                ),
                "coarseness": _COARSENESS,
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("foreground", "alpha", "composite")
    OUTPUT_TOOLTIPS = (
        "The foreground's own colours [B, H, W, 3], without the old background in the soft fringe: composite it "
        "with alpha onto any background",
        "Soft alpha [B, H, W] in [0, 1]: crisp where the edge is sharp, fractional where hair, fur or blur are",
        "The foreground composited with alpha onto the chosen background colour [B, H, W, 3]",
    )
    FUNCTION = "matte"
    CATEGORY = "textmask/masking"
    DESCRIPTION = (
        "Soft alpha (crisp edges where the photo's are crisp, soft where hair, defocus or motion blur are) and the "
        "foreground colours without the old background; plus the cut-out composited on a colour."
    )

    def matte(self, images: Any, masks: Any, background: str = "#ffffff", coarseness: int = 22) -> tuple[Any, Any, Any]:
        """IMAGE ``[B, H, W, C]`` and MASK ``[B', h, w]`` (one may be a batch of one; a mask of another size is
        resized) → foreground IMAGE ``[B, H, W, 3]``, alpha MASK ``[B, H, W]``, composite IMAGE ``[B, H, W, 3]``."""
        from . import runtime

        return runtime.matte_images(images, masks, background=background, grid=int(coarseness))


class TextmaskMaskToInstances:
    """Split masks into their objects (connected regions above a threshold), largest first, with boxes.

    Every box output pairs with what it is wired to (docs/comfyui.md, "Boxes and frames"): KJNodes' ``BBOX``
    one box per frame, core ``BOUNDING_BOX`` a list per frame, Impact's ``SEGS`` for the batch and per frame,
    and one box per object to go with the instance masks.
    """

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "masks": ("MASK",),
                "threshold": (
                    "FLOAT",
                    {"default": 0.5, "min": 0.0, "max": 0.99, "step": 0.01, "tooltip": "Object pixels: above this"},
                ),
                "min_area": (
                    "INT",
                    {
                        "default": 64,
                        "min": 0,
                        "max": 1 << 24,
                        "step": 1,
                        "tooltip": "Drop objects under this many pixels; 0 keeps every object, single pixels too "
                        "(no other size floor applies)",
                    },
                ),
                "max_instances": (
                    "INT",
                    {"default": 0, "min": 0, "max": 1024, "step": 1, "tooltip": "Keep the largest N per mask; 0: all"},
                ),
            },
            "optional": {
                "label": ("STRING", {"default": "textmask", "tooltip": "The label of the boxes and SEGS"}),
                "track": _TRACK,
            },
        }

    RETURN_TYPES = ("MASK", "BOUNDING_BOX", "BBOX", "SEGS", "INT", "SEGS", "BBOX")
    RETURN_NAMES = ("instance_masks", "boxes", "bboxes", "segs", "count", "segs_per_frame", "instance_bboxes")
    OUTPUT_IS_LIST = (False, False, False, False, False, True, False)
    OUTPUT_TOOLTIPS = (
        "One mask per object [N, H, W]: every frame's objects in frame order, largest first (one empty mask "
        "when there is none)",
        "Core BOUNDING_BOX: per frame a list of {x, y, width, height, score, label}; [] for a frame without objects",
        "KJNodes BBOX, one (x, y, w, h) per frame, in frame order: the frame's largest object, (0, 0, 0, 0) "
        "for an empty frame. For BboxVisualize, BboxToInt (index = frame)",
        "Impact Pack SEGS holding every frame's objects (as Impact's MASK to SEGS does for a batch)",
        "The number of objects (N), all frames together",
        "A list with one Impact SEGS per frame (an empty SEGS for a frame without objects): nodes after it run "
        "once per frame",
        "KJNodes BBOX, one (x, y, w, h) per object, pairing with instance_masks",
    )
    FUNCTION = "split"
    CATEGORY = "textmask/masking"
    DESCRIPTION = (
        "One mask per object (largest first), with boxes that pair with their frames: per-frame lists for "
        "BOUNDING_BOX nodes (SAM3 Detect, in ComfyUI releases after v0.8.0, which has none), one box per frame for "
        "KJNodes' BBOX nodes (BboxVisualize, BboxToInt), "
        "Impact Pack SEGS for the batch and per frame, and one box per object. A mask with no object gives one "
        "empty mask and count 0; empty frames never fail the next node."
    )

    def split(
        self,
        masks: Any,
        threshold: float = 0.5,
        min_area: int = 64,
        max_instances: int = 0,
        label: str = "textmask",
        track: bool = False,
    ) -> tuple[Any, Any, Any, Any, int, Any, Any]:
        """MASK ``[B, H, W]`` → instance MASK ``[N, H, W]``, per-frame boxes, one KJNodes box per frame, SEGS of the
        batch, the object count N, one SEGS per frame (a list) and one KJNodes box per object. With ``track`` (see
        :func:`_tracked_split`)."""
        from . import runtime

        if track:
            return _tracked_split(masks, float(threshold), int(min_area), int(max_instances), str(label))
        return runtime.mask_instances(masks, float(threshold), int(min_area), int(max_instances), str(label))


# ------------------------------------------------------------------------------------------ video tracking
_TRACK = (
    "BOOLEAN",
    {
        "default": False,
        "tooltip": "The batch is a video's frames, in order: track the objects, so each keeps its id. Every frame "
        "then gives one mask per track, in id order (empty where it is absent); box labels end in #id",
    },
)


def _tracked_split(
    masks: Any, threshold: float, min_area: int, max_instances: int, label: str
) -> tuple[Any, Any, Any, Any, int, Any, Any]:
    """Mask to Instances with ``track``: ``[B × N, H, W]`` masks (per frame, N tracks in id order; the N
    largest tracks with ``max_instances``), boxes per frame (present objects, ``label #id``), one KJNodes box
    per frame, SEGS, N, SEGS per frame and one KJNodes box per instance mask."""
    from . import runtime

    return runtime.tracked_instances(masks, threshold, min_area, max_instances, label)


class TextmaskTrackMasks:
    """Track the objects of a video's masks: one MASK batch per object, with ids that persist across frames.

    Objects are the connected regions above the threshold; they are matched from frame to frame by overlap
    with their motion-predicted masks, objects that touch are kept apart, and an object that leaves and comes
    back within ``window`` frames keeps its id (:func:`textmask.track`).
    """

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video's frames, in order (their colours help re-find objects)"}),
                "masks": ("MASK", {"tooltip": "One mask per frame, e.g. from CLIPSeg Masking (textmask)"}),
                "threshold": (
                    "FLOAT",
                    {"default": 0.5, "min": 0.0, "max": 0.99, "step": 0.01, "tooltip": "Object pixels: above this"},
                ),
                "min_area": (
                    "INT",
                    {"default": 64, "min": 0, "max": 1 << 24, "step": 1, "tooltip": "Ignore objects under this"},
                ),
                "window": (
                    "INT",
                    {
                        "default": 30,
                        "min": 0,
                        "max": 10000,
                        "step": 1,
                        "tooltip": "Frames an object may be gone and come back under its id",
                    },
                ),
            },
            "optional": {
                "label": ("STRING", {"default": "textmask", "tooltip": "The label of the boxes (then #id)"}),
            },
        }

    RETURN_TYPES = ("MASK", "BOUNDING_BOX", "BBOX", "STRING", "INT")
    RETURN_NAMES = ("track_masks", "boxes", "bboxes", "tracks_json", "count")
    OUTPUT_IS_LIST = (True, False, False, False, False)
    OUTPUT_TOOLTIPS = (
        "A list with one MASK batch [T, H, W] per track id, in id order: the object in every frame, empty where "
        "it is absent (nodes after it run once per track)",
        "Core BOUNDING_BOX: per frame a list of {x, y, width, height, score, label: 'label #id'}; [] for a frame "
        "without objects",
        "KJNodes BBOX, one (x, y, w, h) per frame, in frame order: the frame's largest object, (0, 0, 0, 0) for an "
        "empty frame. For BboxVisualize, BboxToInt (index = frame)",
        "The tracks as JSON: the ids, and per frame each object's id, box, score and area",
        "The number of tracks",
    )
    FUNCTION = "track"
    CATEGORY = "textmask/masking"
    DESCRIPTION = (
        "Objects tracked over a video's masks: a list of MASK batches, one per track id (each as long as the video, "
        "empty where the object is absent), the boxes per frame (labels end in #id; BOUNDING_BOX and KJNodes "
        "BBOX), the tracks as JSON and the number of tracks."
    )

    def track(
        self, images: Any, masks: Any, threshold: float = 0.5, min_area: int = 64, window: int = 30,
        label: str = "textmask",
    ) -> tuple[Any, Any, Any, str, int]:  # fmt: skip
        """IMAGE ``[T, H, W, C]`` + MASK ``[T, H, W]`` → per-track MASK ``[T, H, W]`` list, boxes per frame,
        KJNodes boxes, JSON and the track count."""
        from . import runtime

        return runtime.track_video(images, masks, float(threshold), int(min_area), int(window), str(label))


NODE_CLASS_MAPPINGS = {
    "SaltCLIPSegMasking": SaltCLIPSegMasking,
    "SaltCLIPSegLoader": SaltCLIPSegLoader,
    "TextmaskCLIPSegLoader": TextmaskCLIPSegLoader,
    "TextmaskCLIPSegMasking": TextmaskCLIPSegMasking,
    "TextmaskCLIPSegExampleMasking": TextmaskCLIPSegExampleMasking,
    "TextmaskRefineMask": TextmaskRefineMask,
    "TextmaskMatte": TextmaskMatte,
    "TextmaskMaskToInstances": TextmaskMaskToInstances,
    "TextmaskTrackMasks": TextmaskTrackMasks,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "SaltCLIPSegMasking": "Batch Image CLIPSeg Masking",
    "SaltCLIPSegLoader": "CLIPSeg Model Loader (Salt)",
    "TextmaskCLIPSegLoader": "CLIPSeg Model Loader (textmask)",
    "TextmaskCLIPSegMasking": "CLIPSeg Masking (textmask)",
    "TextmaskCLIPSegExampleMasking": "CLIPSeg Masking by Example (textmask)",
    "TextmaskRefineMask": "Refine Mask (textmask)",
    "TextmaskMatte": "Matte (textmask)",
    "TextmaskMaskToInstances": "Mask to Instances (textmask)",
    "TextmaskTrackMasks": "Track Masks (textmask)",
}
