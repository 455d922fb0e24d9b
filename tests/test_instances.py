"""textmask.instances: connected objects with exact boxes, order, speck filter, scores, empty masks, and the box
conversions for ComfyUI core, KJNodes, SAM 2 / Florence-2 and Impact Pack."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textmask.components import (
    SEG,
    Instances,
    instances,
    to_bounding_boxes,
    to_kj_bboxes,
    to_segs,
    to_xyxy_lists,
)


def _blobs() -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """``[2, 60, 80]`` masks and the exclusive boxes of image 0's blobs, largest first."""
    masks = torch.zeros(2, 60, 80)
    masks[0, 30:50, 10:70] = 0.8  # 20 × 60 = 1200 px
    masks[0, 5:15, 40:52] = 0.6  # 10 × 12 = 120 px
    masks[0, 2:5, 2:5] = 0.9  # 9 px: a speck
    ring = torch.zeros(60, 80)  # a hollow square: one component, box of its outline
    ring[20:29, 70:79] = 1.0
    ring[22:27, 72:77] = 0.0
    masks[0] = torch.maximum(masks[0], ring * 0.7)  # 81 - 25 = 56 px
    masks[0, 55, 0] = 0.3  # below the threshold: nothing
    masks[1, 10:20, 10:20] = 0.75
    masks[1, 20, 20] = 0.75  # touches the square at a corner: 8-connected, one object
    return masks, [(10, 30, 70, 50), (40, 5, 52, 15), (70, 20, 79, 29), (2, 2, 5, 5)]


def test_blobs_give_exact_boxes_in_area_order() -> None:
    masks, boxes = _blobs()
    found = instances(masks, min_fraction=0)
    assert isinstance(found, list) and len(found) == 2
    first = found[0]
    assert len(first) == 4
    assert first.boxes.dtype == torch.int64 and first.boxes.tolist() == [list(b) for b in boxes]
    assert first.areas.tolist() == [1200, 120, 56, 9]
    for k, (x0, y0, x1, y1) in enumerate(boxes):  # exclusive x1/y1: the box slices the object exactly
        inside = first.masks[k, y0:y1, x0:x1]
        assert float(first.masks[k].sum()) == pytest.approx(float(inside.sum()))
        assert bool((first.masks[k, y0] > 0).any()) and bool((first.masks[k, y1 - 1] > 0).any())
        assert bool((first.masks[k, :, x0] > 0).any()) and bool((first.masks[k, :, x1 - 1] > 0).any())
    assert found[1].boxes.tolist() == [[10, 10, 21, 21]] and found[1].areas.tolist() == [101]


def test_scores_are_mean_probabilities_and_masks_soft_or_binary() -> None:
    masks = torch.zeros(1, 40, 40)
    masks[0, 10:20, 10:20] = torch.linspace(0.55, 0.95, 100).view(10, 10)
    found = instances(masks, min_fraction=0)[0]
    assert float(found.scores[0]) == pytest.approx(0.75, abs=1e-6)
    assert torch.equal(found.masks[0], masks[0])  # soft values kept inside, 0 outside
    assert found.masks.dtype == torch.float32
    binary = instances(masks, min_fraction=0, binary=True)[0]
    assert set(binary.masks.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(binary.labels, (masks[0] > 0.5).long())


def test_min_area_and_relative_default_filter_specks() -> None:
    masks, _ = _blobs()
    assert instances(masks, min_area=100)[0].areas.tolist() == [1200, 120]
    assert instances(masks, min_area=10, min_fraction=0)[0].areas.tolist() == [1200, 120, 56]
    # The default drops objects under 0.01 % of the image: 0.48 px here, so only min_area=0 specks of 1 px remain.
    assert instances(masks)[0].areas.tolist() == [1200, 120, 56, 9]
    assert instances(masks, min_fraction=0.01)[0].areas.tolist() == [1200, 120, 56]  # 48 px limit
    assert len(instances(masks, min_fraction=0, max_instances=2)[0]) == 2
    labels = instances(masks, min_area=100)[0].labels
    assert int(labels[3, 3]) == 0 and int(labels[40, 40]) == 1 and int(labels[10, 45]) == 2  # dropped → 0


def test_empty_mask_gives_zero_instances() -> None:
    for empty in (torch.zeros(1, 32, 48), torch.full((1, 32, 48), 0.5)):  # nothing strictly above 0.5
        found = instances(empty)[0]
        assert len(found) == 0
        assert found.masks.shape == (0, 32, 48) and found.boxes.shape == (0, 4) and found.boxes.dtype == torch.int64
        assert found.scores.shape == (0,) and found.areas.shape == (0,)
        assert to_bounding_boxes(found) == [[]] and to_kj_bboxes(found) == [] and to_segs(found) == ((32, 48), [])
    assert len(instances(torch.zeros(0, 8, 8))) == 0


def test_single_mask_uint8_numpy_and_threshold() -> None:
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[2:6, 3:9] = 200
    found = instances(mask, threshold=0.7, min_fraction=0)
    assert isinstance(found, Instances) and found.boxes.tolist() == [[3, 2, 9, 6]]
    assert len(instances(mask, threshold=0.8, min_fraction=0)) == 0
    with pytest.raises(ValueError, match="threshold"):
        instances(mask, threshold=1.0)
    with pytest.raises(ValueError, match="masks"):
        instances(torch.zeros(2, 3, 4, 5))


def test_components_never_cross_images_and_ties_keep_raster_order() -> None:
    masks = torch.zeros(3, 10, 10)
    masks[:, 0:3, 0:3] = 1.0  # the same blob at the same place in every image: still one object each
    masks[1, 6:9, 6:9] = 1.0  # a tie in area, later in raster order
    found = instances(masks, min_fraction=0)
    assert [len(f) for f in found] == [1, 2, 1]
    assert found[1].boxes.tolist() == [[0, 0, 3, 3], [6, 6, 9, 9]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_results_stay_on_the_device() -> None:
    masks, _ = _blobs()
    found = instances(masks.cuda(), min_fraction=0)[0]
    assert found.masks.is_cuda and found.boxes.is_cuda
    assert found.boxes.cpu().tolist() == instances(masks, min_fraction=0)[0].boxes.tolist()


def test_box_conversions() -> None:
    masks, _ = _blobs()
    found = instances(masks, min_area=100)
    core = to_bounding_boxes(found, label="cat")
    assert core[0][0] == {"x": 10, "y": 30, "width": 60, "height": 20, "score": pytest.approx(0.8), "label": "cat"}
    assert [len(frame) for frame in core] == [2, 1]
    assert to_kj_bboxes(found) == [(10, 30, 60, 20), (40, 5, 12, 10), (10, 10, 11, 11)]
    assert to_xyxy_lists(found[0]) == [[[10.0, 30.0, 70.0, 50.0], [40.0, 5.0, 52.0, 15.0]]]

    shape, segs = to_segs(found[0], label="cat", crop_factor=1.5)
    assert shape == (60, 80) and len(segs) == 2 and isinstance(segs[0], SEG)
    seg = segs[1]  # box (40, 5, 52, 15): 12 × 10 → crop 18 × 15 around (46, 10), shifted to fit
    assert seg.bbox == (40, 5, 52, 15) and seg.label == "cat" and seg.cropped_image is None
    assert seg.control_net_wrapper is None and seg.confidence == pytest.approx(0.6)
    cx0, cy0, cx1, cy1 = seg.crop_region
    assert (cx0, cx1) == (37, 55) and (cy0, cy1) == (2, 17)
    assert seg.cropped_mask.dtype == np.float32 and seg.cropped_mask.shape == (cy1 - cy0, cx1 - cx0)
    assert float(seg.cropped_mask.sum()) == pytest.approx(float(found[0].masks[1].sum()))
    # A crop larger than the image is clamped to it.
    _, big = to_segs(found[0], crop_factor=10)
    assert big[0].crop_region == [0, 0, 80, 60]
