"""resize.pil_resize is bit-identical to the installed Pillow's Image.resize for 8-bit images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from textmask.resize import pil_resize

SIZES = [
    (352, 352),
    (512, 384),
    (384, 512),
    (7, 5),
    (1, 1),
    (1000, 1000),
    (353, 351),
    (100, 700),
    (700, 100),
    (3000, 2000),
    (2, 900),
    (600, 500),
    (800, 500),
]
FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("resample", sorted(FILTERS))
def test_downsize_rgb_matches_pillow(size: tuple[int, int], resample: str) -> None:
    rng = np.random.default_rng(size[0] * 7919 + size[1])
    array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(array).resize((352, 352), FILTERS[resample]))
    got = pil_resize(torch.from_numpy(array).permute(2, 0, 1), (352, 352), resample).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("out_size", [(512, 768), (1080, 1920), (5, 7), (352, 353)])
def test_upsize_grey_bicubic_matches_pillow(out_size: tuple[int, int]) -> None:
    """The seed node resizes its 8-bit 352×352 mask with Pillow's bicubic filter."""
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 256, (352, 352), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(mask).resize(out_size[::-1], Image.Resampling.BICUBIC))
    got = pil_resize(torch.from_numpy(mask), out_size, "bicubic").numpy()
    np.testing.assert_array_equal(got, expected)


def test_batch_and_smooth_content_match_pillow() -> None:
    """Smooth gradients exercise rounding ties that random noise rarely hits."""
    y, x = np.mgrid[0:480, 0:640]
    image = np.stack([(x * 255 // 639), (y * 255 // 479), ((x + y) % 256)], axis=-1).astype(np.uint8)
    batch = torch.from_numpy(np.stack([image, 255 - image])).permute(0, 3, 1, 2)
    got = pil_resize(batch, (352, 352)).permute(0, 2, 3, 1).numpy()
    for index, source in enumerate([image, 255 - image]):
        expected = np.asarray(Image.fromarray(source).resize((352, 352), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(got[index], expected)


def test_same_size_is_identity_and_bad_size_raises() -> None:
    levels = torch.randint(0, 256, (3, 10, 12), dtype=torch.uint8)
    assert torch.equal(pil_resize(levels, (10, 12)), levels)
    with pytest.raises(ValueError, match="positive"):
        pil_resize(levels, (0, 5))
    with pytest.raises(ValueError, match="resample"):
        pil_resize(levels, (5, 5), "lanczos")
