"""Post-processing functions against small hand-computed tensors."""

from __future__ import annotations

import pytest
import torch

from textmask import postprocess as pp


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_minmax_stretches_each_map_and_keeps_flat_maps() -> None:
    maps = torch.stack([t([[0.2, 0.4], [0.6, 0.3]]), t([[0.5, 0.5], [0.5, 0.5]])])
    out = pp.normalize_minmax(maps)
    torch.testing.assert_close(out[0], t([[0.0, 0.5], [1.0, 0.25]]))
    torch.testing.assert_close(out[1], maps[1])  # flat: nothing to stretch, left as is


def test_seed_normalization_is_the_seed_formula() -> None:
    probs = t([[0.2, 0.4], [0.6, 0.3]])
    # (p - min) / max, as SaltCLIPSegMasking computes it: the maximum maps to 1 - min/max, not 1.
    torch.testing.assert_close(pp.normalize_seed(probs), t([[0.0, 0.2 / 0.6], [0.4 / 0.6, 0.1 / 0.6]]))
    assert torch.equal(pp.normalize_seed(torch.zeros(2, 2)), torch.zeros(2, 2))


def test_combine_union_intersection_and_subtract() -> None:
    maps = torch.stack([t([[0.1, 0.9]]), t([[0.5, 0.3]])])[None]  # [B=1, P=2, 1, 2]
    torch.testing.assert_close(pp.combine(maps, "union", dim=1), t([[0.5, 0.9]])[None])
    torch.testing.assert_close(pp.combine(maps, "intersection", dim=1), t([[0.1, 0.3]])[None])
    torch.testing.assert_close(pp.subtract(t([[0.5, 0.9]]), t([[0.7, 0.2]])), t([[0.0, 0.7]]))
    with pytest.raises(ValueError, match="combine"):
        pp.combine(maps, "xor")


def test_threshold_hard_and_soft() -> None:
    mask = t([[0.1, 0.4, 0.5, 0.6, 0.9]])
    assert torch.equal(pp.threshold(mask, 0.5), t([[0, 0, 0, 1, 1]]))
    torch.testing.assert_close(pp.threshold(mask, 0.5, softness=0.4), t([[0.0, 0.25, 0.5, 0.75, 1.0]]))


def test_grow_and_shrink_by_pixels() -> None:
    mask = torch.zeros(7, 7)
    mask[3, 3] = 1.0
    grown = pp.grow(mask, 2)
    expected = torch.zeros(7, 7)
    expected[1:6, 1:6] = 1.0
    assert torch.equal(grown, expected)
    assert torch.equal(pp.grow(grown, -2), mask)
    # Shrinking does not eat a mask that touches the image border.
    full = torch.ones(4, 4)
    assert torch.equal(pp.grow(full, -1), full)
    assert pp.grow(mask, 0) is mask


@pytest.mark.parametrize("pixels", [1, 2, 3, 7, 8, 23, 40, -1, -5, -23, 200])
def test_grow_equals_square_max_pooling(pixels: int) -> None:
    """The doubling-window max gives max_pool2d's values exactly (dilation; erosion of the complement)."""
    masks = torch.rand(3, 61, 47, generator=torch.Generator().manual_seed(pixels % 97))
    radius = min(abs(pixels), 61)
    size = 2 * radius + 1
    flat = masks[:, None]
    if pixels > 0:
        expected = torch.nn.functional.max_pool2d(flat, size, stride=1, padding=radius)[:, 0]
    else:
        padded = torch.nn.functional.pad(1.0 - flat, (radius,) * 4, value=0.0)
        expected = 1.0 - torch.nn.functional.max_pool2d(padded, size, stride=1)[:, 0]
    assert torch.equal(pp.grow(masks, pixels), expected)


def test_window_max_is_a_sliding_maximum() -> None:
    values = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0])
    for size in range(1, 11):
        expected = torch.stack([values[i : i + size].max() for i in range(len(values) - size + 1)])
        assert torch.equal(pp.window_max(values, size, 0), expected), size


def test_gaussian_blur_preserves_mass_and_shape() -> None:
    mask = torch.zeros(2, 21, 21)
    mask[:, 10, 10] = 1.0
    blurred = pp.gaussian_blur(mask, 2.0)
    assert blurred.shape == mask.shape
    torch.testing.assert_close(blurred.sum(dim=(-2, -1)), torch.ones(2), atol=1e-5, rtol=0)
    assert blurred[0, 10, 10] < 1.0 and blurred[0, 10, 12] > 0.0
    assert torch.allclose(blurred[0], blurred[0].T)  # isotropic
    kernel = pp.gaussian_kernel1d(1.0)
    torch.testing.assert_close(kernel, kernel.flip(0))
    assert kernel.numel() == 7 and abs(float(kernel.sum()) - 1.0) < 1e-6


def test_feather_only_fades_outward() -> None:
    mask = torch.zeros(1, 15, 15)
    mask[:, 5:10, 5:10] = 1.0
    out = pp.feather(mask, 4)
    assert torch.equal(out[:, 5:10, 5:10], mask[:, 5:10, 5:10])  # inside untouched
    assert 0.0 < float(out[0, 7, 11]) < 1.0  # ramp just outside
    assert float(out[0, 7, 11]) > float(out[0, 7, 13])  # decreasing away from the edge


def test_finish_masks_applies_the_documented_order() -> None:
    positive = torch.stack([t([[0.2, 0.8, 0.6]]), t([[0.7, 0.1, 0.3]])])[None]  # [1, 2, 1, 3]
    negative = t([[0.0, 0.0, 0.5]])[None, None]  # [1, 1, 1, 3]
    options = pp.MaskOptions(threshold=0.5, invert=True)
    out = pp.finish_masks(positive, negative, options)
    # union → [0.7, 0.8, 0.6]; minus negative → [0.7, 0.8, 0.1]; > 0.5 → [1, 1, 0]; invert → [0, 0, 1]
    assert torch.equal(out, t([[0.0, 0.0, 1.0]])[None])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("normalize", "max", "normalize"),
        ("threshold", 1.5, "threshold"),
        ("blur", -1.0, "blur"),
        ("grow", 1.5, "grow"),
        ("combine", "and", "combine"),
        ("feather", float("nan"), "feather"),
    ],
)
def test_mask_options_reject_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pp.MaskOptions(**{field: value})


def test_mask_options_from_kwargs_rejects_unknown_names() -> None:
    assert pp.MaskOptions.from_kwargs(threshold=0.3).threshold == 0.3
    with pytest.raises(TypeError, match="unknown mask option"):
        pp.MaskOptions.from_kwargs(treshold=0.3)


def test_vanishing_softness_is_a_hard_threshold() -> None:
    """Found by hypothesis: a softness of 6e-174 divided by itself gave NaN."""
    mask = t([[0.1, 0.5, 0.9]])
    assert torch.equal(pp.threshold(mask, 0.5, softness=6e-174), pp.threshold(mask, 0.5))
