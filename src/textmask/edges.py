"""Edge refinement: move a coarse soft mask's borders onto the image's own edges, at the image's resolution.

CLIPSeg sees an image as 22×22 patches; upsampled to the photo, its masks are blobs whose borders wander up to a
patch from the object's edge, and thin parts fade. :func:`refine` fixes that with the image as guide:

1. **Levels.** The mask's own background and foreground levels (its 1st and 99th percentiles) are stretched to
   0 and 1, and a noise floor (median + 3 MAD of the background part) is cut off: the mask becomes a *coverage*
   map, the fraction of each neighbourhood that is object. A mask without contrast is returned unchanged.
2. **Guided passes at a reduced resolution.** About ``detail`` pixels per coarse cell (264² for CLIPSeg's 22×22
   grid), whatever the image size. Each pass is a colour guided filter (He et al.) of the current mask with a
   radius in coarse cells (0.5, 0.5, 0.35, 0.25, 0.25): a local linear colour model, so transitions move onto
   colour edges. Between passes the mask is re-sharpened (below), so the next, narrower pass starts from a
   sharper, better-placed estimate (coarse to fine).
3. **Mass-preserving sharpening.** A confident object (a local maximum above 0.5) is cut at 0.5. Where the
   guided estimate stays faint (a thin pole, a leash, a tail: under half a patch wide, so CLIPSeg's average
   fades it), the cut is instead chosen per neighbourhood so that the sharpened mask keeps the coverage the
   coarse mask says is there, on the pixels the colour model ranks highest, and with the local contrast as
   ramp width. Faint evidence below ``thin`` (or a colour contrast too small to rank pixels) is left alone.
4. **Full resolution, once.** The last pass's linear coefficients, with the cut and ramp folded in, are
   upsampled bilinearly and applied to the image's own pixels: ``clamp(a · rgb + b, 0, 1)``. Edges are thus
   as sharp as the photo's, soft things (hair, blur, feathered alphas) stay as soft as the photo shows them,
   and interiors saturate to exactly 0 and 1.

Everything is batched tensor code on the inputs' device. Full-resolution work is two passes over the image in
bands of rows (an area reduction and the final ``a · rgb + b``), so memory stays bounded at any size: refining
one 3840×2160 image peaks about 0.14 GiB above its inputs, the 32 MiB output included (see ``docs/quality.md``).

The engine calls :func:`refine_levels` with what it already holds (8-bit levels ``[B, 3, H, W]`` and masks at
image size); :func:`refine` takes any image form textmask accepts.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .images import as_image_batch

__all__ = ["DEFAULT_REFINE", "RefineOptions", "refine", "refine_levels"]

CLIPSEG_GRID = 22  # CLIPSeg's patch grid: 352 px input / 16 px patches
_BAND_BYTES = 32 * 2**20  # working memory per band of full-resolution rows
_MIN_CONTRAST = 0.02  # a mask whose 1st-99th percentile range is below this has nothing to refine
_PEAK = (0.5, 0.3)  # a local maximum of coverage above 0.5 (fully from 0.8) is a confident object: cut at 0.5
_MIN_RANGE = 0.05  # local contrast of the guided estimate below which pixels cannot be ranked (full from 0.1)
_CANDIDATES = torch.linspace(0.0, 1.0, 9).view(1, -1, 1, 1)  # candidate cuts on the local range
_INNER_SOFTNESS = 0.1  # ramp of the sharpening between passes (the last pass uses options.softness)
_MATCH_SLOPE = 8.0  # steepness of the soft step used to count coverage while searching for the cut


@dataclass(frozen=True)
class RefineOptions:
    """Settings of :func:`refine`; the defaults are the best measured (``benchmarks/quality.py``).

    Attributes:
        radii: guided-filter radius of each pass, in coarse cells (one cell = image size / ``grid``), from the
            first pass to the last; 1 to 8 passes, each in (0, 4].
        eps: guided-filter regularization, in squared colour units (colours in [0, 1]); larger smooths more
            across weak edges. In (0, 1].
        grid: the coarse mask's cells per side, ``n`` or ``(rows, cols)``: 22 for CLIPSeg (its patch grid); a
            larger grid for a finer mask keeps the search band narrower (radii are in cells).
        detail: working-resolution pixels per coarse cell (4 to 64); the work and the result are then nearly the
            same at any image size. 12 gives 264×264 statistics for CLIPSeg.
        softness: width of the output ramp in units of the guided estimate's local range: 0.2 maps a ±0.4 band
            around the cut to 0..1 linearly. In (0, 1]; larger keeps more soft values, smaller is crisper.
        thin: local coverage (0-1) from which faint thin structures are recovered (fully from twice it); 1 turns
            recovery off.
        noise: the background noise floor, in median absolute deviations of the mask's background part, that is
            cut off before refining (0 turns it off; at most 20).
        match_radius: neighbourhood, in coarse cells, over which coverage is kept when sharpening, in (0, 4].
    """

    radii: tuple[float, ...] = (0.5, 0.5, 0.35, 0.25, 0.25)
    eps: float = 1e-4
    grid: int | tuple[int, int] = CLIPSEG_GRID
    detail: int = 12
    softness: float = 0.2
    thin: float = 0.05
    noise: float = 3.0
    match_radius: float = 0.5

    def __post_init__(self) -> None:
        radii = self.radii
        if isinstance(radii, (int, float)):
            radii = (radii,)
        try:
            radii = tuple(float(r) for r in radii)
        except (TypeError, ValueError):
            raise ValueError(f"radii: must be a sequence of numbers, got {self.radii!r}") from None
        if not 1 <= len(radii) <= 8 or not all(math.isfinite(r) and 0 < r <= 4 for r in radii):
            raise ValueError(f"radii: 1 to 8 radii in (0, 4] coarse cells, got {self.radii!r}")
        object.__setattr__(self, "radii", radii)
        grid = self.grid
        try:
            grid = (grid, grid) if isinstance(grid, (int, float, np.number)) else tuple(grid)
            whole = len(grid) == 2 and all(float(g).is_integer() and 1 <= g <= 4096 for g in grid)
        except (TypeError, ValueError):
            whole = False
        if not whole or isinstance(self.grid, bool):
            raise ValueError(f"grid: must be a whole number of cells in [1, 4096] or (rows, cols), got {self.grid!r}")
        object.__setattr__(self, "grid", (int(grid[0]), int(grid[1])))
        _check_number("eps", self.eps, 0, 1, low_open=True)
        try:
            whole = float(self.detail).is_integer() and not isinstance(self.detail, bool)
        except (TypeError, ValueError):
            whole = False
        if not whole or not 4 <= self.detail <= 64:
            raise ValueError(f"detail: must be a whole number of pixels per cell in [4, 64], got {self.detail!r}")
        object.__setattr__(self, "detail", int(self.detail))
        _check_number("softness", self.softness, 0, 1, low_open=True)
        _check_number("thin", self.thin, 0, 1)
        _check_number("noise", self.noise, 0, 20)
        _check_number("match_radius", self.match_radius, 0, 4, low_open=True)

    @classmethod
    def from_kwargs(cls, base: RefineOptions | None = None, **kwargs: Any) -> RefineOptions:
        """``base`` (or the defaults) with the given fields replaced; unknown names are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown refine option(s) {unknown}; known: {sorted(known)}")
        return replace(base or cls(), **kwargs)


def _check_number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a number, got {value!r}") from None
    if (
        isinstance(value, bool)
        or not math.isfinite(number)
        or number > high
        or number < low
        or (low_open and number == low)
    ):
        interval = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise ValueError(f"{name}: must be in {interval}, got {value!r}")


DEFAULT_REFINE = RefineOptions()


# ---------------------------------------------------------------------------------------- filters
@functools.lru_cache(maxsize=64)
def _reciprocal_counts(size: int, radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """1 / the number of pixels in each border-cut window of ``2 radius + 1`` along an axis of ``size``."""
    index = torch.arange(size, device=device)
    counts = (index + radius + 1).clamp(max=size) - (index - radius).clamp(min=0)
    return (1.0 / counts.to(torch.float64)).to(dtype)


_ROW_BLOCK = 32  # rows per block of the blocked running sum down the columns


def _cumsum_rows(x: torch.Tensor) -> torch.Tensor:
    """``x.cumsum(-2)`` for ``x [..., h, w]``, in blocks of rows: a product with a lower-triangular matrix within
    each block, plus the running sum of the blocks' totals. torch's cumsum down a non-last dimension is 2.5×
    slower on the CPU than this (and than its cumsum along rows), and the box filters need it for every map."""
    h = x.shape[-2]
    if h < 2 * _ROW_BLOCK or not x.is_floating_point():
        return x.cumsum(-2)
    padded = -(-h // _ROW_BLOCK) * _ROW_BLOCK
    blocks = F.pad(x, (0, 0, 0, padded - h)).unflatten(-2, (padded // _ROW_BLOCK, _ROW_BLOCK))
    lower = torch.ones(_ROW_BLOCK, _ROW_BLOCK, device=x.device, dtype=x.dtype).tril_()
    within = torch.matmul(lower, blocks)  # [..., blocks, rows, w]
    totals = within[..., -1:, :]
    within += totals.cumsum(-3) - totals
    return within.flatten(-3, -2)[..., :h, :]


def _box_axis(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sums of ``x`` over windows ``[i - radius, i + radius]`` along ``dim``, cut at the borders."""
    size = x.shape[dim]
    sums = _cumsum_rows(x) if dim in (-2, x.dim() - 2) else x.cumsum(dim)
    if size <= 2 * radius + 1:  # every window reaches a border (small maps): gather the two ends
        index = torch.arange(size, device=x.device)
        upper = sums.index_select(dim, (index + radius).clamp(max=size - 1))
        start = index - radius - 1
        lower = sums.index_select(dim, start.clamp(min=0))
        shape = [1] * x.dim()
        shape[dim] = size
        return upper - lower * (start >= 0).to(x.dtype).view(shape)
    out = torch.empty_like(x)
    # i <= radius: the window starts at 0, the sum is the running sum at i + radius.
    out.narrow(dim, 0, radius + 1).copy_(sums.narrow(dim, radius, radius + 1))
    # interior: running sum at i + radius minus the one at i - radius - 1.
    inner = size - 2 * radius - 1
    ahead, behind = sums.narrow(dim, 2 * radius + 1, inner), sums.narrow(dim, 0, inner)
    torch.sub(ahead, behind, out=out.narrow(dim, radius + 1, inner))
    # i >= size - radius: the window ends at the border.
    last = sums.narrow(dim, size - 1, 1)
    torch.sub(last, sums.narrow(dim, size - 2 * radius - 1, radius), out=out.narrow(dim, size - radius, radius))
    return out


def _box(x: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    """Mean of ``x [N, C, h, w]`` over ``(2 ry + 1) × (2 rx + 1)`` windows cut at the borders (running sums)."""
    h, w = x.shape[-2:]
    x = _box_axis(x, ry, -2).mul_(_reciprocal_counts(h, ry, x.device, x.dtype)[:, None])
    return _box_axis(x, rx, -1).mul_(_reciprocal_counts(w, rx, x.device, x.dtype))


def _local_max(x: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    """Approximate maximum over windows about ``(2 ry + 1) × (2 rx + 1)``: the maximum over the 3×3 blocks of
    ``⌈(2r + 1) / 3⌉`` pixels around each pixel's block (far cheaper than a sliding maximum)."""
    h, w = x.shape[-2:]
    by, bx = -(-(2 * ry + 1) // 3), -(-(2 * rx + 1) // 3)
    blocks = F.max_pool2d(x, (by, bx), stride=(by, bx), ceil_mode=True)
    blocks = F.max_pool2d(blocks, 3, stride=1, padding=1)
    return blocks.repeat_interleave(by, -2)[..., :h, :].repeat_interleave(bx, -1)[..., :w]


@dataclass
class _GuideStats:
    """Window statistics of the guide at one radius: means ``[B, 3, h, w]`` and the inverse of
    ``covariance + eps·I`` as its 6 distinct entries ``[B, 6, h, w]`` (xx, xy, xz, yy, yz, zz)."""

    mean: torch.Tensor
    inverse: torch.Tensor


_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _guide_stats(guide: torch.Tensor, ry: int, rx: int, eps: float) -> _GuideStats:
    products = torch.stack([guide[:, i] * guide[:, j] for i, j in _PAIRS], 1)
    moments = _box(torch.cat([guide, products], 1), ry, rx)
    mean = moments[:, :3]
    xx, xy, xz, yy, yz, zz = (moments[:, 3 + k] - mean[:, i] * mean[:, j] for k, (i, j) in enumerate(_PAIRS))
    xx, yy, zz = xx + eps, yy + eps, zz + eps
    # Inverse of the symmetric 3×3 matrix by cofactors (elementwise; no per-pixel solver call).
    c_xx, c_xy, c_xz = yy * zz - yz * yz, xz * yz - xy * zz, xy * yz - xz * yy
    c_yy, c_yz, c_zz = xx * zz - xz * xz, xy * xz - xx * yz, xx * yy - xy * xy
    determinant = xx * c_xx + xy * c_xy + xz * c_xz
    inverse = torch.stack([c_xx, c_xy, c_xz, c_yy, c_yz, c_zz], 1) / determinant[:, None]
    return _GuideStats(mean, inverse)


def _guided_coefficients(
    guide: torch.Tensor, stats: _GuideStats, target: torch.Tensor, ry: int, rx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour guided filter of ``target [B, 1, h, w]``: window-averaged ``a [B, 3, h, w]`` and ``b [B, 1, h, w]``
    of the local model ``target ≈ a · guide + b``."""
    moments = _box(torch.cat([target, guide * target], 1), ry, rx)
    mean_p = moments[:, :1]
    cov = moments[:, 1:] - stats.mean * mean_p
    s = stats.inverse
    a = torch.stack(
        [
            s[:, 0] * cov[:, 0] + s[:, 1] * cov[:, 1] + s[:, 2] * cov[:, 2],
            s[:, 1] * cov[:, 0] + s[:, 3] * cov[:, 1] + s[:, 4] * cov[:, 2],
            s[:, 2] * cov[:, 0] + s[:, 4] * cov[:, 1] + s[:, 5] * cov[:, 2],
        ],
        1,
    )
    b = mean_p - (a * stats.mean).sum(1, keepdim=True)
    smoothed = _box(torch.cat([a, b], 1), ry, rx)
    return smoothed[:, :3], smoothed[:, 3:]


def _cut(
    estimate: torch.Tensor, goal: torch.Tensor, ry: int, rx: int, thin: float, softness: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where to cut the guided ``estimate [B, 1, h, w]`` and how wide a ramp to give it.

    Returns ``(cut, ramp)``: the sharpened mask is ``clamp(0.5 + (estimate - cut) / ramp, 0, 1)``. Near a
    confident object the cut is 0.5 and the ramp ``4 · softness``; where the estimate is faint, the cut keeps
    the neighbourhood's coverage ``goal`` (searched on the estimate's local range) and the ramp scales with
    that range.
    """
    extremes = _local_max(torch.cat([estimate, -estimate], 1), ry, rx)
    high, low = extremes[:, :1], -extremes[:, 1:]
    spread = high - low
    span = spread.clamp(min=_MIN_RANGE)
    level = (estimate - low) / span  # in [0, 1] over the neighbourhood
    # Coverage left by each of K candidate cuts, all at once (one batched box filter instead of a bisection).
    candidates = _CANDIDATES.to(level)
    covered = _box(torch.sigmoid((level - candidates) * _MATCH_SLOPE), ry, rx)  # [B, K, h, w], decreasing in K
    count = (covered > goal).sum(1, keepdim=True)
    last = candidates.shape[1] - 1
    upper = count.clamp(max=last)
    lower = (count - 1).clamp(min=0)
    c_lower, c_upper = covered.gather(1, lower), covered.gather(1, upper)
    t_lower, t_upper = candidates[0, :, 0, 0][lower], candidates[0, :, 0, 0][upper]
    step = ((c_lower - goal) / (c_lower - c_upper).clamp(min=1e-6)).clamp(0, 1)
    chosen = torch.where(count == 0, 0.0, torch.where(count > last, 1.0, t_lower + step * (t_upper - t_lower)))
    matched = low + span * chosen
    confident = ((high - _PEAK[0]) / _PEAK[1]).clamp(0, 1)
    faint = (1 - confident) * ((spread - _MIN_RANGE) / _MIN_RANGE).clamp(0, 1)
    if thin > 0:
        faint = faint * ((goal - thin) / thin).clamp(0, 1)
    else:
        faint = faint * (goal > 0).to(goal.dtype)
    cut = 0.5 + faint * (matched - 0.5)
    ramp = 4.0 * softness * (1 + faint * (span - 1))
    smoothed = _box(torch.cat([cut, ramp], 1), ry, rx)
    return smoothed[:, :1], smoothed[:, 1:]


class _Cutter:
    """:func:`_cut` for every pass, with the coverage goal computed once. The cut is smooth on the scale of the
    match radius, so it is searched at half the working resolution (when that radius is 2 px or more) and
    upsampled."""

    def __init__(self, coverage: torch.Tensor, match: tuple[int, int], thin: float) -> None:
        self.size = tuple(coverage.shape[-2:])
        self.thin = thin
        goal = _box(coverage, *match)
        self.half = min(match) >= 2
        if self.half:
            self.small = ((self.size[0] + 1) // 2, (self.size[1] + 1) // 2)
            self.match = (max(1, round(match[0] / 2)), max(1, round(match[1] / 2)))
            self.goal = F.adaptive_avg_pool2d(goal, self.small)
        else:
            self.match, self.goal = match, goal

    def __call__(self, estimate: torch.Tensor, softness: float) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.half:
            return _cut(estimate, self.goal, *self.match, self.thin, softness)
        cut, ramp = _cut(F.adaptive_avg_pool2d(estimate, self.small), self.goal, *self.match, self.thin, softness)
        both = F.interpolate(torch.cat([cut, ramp], 1), size=self.size, mode="bilinear", align_corners=False)
        return both[:, :1], both[:, 1:]


# -------------------------------------------------------------------------------------- levels
def _coverage(small: torch.Tensor, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask levels → coverage: ``[B, 1, h, w]`` in [0, 1], and ``[B]`` bool (has the mask any contrast?)."""
    flat = small.flatten(1)
    low_high = torch.quantile(flat, torch.tensor([0.01, 0.99], dtype=flat.dtype, device=flat.device), dim=1)
    low, high = low_high[0], low_high[1]
    contrast = (high - low) >= _MIN_CONTRAST
    low, high = low.clamp(max=0.45), high.clamp(min=0.55)
    coverage = ((flat - low[:, None]) / (high - low)[:, None]).clamp(0, 1)
    if noise > 0:
        background = torch.where(coverage < 0.5, coverage, torch.full_like(coverage, float("nan")))
        median = background.nanmedian(dim=1, keepdim=True).values
        spread = (background - median).abs().nanmedian(dim=1, keepdim=True).values
        floor = torch.nan_to_num(median + noise * spread, nan=0.0).clamp(0, 0.4)
        coverage = ((coverage - floor) / (1 - floor)).clamp(0, 1)
    return coverage.view_as(small), contrast


# ---------------------------------------------------------------------------------- resolution
def _band_rows(per_row_bytes: int, height: int) -> int:
    return max(1, min(height, _BAND_BYTES // max(1, per_row_bytes)))


def _reduce(levels: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Area averages of the guide (levels / 255) and the masks at ``size``: ``[B, 3, h, w]``, ``[B, 1, h, w]``.

    A large batch is reduced in bands of output rows (uint8 → float32 one band at a time), each band over its
    own share of the input rows, so memory stays bounded."""
    batch, _, height, width = levels.shape
    h, w = size
    small = F.adaptive_avg_pool2d(masks[:, None], size)
    step = _band_rows(batch * width * 3 * 4 * max(1, height // h), h)
    if step >= h:
        return F.adaptive_avg_pool2d(levels.float(), size).div_(255.0), small
    guide = torch.empty((batch, 3, h, w), dtype=torch.float32, device=levels.device)
    for first in range(0, h, step):
        stop = min(first + step, h)
        top, bottom = first * height // h, stop * height // h
        guide[:, :, first:stop] = F.adaptive_avg_pool2d(levels[:, :, top:bottom].float(), (stop - first, w))
    return guide.div_(255.0), small


def _bilinear_rows(values: torch.Tensor, rows: torch.Tensor, height: int) -> torch.Tensor:
    """Rows ``rows`` of ``values [B, C, h, W]`` resized bilinearly to ``height`` rows (as ``F.interpolate`` with
    ``align_corners=False`` does), without making the other rows."""
    h = values.shape[-2]
    source = ((rows.to(torch.float64) + 0.5) * (h / height) - 0.5).clamp(min=0)
    first = source.floor().long().clamp(max=h - 1)
    second = (first + 1).clamp(max=h - 1)
    fraction = (source - first).to(values.dtype)[:, None]
    return torch.lerp(values.index_select(-2, first), values.index_select(-2, second), fraction)


def _apply(levels: torch.Tensor, coefficients: torch.Tensor, out: torch.Tensor) -> None:
    """``out = clamp(a · levels/255 + b, 0, 1)`` at full resolution, band by band of rows, with the coefficients
    ``[B, 4, h, w]`` (a: 3, b: 1) upsampled bilinearly."""
    batch, _, height, width = levels.shape
    if coefficients.shape[-2:] == (height, width):
        a, b = coefficients[:, :3], coefficients[:, 3]
        out.copy_(((a * levels.float()).sum(1) / 255.0 + b).clamp_(0, 1))
        return
    columns = F.interpolate(coefficients, size=(coefficients.shape[-2], width), mode="bilinear", align_corners=False)
    step = _band_rows(batch * width * 4 * 16, height)
    for top in range(0, height, step):
        rows = torch.arange(top, min(top + step, height), device=levels.device)
        ab = _bilinear_rows(columns, rows, height)
        rgb = levels[:, :, top : top + step].float()
        value = torch.addcmul(ab[:, 3] * 255.0, ab[:, 0], rgb[:, 0])
        value.addcmul_(ab[:, 1], rgb[:, 1]).addcmul_(ab[:, 2], rgb[:, 2])
        out[:, top : top + step] = value.div_(255.0).clamp_(0, 1)


# ------------------------------------------------------------------------------------------ core
def refine_levels(
    levels: torch.Tensor,
    masks: torch.Tensor,
    options: RefineOptions | None = None,
    grid: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """Refine ``masks`` on the edges of ``levels``: the engine's entry point (no input conversion).

    Args:
        levels: ``[B, 3, H, W]`` uint8 RGB (the engine's 8-bit levels), on any device.
        masks: ``[B, H, W]`` float in [0, 1] at the same size, on the same device.
        options: the settings (default :data:`DEFAULT_REFINE`).
        grid: overrides ``options.grid``: the coarse mask's cells per side (the engine knows its model's grid).

    Returns:
        ``[B, H, W]`` float32 in [0, 1] on the masks' device. A mask without contrast (all 0, all 1, flat) comes
        back unchanged.
    """
    options = options or DEFAULT_REFINE
    if grid is not None:
        options = replace(options, grid=grid)
    if levels.dim() != 4 or levels.shape[1] != 3 or levels.dtype != torch.uint8:
        raise ValueError(f"levels: expected [B, 3, H, W] uint8, got {levels.dtype} {list(levels.shape)}")
    if masks.dim() != 3 or masks.shape[0] != levels.shape[0] or masks.shape[-2:] != levels.shape[-2:]:
        expected = [levels.shape[0], *levels.shape[-2:]]
        raise ValueError(f"masks: expected [B, H, W] = {expected}, got {list(masks.shape)}")
    masks = masks.to(torch.float32)
    levels = levels.to(masks.device)
    batch, _, height, width = levels.shape
    out = torch.empty((batch, height, width), dtype=torch.float32, device=masks.device)
    if batch == 0:
        return out
    with torch.no_grad():  # not inference_mode: callers may modify the result in place
        rows, cols = options.grid
        size = (min(height, rows * options.detail), min(width, cols * options.detail))
        guide, small = _reduce(levels, masks, size)
        coverage, contrast = _coverage(small, options.noise)
        per_row, per_col = size[0] / rows, size[1] / cols  # working pixels per cell

        def radius(cells: float) -> tuple[int, int]:
            return max(1, round(cells * per_row)), max(1, round(cells * per_col))

        cutter = _Cutter(coverage, radius(options.match_radius), options.thin)
        stats: dict[tuple[int, int], _GuideStats] = {}
        current = coverage
        for index, cells in enumerate(options.radii):
            r = radius(cells)
            if r not in stats:
                stats[r] = _guide_stats(guide, *r, options.eps)
            a, b = _guided_coefficients(guide, stats[r], current, *r)
            estimate = ((a * guide).sum(1, keepdim=True) + b).clamp(0, 1)
            last = index == len(options.radii) - 1
            cut, ramp = cutter(estimate, options.softness if last else _INNER_SOFTNESS)
            if not last:  # the next pass starts from a sharpened mask (a logistic step keeps its tails' order)
                current = torch.sigmoid((estimate - cut) * (4.0 / ramp))
        # Fold the cut and ramp into the linear model, so full resolution needs a, b only.
        coefficients = torch.cat([a / ramp, 0.5 + (b - cut) / ramp], 1)
        _apply(levels, coefficients, out)
        if not bool(contrast.all()):
            out = torch.where(contrast[:, None, None], out, masks.clamp(0, 1))
    return out


# ---------------------------------------------------------------------------------------- public
def _as_mask_tensor(masks: Any, name: str = "masks") -> torch.Tensor:
    """Any mask form → ``[B, H, W]`` float32 in [0, 1] (bool as 0/1, uint8 / 255); :class:`InputError` (a
    ``ValueError``) naming ``name`` for wrong types, shapes, dtypes and non-finite values. Shared by
    :func:`refine` and :func:`textmask.matte`."""
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(np.ascontiguousarray(masks))
    if not isinstance(masks, torch.Tensor):
        raise InputError(f"{name}: expected a tensor or array [B, H, W] or [H, W], got {type(masks).__name__}")
    if masks.dim() == 4 and masks.shape[-1] == 1:  # [B, H, W, 1]
        masks = masks[..., 0]
    if masks.dim() == 2:
        masks = masks[None]
    if masks.dim() != 3:
        raise InputError(f"{name}: expected [B, H, W] or [H, W], got shape {list(masks.shape)}")
    if masks.dtype == torch.bool:
        return masks.float()
    if masks.dtype == torch.uint8:
        return masks.float() / 255.0
    if not masks.is_floating_point():
        raise InputError(f"{name}: expected float in [0, 1], uint8 or bool, got {masks.dtype}")
    masks = masks.float()
    if masks.numel() and not bool(torch.isfinite(masks).all()):
        raise InputError(f"{name}: contains NaN or infinite values")
    return masks.clamp(0, 1)


def refine(
    images: Any, masks: Any, options: RefineOptions | None = None, **overrides: Any
) -> torch.Tensor | list[torch.Tensor]:
    """Move the borders of soft masks onto the images' edges, at the images' own resolution.

    Works on any mask: textmask's, SAM's, another node pack's or a hand-painted one (set ``grid`` to its
    coarseness: 22 for CLIPSeg).

    Args:
        images: a batch ``[B, H, W, C]`` (float in [0, 1], uint8, ...), one image, or a list of images: any form
            :func:`textmask.images.as_image_batch` accepts.
        masks: ``[B, H, W]`` (or ``[H, W]``) float in [0, 1], uint8 or bool, at the images' size; a list of
            ``[H, W]`` masks for a list of images. A batch of one image or one mask is broadcast over the other.
        options: a :class:`RefineOptions`; keyword ``overrides`` (``radii=``, ``eps=``, ``grid=``, ...) replace
            its fields.

    Returns:
        float32 in [0, 1] on the masks' device: ``[B, H, W]``; ``[H, W]`` for one image with an ``[H, W]`` mask;
        a list of ``[H, W]`` for a list of masks.
    """
    options = RefineOptions.from_kwargs(options, **overrides)
    batch = as_image_batch(images)
    levels = batch.levels(0, len(batch))
    if isinstance(masks, (list, tuple)):
        if len(masks) != len(levels):
            raise ValueError(f"masks: {len(masks)} masks for {len(levels)} images")
        return [
            _refine_stacked(image[None], _as_mask_tensor(mask, f"masks[{i}]"), options)[0]
            for i, (image, mask) in enumerate(zip(levels, masks))
        ]
    mask_batch = _as_mask_tensor(masks)
    if not levels:
        return mask_batch[:0].float()
    if len({tuple(image.shape) for image in levels}) > 1:
        raise ValueError("images: a mask batch needs images of one size; pass lists of images and masks instead")
    out = _refine_stacked(torch.stack(levels), mask_batch, options)
    squeeze = not batch.batched and getattr(masks, "ndim", 3) == 2
    return out[0] if squeeze else out


def _refine_stacked(levels: torch.Tensor, masks: torch.Tensor, options: RefineOptions) -> torch.Tensor:
    """Broadcast a batch of one over the other, check sizes, refine: ``[B, 3, H, W]`` uint8, ``[B, H, W]``."""
    if tuple(masks.shape[-2:]) != tuple(levels.shape[-2:]):
        raise ValueError(
            f"masks: size {list(masks.shape[-2:])} differs from the images' {list(levels.shape[-2:])}; "
            "resize the masks to the images first"
        )
    count = max(levels.shape[0], masks.shape[0])
    if levels.shape[0] != masks.shape[0] and 1 not in (levels.shape[0], masks.shape[0]):
        raise ValueError(f"masks: batch of {masks.shape[0]} does not match images batch of {levels.shape[0]}")
    levels = levels.to(masks.device).expand(count, -1, -1, -1)
    return refine_levels(levels, masks.expand(count, -1, -1), options)
