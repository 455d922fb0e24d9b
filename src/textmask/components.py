"""Instances: split thresholded masks into connected objects, with boxes, scores and areas.

:func:`instances` labels the 8-connected components of ``mask > threshold`` for a whole batch in one call
(``scipy.ndimage.label`` with a structure that never links two images: exact, and 15-20× faster on a CPU than
``kornia.contrib.connected_components_union_find``; the labelling runs on the CPU, everything else stays on the
masks' device), drops specks, and orders the objects by area, largest first.

Conventions, for every function here:

* **Boxes** are ``(x0, y0, x1, y1)`` int64 pixels with ``x1``/``y1`` **exclusive**: the object is
  ``mask[y0:y1, x0:x1]``, ``width = x1 - x0``. This is Python slicing, ComfyUI's ``width = x1 - x0`` and
  SAM's continuous XYXY (pixel edges), so no ±1 is needed for any of them.
* **Instance masks** keep the soft values of the input inside each component and are 0 outside it
  (``binary=True`` gives 0/1). The soft fringe below the threshold lies outside every component and is dropped.
* **Scores** are the mean input probability over the component's pixels; **areas** its pixel count.

The ``to_*`` helpers are pure functions that turn :class:`Instances` into what popular ComfyUI nodes take
(see ``docs/quality.md`` for the table): ComfyUI core's ``BOUNDING_BOX`` (SAM3 Detect, RT-DETR, Draw BBoxes),
KJNodes' ``BBOX`` (x, y, width, height), the XYXY lists of kijai's SAM 2 nodes and Florence-2's data, and
Impact Pack's ``SEGS``.
"""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "SEG",
    "Instances",
    "describe_instances",
    "instances",
    "to_bounding_boxes",
    "to_kj_bboxes",
    "to_kj_frame_bboxes",
    "to_segs",
    "to_xyxy_lists",
]

DEFAULT_MIN_FRACTION = 1e-4  # specks under 0.01 % of the image (105 px at 1024²) are dropped by default

# Impact Pack's SEG, field for field (modules/impact/core.py); other packs define the same namedtuple to interoperate.
SEG = namedtuple(
    "SEG",
    ["cropped_image", "cropped_mask", "confidence", "crop_region", "bbox", "label", "control_net_wrapper"],
    defaults=[None],
)


@dataclass
class Instances:
    """The objects found in one mask, largest first.

    Attributes:
        masks: ``[K, H, W]`` float32 in [0, 1]: the input's values inside each object, 0 elsewhere.
        boxes: ``[K, 4]`` int64 ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive.
        scores: ``[K]`` float32: mean input probability inside each object.
        areas: ``[K]`` int64: pixels in each object.
        labels: ``[H, W]`` int64: ``k + 1`` on the pixels of object ``k``, 0 elsewhere (dropped specks too).
        ids: ``[K]`` int64: each object's id. :func:`textmask.track` gives ids that name the same object in every
            frame of a video; otherwise (the default) they are ``1..K``, the objects' order in this mask.
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    areas: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.ids is None:
            self.ids = torch.arange(1, int(self.boxes.shape[0]) + 1, dtype=torch.int64, device=self.boxes.device)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the mask these objects come from."""
        return int(self.labels.shape[-2]), int(self.labels.shape[-1])


def _min_pixels(min_area: int, min_fraction: float, height: int, width: int) -> int:
    return max(int(min_area), math.ceil(float(min_fraction) * height * width), 1)


def instances(
    masks: torch.Tensor,
    threshold: float = 0.5,
    min_area: int = 0,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    max_instances: int | None = None,
    binary: bool = False,
) -> list[Instances] | Instances:
    """Split each mask into its connected objects (8-connected pixels above ``threshold``).

    Args:
        masks: ``[B, H, W]`` (or ``[H, W]``) float in [0, 1] (uint8 is read as /255, bool as 0/1), any device.
        threshold: a pixel belongs to an object where ``mask > threshold``; in [0, 1).
        min_area: objects with fewer pixels are dropped.
        min_fraction: objects smaller than this fraction of the image are dropped too (the larger of the two
            limits applies; 0 and 0 keep single pixels).
        max_instances: keep at most this many objects per image (the largest); None keeps all.
        binary: instance masks of 0/1 instead of the input's soft values.

    Returns:
        one :class:`Instances` per image (a list for ``[B, H, W]``, a single one for ``[H, W]``), on the masks'
        device. An empty mask gives zero objects (``K = 0`` tensors of the shapes above), never an error.
    """
    from scipy import ndimage

    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold: must be in [0, 1), got {threshold}")
    if int(min_area) < 0 or not 0.0 <= float(min_fraction) <= 1.0:
        raise ValueError(f"min_area / min_fraction: must be ≥ 0 pixels and in [0, 1], got {min_area}, {min_fraction}")
    if max_instances is not None and int(max_instances) < 0:
        raise ValueError(f"max_instances: must be ≥ 0 or None, got {max_instances}")
    if not isinstance(masks, torch.Tensor):
        masks = torch.as_tensor(np.asarray(masks))
    single = masks.dim() == 2
    if single:
        masks = masks[None]
    if masks.dim() != 3:
        raise ValueError(f"masks: expected [B, H, W] or [H, W], got shape {list(masks.shape)}")
    if masks.dtype == torch.uint8:
        masks = masks.float() / 255.0
    masks = masks.float()
    batch, height, width = masks.shape
    device = masks.device
    if batch == 0:
        return []

    # One labelling call for the whole batch: the structure links the 8 neighbours within an image only.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    foreground = (masks > threshold).cpu().numpy()
    labels_np, count = ndimage.label(foreground, structure=structure)
    labels = torch.from_numpy(labels_np.astype(np.int64, copy=False)).to(device)  # 0: none; 1..count, batch-wide

    # Per-label statistics, batched: areas, sums of probabilities, extreme coordinates.
    flat = labels.reshape(-1)
    areas = torch.bincount(flat, minlength=count + 1)
    sums = torch.bincount(flat, weights=masks.reshape(-1).double(), minlength=count + 1)
    pixel = torch.arange(height * width, device=device, dtype=torch.int32)
    xs = (pixel % width).repeat(batch)
    ys = (pixel // width).repeat(batch)
    big = max(height, width) + 1
    x0 = torch.full((count + 1,), big, dtype=torch.int32, device=device).scatter_reduce(0, flat, xs, "amin")
    y0 = torch.full((count + 1,), big, dtype=torch.int32, device=device).scatter_reduce(0, flat, ys, "amin")
    x1 = torch.full((count + 1,), -1, dtype=torch.int32, device=device).scatter_reduce(0, flat, xs, "amax") + 1
    y1 = torch.full((count + 1,), -1, dtype=torch.int32, device=device).scatter_reduce(0, flat, ys, "amax") + 1
    # scipy numbers components in raster order over the batch, so image b holds one run of labels.
    last_label = labels.reshape(batch, -1).amax(1).cummax(0).values
    image_of = torch.searchsorted(last_label, torch.arange(count + 1, device=device))
    boxes_all = torch.stack([x0, y0, x1, y1], 1)
    scores_all = (sums / areas.clamp(min=1)).float()

    smallest = _min_pixels(min_area, min_fraction, height, width)
    keep_label = areas >= smallest
    keep_label[0] = False
    results = []
    for b in range(batch):
        ids = torch.nonzero(keep_label & (image_of == b)).flatten()
        order = torch.argsort(areas[ids], descending=True, stable=True)  # ties: raster order of first pixel
        ids = ids[order]
        if max_instances is not None:
            ids = ids[: int(max_instances)]
        # Renumber: label ids[k] → k + 1, everything else → 0.
        lookup = torch.zeros(count + 1, dtype=torch.int64, device=device)
        lookup[ids] = torch.arange(1, ids.numel() + 1, device=device)
        own = lookup[labels[b]]
        members = own[None] == torch.arange(1, ids.numel() + 1, device=device).view(-1, 1, 1)
        values = members.float() if binary else torch.where(members, masks[b], 0.0)
        results.append(
            Instances(
                masks=values.float(),
                boxes=boxes_all[ids].to(torch.int64),
                scores=scores_all[ids],
                areas=areas[ids].to(torch.int64),
                labels=own,
            )
        )
    return results[0] if single else results


# -------------------------------------------------------------------------------- box conversions
def describe_instances(found: Instances) -> list[dict[str, Any]]:
    """The objects of one mask as JSON-ready dicts, largest first: ``{"index", "box": [x0, y0, x1, y1], "score",
    "area"}`` (boxes in pixels, ``x1``/``y1`` exclusive; ``index`` from 1)."""
    return [
        {"index": index, "box": [int(v) for v in box], "score": round(float(score), 6), "area": int(area)}
        for index, (box, score, area) in enumerate(
            zip(found.boxes.tolist(), found.scores.tolist(), found.areas.tolist()), start=1
        )
    ]


def _as_list(found: Instances | Sequence[Instances]) -> list[Instances]:
    return [found] if isinstance(found, Instances) else list(found)


def to_bounding_boxes(found: Instances | Sequence[Instances], label: str | None = None) -> list[list[dict[str, Any]]]:
    """ComfyUI core's ``BOUNDING_BOX`` (``io.BoundingBox``: SAM3 Detect's ``bboxes`` input and output, RT-DETR,
    Draw BBoxes): per image, a list of ``{"x", "y", "width", "height", "score"[, "label"]}`` in pixels."""
    out = []
    for item in _as_list(found):
        frame = []
        for (x0, y0, x1, y1), score in zip(item.boxes.tolist(), item.scores.tolist()):
            entry: dict[str, Any] = {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0, "score": score}
            if label is not None:
                entry["label"] = label
            frame.append(entry)
        out.append(frame)
    return out


def to_kj_bboxes(found: Instances | Sequence[Instances]) -> list[tuple[int, int, int, int]]:
    """Every object's box as KJNodes' ``BBOX`` ``(x, y, width, height)`` int tuples, one flat list over all images
    in order: one box per *object*, so it pairs with the objects' masks (``[N, H, W]``), not with the frames.
    For KJNodes' nodes that pair boxes with an image batch, use :func:`to_kj_frame_bboxes`."""
    return [(x0, y0, x1 - x0, y1 - y0) for item in _as_list(found) for x0, y0, x1, y1 in item.boxes.tolist()]


EMPTY_KJ_BBOX = (0, 0, 0, 0)


def to_kj_frame_bboxes(found: Instances | Sequence[Instances]) -> list[tuple[int, int, int, int]]:
    """KJNodes' ``BBOX`` for an image batch: exactly one ``(x, y, width, height)`` per frame, in frame order.

    KJNodes' BBOX consumers (BboxVisualize, BatchCropFromMask's companions, BboxToInt with ``index`` = frame)
    zip the image batch with the box list, one box per frame. Each frame gets its largest object's box (the
    objects are ordered largest first); a frame without an object gets :data:`EMPTY_KJ_BBOX` ``(0, 0, 0, 0)``,
    which BboxVisualize draws as nothing and BboxToInt reads as zeros, so the boxes after it stay on their
    frames and nothing downstream fails on an empty list."""
    frames = []
    for item in _as_list(found):
        if len(item):
            x0, y0, x1, y1 = item.boxes[0].tolist()
            frames.append((x0, y0, x1 - x0, y1 - y0))
        else:
            frames.append(EMPTY_KJ_BBOX)
    return frames


def to_xyxy_lists(found: Instances | Sequence[Instances]) -> list[list[list[float]]]:
    """Per image, a list of ``[x0, y0, x1, y1]`` float pixels: kijai's SAM 2 ``bboxes`` (``BBOX``, as from
    Florence2toCoordinates) and Florence-2's ``data`` JSON. Exclusive ``x1``/``y1`` = SAM's pixel-edge XYXY."""
    return [[[float(v) for v in box] for box in item.boxes.tolist()] for item in _as_list(found)]


def _crop_span(limit: int, center: float, size: float) -> tuple[int, int]:
    """A span ``size`` long centred on ``center``, shifted (not shrunk) to fit in ``[0, limit)`` when it can."""
    size = min(float(limit), size)
    start = int(center - size / 2)
    start = min(max(start, 0), max(0, limit - math.ceil(size)))
    return start, min(limit, start + math.ceil(size))


def to_segs(
    found: Instances,
    label: str = "textmask",
    crop_factor: float = 3.0,
    crop_min_size: int | None = None,
) -> tuple[tuple[int, int], list[SEG]]:
    """Impact Pack's ``SEGS`` for one image: ``((H, W), [SEG, ...])``, as its MASK to SEGS node builds them.

    Each SEG has ``cropped_image=None``, ``cropped_mask`` float32 numpy ``[crop_h, crop_w]`` (the instance
    mask over the crop region), ``confidence`` (the score), ``crop_region`` ``[x0, y0, x1, y1]`` (the box grown
    ``crop_factor`` times around its centre, at least ``crop_min_size``, kept inside the image), ``bbox``
    ``(x0, y0, x1, y1)`` (exclusive), ``label`` and ``control_net_wrapper=None``.
    """
    height, width = found.size
    segs = []
    masks = found.masks.detach().cpu().numpy().astype(np.float32, copy=False)
    for k, ((x0, y0, x1, y1), score) in enumerate(zip(found.boxes.tolist(), found.scores.tolist())):
        crop_w, crop_h = (x1 - x0) * crop_factor, (y1 - y0) * crop_factor
        if crop_min_size is not None:
            crop_w, crop_h = max(crop_w, crop_min_size), max(crop_h, crop_min_size)
        cx0, cx1 = _crop_span(width, x0 + (x1 - x0) / 2, crop_w)
        cy0, cy1 = _crop_span(height, y0 + (y1 - y0) / 2, crop_h)
        cropped = np.ascontiguousarray(masks[k, cy0:cy1, cx0:cx1])
        segs.append(SEG(None, cropped, float(score), [cx0, cy0, cx1, cy1], (x0, y0, x1, y1), label, None))
    return (height, width), segs
