"""Soft alpha and clean cut-outs: :func:`matte` (alpha and foreground colours) and :func:`foreground`.

:func:`textmask.refine` puts crisp borders on the image's edges. That is right for hard objects and wrong for
soft truths: a defocused or motion-blurred outline, hair, fur. And a cut-out that takes the image's own colours
as the foreground keeps, in every semi-transparent pixel, the colour of the background it was photographed on
(the grey or white fringe). :func:`matte` decides region by region which kind of edge it sees, with no switch:

1. **Crisp alpha.** :func:`textmask.edges.refine_levels` places the mask's borders on the image's edges.
2. **Colour model in the band.** Where the crisp alpha is fractional, each pixel's colour is projected on the
   line between local foreground and background colours (normalized averages of the sure pixels nearby, at two
   radii): ``alpha = (I − B̂)·(F̂ − B̂) / |F̂ − B̂|²``, trusted in proportion to the contrast ``|F̂ − B̂|²``; a
   guided filter (He et al.; radius 16 px per 1024) then gives it the image's local linear colour model. Strands
   of hair 1-3 px wide get fractional coverage here (the Bayesian / closed-form matting idea, locally).
3. **How soft is the edge?** Along the coarse mask's normal, the image's slope across the border (a Gaussian
   derivative, projected on the local foreground-minus-background colour) divided by the colour contrast
   across it gives the edge's blur (for a blurred step, ``slope = contrast / (√(2π) σ)``). It is averaged (in
   log) over large regions of the border (an eighth of the image), so texture averages out. Where the edge is
   wider than about 1.65 % of the image (defocus, strong motion blur) the alpha leans towards the coarse mask's
   own smooth profile; where the border is crowded with edges (hair: its total variation is several times a
   single edge's) the crisp, colour-modelled alpha is kept whatever the slope says.
4. **Foreground colours** by blur fusion (Forte & Pitié 2021, "Approximate fast foreground colour estimation"):
   a wide pass at the working resolution, then a narrow one at full resolution. Where alpha is 1 the foreground
   is the image exactly.

Statistics (levels, projections, blur estimates) are computed at a working resolution of about 512 px on the
longer side, so the decision is the same at any image size; the result is applied at full resolution. Images
are processed a few at a time so that memory stays bounded (``benchmarks/matting.py`` measures the 4K peak).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .edges import CLIPSEG_GRID, _as_mask_tensor, _box, _guide_stats, _guided_coefficients, refine_levels
from .errors import InputError
from .images import as_image_batch

__all__ = ["Matte", "foreground", "matte", "matte_levels"]

_WORK = 512  # working resolution: pixels on the longer side
_CHUNK_PIXELS = 2 * 1024 * 1024  # images per chunk: about this many pixels (bounded memory)
_BAND_PIXELS = 1024 * 1024  # rows per band of the full-resolution foreground pass: about this many pixels
_SURE = 0.08  # crisp alpha above 1 − this (below this) is sure foreground (background) for the colour model
_CONTRAST = 0.02  # squared colour contrast |F − B|² at which the colour model is trusted half
_BLUR_FROM, _BLUR_SPAN = 0.0165, 0.008  # edge blur (σ / longer side) from which alpha leans towards the coarse
_BUSY = 4.0  # border total variation, in single edges per window, from which a region is hair-like
_FUSION = (0.044, 0.003)  # blur-fusion box radii (fraction of the longer side): wide pass, narrow pass


class Matte(NamedTuple):
    """What :func:`matte` returns: ``alpha [B, H, W]`` float32 in [0, 1] and ``foreground [B, H, W, 3]`` float32
    in [0, 1] (the object's colours, without the old background; composite as ``alpha·F + (1 − alpha)·new``)."""

    alpha: torch.Tensor
    foreground: torch.Tensor


# ------------------------------------------------------------------------------------------ helpers
def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x [N, C, H, W]`` (replicate borders)."""
    if sigma <= 0.3:
        return x
    radius = max(1, min(int(3 * sigma + 1), min(x.shape[-2:]) - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma * sigma))
    kernel = (kernel / kernel.sum()).repeat(x.shape[1], 1)
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(-1, 1, 1, 2 * radius + 1), groups=x.shape[1]
    )
    return F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(-1, 1, 2 * radius + 1, 1), groups=x.shape[1]
    )


def _fill(values: torch.Tensor, weight: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalized average of ``values [N, C, h, w]`` over the pixels ``weight [N, 1, h, w]`` marks, at ``radius``
    and (where that finds too few) at four times it."""
    both = _box(torch.cat([values * weight, weight], 1), radius, radius)
    wide = _box(torch.cat([values * weight, weight], 1), 4 * radius, 4 * radius)
    near = both[:, :-1] / both[:, -1:].clamp(min=1e-6)
    far = wide[:, :-1] / wide[:, -1:].clamp(min=1e-6)
    trust = (both[:, -1:] / 0.05).clamp(0, 1)
    return torch.lerp(far, near, trust)


def _sample(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """``x [N, C, h, w]`` read (bilinearly) at each pixel moved by ``(dy, dx) [N, h, w]`` pixels."""
    h, w = x.shape[-2:]
    ys = torch.arange(h, device=x.device, dtype=x.dtype)[:, None] + dy
    xs = torch.arange(w, device=x.device, dtype=x.dtype)[None, :] + dx
    grid = torch.stack([(xs + 0.5) / w * 2 - 1, (ys + 0.5) / h * 2 - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _levels_stretch(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image ``(low, high) [N, 1, 1, 1]``: the mask's own 1st and 99th percentile levels (as refine reads
    them), so that ``(mask − low) / (high − low)`` is a coverage in [0, 1]."""
    small = F.adaptive_avg_pool2d(masks, (min(masks.shape[-2], 128), min(masks.shape[-1], 128))).flatten(1)
    q = torch.quantile(small, torch.tensor([0.01, 0.99], dtype=small.dtype, device=small.device), dim=1)
    low, high = q[0].clamp(max=0.45), q[1].clamp(min=0.55)
    return low.view(-1, 1, 1, 1), high.view(-1, 1, 1, 1)


# ------------------------------------------------------------------------------------------ alpha
_OWN_WIDTH = 2.15  # px: what a perfectly sharp step reads as (the derivative's own Gaussian, pooling, differences)


def _edge_width(ratio: torch.Tensor, reach: float) -> torch.Tensor:
    """The Gaussian width ``σ`` (px) of a blurred step whose slope over contrast is ``ratio`` (1/px), the contrast
    being read ``reach`` px to either side: ``ratio = 1 / (√(2π) σ erf(reach / (√2 σ)))`` (a wide blur's contrast
    is not all inside the reach), solved by interpolation in a table (σ up to 4 × reach)."""
    widths = torch.logspace(-1, math.log10(4 * reach), 256, dtype=ratio.dtype, device=ratio.device)
    ratios = 1.0 / (math.sqrt(2 * math.pi) * widths * torch.erf(reach / (math.sqrt(2) * widths)))  # decreasing
    flipped_r, flipped_w = ratios.flip(0), widths.flip(0)  # increasing ratio
    index = torch.searchsorted(flipped_r, ratio.clamp(flipped_r[0], flipped_r[-1]).contiguous()).clamp(1, 255)
    r0, r1 = flipped_r[index - 1], flipped_r[index]
    w0, w1 = flipped_w[index - 1], flipped_w[index]
    t = ((ratio - r0) / (r1 - r0).clamp(min=1e-12)).clamp(0, 1)
    return torch.lerp(w0, w1, t)


def _soft_weight(guide: torch.Tensor, crisp: torch.Tensor, coverage: torch.Tensor, busy: torch.Tensor) -> torch.Tensor:
    """How far each working pixel should lean towards the coarse profile, ``[N, 1, h, w]`` in [0, 1]: the
    edge's blur (σ per longer side) estimated from the image's slope across the border, averaged in log over
    large regions, off where the border is busy (hair)."""
    h, w = guide.shape[-2:]
    longer = max(h, w)
    smooth = _gaussian(coverage, 0.01 * longer)
    gy, gx = torch.gradient(smooth, dim=(2, 3))
    norm = torch.sqrt(gx * gx + gy * gy).clamp(min=1e-8)
    ny, nx = (gy / norm)[:, 0], (gx / norm)[:, 0]
    reach = 0.04 * longer
    blurred = _box(guide, max(1, round(0.008 * longer)), max(1, round(0.008 * longer)))
    across = _sample(blurred, ny * reach, nx * reach) - _sample(blurred, -ny * reach, -nx * reach)
    iy, ix = torch.gradient(_gaussian(guide, 1.0), dim=(2, 3))
    slope = ix * nx[:, None] + iy * ny[:, None]
    band = ((crisp > 0.1) & (crisp < 0.9)).to(guide.dtype)
    band = F.max_pool2d(band, 5, stride=1, padding=2)
    r = max(2, round(0.03 * longer))
    sums = _box(torch.cat([across * band, slope * band], 1), r, r)
    contrast = (sums[:, :3] * sums[:, :3]).sum(1, keepdim=True).sqrt()  # (norm(dim=1) is 20x slower here)
    along = (sums[:, 3:] * sums[:, :3]).sum(1, keepdim=True) / contrast.clamp(min=1e-6)
    ratio = (along / contrast.clamp(min=1e-6)).clamp(min=1e-3)
    total = _edge_width(ratio, reach)
    sigma = (total * total - _OWN_WIDTH**2).clamp(min=0).sqrt() / longer  # blur of the edge, per longer side
    region = max(2, round(0.12 * longer))
    edge = ((crisp > 0.05) & (crisp < 0.95)).to(guide.dtype)
    edge = F.max_pool2d(edge, 5, stride=1, padding=2)
    log_sigma = torch.log(sigma.clamp(0.5 / 1024, 64 / 1024))
    means = _box(torch.cat([log_sigma * edge, busy.clamp(max=30) * edge, edge], 1), region, region)
    weight = means[:, 2:].clamp(min=1e-6)
    sigma = (means[:, :1] / weight).exp()
    crowded = ((means[:, 1:2] / weight - _BUSY) / _BUSY).clamp(0, 1)
    soft = ((sigma - _BLUR_FROM) / _BLUR_SPAN).clamp(0, 1) * (1 - crowded)
    return torch.where(means[:, 2:] > 1e-4, soft, torch.zeros_like(soft))


def _alpha_chunk(levels: torch.Tensor, masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Alpha ``[N, H, W]`` for ``levels [N, 3, H, W]`` uint8 and ``masks [N, H, W]`` float."""
    height, width = levels.shape[-2:]
    longer = max(height, width)
    crisp = refine_levels(levels, masks, grid=grid)[:, None]  # [N, 1, H, W]
    low, high = _levels_stretch(masks[:, None])
    coverage = ((masks[:, None] - low) / (high - low)).clamp_(0, 1)
    image = levels.to(masks.dtype) / 255.0
    # Colour model in the band, statistics at half resolution when the image is large.
    factor = 2 if longer >= 768 else 1
    size = (max(1, height // factor), max(1, width // factor))
    image_small = F.adaptive_avg_pool2d(image, size) if factor > 1 else image
    crisp_small = F.adaptive_avg_pool2d(crisp, size) if factor > 1 else crisp
    radius = max(2, round(0.01 * longer / factor))
    sure_fg = (crisp_small > 1 - _SURE).to(image.dtype)
    sure_bg = (crisp_small < _SURE).to(image.dtype)
    bg = _fill(image_small, sure_bg, radius)
    difference = _fill(image_small, sure_fg, radius) - bg  # F̂ − B̂ (upsampled as one: interpolation is linear)
    if factor > 1:
        difference = F.interpolate(difference, size=(height, width), mode="bilinear", align_corners=False)
        bg = F.interpolate(bg, size=(height, width), mode="bilinear", align_corners=False)
    contrast = difference.square().sum(1, keepdim=True)
    offset = image - bg
    del bg
    projected = (offset.mul_(difference).sum(1, keepdim=True) / contrast.clamp(min=1e-4)).clamp_(0, 1)
    del offset, difference
    band = ((crisp > _SURE) & (crisp < 1 - _SURE)).to(image.dtype)
    trust = contrast / (contrast + _CONTRAST) * band
    modelled = torch.lerp(crisp, projected, trust)
    del projected, trust, contrast
    # The image's local linear colour model (guided filter, coefficients at half resolution).
    gr = max(1, round(16 * longer / 1024 / factor))
    guide_small = F.adaptive_avg_pool2d(image, size) if factor > 1 else image
    target_small = F.adaptive_avg_pool2d(modelled, size) if factor > 1 else modelled
    stats = _guide_stats(guide_small, gr, gr, 1e-4)
    a, b = _guided_coefficients(guide_small, stats, target_small, gr, gr)
    if factor > 1:
        ab = F.interpolate(torch.cat([a, b], 1), size=(height, width), mode="bilinear", align_corners=False)
        a, b = ab[:, :3], ab[:, 3:]
    sharp = ((a * image).sum(1, keepdim=True) + b).clamp_(0, 1)
    del a, b, modelled
    # How soft each region is, at the working resolution.
    scale = min(1.0, _WORK / longer)
    work = (max(1, round(height * scale)), max(1, round(width * scale)))
    gy, gx = torch.gradient(sharp, dim=(2, 3))
    variation = F.adaptive_avg_pool2d(gx.abs() + gy.abs(), work)
    del gx, gy
    r = max(2, round(0.03 * max(work)))
    busy = _box(variation, r, r) * (2 * r + 1) / scale
    guide_work = F.adaptive_avg_pool2d(image, work)
    soft = _soft_weight(guide_work, F.adaptive_avg_pool2d(sharp, work), F.adaptive_avg_pool2d(coverage, work), busy)
    soft = F.interpolate(soft, size=(height, width), mode="bilinear", align_corners=False)
    return torch.lerp(sharp, coverage, soft)[:, 0].clamp_(0, 1)


# ------------------------------------------------------------------------------------------ foreground
def _fusion(image: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, alpha: torch.Tensor, radius: int):
    """One blur-fusion step (Forte & Pitié 2021): ``(F, blurred B)``, all ``[N, C, h, w]``."""
    sums = _box(torch.cat([fg * alpha, bg * (1 - alpha), alpha], 1), radius, radius)
    blurred_alpha = sums[:, 6:]
    # Where no foreground (background) is near, the estimate falls back to the colours passed in.
    blurred_fg = (sums[:, :3] + 1e-5 * fg) / (blurred_alpha + 1e-5)
    blurred_bg = (sums[:, 3:6] + 1e-5 * bg) / ((1 - blurred_alpha) + 1e-5)
    estimate = blurred_fg + alpha * (image - alpha * blurred_fg - (1 - alpha) * blurred_bg)
    return estimate.clamp_(0, 1), blurred_bg


def _foreground_chunk(image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Foreground ``[N, 3, H, W]`` for ``image [N, 3, H, W]`` float in [0, 1] and ``alpha [N, 1, H, W]``."""
    height, width = image.shape[-2:]
    longer = max(height, width)
    scale = min(1.0, _WORK / longer)
    work = (max(1, round(height * scale)), max(1, round(width * scale)))
    small_image = F.adaptive_avg_pool2d(image, work)
    small_alpha = F.adaptive_avg_pool2d(alpha, work)
    wide = max(1, round(_FUSION[0] * max(work)))
    first, blurred_bg = _fusion(small_image, small_image, small_image, small_alpha, wide)
    up = F.interpolate(torch.cat([first, blurred_bg], 1), size=(height, width), mode="bilinear", align_corners=False)
    narrow = max(1, round(_FUSION[1] * longer))
    out = torch.empty_like(image)
    # The full-resolution pass in bands of rows (with a halo of the box's radius, so each band's rows are what the
    # whole image would give): its temporaries then take a band's memory, not the image's.
    rows = max(1, _BAND_PIXELS // max(1, width * image.shape[0]))
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        h0, h1 = max(0, y0 - narrow), min(height, y1 + narrow)
        img, a, u = image[:, :, h0:h1], alpha[:, :, h0:h1], up[:, :, h0:h1]
        detail = (u[:, :3] + a * (img - a * u[:, :3] - (1 - a) * u[:, 3:])).clamp_(0, 1)  # full-resolution detail
        band, _ = _fusion(img, detail, u[:, 3:], a, narrow)
        keep = slice(y0 - h0, y1 - h0)
        out[:, :, y0:y1] = torch.where(a[:, :, keep] >= 1, img[:, :, keep], band[:, :, keep])
    return out


# ------------------------------------------------------------------------------------------ inputs
def _image_levels(images: Any) -> tuple[torch.Tensor, bool]:
    """Any image form → ``[B, 3, H, W]`` uint8 (one size) and whether the input was a batch."""
    batch = as_image_batch(images)
    levels = batch.levels(0, len(batch))
    if not levels:
        raise InputError("images: the batch is empty")
    if len({tuple(level.shape) for level in levels}) > 1:
        raise InputError("images: all images must have one size")
    return torch.stack(levels), batch.batched


def _colours(images: Any, levels: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` float colours: a float RGB tensor or array as given (no 8-bit rounding), else levels / 255."""
    if isinstance(images, np.ndarray) and images.dtype.kind == "f":
        images = torch.from_numpy(np.ascontiguousarray(images))
    if isinstance(images, torch.Tensor) and images.is_floating_point() and images.shape[-1] == 3:
        colours = images if images.dim() == 4 else images[None]
        if tuple(colours.shape[1:3]) == tuple(levels.shape[-2:]):
            return colours.permute(0, 3, 1, 2).to(torch.float32).clamp(0, 1)
    return levels.to(torch.float32) / 255.0


def _pair(images: Any, masks: Any, mask_name: str) -> tuple[torch.Tensor, torch.Tensor, bool]:
    levels, batched = _image_levels(images)
    mask_batch = _as_mask_tensor(masks, mask_name)
    if mask_batch.shape[0] == 0:
        raise InputError(f"{mask_name}: the batch is empty")
    if tuple(mask_batch.shape[-2:]) != tuple(levels.shape[-2:]):
        raise InputError(
            f"{mask_name}: size {list(mask_batch.shape[-2:])} differs from the images' {list(levels.shape[-2:])}"
        )
    count = max(levels.shape[0], mask_batch.shape[0])
    if levels.shape[0] != mask_batch.shape[0] and 1 not in (levels.shape[0], mask_batch.shape[0]):
        raise InputError(
            f"{mask_name}: batch of {mask_batch.shape[0]} does not match images batch of {levels.shape[0]}"
        )
    levels = levels.to(mask_batch.device).expand(count, -1, -1, -1)
    return levels, mask_batch.expand(count, -1, -1), batched or int(getattr(masks, "ndim", 3)) == 3


def _chunks(count: int, height: int, width: int) -> range:
    return range(0, count, max(1, _CHUNK_PIXELS // max(1, height * width)))


# ------------------------------------------------------------------------------------------ public
def matte_levels(
    levels: torch.Tensor,
    masks: torch.Tensor,
    grid: int | tuple[int, int] = CLIPSEG_GRID,
    colours: bool | torch.Tensor = True,
) -> Matte:
    """:func:`matte` without input conversion (the engine's entry): ``levels [B, 3, H, W]`` uint8 and
    ``masks [B, H, W]`` float in [0, 1] at the same size. ``colours``: True (foreground from the levels), a
    float ``[B or 1, 3, H, W]`` tensor of the image's exact colours, or False (no foreground: then
    ``foreground`` is an empty tensor)."""
    grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
    masks = masks.to(torch.float32)
    levels = levels.to(masks.device)
    count, _, height, width = levels.shape
    alpha = torch.empty((count, height, width), dtype=torch.float32, device=masks.device)
    fg = torch.empty(
        (count, height, width, 3) if colours is not False else (0,), dtype=torch.float32, device=masks.device
    )
    with torch.no_grad():
        for start in _chunks(count, height, width):
            stop = min(count, start + max(1, _CHUNK_PIXELS // max(1, height * width)))
            part = _alpha_chunk(levels[start:stop], masks[start:stop], grid)
            alpha[start:stop] = part
            if isinstance(colours, torch.Tensor):
                image = colours[start:stop] if colours.shape[0] > 1 else colours.expand(stop - start, -1, -1, -1)
                fg[start:stop] = _foreground_chunk(image.to(alpha), part[:, None]).permute(0, 2, 3, 1)
            elif colours:
                image = levels[start:stop].to(torch.float32) / 255.0
                fg[start:stop] = _foreground_chunk(image, part[:, None]).permute(0, 2, 3, 1)
    return Matte(alpha, fg)


def matte(images: Any, masks: Any, grid: int | tuple[int, int] = CLIPSEG_GRID) -> Matte:
    """Soft alpha and foreground colours from any mask: hard where the image's edges are crisp, soft where the
    truth is soft (defocus, motion blur, hair), decided region by region.

    Args:
        images: ``[B, H, W, 3]`` float in [0, 1], or any form textmask accepts as images (uint8, PIL, paths, a
            list of one size).
        masks: ``[B, H, W]`` (or ``[H, W]``) float in [0, 1], uint8 or bool, at the images' size: textmask's,
            SAM's, another pack's or a hand-painted one. A batch of one is broadcast over the other.
        grid: the mask's coarseness in cells per side (22: CLIPSeg's patch grid), as for :func:`textmask.refine`.

    Returns:
        ``Matte(alpha, foreground)``: ``alpha [B, H, W]`` and ``foreground [B, H, W, 3]`` float32 in [0, 1] on
        the masks' device (``[H, W]`` and ``[H, W, 3]`` for one image with an ``[H, W]`` mask). Composite a
        cut-out as ``alpha·foreground + (1 − alpha)·background``.

    Raises:
        InputError: empty batches, masks of another size or batch, NaN or infinite values, wrong shapes.
    """
    levels, masks_tensor, batched = _pair(images, masks, "masks")
    result = matte_levels(levels, masks_tensor, grid, colours=_colours(images, levels).to(masks_tensor.device))
    if not batched:
        return Matte(result.alpha[0], result.foreground[0])
    return result


def foreground(images: Any, alpha: Any) -> torch.Tensor:
    """Foreground colours for an alpha you already have (blur fusion, Forte & Pitié 2021).

    Args:
        images: ``[B, H, W, 3]`` float in [0, 1] or any form textmask accepts as images.
        alpha: ``[B, H, W]`` (or ``[H, W]``) in [0, 1] at the images' size.

    Returns:
        ``[B, H, W, 3]`` float32 in [0, 1] on alpha's device (``[H, W, 3]`` for one image and an ``[H, W]``
        alpha); equal to the image where alpha is 1.
    """
    levels, alpha_tensor, batched = _pair(images, alpha, "alpha")
    colours = _colours(images, levels).to(alpha_tensor.device)
    count, _, height, width = levels.shape
    out = torch.empty((count, height, width, 3), dtype=torch.float32, device=alpha_tensor.device)
    with torch.no_grad():
        for start in _chunks(count, height, width):
            stop = min(count, start + max(1, _CHUNK_PIXELS // max(1, height * width)))
            image = colours[start:stop] if colours.shape[0] > 1 else colours.expand(stop - start, -1, -1, -1)
            out[start:stop] = _foreground_chunk(image, alpha_tensor[start:stop, None]).permute(0, 2, 3, 1)
    return out if batched else out[0]
