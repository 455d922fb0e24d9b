"""Detail mode: a global 352-px pass plus overlapping tiles seen at a higher scale, blended without seams.

CLIPSeg sees any image as 352×352 pixels (22×22 patches), so on a large image small objects and thin parts are
a patch or two wide. Detail mode also looks at overlapping crops (tiles), each resized to 352 px: every tile
sees its part of the image at ``grid`` times the global scale. The engine runs the global pass and all tiles of
all images through the vision tower in one batch and decodes every tile with the same prompt embeddings; this
module holds the geometry and the arithmetic:

* :func:`tile_grid` chooses the tiles (``auto``: from the image size) and :func:`tile_boxes` places them with
  a quarter of overlap, covering the whole image;
* :func:`blend_tiles` averages the tiles' maps with smooth window weights (positive everywhere, largest at a
  tile's centre), so there is no seam: tiles that agree give their common value (to rounding);
* :func:`gate` multiplies the blend by the global map's envelope (the global map grown by half a patch, full
  trust above 0.5), so a tile cannot invent an object that the whole image lacks.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .postprocess import grow

AUTO_TILE_SIDE = 512  # auto: about one tile per 512 image pixels along each side, 2 to 4 tiles per side
OVERLAP = 0.25
GATE_LEVEL = 0.5  # the global map must reach this (after growing) for a tile's value to pass in full
_WINDOW_FLOOR = 0.05  # the smallest blend weight, at a tile's edge (positive: every covered pixel is weighed)


def tile_grid(height: int, width: int, detail: str | tuple[int, int]) -> tuple[int, int]:
    """``(rows, columns)`` of tiles for an image: the setting itself, or for ``"auto"`` about one tile per 512
    pixels along each side (2 to 4 per side)."""
    if detail == "off":
        return 1, 1
    if detail == "auto":

        def per_side(side: int) -> int:
            return min(4, max(2, math.ceil(side / AUTO_TILE_SIDE)))

        return per_side(height), per_side(width)
    return detail  # type: ignore[return-value]


def _starts(size: int, count: int) -> tuple[int, list[int]]:
    """Tile length and start positions of ``count`` tiles overlapping by :data:`OVERLAP` over ``size`` pixels."""
    if count == 1:
        return size, [0]
    length = min(size, math.ceil(size / (count * (1 - OVERLAP) + OVERLAP)))
    stride = (size - length) / (count - 1)
    return length, [round(index * stride) for index in range(count)]


def tile_boxes(height: int, width: int, grid: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """The tiles of a ``height × width`` image as ``(top, bottom, left, right)`` boxes (bottom/right exclusive),
    row by row. They overlap by a quarter of a tile and cover every pixel; the last ones end at the border."""
    tile_h, tops = _starts(height, grid[0])
    tile_w, lefts = _starts(width, grid[1])
    return [(top, top + tile_h, left, left + tile_w) for top in tops for left in lefts]


def scale_box(box: tuple[int, int, int, int], size: tuple[int, int], to: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box in a ``size`` image → the same box in a ``to`` image (rounded; at least one pixel)."""
    top, bottom, left, right = box
    sy, sx = to[0] / size[0], to[1] / size[1]
    y0, x0 = round(top * sy), round(left * sx)
    return y0, max(y0 + 1, round(bottom * sy)), x0, max(x0 + 1, round(right * sx))


def _window(length: int, device: Any) -> torch.Tensor:
    """``[length]`` blend weights: a raised cosine, :data:`_WINDOW_FLOOR` at the tile's edges, 1 at its centre."""
    position = (torch.arange(length, device=device, dtype=torch.float32) + 0.5) / length
    return _WINDOW_FLOOR + (1 - _WINDOW_FLOOR) * torch.sin(math.pi * position) ** 2


def blend_tiles(
    maps: list[torch.Tensor], boxes: list[tuple[int, int, int, int]], size: tuple[int, int]
) -> torch.Tensor:
    """Weighted average of overlapping tile maps into one map.

    Args:
        maps: per tile ``[P, h, w]`` in [0, 1], each the size of its box.
        boxes: ``(top, bottom, left, right)`` per tile in the output's pixels, together covering it.
        size: the output's ``(height, width)``.

    Returns:
        ``[P, height, width]``: at each pixel the tiles covering it averaged with separable raised-cosine weights.
    """
    first = maps[0]
    total = torch.zeros((first.shape[0], *size), dtype=torch.float32, device=first.device)
    weights = torch.zeros(size, dtype=torch.float32, device=first.device)
    for values, (top, bottom, left, right) in zip(maps, boxes):
        weight = _window(bottom - top, first.device)[:, None] * _window(right - left, first.device)[None, :]
        total[:, top:bottom, left:right] += values * weight
        weights[top:bottom, left:right] += weight
    return total / weights


def gate(tiled: torch.Tensor, global_map: torch.Tensor) -> torch.Tensor:
    """The tiles' map, kept where the global pass sees the object: ``tiled · clamp(grow(global, r) / 0.5, 0, 1)``,
    ``r`` half a CLIPSeg patch (1/44 of the image's larger side).

    Args:
        tiled: ``[..., H, W]`` from :func:`blend_tiles`.
        global_map: ``[..., H, W]`` the global pass's probabilities.
    """
    radius = max(1, round(max(global_map.shape[-2:]) / 44))
    envelope = (grow(global_map, radius) / GATE_LEVEL).clamp(0.0, 1.0)
    return tiled * envelope
