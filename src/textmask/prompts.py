"""Prompts: text, example images (visual prompts), and weighted blends of them.

CLIPSeg conditions its decoder on one embedding per prompt. That embedding can come from CLIP's text
tower (a text prompt) or from CLIP's image tower (an *example image*: "mask what looks like this"), and
the model was trained on interpolations between the two, so a weighted average of embeddings is a valid
prompt too (several examples of one thing, or a text and an example).

Prompt types, accepted wherever textmask takes prompts (:meth:`~textmask.engine.Segmenter.mask`,
``predict``, ``encode_prompts``, negative prompts too):

* ``str`` or :class:`TextPrompt` — text.
* :class:`ImagePrompt` — an example image (torch/numpy channels-last, PIL, or file path; read by
  :mod:`textmask.images`), optionally with a mask marking the object in it. A PIL image, a
  ``pathlib.Path`` or a single-image tensor/array given directly as a prompt is wrapped in an
  :class:`ImagePrompt` with default settings. (A plain ``str`` is always text; use
  :func:`parse_prompt` for the ``image:PATH`` syntax.)
* :class:`Blend` — the weighted average of several prompts' embeddings (:func:`average` builds one).

Visual prompt engineering (used only when an example has a mask) follows Lüddecke & Ecker, "Image
Segmentation Using Text and Image Prompts" (CVPR 2022), whose best variant crops the example to the
object, blurs the background and reduces its intensity. Here, as in their code:

1. crop to the mask's bounding box grown by ``context`` (10 %) of its size on each side, then pad to a
   square with the model's mean colour;
2. resize and normalize exactly as CLIPSeg's processor does (:meth:`Segmenter.preprocess`);
3. in normalized pixel space, keep the object and replace the background by ``background`` × its
   Gaussian blur (sigma ``blur`` px at the model's 352-px input): ``m·x + (1-m)·background·blur(x)``.
   Since normalized 0 is the mean colour, the background fades toward it rather than to black.

Without a mask, an example is preprocessed exactly as ``CLIPSegProcessor(visual_prompt=...)`` does, so
its embedding equals the ``transformers`` one.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError, PromptError
from .images import _array_to_tensor, _is_pil, alpha_channel, load_image, to_levels
from .postprocess import blur_planes

__all__ = [
    "Blend",
    "ImagePrompt",
    "Prompt",
    "TextPrompt",
    "average",
    "build_prompts",
    "check_prompt",
    "combine_prompts",
    "examples",
    "parse_prompt",
    "prompt_label",
    "unique_prompts",
]

IMAGE_PREFIX = "image:"
TEXT_PREFIX = "text:"
MIX_MODES = ("separate", "blend")


def _check_weight(weight: Any, name: str) -> float:
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise PromptError(f"{name}: weight must be a number, got {weight!r}") from None
    if not math.isfinite(value) or value < 0:
        raise PromptError(f"{name}: weight must be a finite number ≥ 0, got {weight!r}")
    return value


@dataclass(frozen=True)
class TextPrompt:
    """A text prompt with a weight (the weight only matters inside a :class:`Blend`)."""

    text: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise PromptError(f"TextPrompt: text must be a str, got {type(self.text).__name__}")
        object.__setattr__(self, "weight", _check_weight(self.weight, "TextPrompt"))


@dataclass(frozen=True, eq=False)
class ImagePrompt:
    """An example image: CLIPSeg masks what looks like it (one-shot segmentation).

    Attributes:
        image: the example: torch/numpy channels-last ``[H, W, C]`` (or ``[1, H, W, C]``), a PIL image or
            a file path; read like any textmask image (float in [0, 1], uint8, ...).
        mask: optional, marks the object in the example (1 = object, 0 = background): ``[H, W]`` (also
            ``[1, H, W]`` or ``[H, W, 1]``) tensor/array (float in [0, 1], uint8, bool), a PIL image or
            file path (read as grey levels, white = object), or the string ``"alpha"`` to use the
            example's own alpha channel (cut-out PNGs). Must have the example's size. With a mask the
            background is blanked as the CLIPSeg paper recommends (see the module docs); without one
            the example is used as is.
        weight: relative weight inside a :class:`Blend` (ignored otherwise).
        background: how much of the (blurred) background is kept, in [0, 1]. The paper's best: 0.1.
            1 keeps it unchanged, 0 replaces it by the model's mean colour.
        blur: Gaussian sigma of the background blur, in pixels of the model's 352-px input (0: no
            blur). The paper's: 3.
        crop: crop to the object (plus ``context``) and pad to a square before encoding.
        context: margin kept around the object when cropping, as a fraction of its height/width.
    """

    image: Any
    mask: Any = None
    weight: float = 1.0
    background: float = 0.1
    blur: float = 3.0
    crop: bool = True
    context: float = 0.1

    def __post_init__(self) -> None:
        if self.image is None:
            raise PromptError("ImagePrompt: image is None; give an example image")
        object.__setattr__(self, "weight", _check_weight(self.weight, "ImagePrompt"))
        for field, low, high in (("background", 0.0, 1.0), ("blur", 0.0, math.inf), ("context", 0.0, math.inf)):
            raw = getattr(self, field)
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise PromptError(f"ImagePrompt: {field} must be a number, got {raw!r}") from None
            if not (low <= value <= high) or math.isnan(value) or math.isinf(value):
                bound = f"[{low:g}, {high:g}]" if math.isfinite(high) else f"a finite number ≥ {low:g}"
                raise PromptError(f"ImagePrompt: {field} must be {bound}, got {raw!r}")
            object.__setattr__(self, field, value)
        object.__setattr__(self, "crop", bool(self.crop))

    def __repr__(self) -> str:
        def show(value: Any) -> str:
            if isinstance(value, (torch.Tensor, np.ndarray)):
                return f"{type(value).__name__}{list(value.shape)}"
            if _is_pil(value):
                return f"PIL.Image({value.mode}, {value.width}×{value.height})"
            return repr(value)

        return (
            f"ImagePrompt(image={show(self.image)}, mask={show(self.mask)}, weight={self.weight:g}, "
            f"background={self.background:g}, blur={self.blur:g}, crop={self.crop}, context={self.context:g})"
        )


@dataclass(frozen=True, eq=False, init=False)
class Blend:
    """The weighted average of several prompts' embeddings, used as one prompt.

    ``Blend(["a red car", ImagePrompt("car.png")], weights=[1, 2])`` is one prompt whose embedding is
    ``(1·e_text + 2·e_image) / 3``. Without ``weights`` each item's own ``weight`` is used (1 for a str).
    Blends nest. CLIPSeg was trained on such interpolations between text and image embeddings.

    Attributes:
        prompts: the items (any prompt, including blends).
        weights: one weight ≥ 0 per item (None: the items' own weights); they need not sum to 1.
        weight: this blend's weight when nested in another blend.
    """

    prompts: tuple[Any, ...]
    weights: tuple[float, ...] | None
    weight: float

    def __init__(self, prompts: Sequence[Any], weights: Sequence[float] | None = None, weight: float = 1.0) -> None:
        if isinstance(prompts, (str, TextPrompt, ImagePrompt, Blend)) or not isinstance(prompts, (list, tuple)):
            raise PromptError("Blend: prompts must be a list of prompts")
        if not prompts:
            raise PromptError("Blend: give at least one prompt to average")
        if weights is not None:
            weights = tuple(_check_weight(w, f"Blend: weights[{i}]") for i, w in enumerate(weights))
            if len(weights) != len(prompts):
                raise PromptError(f"Blend: {len(prompts)} prompts but {len(weights)} weights")
        object.__setattr__(self, "prompts", tuple(prompts))
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "weight", _check_weight(weight, "Blend"))

    def item_weights(self) -> list[float]:
        """The weight of each item: ``weights`` if given, else each item's own ``weight`` (1 for a str)."""
        if self.weights is not None:
            return list(self.weights)
        return [float(getattr(p, "weight", 1.0)) for p in self.prompts]


Prompt = str | TextPrompt | ImagePrompt | Blend
"""A prompt: text, an example image, or a blend of prompts."""

PromptLike = Any
"""A :data:`Prompt`, or a bare example image (PIL, ``pathlib.Path``, one-image tensor/array)."""


def average(prompts: Sequence[PromptLike], weights: Sequence[float] | None = None) -> Blend:
    """One prompt whose embedding is the weighted mean of ``prompts``' embeddings (see :class:`Blend`)."""
    return Blend(list(prompts), weights)


# ------------------------------------------------------------------------------- face helpers
def parse_prompt(spec: str, **image_settings: Any) -> Prompt:
    """A command-line prompt string → a prompt.

    ``"image:PATH"`` is an example image: an :class:`ImagePrompt` of the file, with ``image_settings``
    such as ``mask="car-mask.png"`` (or ``"alpha"``) and ``background=0.1``. ``"text:..."`` is the text
    after the prefix (for a text that itself starts with ``image:``). Anything else is text.
    """
    if not isinstance(spec, str):
        raise PromptError(f"prompt: expected a string, got {type(spec).__name__}")
    if spec.startswith(IMAGE_PREFIX):
        path = spec[len(IMAGE_PREFIX) :]
        if not path:
            raise PromptError(f"prompt {spec!r}: give a file after 'image:', e.g. image:examples/car.png")
        return ImagePrompt(Path(path), **image_settings)
    if spec.startswith(TEXT_PREFIX):
        return spec[len(TEXT_PREFIX) :]
    return spec


def examples(
    images: Any, masks: Any = None, *, blend: bool = True, weight: float = 1.0, **image_settings: Any
) -> ImagePrompt | Blend | list[ImagePrompt]:
    """A batch of example images (e.g. a ComfyUI IMAGE ``[N, H, W, C]``) → prompt(s).

    Args:
        images: ``[N, H, W, C]`` tensor/array, a list of images, or one image.
        masks: None, one mask for every example (``[H, W]`` or ``[1, H, W]``), or one per example
            (``[N, H, W]`` or a list), 1 = object. ComfyUI's LoadImage gives ``1 - alpha``: invert it first.
        blend: average the N examples into one prompt ("several examples of one thing"); False returns
            a list of N separate prompts.
        weight: the resulting prompt's weight (for blending it with text).
        image_settings: :class:`ImagePrompt` fields (``background``, ``blur``, ``crop``, ``context``).

    Returns:
        an :class:`ImagePrompt` for one example, else a :class:`Blend` (or a list with ``blend=False``).
    """
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        items: list[Any] = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise PromptError("examples: the example batch is empty")
    if masks is None or (isinstance(masks, str) and masks == "alpha"):
        mask_list: list[Any] = [masks]
    elif isinstance(masks, (torch.Tensor, np.ndarray)) and masks.ndim == 3 and masks.shape[-1] != 1:
        mask_list = list(masks)  # [N, H, W] (ComfyUI MASK); [1, H, W] is one mask
    elif isinstance(masks, (list, tuple)):
        mask_list = list(masks)
    else:
        mask_list = [masks]
    if len(mask_list) == 1:
        mask_list = mask_list * len(items)
    elif len(mask_list) != len(items):
        raise PromptError(f"examples: {len(items)} example images but {len(mask_list)} masks; give 1 or {len(items)}")
    if blend and len(items) == 1:
        return ImagePrompt(items[0], mask=mask_list[0], weight=weight, **image_settings)
    prompts = [ImagePrompt(image, mask=mask, **image_settings) for image, mask in zip(items, mask_list)]
    return Blend(prompts, weight=weight) if blend else prompts


def combine_prompts(
    texts: Sequence[str] = (),
    example: PromptLike | None = None,
    *,
    mix: str = "separate",
    example_weight: float = 1.0,
) -> list[Prompt]:
    """Texts and an example prompt together (what an "advanced" face offers) → the prompt list.

    Args:
        texts: text prompts.
        example: an example prompt (:class:`ImagePrompt`, or a :class:`Blend` from :func:`examples`), or None.
        mix: ``"separate"``: the example is one more prompt, its map combined with the texts' maps
            (union/intersection, as the mask options say). ``"blend"``: each text's embedding is averaged
            with the example's, weights ``1 : example_weight`` (the example alone if there is no text).
        example_weight: the example's weight against each text in ``"blend"`` mode.
    """
    if mix not in MIX_MODES:
        raise PromptError(f"mix: {mix!r} is not one of {MIX_MODES}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if example is None:
        if not texts:
            raise PromptError("prompts: give a text prompt or an example image")
        return list(texts)
    example = _wrap(example, "example")
    if mix == "separate" or not texts:
        return [*texts, example]
    weight = _check_weight(example_weight, "example_weight")
    return [Blend([text, example], weights=[1.0, weight]) for text in texts]


# ------------------------------------------------------------------------------- command lines
def build_prompts(
    specs: Sequence[str] = (),
    examples: Sequence[str | os.PathLike] = (),
    example_masks: Sequence[str | os.PathLike] = (),
    *,
    blend: bool = False,
    example_weight: float = 1.0,
    name: str = "prompt",
    **image_settings: Any,
) -> list[Prompt]:
    """Command-line prompts → checked prompts (text, example images, or one blend of them).

    Args:
        specs: prompt strings (:func:`textmask.prompts.parse_prompt`): text, ``"image:PATH"`` (an example
            image), or ``"text:..."`` (a literal text, e.g. one that starts with ``image:``).
        examples: more example image files, after those among ``specs``.
        example_masks: masks of the examples (white = object): a file, ``"alpha"`` (the example's own
            transparency) or ``"none"``. One for every example, or one per example in order (the ``image:``
            specs first, then ``examples``).
        blend: average all the prompts into one (:class:`~textmask.prompts.Blend`): texts weigh 1, examples
            ``example_weight``.
        example_weight: an example's weight against a text in the blend.
        name: what to call the prompts in errors (``"prompt"``, ``"negative prompt"``).
        image_settings: :class:`~textmask.prompts.ImagePrompt` fields (``background``, ``blur``, ``crop``...).

    Returns:
        the prompts in order, without repeats (same text, or same example file with the same mask).
        Example files and masks have been read and checked (:func:`textmask.prompts.check_prompt`).

    Raises:
        PromptError: an empty text, a missing or unreadable example or mask, a mask count that fits no example.
    """
    parsed = [(spec, parse_prompt(spec)) for spec in specs]
    for spec, prompt in parsed:
        if isinstance(prompt, str) and not prompt.strip():
            raise PromptError(f"{name} {spec!r} is empty; describe what to mask, e.g. 'a cat'")
    example_specs = [spec for spec, prompt in parsed if isinstance(prompt, ImagePrompt)]
    example_specs += [IMAGE_PREFIX + os.fspath(path) for path in examples]
    masks = [os.fspath(mask) for mask in example_masks]
    if masks and not example_specs:
        raise PromptError(f"{len(masks)} example mask(s) but no example image; add one with image:PATH")
    if len(masks) == 1:
        masks *= len(example_specs)
    elif masks and len(masks) != len(example_specs):
        raise PromptError(
            f"{len(masks)} example masks for {len(example_specs)} example images; give one mask for all, "
            "or one per example (image: prompts first, then the other examples)"
        )
    masks = masks or ["none"] * len(example_specs)
    settings = dict(image_settings, weight=example_weight)

    def example(spec: str, mask: str) -> ImagePrompt:
        given = None if mask.lower() == "none" else ("alpha" if mask.lower() == "alpha" else Path(mask))
        prompt = parse_prompt(spec, mask=given, **settings)
        shown = spec[len(IMAGE_PREFIX) :] + ("" if given is None else f" (mask {mask})")
        check_prompt(prompt, f"{name} example {shown}")
        assert isinstance(prompt, ImagePrompt)
        return prompt

    pairs = iter(zip(example_specs, masks))
    prompts: list[Prompt] = []
    for _, prompt in parsed:
        prompts.append(example(*next(pairs)) if isinstance(prompt, ImagePrompt) else prompt)
    prompts += [example(spec, mask) for spec, mask in pairs]
    unique = list(unique_prompts(prompts).values())
    if blend and len(unique) > 1:
        return [Blend(unique)]  # each item's own weight: 1 for a text, example_weight for an example
    return unique


def unique_prompts(prompts: Iterable[Any]) -> dict[str, Any]:
    """``{prompt_label: prompt}`` in order, the first of repeats kept (repeats: same text, same example file
    with the same mask, same in-memory content)."""
    unique: dict[str, Any] = {}
    for prompt in prompts:
        unique.setdefault(prompt_label(prompt), prompt)
    return unique


def _content_hash(value: Any) -> str:
    """A short hash of an in-memory image or mask (tensor, array, PIL image)."""
    if _is_pil(value):
        return short_hash(f"{value.mode}{value.size}") + _hash_bytes(value.tobytes())
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        data = tensor.view(-1).view(torch.uint8).numpy()
        return short_hash(f"{tensor.dtype}{tuple(tensor.shape)}") + _hash_bytes(data)
    return short_hash(repr(value))


def _hash_bytes(data: Any) -> str:
    return hashlib.sha1(data).hexdigest()[:8]


def _source_label(value: Any) -> str:
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else "#" + _content_hash(value)


def prompt_label(prompt: Any) -> str:
    """A prompt's identity as text, stable from run to run: the text itself, ``image:PATH`` (plus
    ``|mask:PATH``) for an example, ``blend(w*label, ...)`` for a blend. In-memory images count by content."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, TextPrompt):
        return prompt.text
    if isinstance(prompt, Blend):
        items = ", ".join(f"{w:g}*{prompt_label(p)}" for p, w in zip(prompt.prompts, prompt.item_weights()))
        return f"blend({items})"
    if isinstance(prompt, ImagePrompt):
        label = IMAGE_PREFIX + _source_label(prompt.image)
        return label if prompt.mask is None else f"{label}|mask:{_source_label(prompt.mask)}"
    return IMAGE_PREFIX + _source_label(prompt)  # a bare image


def short_hash(text: str) -> str:
    """The first 8 hex digits of the SHA-1 of ``text``: a stable, short name part."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


# --------------------------------------------------------------------------------- normalizing
def _is_bare_image(value: Any) -> bool:
    return _is_pil(value) or isinstance(value, (os.PathLike, np.ndarray, torch.Tensor))


def is_single_prompt(prompts: Any) -> bool:
    """Whether ``prompts`` is one prompt (results drop the prompt axis) rather than a collection."""
    if isinstance(prompts, np.ndarray) and prompts.dtype.kind in "UO":  # an array of texts
        return False
    return isinstance(prompts, (str, TextPrompt, ImagePrompt, Blend)) or _is_bare_image(prompts)


def _wrap(prompt: Any, name: str) -> Prompt:
    if isinstance(prompt, (str, TextPrompt, ImagePrompt, Blend)):
        return prompt
    if isinstance(prompt, (torch.Tensor, np.ndarray)):
        if prompt.ndim == 4 and prompt.shape[0] != 1:
            raise PromptError(
                f"{name}: a batch of {prompt.shape[0]} example images; use textmask.prompts.examples(batch) to "
                "average them into one prompt, or pass a list of ImagePrompt"
            )
        if prompt.ndim not in (2, 3, 4):
            raise PromptError(f"{name}: an example image must be [H, W, C], got shape {list(prompt.shape)}")
        return ImagePrompt(prompt)
    if _is_pil(prompt) or isinstance(prompt, os.PathLike):
        return ImagePrompt(prompt)
    raise PromptError(
        f"{name}: unsupported prompt type {type(prompt).__name__}; use text (str), "
        "textmask.ImagePrompt(image, mask=None) for an example image, or textmask.Blend([...]) to average"
    )


def as_prompt_list(prompts: Any, name: str = "prompts") -> list[Prompt]:
    """One prompt or a collection of prompts → a validated list (bare images wrapped in ImagePrompt)."""
    if is_single_prompt(prompts):
        items = [prompts]
    else:
        try:
            items = list(prompts)
        except TypeError:
            raise PromptError(f"{name}: expected a prompt or a list of prompts, got {type(prompts).__name__}") from None
    if not items:
        raise PromptError(f"{name}: give at least one prompt")
    return [_wrap(prompt, f"{name}[{index}]") for index, prompt in enumerate(items)]


# --------------------------------------------------------------------------------- planning
@dataclass
class ExampleInput:
    """An example image ready for the image tower.

    Attributes:
        levels: ``[3, h, w]`` uint8, already cropped and padded when the prompt asks for it.
        mask: ``[h, w]`` float32 in [0, 1] (1 = object), or None for an unmasked example.
        background, blur: the background treatment (only with a mask).
        key: content hash of levels, mask and settings: equal keys give equal embeddings.
    """

    levels: torch.Tensor
    mask: torch.Tensor | None
    background: float
    blur: float
    key: str


@dataclass
class _Node:
    """A planned prompt: a text leaf, an example leaf, or a weighted blend of nodes."""

    text: str | None = None
    example: ExampleInput | None = None
    children: list[tuple[_Node, float]] | None = None


def _float_mask(values: torch.Tensor, name: str) -> torch.Tensor:
    if values.dtype == torch.bool:
        return values.float()
    if values.dtype == torch.uint8:
        return values.float() / 255.0
    if values.is_floating_point():
        values = values.float()
        if values.numel() and not bool(torch.isfinite(values).all()):
            raise PromptError(f"{name}: the mask contains NaN or infinite values")
        if values.numel() and (float(values.min()) < -1e-3 or float(values.max()) > 1.0 + 1e-3):
            hint = " (it looks like 0–255: divide by 255)" if float(values.max()) <= 255.0 + 1e-3 else ""
            raise PromptError(
                f"{name}: a float mask must hold values in [0, 1], got "
                f"[{float(values.min()):g}, {float(values.max()):g}]{hint}"
            )
        return values.clamp(0.0, 1.0)
    raise PromptError(f"{name}: unsupported mask dtype {values.dtype}; use float in [0, 1], uint8 or bool")


def _open_file(value: Any, name: str) -> Any:
    """A path → the PIL image read from it (a :class:`PromptError` if unreadable); anything else unchanged."""
    if not isinstance(value, (str, os.PathLike)):
        return value
    try:
        return load_image(value, name)
    except InputError as exc:
        raise PromptError(str(exc)) from None


def _array_as_tensor(array: np.ndarray, name: str) -> torch.Tensor:
    """A numpy mask or image → tensor as images are read (uint16 scaled to [0, 1]); errors as :class:`PromptError`."""
    if array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    try:
        return _array_to_tensor(array, name)
    except InputError as exc:
        raise PromptError(str(exc)) from None


def _read_mask(mask: Any, name: str) -> torch.Tensor:
    """Any accepted mask form → ``[H, W]`` float32 in [0, 1] (CPU unless a tensor)."""
    mask = _open_file(mask, name)
    if _is_pil(mask):
        from PIL import ImageOps

        mask = np.asarray(ImageOps.exif_transpose(mask).convert("L"))
    if isinstance(mask, np.ndarray):
        mask = _array_as_tensor(mask, name)
    if not isinstance(mask, torch.Tensor):
        raise PromptError(
            f"{name}: unsupported mask type {type(mask).__name__}; pass a tensor/array [H, W], a PIL image, "
            "a file path or 'alpha'"
        )
    values = mask
    while values.dim() > 2 and values.shape[0] == 1:
        values = values[0]
    while values.dim() > 2 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.dim() != 2:
        raise PromptError(f"{name}: expected a mask [H, W] (or [1, H, W]), got shape {list(mask.shape)}")
    return _float_mask(values, name)


def _read_alpha(image: Any, name: str) -> torch.Tensor:
    """The example's own alpha channel as ``[H, W]`` float in [0, 1]."""
    image = _open_file(image, name)
    if isinstance(image, np.ndarray):
        image = _array_as_tensor(image, name)
    if not (_is_pil(image) or isinstance(image, torch.Tensor)):
        raise PromptError(f"{name}: mask='alpha' needs a tensor, array, PIL image or file with an alpha channel")
    alpha = alpha_channel(image)
    if alpha is None:
        shown = f"the example image ({image.mode})" if _is_pil(image) else f"the example (shape {list(image.shape)})"
        raise PromptError(f"{name}: mask='alpha' but {shown} has no alpha channel (RGBA, LA, or C = 2 or 4)")
    return _float_mask(alpha, name)


def _bounding_box(mask: torch.Tensor, context: float, name: str) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the object (mask ≥ 0.5, else > 0), grown by ``context``."""
    inside = mask >= 0.5
    if not bool(inside.any()):
        inside = mask > 0
    if not bool(inside.any()):
        raise PromptError(f"{name}: the mask is empty (all 0), so it marks no object; 1 = object, 0 = background")
    rows = torch.nonzero(inside.any(dim=1)).flatten()
    cols = torch.nonzero(inside.any(dim=0)).flatten()
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    grow_y, grow_x = round(context * (bottom - top)), round(context * (right - left))
    height, width = mask.shape
    return max(0, top - grow_y), min(height, bottom + grow_y), max(0, left - grow_x), min(width, right + grow_x)


def _pad_square(levels: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    height, width = mask.shape
    side = max(height, width)
    if height == width:
        return levels, mask
    top, left = (side - height) // 2, (side - width) // 2
    square = fill.to(device=levels.device, dtype=torch.uint8).view(3, 1, 1).repeat(1, side, side)
    square[:, top : top + height, left : left + width] = levels
    square_mask = torch.zeros((side, side), dtype=mask.dtype, device=mask.device)
    square_mask[top : top + height, left : left + width] = mask
    return square, square_mask


def _hash(*parts: Any) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().contiguous()
            digest.update(repr((str(part.dtype), tuple(part.shape))).encode())
            digest.update(part.numpy().tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()


def prepare_example(prompt: ImagePrompt, name: str, fill: torch.Tensor) -> ExampleInput:
    """Read an :class:`ImagePrompt`'s image and mask, crop and pad them, and hash the result.

    Args:
        prompt: the example.
        name: how to call it in errors (e.g. ``"prompts[1]"``).
        fill: ``[3]`` uint8, the padding colour (the level nearest the model's mean colour).
    """
    try:
        levels = to_levels(prompt.image, f"{name}: example image")
    except InputError as exc:
        raise PromptError(str(exc)) from None
    if prompt.mask is None:
        return ExampleInput(levels=levels, mask=None, background=1.0, blur=0.0, key=_hash("plain", levels))
    if isinstance(prompt.mask, str) and prompt.mask == "alpha":
        mask = _read_alpha(prompt.image, f"{name}: example image")
    else:
        mask = _read_mask(prompt.mask, f"{name}: example mask")
    mask = mask.to(levels.device)
    if tuple(mask.shape) != tuple(levels.shape[-2:]):
        raise PromptError(
            f"{name}: the example mask is {mask.shape[0]}×{mask.shape[1]} (H×W) but the example image is "
            f"{levels.shape[1]}×{levels.shape[2]}; they must match"
        )
    if prompt.crop:
        top, bottom, left, right = _bounding_box(mask, prompt.context, f"{name}: example mask")
        levels, mask = _pad_square(levels[:, top:bottom, left:right], mask[top:bottom, left:right], fill)
    elif not bool((mask > 0).any()):
        raise PromptError(f"{name}: example mask: the mask is empty (all 0), so it marks no object")
    key = _hash("masked", levels, mask, prompt.background, prompt.blur)
    return ExampleInput(levels=levels.contiguous(), mask=mask, background=prompt.background, blur=prompt.blur, key=key)


def plan(prompt: Prompt, name: str, fill: torch.Tensor) -> _Node:
    """Resolve a prompt into text leaves, prepared example leaves and weighted blends."""
    if isinstance(prompt, str):
        return _Node(text=prompt)
    if isinstance(prompt, TextPrompt):
        return _Node(text=prompt.text)
    if isinstance(prompt, ImagePrompt):
        return _Node(example=prepare_example(prompt, name, fill))
    if isinstance(prompt, Blend):
        weights = prompt.item_weights()
        if sum(weights) <= 0:
            raise PromptError(f"{name}: the blend's weights sum to 0; give at least one a positive weight")
        children = [
            (plan(_wrap(item, f"{name}.prompts[{i}]"), f"{name}.prompts[{i}]", fill), weight)
            for i, (item, weight) in enumerate(zip(prompt.prompts, weights))
        ]
        return _Node(children=children)
    raise PromptError(f"{name}: unsupported prompt type {type(prompt).__name__}")  # pragma: no cover


def check_prompt(prompt: PromptLike, name: str = "prompt") -> Prompt:
    """Read and check a prompt's example images and masks now, without a model.

    Faces call this to report a missing or unreadable example (or a mask that does not fit it) before they
    load a model or start a long run. The engine prepares the example again when it encodes it.

    Returns:
        the prompt (a bare image wrapped in :class:`ImagePrompt`).

    Raises:
        PromptError: naming ``name``, as :meth:`Segmenter.encode_prompts` would.
    """
    prompt = _wrap(prompt, name)
    plan(prompt, name, torch.zeros(3, dtype=torch.uint8))
    return prompt


def leaves(node: _Node) -> Iterator[_Node]:
    """Every text and example leaf under ``node``."""
    if node.children is None:
        yield node
        return
    for child, _ in node.children:
        yield from leaves(child)


def evaluate(node: _Node, lookup: Callable[[_Node], torch.Tensor]) -> torch.Tensor:
    """A planned prompt's embedding ``[D]``: the leaf's own, or the weighted mean of the children's.

    Averages are computed in float32 and returned in the leaves' dtype.
    """
    if node.children is None:
        return lookup(node)
    vectors = [evaluate(child, lookup) for child, _ in node.children]
    weights = torch.tensor([w for _, w in node.children], dtype=torch.float32, device=vectors[0].device)
    stacked = torch.stack([v.float() for v in vectors])
    return ((weights[:, None] * stacked).sum(0) / weights.sum()).to(vectors[0].dtype)


# ------------------------------------------------------------------------ background treatment
def blank_background(pixels: torch.Tensor, mask: torch.Tensor, background: float, blur: float) -> torch.Tensor:
    """The paper's background treatment on normalized pixels: ``m·x + (1-m)·background·blur(x)``.

    Args:
        pixels: ``[3, S, S]`` normalized pixel values (from :meth:`Segmenter.preprocess`).
        mask: ``[h, w]`` in [0, 1], 1 = object; resized (bilinear, antialiased) to ``S × S``.
        background: intensity kept in the background, in [0, 1].
        blur: Gaussian sigma in pixels of the ``S × S`` input.

    Returns:
        ``[3, S, S]`` in ``pixels``' dtype.
    """
    work = pixels.float()[None]
    size = tuple(work.shape[-2:])
    weight = mask.to(device=work.device, dtype=torch.float32)[None, None]
    if tuple(weight.shape[-2:]) != size:
        weight = F.interpolate(weight, size=size, mode="bilinear", align_corners=False, antialias=True)
    weight = weight.clamp(0.0, 1.0)
    out = weight * work + (1.0 - weight) * (background * blur_planes(work, blur))
    return out[0].to(pixels.dtype)
