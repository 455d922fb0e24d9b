"""Input conversion: every accepted form becomes the 8-bit RGB levels the processor would use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from textmask.errors import InputError
from textmask.images import as_image_batch, channels_last_to_levels, load_image, to_levels


def _rgb(height: int = 6, width: int = 5) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_uint8_pil_numpy_and_tensor_agree() -> None:
    array = _rgb()
    expected = torch.from_numpy(array).permute(2, 0, 1)
    assert torch.equal(to_levels(array), expected)
    assert torch.equal(to_levels(Image.fromarray(array)), expected)
    assert torch.equal(to_levels(torch.from_numpy(array)), expected)


def test_float_input_truncates_like_the_processor() -> None:
    values = torch.tensor([[[0.0, 0.5, 1.0], [0.999, 0.00393, 1.2]]])  # [H=1, W=2, C=3]
    levels = to_levels(values)
    # floor(255 x), clipped: 0.5 → 127, 0.999 → 254, 0.00393 → 1, 1.2 → 255
    assert levels[:, 0, 0].tolist() == [0, 127, 255]
    assert levels[:, 0, 1].tolist() == [254, 1, 255]


def test_grey_alpha_and_palette_modes() -> None:
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6)
    levels = to_levels(Image.fromarray(grey, "L"))
    assert levels.shape == (3, 5, 6) and torch.equal(levels[0], levels[2])
    rgba = np.dstack([_rgb(), np.full((6, 5), 7, np.uint8)])
    assert torch.equal(to_levels(Image.fromarray(rgba, "RGBA")), to_levels(_rgb()))  # alpha dropped
    assert torch.equal(to_levels(rgba), to_levels(_rgb()))
    palette = Image.fromarray(_rgb()).convert("P")
    assert torch.equal(to_levels(palette), to_levels(palette.convert("RGB")))
    cmyk = Image.fromarray(_rgb()).convert("CMYK")
    assert torch.equal(to_levels(cmyk), to_levels(cmyk.convert("RGB")))
    assert to_levels(np.zeros((4, 4, 2), np.uint8)).shape == (3, 4, 4)  # grey + alpha


def test_sixteen_bit_inputs_scale_to_eight_bits() -> None:
    deep = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    assert to_levels(deep)[0, 0].tolist() == [0, 1, 255, 128]
    assert Image.fromarray(deep).mode == "I;16"
    assert to_levels(Image.fromarray(deep))[0, 0].tolist() == [0, 1, 255, 128]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    array = _rgb(4, 8)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display upright
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    assert to_levels(path).shape == (3, 8, 4)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (torch.full((4, 4, 3), float("nan")), "NaN"),
        (torch.full((4, 4, 3), 255.0), "divide by 255"),
        (torch.zeros(4, 4, 5), "channels"),
        (torch.zeros(0, 4, 3), "zero size"),
        (torch.zeros(2, 2, 2, 2, 2), "expected"),
        (np.zeros((4, 4, 3), np.int64), "dtype"),
        ("not an image object", "file not found"),
        (object(), "unsupported type"),
    ],
)
def test_bad_inputs_raise_input_error(value: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        batch = as_image_batch(value)
        batch.levels(0, len(batch))


def test_bad_files_are_named(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InputError, match="not an image") as caught:
        load_image(text, "images[2]")
    assert "images[2]" in str(caught.value)
    truncated = tmp_path / "cut.png"
    Image.fromarray(_rgb(64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(truncated)
    with pytest.raises(InputError, match="folder"):
        load_image(tmp_path)


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (200, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match="too large"):
        load_image(path)


def test_batches_convert_lazily_per_chunk() -> None:
    batch = as_image_batch(torch.rand(5, 8, 9, 3))
    assert len(batch) == 5 and batch.batched and batch.uniform_size == (8, 9)
    assert [tuple(x.shape) for x in batch.levels(1, 3)] == [(3, 8, 9)] * 2
    mixed = as_image_batch([_rgb(4, 4), _rgb(6, 7)])
    assert mixed.uniform_size is None and [tuple(x.shape) for x in mixed.levels(0, 2)] == [(3, 4, 4), (3, 6, 7)]
    single = as_image_batch(_rgb())
    assert not single.batched


def test_channels_last_batch_keeps_device_and_layout() -> None:
    values = torch.rand(2, 3, 4, 1)
    levels = channels_last_to_levels(values)
    assert levels.shape == (2, 3, 3, 4) and levels.dtype == torch.uint8 and levels.is_contiguous()
