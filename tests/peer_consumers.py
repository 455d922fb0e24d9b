"""What the nodes of other packs do with textmask's box and SEGS outputs, restated for tests (not their code).

Each function states the behaviour of a consumer as read in its source (see docs/comfyui.md, "Boxes and
frames"), so unit tests can pin textmask's output conventions without ComfyUI or the packs installed; the
real packs are exercised by tests/test_comfy_integration.py when ``COMFYUI_EXTRA_PACKS`` names them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def kj_normalize(bboxes: Any) -> list[tuple[int, ...]]:
    """KJNodes' BBOX reader (``utility.normalize_bboxes``, format xywh): one 4-tuple → a list of one; a dict
    ``{x, y, width, height}`` → its tuple; nested lists are flattened, frame boundaries lost; an empty entry
    (``[]``) is refused with ``ValueError("Invalid bbox: [])``."""
    if isinstance(bboxes, dict) or (
        isinstance(bboxes, (list, tuple)) and len(bboxes) == 4 and all(isinstance(v, (int, float)) for v in bboxes)
    ):
        bboxes = [bboxes]
    out: list[tuple[int, ...]] = []
    for bbox in bboxes:
        if isinstance(bbox, (list, tuple)) and bbox and not all(isinstance(v, (int, float)) for v in bbox):
            out.extend(kj_normalize(bbox))
        elif isinstance(bbox, dict):
            out.append((int(bbox["x"]), int(bbox["y"]), int(bbox["width"]), int(bbox["height"])))
        elif isinstance(bbox, (list, tuple)) and len(bbox) >= 4:
            out.append(tuple(int(v) for v in bbox[:4]))
        else:
            raise ValueError(f"Invalid bbox: {bbox}")
    return out


def kj_bbox_visualize(images: torch.Tensor, bboxes: Any, line_width: int = 1) -> torch.Tensor:
    """KJNodes' BboxVisualize (xywh): zips the frames with the flattened boxes (the shorter one wins), draws each
    frame's box outline in red (1, 0, 0), and concatenates the drawn frames (``torch.cat`` of none fails)."""
    drawn = []
    for image, (x, y, w, h) in zip(images, kj_normalize(bboxes)):
        frame = image.permute(2, 0, 1).clone()
        red = torch.tensor([1.0, 0.0, 0.0])[:, None]
        for lw in range(line_width):
            if y + lw < frame.shape[1]:
                frame[:, y + lw, x : x + w] = red
            if y + h - lw < frame.shape[1]:
                frame[:, y + h - lw, x : x + w] = red
            if x + lw < frame.shape[2]:
                frame[:, y : y + h, x + lw] = red
            if x + w - lw < frame.shape[2]:
                frame[:, y : y + h, x + w - lw] = red
        drawn.append(frame.permute(1, 2, 0)[None])
    return torch.cat(drawn)


def kj_bbox_to_int(bboxes: Any, index: int) -> tuple[int, int, int, int, int, int]:
    """KJNodes' BboxToInt: the ``index``-th box of the flattened list as x, y, w, h and its centre."""
    x, y, w, h = kj_normalize(bboxes)[index]
    return x, y, w, h, int(x + w / 2), int(y + h / 2)


def impact_combined_mask(segs: Any) -> torch.Tensor:
    """Impact's SegsToCombinedMask: ``[1, H, W]``, every SEG's cropped mask (×255 → uint8) OR-ed in at its crop
    region."""
    (height, width), items = segs
    mask = np.zeros((height, width), dtype=np.uint8)
    for seg in items:
        x0, y0, x1, y1 = seg.crop_region
        mask[y0:y1, x0:x1] |= (seg.cropped_mask * 255).astype(np.uint8)
    return torch.from_numpy(mask.astype(np.float32) / 255.0)[None]


def impact_mask_list(segs: Any) -> list[torch.Tensor]:
    """Impact's SEGSToMaskList: one full-size ``[1, H, W]`` mask per SEG; one empty mask for an empty SEGS."""
    (height, width), items = segs
    masks = []
    for seg in items:
        mask = torch.zeros((1, height, width), dtype=torch.uint8)
        x0, y0, x1, y1 = seg.crop_region
        mask[:, y0:y1, x0:x1] |= (torch.from_numpy(seg.cropped_mask) * 255).to(torch.uint8)[None]
        masks.append(mask / 255.0)
    return masks or [torch.zeros((1, height, width))]
