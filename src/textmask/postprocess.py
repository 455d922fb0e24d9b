"""Mask post-processing and rendering: pure, batched tensor functions, shared by every face.

All functions take and return float tensors whose last two dimensions are ``[H, W]`` (any leading
dimensions, e.g. ``[B, H, W]`` or ``[B, T, H, W]``), values in [0, 1], on any device. :class:`MaskOptions`
bundles the user-facing settings; a :class:`Target` is one mask to make (prompts and how to combine them),
a :class:`TargetPlan` the unique prompts of several targets, and :func:`finish_targets` turns per-prompt maps
into one finished mask per target, in one fixed order:

    normalize each prompt's map → combine each target's prompts → subtract negative prompts → threshold
    → grow/shrink → blur → feather → invert

Rendering (:func:`mask_levels`, :func:`overlay`, :func:`cutout`, :func:`render`) turns masks into what the faces
show or write, with one heat-map colour ramp (:func:`heat_colours`) for every face.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

from .constants import COMBINE_MODES, NORMALIZE_MODES, OUTPUT_KINDS
from .edges import DEFAULT_REFINE, RefineOptions

MAX_BLUR_PIXELS = 1024  # largest blur / feather MaskOptions accepts (their kernels are 6 × that wide)
MAX_TILES_PER_SIDE = 8  # detail mode
_FLAT = 1e-6


# ------------------------------------------------------------------------------------ normalization
def normalize_minmax(probs: torch.Tensor) -> torch.Tensor:
    """Stretch each map to [0, 1]: ``(p - min) / (max - min)`` over its own ``[H, W]``.

    Args:
        probs: ``[..., H, W]`` probabilities.

    Returns:
        ``[..., H, W]`` in [0, 1]. A flat map (range below 1e-6) has no contrast to stretch and is
        returned unchanged, rather than blown up into noise or NaN.
    """
    low = probs.amin(dim=(-2, -1), keepdim=True)
    high = probs.amax(dim=(-2, -1), keepdim=True)
    spread = high - low
    flat = spread < _FLAT
    stretched = (probs - low) / torch.where(flat, torch.ones_like(spread), spread)
    return torch.where(flat, probs, stretched).clamp(0.0, 1.0)


def normalize_seed(probs: torch.Tensor) -> torch.Tensor:
    """The seed node's formula, ``(p - min) / max`` per map, kept for drop-in compatibility.

    It is not a true min-max stretch (the maximum becomes ``1 - min/max``, not 1); use
    :func:`normalize_minmax` for that. A map whose maximum is 0 gives 0 instead of NaN.

    Args:
        probs: ``[..., H, W]`` probabilities.

    Returns:
        ``[..., H, W]`` in [0, 1].
    """
    low = probs.amin(dim=(-2, -1), keepdim=True)
    high = probs.amax(dim=(-2, -1), keepdim=True)
    safe = torch.where(high > 0, high, torch.ones_like(high))
    return torch.where(high > 0, (probs - low) / safe, torch.zeros_like(probs)).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------- combining
def combine(probs: torch.Tensor, mode: str = "union", dim: int = -3) -> torch.Tensor:
    """Merge several prompts' maps into one.

    Args:
        probs: ``[..., P, H, W]`` maps of P prompts (``dim`` is the prompt axis).
        mode: ``"union"`` (pixel-wise max: any prompt) or ``"intersection"`` (min: every prompt).

    Returns:
        ``[..., H, W]``.
    """
    if mode == "union":
        return probs.amax(dim=dim)
    if mode == "intersection":
        return probs.amin(dim=dim)
    raise ValueError(f"combine: {mode!r} is not one of {COMBINE_MODES}")


def subtract(mask: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Remove what negative prompts match: ``clamp(mask - negative, 0, 1)``, both ``[..., H, W]``."""
    return (mask - negative).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------- threshold
def threshold(mask: torch.Tensor, value: float, softness: float = 0.0) -> torch.Tensor:
    """Binarize at ``value``: 1 where ``mask > value``, else 0.

    With ``softness > 0`` the step becomes a linear ramp ``softness`` wide, centred on ``value``
    (0 below ``value - softness/2``, 1 above ``value + softness/2``): a soft threshold.

    Args:
        mask: ``[..., H, W]`` in [0, 1].
        value: threshold in [0, 1].
        softness: ramp width in [0, 1]; 0 for a hard threshold.
    """
    if softness < _FLAT:  # a ramp narrower than float precision is a step (and 1/softness would overflow)
        return (mask > value).to(mask.dtype)
    return ((mask - (value - softness / 2)) / softness).clamp(0.0, 1.0)


def invert(mask: torch.Tensor) -> torch.Tensor:
    """``1 - mask``."""
    return 1.0 - mask


# ------------------------------------------------------------------------------------- morphology
def _as_nchw(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    shape = mask.shape
    return mask.reshape(-1, 1, shape[-2], shape[-1]), shape


def grow(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow (dilate, ``pixels > 0``) or shrink (erode, ``pixels < 0``) by ``|pixels|`` pixels.

    Grey-level morphology with a square ``(2|n|+1)²`` window, so soft masks grow smoothly too. The square
    max is taken as a row max then a column max, each by doubling windows (:func:`window_max`: the same values
    as ``max_pool2d``, in O(log n) passes instead of O(n) work per pixel), and ``|n|`` beyond the image's larger
    side changes nothing more, so it is capped there.

    Args:
        mask: ``[..., H, W]``.
        pixels: signed amount; 0 returns the mask unchanged.
    """
    pixels = int(pixels)
    if pixels == 0 or mask.numel() == 0:
        return mask
    flat, shape = _as_nchw(mask)
    radius = min(abs(pixels), max(shape[-2], shape[-1]))
    size = 2 * radius + 1
    if pixels > 0:  # outside the image counts as -inf, as max_pool2d's padding does
        padded = F.pad(flat, (radius,) * 4, value=-math.inf)
        out = window_max(window_max(padded, size, -1), size, -2)
    else:
        # Erosion = dilation of the complement; pad with 1 so the image border does not eat the mask.
        padded = F.pad(1.0 - flat, (radius,) * 4, value=0.0)
        out = 1.0 - window_max(window_max(padded, size, -1), size, -2)
    return out.reshape(shape)


def window_max(values: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Sliding maximum over ``size`` consecutive entries along ``dim`` (no padding: that dimension shrinks by
    ``size - 1``): ``out[i] = max(values[i : i + size])``, exactly as ``max_pool1d`` with stride 1.

    Maxima of windows of 1, 2, 4, ... entries are built from the previous ones (one elementwise maximum each),
    and a window of any ``size`` is the maximum of two overlapping power-of-two windows: ``O(log size)`` passes.
    """
    out, span = values, 1
    while span * 2 <= size:
        length = out.shape[dim] - span
        out = torch.maximum(out.narrow(dim, 0, length), out.narrow(dim, span, length))
        span *= 2
    rest = size - span  # < span: the two windows of ``span`` overlap
    if rest:
        length = out.shape[dim] - rest
        out = torch.maximum(out.narrow(dim, 0, length), out.narrow(dim, rest, length))
    return out


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32, device: Any = None) -> torch.Tensor:
    """Normalized 1-D Gaussian taps ``[2r+1]`` with ``r = ceil(3 sigma)``."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def blur_planes(values: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every ``[H, W]`` plane, standard deviation ``sigma`` pixels (edges replicated),
    values in any range.

    One plane per convolution call: batched convolutions choose their algorithm by batch size, and a plane's
    result must not depend on which others shared the call (masks are batch-invariant to the bit).

    Args:
        values: ``[..., H, W]`` float.
        sigma: in pixels; 0 returns ``values`` unchanged.
    """
    if sigma <= 0 or values.numel() == 0:
        return values
    flat, shape = _as_nchw(values)
    taps = gaussian_kernel1d(sigma, dtype=flat.dtype, device=flat.device)
    radius = taps.numel() // 2
    rows, columns = taps.view(1, 1, 1, -1), taps.view(1, 1, -1, 1)
    out = torch.empty_like(flat)
    for index in range(flat.shape[0]):
        plane = F.conv2d(F.pad(flat[index : index + 1], (radius, radius, 0, 0), mode="replicate"), rows)
        out[index : index + 1] = F.conv2d(F.pad(plane, (0, 0, radius, radius), mode="replicate"), columns)
    return out.reshape(shape)


def gaussian_blur(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """:func:`blur_planes` of a mask, clamped to [0, 1].

    Args:
        mask: ``[..., H, W]`` in [0, 1].
        sigma: in pixels; 0 returns the mask unchanged.
    """
    if sigma <= 0:
        return mask
    return blur_planes(mask, sigma).clamp(0.0, 1.0)


def feather(mask: torch.Tensor, pixels: float) -> torch.Tensor:
    """Fade the mask's edges outward over about ``pixels`` pixels, keeping its inside fully covered.

    ``max(mask, blur(mask, sigma=pixels/2))``: unlike :func:`gaussian_blur`, nothing inside the mask
    gets weaker; the soft ramp lies outside the original edge.

    Args:
        mask: ``[..., H, W]``.
        pixels: ramp length in pixels; 0 returns the mask unchanged.
    """
    if pixels <= 0:
        return mask
    return torch.maximum(mask, gaussian_blur(mask, pixels / 2.0))


# ------------------------------------------------------------------------------------------ options
def parse_detail(value: Any) -> str | tuple[int, int]:
    """A detail setting → ``"off"``, ``"auto"`` or ``(rows, columns)``.

    Accepts False/None/0/``"off"``, True/``"auto"``, an int N (N×N tiles), a ``(rows, columns)`` pair, or a
    string ``"N"`` / ``"RxC"`` (``"3x2"``: 3 rows, 2 columns).

    Raises:
        ValueError: naming ``detail`` and what it takes.
    """
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("off", "none", "0")):
        return "off"
    if value is True or (isinstance(value, str) and value.strip().lower() in ("auto", "on")):
        return "auto"
    rows: Any
    cols: Any
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*(?:[x×*]\s*(\d+))?\s*", value.lower())
        if match is None:
            raise ValueError(f"detail: {value!r} is not off, auto, N or RxC (e.g. 3x2: 3 rows, 2 columns)")
        rows, cols = int(match[1]), int(match[2] or match[1])
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        rows, cols = value
    else:
        rows = cols = value
    try:
        rows, cols = int(rows), int(cols)
    except (TypeError, ValueError):
        raise ValueError(f"detail: {value!r} is not off, auto, N or (rows, columns)") from None
    if (rows, cols) == (0, 0):
        return "off"
    if not (1 <= rows <= MAX_TILES_PER_SIDE and 1 <= cols <= MAX_TILES_PER_SIDE) or rows * cols < 2:
        raise ValueError(
            f"detail: {rows}×{cols} tiles; give 1 to {MAX_TILES_PER_SIDE} rows and columns, at least 2 tiles"
        )
    return rows, cols


REFINE_MATTE = "matte"  # refine="matte": soft alpha where the truth is soft (textmask.matte), crisp elsewhere


def parse_refine(value: Any) -> RefineOptions | str | None:
    """A refine setting → the :class:`~textmask.refine.RefineOptions` to apply, ``"matte"``, or None (off).

    Accepts False/None (off), True (the defaults), a ``RefineOptions``, ``"matte"`` (:func:`textmask.matte`'s
    alpha), or text: ``on``/``true``/``1`` and ``off``/``false``/``0`` (what command lines and forms send).
    """
    if isinstance(value, RefineOptions):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word == REFINE_MATTE:
            return REFINE_MATTE
        if word in ("on", "true", "1", "yes", "auto"):
            return DEFAULT_REFINE
        if word in ("off", "false", "0", "no", "none", ""):
            return None
    elif value is None or (isinstance(value, (bool, int)) and value in (0, 1)):
        return DEFAULT_REFINE if value else None
    raise ValueError(f"refine: expected True, False, 'matte' or a textmask.RefineOptions, got {value!r}")


@dataclass(frozen=True)
class MaskOptions:
    """How raw per-prompt probabilities become one mask per image.

    Attributes:
        normalize: ``"none"`` (sigmoid probability), ``"minmax"`` (per-map stretch to [0, 1]) or
            ``"seed"`` (the seed node's ``(p - min) / max`` at 352×352, resized like the seed; for drop-in use).
        combine: ``"union"`` or ``"intersection"`` of the positive prompts.
        threshold: binarize at this value (None: keep soft values).
        threshold_softness: width of a soft threshold ramp (0: hard).
        grow: pixels to grow (>0) or shrink (<0) the mask.
        blur: Gaussian blur sigma in pixels.
        feather: outward edge fade in pixels.
        invert: return ``1 - mask``.
        detail: detail mode (:mod:`textmask.detail`): ``"off"``, ``"auto"`` (tiles from the image size), or
            ``(rows, columns)`` of overlapping tiles seen at a higher scale, blended and gated by the global pass
            (also given as True, an int N for N×N, or ``"RxC"``). Not with ``normalize="seed"``.
        refine: move the mask's borders onto the image's edges at full resolution (:mod:`textmask.refine`),
            after the negatives and before the threshold: True for the measured defaults, or a
            :class:`~textmask.refine.RefineOptions`; ``"matte"`` for :func:`textmask.matte`'s alpha (soft where the
            truth is soft: defocus, motion blur, hair; crisp elsewhere). Off by default.
    """

    # Field metadata (``choices``, ``min``, ``max``) describes the valid values to faces that build controls or
    # API parameters from the fields generically (the HTTP service's ``/v1/info``); ``__post_init__`` enforces them.
    normalize: str = field(default="none", metadata={"choices": NORMALIZE_MODES})
    combine: str = field(default="union", metadata={"choices": COMBINE_MODES})
    threshold: float | None = field(default=None, metadata={"min": 0.0, "max": 1.0})
    threshold_softness: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    grow: int = 0
    blur: float = field(default=0.0, metadata={"min": 0.0, "max": MAX_BLUR_PIXELS})
    feather: float = field(default=0.0, metadata={"min": 0.0, "max": MAX_BLUR_PIXELS})
    invert: bool = False
    detail: str | tuple[int, int] = field(default="off", metadata={"choices": ("off", "auto", "2x2", "3x3", "4x4")})
    refine: bool | str | RefineOptions = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", parse_detail(self.detail))
        object.__setattr__(self, "refine", parse_refine(self.refine))
        if self.detail != "off" and self.normalize == "seed":
            raise ValueError("detail: not with normalize='seed' (the seed's 8-bit path has no tiles); use none, minmax")
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize: {self.normalize!r} is not one of {NORMALIZE_MODES}")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine: {self.combine!r} is not one of {COMBINE_MODES}")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold: must be in [0, 1] (or None), got {self.threshold}")
        if not 0.0 <= float(self.threshold_softness) <= 1.0:
            raise ValueError(f"threshold_softness: must be in [0, 1], got {self.threshold_softness}")
        for name in ("blur", "feather"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: must be a finite number of pixels ≥ 0, got {value}")
            if value > MAX_BLUR_PIXELS:  # the kernel grows with it: a typo like 1e9 must not hang or exhaust memory
                raise ValueError(f"{name}: at most {MAX_BLUR_PIXELS} pixels, got {value:g}")
        try:
            whole = float(self.grow).is_integer()
        except (TypeError, ValueError):
            whole = False
        if not whole:
            raise ValueError(f"grow: must be a whole number of pixels, got {self.grow!r}")

    @classmethod
    def from_kwargs(cls, base: MaskOptions | None = None, **kwargs: Any) -> MaskOptions:
        """``base`` (or the defaults) with the given fields replaced; unknown names are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown mask option(s) {unknown}; known: {sorted(known)}")
        return replace(base or cls(), **kwargs)


@dataclass(frozen=True)
class Target:
    """One mask to make: the pixel-wise ``combine`` of its prompts' maps (union: any prompt; intersection: all).

    Attributes:
        prompts: one or more prompts (texts, example images, blends).
        combine: ``"union"`` or ``"intersection"``.
    """

    prompts: tuple[Any, ...]
    combine: str = "union"

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("a target needs at least one prompt")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine: {self.combine!r} is not one of {COMBINE_MODES}")


@dataclass(frozen=True)
class TargetPlan:
    """The unique prompts of several targets (plus negative prompts) and where each target's prompts sit.

    The engine encodes and decodes each unique prompt once, whatever the number of targets that use it.

    Attributes:
        prompts: unique positive prompts in target order, then the negative prompts not among them.
        targets: per target, the indices of its prompts in ``prompts``.
        combines: per target, its combine mode.
        negative: indices of the negative prompts.
    """

    prompts: tuple[Any, ...]
    targets: tuple[tuple[int, ...], ...]
    combines: tuple[str, ...]
    negative: tuple[int, ...]

    @classmethod
    def build(cls, targets: Sequence[Target], negative_prompts: Sequence[Any] = ()) -> TargetPlan:
        unique = list(dict.fromkeys([p for t in targets for p in t.prompts] + list(negative_prompts)))
        where = {p: i for i, p in enumerate(unique)}
        return cls(
            prompts=tuple(unique),
            targets=tuple(tuple(dict.fromkeys(where[p] for p in t.prompts)) for t in targets),
            combines=tuple(t.combine for t in targets),
            negative=tuple(dict.fromkeys(where[p] for p in negative_prompts)),
        )


def finish(
    combined: torch.Tensor,
    negative: torch.Tensor | None,
    options: MaskOptions,
    refine: Any = None,
) -> torch.Tensor:
    """Everything after the targets are combined: subtract negatives, refine, threshold, grow/shrink, blur,
    feather, invert.

    Args:
        combined: ``[..., H, W]`` each target's combined map, in [0, 1] (e.g. ``[B, T, H, W]``).
        negative: the negative prompts' union, broadcastable to ``combined`` (``[B, 1, H, W]``), or None.
        options: the settings (``normalize`` and ``combine`` are already applied).
        refine: ``refine(masks) -> masks`` applied after the negatives and before the threshold, when
            ``options`` asks for refinement (it holds the guiding images); None skips it.

    Returns:
        ``[..., H, W]`` float in [0, 1].
    """
    mask = combined
    if negative is not None:
        mask = subtract(mask, negative)
    if refine is not None:
        mask = refine(mask)
    if options.threshold is not None:
        mask = threshold(mask, float(options.threshold), float(options.threshold_softness))
    mask = grow(mask, int(options.grow))
    mask = gaussian_blur(mask, float(options.blur))
    mask = feather(mask, float(options.feather))
    if options.invert:
        mask = invert(mask)
    return mask


def combine_targets(probs: torch.Tensor, plan: TargetPlan) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-prompt maps → each target's combined map and the negatives' union.

    Args:
        probs: ``[B, P, H, W]`` maps of ``plan.prompts``.

    Returns:
        ``([B, T, H, W], [B, 1, H, W] or None)``.
    """
    combined = torch.stack(
        [combine(probs[:, list(idx)], mode, dim=1) for idx, mode in zip(plan.targets, plan.combines)], dim=1
    )
    negative = probs[:, list(plan.negative)].amax(dim=1, keepdim=True) if plan.negative else None
    return combined, negative


def finish_targets(probs: torch.Tensor, plan: TargetPlan, options: MaskOptions, refine: Any = None) -> torch.Tensor:
    """Per-prompt probabilities → one finished mask per target.

    Args:
        probs: ``[B, P, H, W]`` maps of ``plan.prompts`` (already normalized as ``options.normalize`` says).
        plan: which prompts make which target, and the negatives.
        options: post-processing (threshold, grow, blur, feather, invert).
        refine: see :func:`finish`.

    Returns:
        ``[B, T, H, W]`` float32 in [0, 1], what :meth:`Segmenter.mask` gives for these targets.
    """
    combined, negative = combine_targets(probs, plan)
    return finish(combined, negative, options, refine)


def finish_masks(positive: torch.Tensor, negative: torch.Tensor | None, options: MaskOptions) -> torch.Tensor:
    """Turn normalized per-prompt maps into final masks: one target of all P prompts (``options.combine``).

    Args:
        positive: ``[B, P, H, W]`` maps of the P prompts, in [0, 1].
        negative: ``[B, N, H, W]`` maps of N negative prompts, or None.
        options: the settings; ``options.normalize`` is assumed already applied.

    Returns:
        ``[B, H, W]`` float in [0, 1].
    """
    mask = combine(positive, options.combine, dim=1)
    removed = negative.amax(dim=1) if negative is not None and negative.shape[1] > 0 else None
    return finish(mask, removed, options)


def map_scores(maps: torch.Tensor) -> torch.Tensor:
    """Each map's peak and mean value: ``[..., H, W]`` → ``[..., 2]`` float32 (max, mean), e.g. how strongly and
    how widely each prompt matched, or a finished mask's coverage (its mean)."""
    values = maps.float()
    return torch.stack([values.amax(dim=(-2, -1)), values.mean(dim=(-2, -1))], dim=-1)


# -------------------------------------------------------------------------------------------- time
def check_smoothing(strength: float) -> float:
    """A temporal smoothing strength, checked to be in [0, 1)."""
    strength = float(strength)
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"smoothing strength: must be in [0, 1), got {strength}")
    return strength


def smooth_temporal(
    maps: torch.Tensor, strength: float, previous: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exponential moving average over the first (time) axis, to cut frame-to-frame flicker in video masks.

    ``out[t] = (1 - strength) * maps[t] + strength * out[t - 1]``, with ``out[-1] = previous`` (or
    ``maps[0]`` when there is none), so a long video can be smoothed chunk by chunk with the same result
    as in one piece.

    Args:
        maps: ``[T, ...]`` (e.g. ``[T, P, H, W]`` per-prompt maps of T consecutive frames), in [0, 1].
        strength: in [0, 1); 0 returns ``maps`` unchanged, 0.5 is mild, 0.8 strong (lags on fast motion).
        previous: the last smoothed frame of the previous chunk, ``maps.shape[1:]``, or None.

    Returns:
        ``(smoothed [T, ...], last smoothed frame to pass as ``previous`` for the next chunk)``.
    """
    strength = check_smoothing(strength)
    if strength == 0.0 or maps.shape[0] == 0:
        return maps, (maps[-1] if maps.shape[0] else previous)
    out = torch.empty_like(maps)
    state = maps[0] if previous is None else previous.to(device=maps.device, dtype=maps.dtype)
    for t in range(maps.shape[0]):  # sequential by nature; each step is one batched op over [...]
        state = torch.lerp(maps[t], state, strength)
        out[t] = state
    return out, state


# ----------------------------------------------------------------------------------------- rendering
# The heat-map colour ramp of every face (CLI overlays, ComfyUI previews, the web page): dark purple → red →
# orange → yellow → pale yellow, perceptually ordered, in 8-bit levels.
HEAT_STOPS = ((40, 10, 90), (150, 30, 110), (230, 60, 50), (250, 150, 30), (255, 235, 120))


def heat_colours(masks: torch.Tensor) -> torch.Tensor:
    """``[..., H, W]`` in [0, 1] → ``[..., H, W, 3]`` float RGB levels in [0, 255] along :data:`HEAT_STOPS`."""
    stops = torch.tensor(HEAT_STOPS, dtype=torch.float32, device=masks.device)
    position = masks.float().clamp(0.0, 1.0) * (len(stops) - 1)
    low = position.floor().long().clamp(max=len(stops) - 2)
    fraction = (position - low)[..., None]
    return stops[low] * (1.0 - fraction) + stops[low + 1] * fraction


def mask_levels(masks: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Masks in [0, 1] → integer levels, rounded: uint8 (``bits=8``) or int32 holding 0..65535 (``bits=16``).

    Args:
        masks: ``[..., H, W]`` float.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits: must be 8 or 16, got {bits}")
    top = 255.0 if bits == 8 else 65535.0
    levels = torch.round(masks.float().clamp(0.0, 1.0) * top)
    return levels.to(torch.uint8) if bits == 8 else levels.to(torch.int32)


def overlay(images: torch.Tensor, masks: torch.Tensor, opacity: float = 0.6) -> torch.Tensor:
    """Heat-map overlay: where the mask is high the image is tinted with the heat colour, elsewhere untouched.

    Args:
        images: ``[..., H, W, 3]`` uint8 levels, or float in [0, 1].
        masks: ``[..., H, W]`` in [0, 1].
        opacity: tint strength at mask 1, in [0, 1].

    Returns:
        ``[..., H, W, 3]``: uint8 for uint8 images, else float32 in [0, 1].
    """
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity: must be in [0, 1], got {opacity}")
    weight = (masks.float().clamp(0.0, 1.0) * opacity)[..., None]
    if images.dtype == torch.uint8:
        mixed = images.float() * (1.0 - weight) + heat_colours(masks) * weight
        return torch.round(mixed).clamp(0, 255).to(torch.uint8)
    mixed = images.float() * (1.0 - weight) + (heat_colours(masks) / 255.0) * weight
    return mixed.clamp(0.0, 1.0)


def heatmap_overlay(images: torch.Tensor, masks: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """:func:`overlay` for previews of a batch (ComfyUI's IMAGE): grey and RGBA images, masks of another size
    or batch.

    Args:
        images: ``[B, H, W, C]`` float in [0, 1], C = 1 (grey), 3 (RGB) or 4 (alpha is dropped).
        masks: ``[B, H, W]`` or ``[H, W]`` in [0, 1]; resized (bilinear) to the images' size if it differs; a
            batch of one is repeated over the images and vice versa.
        alpha: the heat colour's opacity at mask 1, in [0, 1].

    Returns:
        ``[max(B_images, B_masks), H, W, 3]`` float32 in [0, 1].
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: must be in [0, 1], got {alpha}")
    if images.dim() != 4:
        raise ValueError(f"images: expected [B, H, W, C], got shape {list(images.shape)}")
    rgb = images[..., :3].float() if images.shape[-1] >= 3 else images[..., :1].float().expand(-1, -1, -1, 3)
    masks = masks.float().reshape(-1, masks.shape[-2], masks.shape[-1]).to(rgb.device)
    height, width = rgb.shape[1:3]
    if tuple(masks.shape[-2:]) != (height, width):
        masks = F.interpolate(masks[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    if masks.shape[0] != rgb.shape[0]:
        if masks.shape[0] != 1 and rgb.shape[0] != 1:
            raise ValueError(f"masks: batch of {masks.shape[0]} does not match images batch of {rgb.shape[0]}")
        count = max(masks.shape[0], rgb.shape[0])
        masks = masks.expand(count, -1, -1)
        rgb = rgb.expand(count, -1, -1, -1)
    return overlay(rgb, masks, float(alpha))


def cutout(images: torch.Tensor, masks: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """RGBA cut-out: the image's colours with the mask as alpha (times the image's own alpha, if any).

    Args:
        images: ``[..., H, W, 3]`` uint8.
        masks: ``[..., H, W]`` in [0, 1].
        alpha: ``[..., H, W]`` uint8 existing transparency, or None.

    Returns:
        ``[..., H, W, 4]`` uint8.
    """
    coverage = masks.float().clamp(0.0, 1.0)
    if alpha is not None:
        coverage = coverage * (alpha.float() / 255.0)
    levels = torch.round(coverage * 255.0).to(torch.uint8)
    return torch.cat([images, levels[..., None]], dim=-1)


def parse_colour(value: Any, name: str = "background") -> tuple[int, int, int] | None:
    """A colour for cut-out backgrounds: a name (``white``), ``#RRGGBB`` or ``R,G,B`` (0-255) → RGB; None or
    empty text → None. ``ValueError`` naming ``name`` otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and all(isinstance(v, int) and 0 <= v <= 255 for v in value)
    ):
        return (int(value[0]), int(value[1]), int(value[2]))
    text = str(value).strip()
    if "," in text:
        try:
            parts = tuple(int(part) for part in text.split(","))
        except ValueError:
            parts = ()
        if len(parts) == 3 and all(0 <= part <= 255 for part in parts):
            return (parts[0], parts[1], parts[2])
        raise ValueError(f"{name}: {value!r}: R,G,B needs three whole numbers in 0-255")
    from PIL import ImageColor

    try:
        rgb = ImageColor.getrgb(text)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a colour (a name such as white, #RRGGBB or R,G,B)") from None
    return (rgb[0], rgb[1], rgb[2])


def matte_cutout(
    images: torch.Tensor,
    masks: torch.Tensor,
    alpha: torch.Tensor | None = None,
    matte: bool = False,
    background: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """A cut-out whose colours are the estimated foreground (``matte``: :func:`textmask.foreground`, no old
    background in the fringe) and/or composited on a ``background`` colour (RGB 0-255): ``[..., H, W, 4]`` uint8
    RGBA without a background, ``[..., H, W, 3]`` uint8 RGB with one."""
    if not matte and background is None:
        return cutout(images, masks, alpha)
    from .matting import foreground

    shape = images.shape
    flat_images, flat_masks = images.reshape(-1, *shape[-3:]), masks.reshape(-1, *shape[-3:-1]).float().clamp(0, 1)
    if alpha is not None:
        flat_masks = flat_masks * (alpha.reshape(flat_masks.shape).float() / 255.0)
    colours = flat_images.float() / 255.0
    if matte and flat_images.shape[0]:
        colours = foreground(flat_images, flat_masks)
    if background is None:
        levels = torch.round(flat_masks * 255.0).to(torch.uint8)
        out = torch.cat([torch.round(colours * 255.0).to(torch.uint8), levels[..., None]], dim=-1)
        return out.reshape(*shape[:-1], 4)
    paint = torch.tensor(background, dtype=torch.float32, device=colours.device) / 255.0
    mixed = flat_masks[..., None] * colours + (1 - flat_masks[..., None]) * paint
    return torch.round(mixed * 255.0).clamp(0, 255).to(torch.uint8).reshape(*shape[:-1], 3)


def render(
    kind: str,
    images: torch.Tensor,
    masks: torch.Tensor,
    alpha: torch.Tensor | None = None,
    bits: int = 8,
    matte: bool = False,
    background: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """One output kind: ``"mask"`` → ``[..., H, W]`` levels (:func:`mask_levels`), ``"overlay"`` →
    ``[..., H, W, 3]`` uint8, ``"cutout"`` → ``[..., H, W, 4]`` uint8 (``[..., H, W, 3]`` on a ``background``).

    Args:
        images: ``[..., H, W, 3]`` uint8 (unused for masks).
        masks: ``[..., H, W]`` in [0, 1].
        alpha: the images' own transparency ``[..., H, W]`` uint8 (cut-outs keep it), or None.
        matte: cut-outs take the estimated foreground colours (:func:`textmask.foreground`).
        background: cut-outs are composited on this RGB colour (0-255) instead of carrying alpha.
    """
    if kind == "mask":
        return mask_levels(masks, bits)
    if kind == "overlay":
        return overlay(images, masks)
    if kind == "cutout":
        return matte_cutout(images, masks, alpha, matte, background)
    raise ValueError(f"output kind: {kind!r} is not one of {OUTPUT_KINDS}")
