"""Mask post-processing: pure, batched tensor functions, shared by every face.

All functions take and return float tensors whose last two dimensions are ``[H, W]`` (any leading
dimensions, e.g. ``[B, H, W]`` or ``[B, P, H, W]``), values in [0, 1], on any device. None of them
loops over images in Python. :class:`MaskOptions` bundles the user-facing settings and
:func:`finish_masks` applies them in one fixed order:

    normalize each prompt's map → combine prompts → subtract negative prompts → threshold
    → grow/shrink → blur → feather → invert
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

NORMALIZE_MODES = ("none", "minmax", "seed")
COMBINE_MODES = ("union", "intersection")
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

    Grey-level morphology with a square ``(2|n|+1)²`` window, so soft masks grow smoothly too.

    Args:
        mask: ``[..., H, W]``.
        pixels: signed amount; 0 returns the mask unchanged.
    """
    pixels = int(pixels)
    if pixels == 0:
        return mask
    flat, shape = _as_nchw(mask)
    size = 2 * abs(pixels) + 1
    if pixels > 0:
        out = F.max_pool2d(flat, size, stride=1, padding=abs(pixels))
    else:
        # Erosion = dilation of the complement; pad with 1 so the image border does not eat the mask.
        padded = F.pad(1.0 - flat, (abs(pixels),) * 4, value=0.0)
        out = 1.0 - F.max_pool2d(padded, size, stride=1)
    return out.reshape(shape)


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32, device: Any = None) -> torch.Tensor:
    """Normalized 1-D Gaussian taps ``[2r+1]`` with ``r = ceil(3 sigma)``."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def gaussian_blur(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` pixels (edges replicated).

    Args:
        mask: ``[..., H, W]``.
        sigma: in pixels; 0 returns the mask unchanged.
    """
    if sigma <= 0:
        return mask
    flat, shape = _as_nchw(mask)
    taps = gaussian_kernel1d(sigma, dtype=flat.dtype, device=flat.device)
    radius = taps.numel() // 2
    padded = F.pad(flat, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(padded, taps.view(1, 1, 1, -1))
    padded = F.pad(out, (0, 0, radius, radius), mode="replicate")
    out = F.conv2d(padded, taps.view(1, 1, -1, 1))
    return out.reshape(shape).clamp(0.0, 1.0)


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
    """

    normalize: str = "none"
    combine: str = "union"
    threshold: float | None = None
    threshold_softness: float = 0.0
    grow: int = 0
    blur: float = 0.0
    feather: float = 0.0
    invert: bool = False

    def __post_init__(self) -> None:
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
        if int(self.grow) != self.grow:
            raise ValueError(f"grow: must be a whole number of pixels, got {self.grow}")

    @classmethod
    def from_kwargs(cls, base: MaskOptions | None = None, **kwargs: Any) -> MaskOptions:
        """``base`` (or the defaults) with the given fields replaced; unknown names are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown mask option(s) {unknown}; known: {sorted(known)}")
        return replace(base or cls(), **kwargs)


def finish_masks(positive: torch.Tensor, negative: torch.Tensor | None, options: MaskOptions) -> torch.Tensor:
    """Turn normalized per-prompt maps into final masks (everything after normalization).

    Args:
        positive: ``[B, P, H, W]`` maps of the P prompts, in [0, 1].
        negative: ``[B, N, H, W]`` maps of N negative prompts, or None.
        options: the settings; ``options.normalize`` is assumed already applied.

    Returns:
        ``[B, H, W]`` float in [0, 1].
    """
    mask = combine(positive, options.combine, dim=1)
    if negative is not None and negative.shape[1] > 0:
        mask = subtract(mask, negative.amax(dim=1))
    if options.threshold is not None:
        mask = threshold(mask, float(options.threshold), float(options.threshold_softness))
    mask = grow(mask, int(options.grow))
    mask = gaussian_blur(mask, float(options.blur))
    mask = feather(mask, float(options.feather))
    if options.invert:
        mask = invert(mask)
    return mask


# -------------------------------------------------------------------------------------------- time
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
    strength = float(strength)
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"smoothing strength: must be in [0, 1), got {strength}")
    if strength == 0.0 or maps.shape[0] == 0:
        return maps, (maps[-1] if maps.shape[0] else previous)
    out = torch.empty_like(maps)
    state = maps[0] if previous is None else previous.to(device=maps.device, dtype=maps.dtype)
    for t in range(maps.shape[0]):  # sequential by nature; each step is one batched op over [...]
        state = torch.lerp(maps[t], state, strength)
        out[t] = state
    return out, state


# ------------------------------------------------------------------------------------------ previews
def heatmap_colors(mask: torch.Tensor) -> torch.Tensor:
    """Colour a mask with a jet-like map (0 → dark blue, 0.5 → green, 1 → dark red).

    Args:
        mask: ``[..., H, W]`` in [0, 1].

    Returns:
        ``[..., H, W, 3]`` RGB in [0, 1].
    """
    x = mask.clamp(0.0, 1.0)[..., None]
    centres = torch.tensor([0.75, 0.5, 0.25], dtype=x.dtype, device=x.device)  # R, G, B peaks
    return (1.5 - (4.0 * (x - centres)).abs()).clamp(0.0, 1.0)


def heatmap_overlay(images: torch.Tensor, masks: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend a heat-map of ``masks`` over ``images`` for previews: ``(1 - alpha) image + alpha colour(mask)``.

    Args:
        images: ``[B, H, W, C]`` float in [0, 1], C = 1 (grey), 3 (RGB) or 4 (alpha is dropped).
        masks: ``[B, H, W]`` or ``[H, W]`` in [0, 1]; resized (bilinear) to the images' size if it differs; a
            batch of one is repeated over the images and vice versa.
        alpha: weight of the heat-map in [0, 1].

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
    blended = (1.0 - alpha) * rgb + alpha * heatmap_colors(masks)
    return blended.clamp(0.0, 1.0)
