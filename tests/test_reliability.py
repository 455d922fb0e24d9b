"""Issue 7: every bad input gets a clear answer in every face, and nothing is lost.

One section per row of the table in docs/reliability.md: the engine (Python API), the ComfyUI nodes (called
directly, without ComfyUI: errors must be exceptions with a clear message, which ComfyUI shows on the node)
and the CLI (in-process through click, or the real entry point where a process must be killed). All on the
tiny random model with small inputs.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import GATED, ROOT, SRC, files_in, invoke, mask_levels
from PIL import Image, ImageOps

import textmask
from textmask.batch import remove_stale_temporaries
from textmask.comfy import runtime
from textmask.comfy.nodes import SaltCLIPSegLoader, SaltCLIPSegMasking, TextmaskCLIPSegLoader, TextmaskCLIPSegMasking
from textmask.engine import Segmenter
from textmask.errors import InputError, ModelLoadError, ModelNotFoundError, PromptError, TextmaskError
from textmask.images import load_image, to_levels
from textmask.postprocess import MaskOptions, grow


def _rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _in_unit_range(masks) -> bool:
    items = masks if isinstance(masks, list) else [masks]
    return all(bool(m.isfinite().all()) and float(m.min()) >= 0 and float(m.max()) <= 1 for m in items)


def _cli(*args: str, model: Path, out: Path, **kwargs):
    return invoke("mask", *args, "--model", str(model), "-o", str(out), **kwargs)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png16_rgb(path: Path, array: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow cannot write one): ``array`` is ``[H, W, 3]`` uint16."""
    height, width = array.shape[:2]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    body = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


COLOUR_PATCHES = (
    np.array(  # 8×8 blocks (JPEG-aligned): red, green, blue, white / black, grey, cyan, yellow
        [
            [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)],
            [(0, 0, 0), (128, 128, 128), (0, 255, 255), (255, 255, 0)],
        ],
        dtype=np.uint8,
    )
    .repeat(8, axis=0)
    .repeat(8, axis=1)
)


def write_cmyk_jpeg(path: Path, rgb: np.ndarray, adobe: bool = True) -> None:
    """A real CMYK JPEG of ``rgb``. Pillow writes Adobe's inverted polarity with an APP14 "Adobe" marker;
    ``adobe=False`` writes plain CMYK without the marker (as some non-Adobe tools do)."""
    cmyk = Image.fromarray(rgb).convert("CMYK")
    if not adobe:
        cmyk = cmyk.point(lambda value: 255 - value)  # Pillow inverts on save: the file then holds plain values
    buffer = io.BytesIO()
    cmyk.save(buffer, "JPEG", quality=100, subsampling=0)
    data = buffer.getvalue()
    assert data.find(b"Adobe") > 0  # Pillow's own CMYK JPEGs are Adobe-inverted
    if not adobe:
        at = data.find(b"\xff\xee")  # the APP14 segment: marker, 2-byte length, payload
        data = data[:at] + data[at + 2 + int.from_bytes(data[at + 2 : at + 4], "big") :]
    path.write_bytes(data)


def dead_pid() -> int:
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ============================================================================ empty batch, sizes
def test_empty_batch_in_the_engine(tiny_session) -> None:
    assert tiny_session.mask(torch.rand(0, 8, 9, 3), "cat").shape == (0, 8, 9)
    assert tiny_session.predict(np.zeros((0, 8, 9, 3), np.uint8), ["cat", "dog"]).shape == (0, 2, 8, 9)
    assert tiny_session.mask([], "cat") == []
    assert tiny_session.mask([], "cat", output_size=(4, 5)).shape == (0, 4, 5)
    with pytest.raises(InputError, match="empty"):
        tiny_session.encode_images([])


def test_empty_batch_in_the_nodes(reference) -> None:
    for images in (torch.zeros(0, 8, 8, 3), [], [torch.zeros(0, 8, 8, 3)]):
        with pytest.raises(InputError, match="the batch is empty"):
            SaltCLIPSegMasking().CLIPSeg_image(images, "cat", clipseg_model=reference)
        with pytest.raises(InputError, match="the batch is empty"):
            TextmaskCLIPSegMasking().mask(images, "cat", clipseg_model=reference)


def test_empty_folder_in_the_cli(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = _cli(str(tmp_path / "empty"), "-p", "cat", model=tiny_model_dir, out=tmp_path / "out")
    assert result.exit_code == 2 and "no images or videos found" in result.stderr


def test_zero_sized_images(tiny_session, reference, tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(InputError, match=r"images: image has zero size \(0×5\)"):
        tiny_session.mask(torch.rand(2, 0, 5, 3), "cat")
    with pytest.raises(InputError, match=r"images\[1\]: image has zero size"):
        tiny_session.mask([_rgb(4, 4), np.zeros((3, 0, 3), np.uint8)], "cat")
    with pytest.raises(InputError, match="zero size"):
        tiny_session.mask(Image.new("RGB", (0, 3)), "cat")
    # ComfyUI: said about the image, not about the output size taken from it
    with pytest.raises(InputError, match=r"images: image has zero size \(0×8\)"):
        SaltCLIPSegMasking().CLIPSeg_image(torch.zeros(1, 0, 8, 3), "cat", clipseg_model=reference)
    with pytest.raises(InputError, match=r"images\[1\]: image has zero size"):
        TextmaskCLIPSegMasking().mask([torch.rand(8, 8, 3), torch.zeros(8, 0, 3)], "cat", clipseg_model=reference)
    # a PNG whose header says 0 pixels wide: Pillow refuses it, so the CLI reports it and goes on
    header = struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)
    body = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b"")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "zero.png").write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    Image.fromarray(_rgb(6, 6)).save(tmp_path / "in" / "fine.png")
    result = _cli(str(tmp_path / "in"), "-p", "cat", model=tiny_model_dir, out=tmp_path / "out")
    assert result.exit_code == 1 and "zero.png is not an image Pillow can read" in result.stderr
    assert files_in(tmp_path / "out") == {"fine.cat.png"}


def test_one_pixel_images_everywhere(tiny_session, reference, tmp_path: Path, tiny_model_dir: Path) -> None:
    for image in (torch.rand(1, 1, 3), np.full((1, 1, 3), 200, np.uint8), Image.new("L", (1, 1), 90)):
        mask = tiny_session.mask(image, "cat", threshold=0.5, blur=2, grow=3)
        assert mask.shape == (1, 1) and _in_unit_range(mask)
    masks, mask_images = SaltCLIPSegMasking().CLIPSeg_image(torch.rand(2, 1, 1, 3), "cat", clipseg_model=reference)
    assert masks.shape == (2, 1, 1) and mask_images.shape == (2, 1, 1, 3) and _in_unit_range(masks)
    mask, _, heatmap = TextmaskCLIPSegMasking().mask(torch.rand(1, 1, 1, 3), "cat", grow=5, clipseg_model=reference)
    assert mask.shape == (1, 1, 1) and heatmap.shape == (1, 1, 1, 3)
    Image.fromarray(_rgb(1, 1)).save(tmp_path / "dot.png")
    result = _cli(str(tmp_path / "dot.png"), "-p", "cat", "-k", "mask", "-k", "cutout", model=tiny_model_dir,
                  out=tmp_path / "out")  # fmt: skip
    assert result.exit_code == 0
    assert mask_levels(tmp_path / "out" / "dot.cat.png").shape == (1, 1)
    assert mask_levels(tmp_path / "out" / "dot.cat.cutout.png").shape == (1, 1, 4)


def test_a_large_image_masks_at_full_size(tiny_session) -> None:
    image = torch.rand(1, 1200, 1600, 3)
    masks = tiny_session.mask(image, ["cat", "dog", "sky"], blur=1.0)
    assert masks.shape == (1, 1200, 1600) and _in_unit_range(masks)


def test_decompression_bombs_are_refused(tiny_session, tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (60, 50)).save(folder / "big.png")  # 3,000 pixels: "too large" under the lowered limit
    Image.new("RGB", (20, 20)).save(folder / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match=r"images\[1\]: .*big\.png is too large to open safely") as caught:
        tiny_session.mask([folder / "small.png", folder / "big.png"], "cat")
    assert "MAX_IMAGE_PIXELS = 1,000" in str(caught.value)
    result = _cli(str(folder), "-p", "cat", model=tiny_model_dir, out=tmp_path / "out")
    assert result.exit_code == 1 and "big.png is too large to open safely" in result.stderr
    assert files_in(tmp_path / "out") == {"small.cat.png"}


# ======================================================================================= modes
def test_every_pil_mode_converts(tiny_session) -> None:
    modes = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"]
    modes += ["I;16", "I;16B", "I", "F"]
    for mode in modes:
        levels = to_levels(Image.new(mode, (5, 3)))
        assert levels.shape == (3, 3, 5) and levels.dtype == torch.uint8, mode
    palette = Image.fromarray(_rgb(6, 5)).convert("P")
    palette.info["transparency"] = 0
    assert torch.equal(to_levels(palette), to_levels(palette.convert("RGB")))
    grey = Image.fromarray(np.arange(30, dtype=np.uint8).reshape(5, 6), "L")
    assert torch.equal(to_levels(grey), to_levels(grey.convert("RGB")))
    assert tiny_session.mask(Image.new("La", (7, 4)), "cat").shape == (4, 7)


def test_sixteen_bit_pngs(tmp_path: Path) -> None:
    grey = np.array([[0, 257, 65535, 32896, 1000]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.mode == "I;16"  # read at full depth...
    assert to_levels(tmp_path / "grey16.png")[0, 0].tolist() == [0, 1, 255, 128, 4]  # ...scaled with rounding
    rgb = np.array([[[0, 257, 65535], [32896, 1000, 60000]]], dtype=np.uint16)
    write_png16_rgb(tmp_path / "rgb16.png", rgb)
    # Pillow reduces 16-bit RGB PNGs to 8 bits itself (the high byte)
    assert to_levels(tmp_path / "rgb16.png").permute(1, 2, 0).tolist() == [[[0, 1, 255], [128, 3, 234]]]


@pytest.mark.parametrize("adobe", [True, False], ids=["adobe-inverted", "plain"])
def test_cmyk_jpegs_give_their_colours(tmp_path: Path, adobe: bool) -> None:
    path = tmp_path / "cmyk.jpg"
    write_cmyk_jpeg(path, COLOUR_PATCHES, adobe=adobe)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK" and ("adobe" in raw.info) == adobe
        naive = np.asarray(raw.convert("RGB")).astype(int)
    levels = to_levels(path).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(levels - COLOUR_PATCHES).max() <= 8  # JPEG rounding only
    assert torch.equal(to_levels(Image.open(path)), to_levels(path))  # a PIL image opened by the caller: same
    if not adobe:  # what Pillow alone makes of it: a negative, mostly black
        assert np.abs(naive - COLOUR_PATCHES).mean() > 100


T = Image.Transpose
EXIF_METHODS = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_270,
                7: T.TRANSVERSE, 8: T.ROTATE_90}  # fmt: skip
UNDO = {T.ROTATE_270: T.ROTATE_90, T.ROTATE_90: T.ROTATE_270}


def save_with_orientation(upright: np.ndarray, orientation: int, path: Path, **save) -> None:
    """Store ``upright`` as a viewer would receive it from a camera: raw pixels + EXIF orientation."""
    image = Image.fromarray(upright)
    if orientation != 1:
        method = EXIF_METHODS[orientation]
        image = image.transpose(UNDO.get(method, method))
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **save)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_upright_masks(tiny_session, tmp_path: Path, orientation: int) -> None:
    upright = _rgb(10, 16, seed=orientation)
    path = tmp_path / "photo.png"
    save_with_orientation(upright, orientation, path)
    assert torch.equal(to_levels(path), torch.from_numpy(upright).permute(2, 0, 1))
    with Image.open(path) as opened:  # a PIL image the caller opened is turned upright too
        assert torch.equal(to_levels(opened), to_levels(upright))
    if orientation in (1, 6):
        torch.testing.assert_close(tiny_session.mask(path, "cat"), tiny_session.mask(upright, "cat"))


def test_exif_rotated_photo_in_the_cli(tiny_session, tmp_path: Path, tiny_model_dir: Path) -> None:
    """The written mask has the upright size and matches the upright pixels; the cut-out lines up with it."""
    upright = _rgb(24, 40, seed=3)
    save_with_orientation(upright, 6, tmp_path / "photo.jpg", quality=95)
    with Image.open(tmp_path / "photo.jpg") as raw:
        assert raw.size == (24, 40)  # stored sideways
        decoded = np.asarray(raw.convert("RGB"))
    expected_pixels = np.rot90(decoded, k=-1)  # orientation 6: turn 90° clockwise to view
    out = tmp_path / "out"
    args = [str(tmp_path / "photo.jpg"), "-p", "cat", "-k", "mask", "-k", "cutout", "-k", "overlay"]
    assert _cli(*args, model=tiny_model_dir, out=out).exit_code == 0
    mask = mask_levels(out / "photo.cat.png")
    assert mask.shape == (24, 40)
    expected = torch.round(tiny_session.mask(np.ascontiguousarray(expected_pixels), "cat") * 255).to(torch.uint8)
    np.testing.assert_array_equal(mask, expected.numpy())
    cutout = mask_levels(out / "photo.cat.cutout.png")
    np.testing.assert_array_equal(cutout[..., :3], expected_pixels)
    np.testing.assert_array_equal(cutout[..., 3], mask)
    assert mask_levels(out / "photo.cat.overlay.png").shape == (24, 40, 3)


def test_image_modes_in_the_cli_equal_the_engine(tiny_session, tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_rgb(12, 10)).convert("L").save(folder / "grey.png")
    Image.fromarray(_rgb(12, 10)).convert("LA").save(folder / "grey-alpha.png")
    Image.fromarray(_rgb(12, 10)).convert("1").save(folder / "bilevel.png")
    palette = Image.fromarray(_rgb(12, 10)).convert("P")
    palette.save(folder / "palette-transparent.png", transparency=3)
    Image.fromarray(np.arange(120, dtype=np.uint16).reshape(12, 10) * 500).save(folder / "grey16.png")
    write_png16_rgb(folder / "rgb16.png", (_rgb(12, 10).astype(np.uint16) * 257))
    write_cmyk_jpeg(folder / "adobe-cmyk.jpg", COLOUR_PATCHES)
    write_cmyk_jpeg(folder / "plain-cmyk.jpg", COLOUR_PATCHES, adobe=False)
    Image.fromarray(np.random.default_rng(1).random((12, 10), dtype=np.float32)).save(folder / "float.tif")
    out = tmp_path / "out"
    result = _cli(str(folder), "-p", "cat", "-b", "1", "--json", model=tiny_model_dir, out=out)
    summary = json.loads(result.stdout)
    assert result.exit_code == 0 and summary["processed"] == 9, result.stderr
    for source in folder.iterdir():
        expected = torch.round(tiny_session.mask(source, "cat") * 255).to(torch.uint8).numpy()
        np.testing.assert_array_equal(mask_levels(out / f"{source.stem}.cat.png"), expected, err_msg=source.name)


# ============================================================================ tensor values, shapes
def test_nan_inf_and_range_errors_name_the_image(tiny_session, reference) -> None:
    batch = torch.rand(5, 6, 7, 3)
    batch[3, 2, 2, 1] = float("nan")
    with pytest.raises(InputError, match=r"^images\[3\] contains NaN or infinite values"):
        tiny_session.mask(batch, "cat", batch_size=2)
    listed = [torch.rand(6, 7, 3), torch.full((6, 7, 3), float("inf"))]
    with pytest.raises(InputError, match=r"^images\[1\] contains NaN or infinite values"):
        tiny_session.mask(listed, "cat")
    wide = torch.rand(4, 6, 7, 3)
    wide[2] *= 255
    with pytest.raises(InputError, match=r"^images\[2\]: float images must hold values in \[0, 1\].*divide by 255"):
        tiny_session.mask(wide, "cat")
    with pytest.raises(InputError, match=r"images\[0\]: .*\[-5"):
        tiny_session.mask(torch.full((1, 4, 4, 3), -5.0), "cat")
    # ComfyUI: the same errors, on the node
    with pytest.raises(InputError, match=r"images\[1\] contains NaN"):
        SaltCLIPSegMasking().CLIPSeg_image(batch[2:], "cat", clipseg_model=reference)
    with pytest.raises(InputError, match=r"images\[0\]: float images must hold values in \[0, 1\]"):
        TextmaskCLIPSegMasking().mask(wide[2:3], "cat", clipseg_model=reference)


def test_slightly_out_of_range_and_other_float_types_are_accepted(tiny_session) -> None:
    base = torch.rand(2, 9, 11, 3, generator=torch.Generator().manual_seed(0))
    noisy = base.clone()
    noisy[0, 0, 0] = torch.tensor([1.4, -0.3, 1.0])  # overshoot of a resampling filter: clipped
    clipped = noisy.clamp(0, 1)
    torch.testing.assert_close(tiny_session.mask(noisy, "cat"), tiny_session.mask(clipped, "cat"))
    reference = tiny_session.mask(base, "cat")
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        got = tiny_session.mask(base.to(dtype), "cat")
        assert got.dtype == torch.float32 and got.shape == reference.shape and _in_unit_range(got)
    np.testing.assert_allclose(tiny_session.mask(base.numpy().astype(np.float64), "cat"), reference, atol=1e-6)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (torch.zeros(8), r"images: expected \[H, W\], \[H, W, C\] or \[B, H, W, C\], got shape \[8\]"),
        (torch.zeros(1, 2, 8, 8, 3), r"got shape \[1, 2, 8, 8, 3\]"),
        (torch.zeros(1, 8, 8, 5), "1, 2, 3 or 4 channels"),
        (torch.zeros(1, 3, 16, 16), r"channels-last\), got shape \[1, 3, 16, 16\]"),  # channels-first
        (torch.zeros(1, 8, 8, 3, dtype=torch.int64), "unsupported dtype torch.int64"),
        (torch.zeros(1, 8, 8, 3, dtype=torch.complex64), "unsupported dtype"),
        (np.zeros((8, 8, 3), np.int32), "unsupported dtype int32"),
        ({"not": "an image"}, "unsupported type dict"),
    ],
)
def test_wrong_rank_channels_dtype_in_the_engine(tiny_session, value, message: str) -> None:
    with pytest.raises(InputError, match=message):
        tiny_session.mask(value, "cat")


def test_wrong_rank_channels_dtype_in_the_nodes(reference) -> None:
    node = SaltCLIPSegMasking()
    cases = [
        (torch.zeros(8), r"images: expected an IMAGE tensor"),
        (torch.zeros(1, 2, 8, 8, 3), r"images: expected an IMAGE tensor"),
        (torch.zeros(1, 8, 8, 5), "1, 2, 3 or 4 channels"),
        (torch.zeros(1, 8, 8, 3, dtype=torch.int64), "unsupported dtype"),
        ("a string", "expected an IMAGE tensor"),
        ([torch.zeros(8, 8, 3), "oops"], r"images\[1\]: expected an IMAGE tensor"),
    ]
    for value, message in cases:
        with pytest.raises(InputError, match=message):
            node.CLIPSeg_image(value, "cat", clipseg_model=reference)
        with pytest.raises(InputError, match=message):
            TextmaskCLIPSegMasking().mask(value, "cat", clipseg_model=reference)


# ============================================================================ unreadable files
def test_unreadable_files_are_named_in_the_engine(tiny_session, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(_rgb(16, 16)).save(good)
    (tmp_path / "notes.png").write_text("this is text with an image suffix")
    buffer = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buffer, "JPEG", quality=90)
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    cases = [
        (tmp_path / "notes.png", r"images\[2\]: .*notes\.png is not an image Pillow can read"),
        (tmp_path / "cut.jpg", r"images\[2\]: .*cut\.jpg is truncated or corrupt"),
        (tmp_path / "missing.png", r"images\[2\]: file not found: .*missing\.png"),
        (tmp_path, r"images\[2\]: .* is a folder, not an image file"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=message):
            tiny_session.mask([good, str(good), bad], "cat")
    with pytest.raises(InputError, match=r"truncated or corrupt"):  # lazily opened by the caller
        tiny_session.mask(Image.open(tmp_path / "cut.jpg"), "cat")


def test_unreadable_files_in_the_cli(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_rgb(16, 16)).save(folder / "good.png")
    (folder / "notes.png").write_text("text with an image suffix")
    buffer = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buffer, "JPEG", quality=90)
    (folder / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "empty.png").write_bytes(b"")
    values = np.random.default_rng(0).random((6, 6), dtype=np.float32)
    values[2, 3] = np.nan
    Image.fromarray(values).save(folder / "nan.tif")  # a float TIFF: the same value checks as a float tensor
    result = _cli(str(folder), "-p", "cat", "--json", model=tiny_model_dir, out=tmp_path / "out")
    summary = json.loads(result.stdout)
    assert result.exit_code == 1 and summary["processed"] == 1 and summary["failed"] == 4
    errors = {Path(f["input"]).name: f["error"] for f in summary["failures"]}
    assert errors["nan.tif"].endswith("nan.tif contains NaN or infinite values; clean the image before masking")
    assert "not an image Pillow can read" in errors["notes.png"] and "not an image" in errors["empty.png"]
    assert "truncated or corrupt" in errors["cut.jpg"]
    assert "Traceback" not in result.stderr
    assert files_in(tmp_path / "out") == {"good.cat.png"}


# ===================================================================================== prompts
def test_empty_prompt_policy(tiny_session, reference, tmp_path: Path, tiny_model_dir: Path) -> None:
    """Engine and the Salt drop-in: allowed with a warning (the seed's default is ""); our node and CLI: refused."""
    image = torch.rand(1, 12, 12, 3)
    for session in (tiny_session, runtime.segmenter_for(reference)):  # warnings come with the first encoding
        session._prompt_cache.pop("", None)
        session._prompt_cache.pop("   ", None)
    with pytest.warns(UserWarning, match="empty prompt"):
        assert tiny_session.mask(image, "   ").shape == (1, 12, 12)
    with pytest.raises(PromptError, match="give at least one prompt"):
        tiny_session.mask(image, [])
    with pytest.warns(UserWarning, match="empty prompt"):
        masks, _ = SaltCLIPSegMasking().CLIPSeg_image(image, None, clipseg_model=reference)  # None: seed's "" too
    assert masks.shape == (1, 12, 12)
    with pytest.raises(PromptError, match="prompts: write at least one prompt"):
        TextmaskCLIPSegMasking().mask(image, "\n  \n", clipseg_model=reference)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    for prompt in ("", "   "):
        result = _cli(str(tmp_path / "a.png"), "-p", prompt, model=tiny_model_dir, out=tmp_path / "out")
        assert result.exit_code == 2 and "is empty; describe what to mask" in result.stderr
    result = _cli(str(tmp_path / "a.png"), "-p", "cat", "-n", " ", model=tiny_model_dir, out=tmp_path / "out")
    assert result.exit_code == 2 and not (tmp_path / "out").exists()


def test_long_prompts_are_truncated_with_a_warning(tiny_session, reference, tmp_path: Path, tiny_model_dir) -> None:
    words = [f"w{index}" for index in range(120)]
    long = "a photo of " + " ".join(["cat"] * 100) + " and " + " ".join(words)
    tokens = tiny_session.tokenizer(long, truncation=True, max_length=77)["input_ids"]
    assert len(tokens) == 77 and tokens[-1] == tiny_session.tokenizer.eos_token_id  # the end token is kept
    kept = tiny_session.tokenizer.decode(tokens[1:-1])
    with pytest.warns(UserWarning, match=r"tokens; CLIP reads at most 77, the rest is ignored"):
        embedding = tiny_session.encode_prompts(long)
    torch.testing.assert_close(embedding, tiny_session.encode_prompts(kept))  # = the first 75 text tokens
    node_prompt = long + " (node)"
    with pytest.warns(UserWarning, match="at most 77"):
        mask, _, _ = TextmaskCLIPSegMasking().mask(torch.rand(1, 8, 8, 3), node_prompt, clipseg_model=reference)
    assert mask.shape == (1, 8, 8)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = _cli(str(tmp_path / "a.png"), "-p", long + " (cli)", model=tiny_model_dir, out=tmp_path / "out")
    assert result.exit_code == 0 and "textmask: warning: prompt 'a photo of cat" in result.stderr
    (written,) = files_in(tmp_path / "out")
    assert len(written) < 80  # the file name stays short: slug cut at 48 characters + hash


def test_non_ascii_and_emoji_prompts(tiny_session, reference, tmp_path: Path, tiny_model_dir: Path) -> None:
    prompts = ["ein Kätzchen", "猫", "🐱🐶", "café au lait", "a\u0301 rtl \u05d7\u05ea\u05d5\u05dc"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks = tiny_session.mask(torch.rand(2, 10, 12, 3), prompts)
    assert masks.shape == (2, 10, 12) and _in_unit_range(masks)
    mask, _, _ = TextmaskCLIPSegMasking().mask(torch.rand(1, 8, 8, 3), "\n".join(prompts), clipseg_model=reference)
    assert mask.shape == (1, 8, 8)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    args = [str(tmp_path / "a.png")] + [part for prompt in prompts for part in ("-p", prompt)]
    result = _cli(*args, model=tiny_model_dir, out=tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    names = files_in(tmp_path / "out")
    assert len(names) == 5 and "a.ein-katzchen.png" in names and "a.cafe-au-lait.png" in names
    assert all(name.isascii() and " " not in name for name in names)  # emoji/CJK become prompt-<hash>


def test_many_prompts_in_one_call(tiny_session, monkeypatch) -> None:
    """Prompts are encoded one by one and decoded in bounded groups; a call may hold more prompts than the cache."""
    import textmask.engine as engine

    session = Segmenter(tiny_session.loaded)  # its own prompt cache: the shared session's stays as it is
    images = torch.rand(1, 20, 24, 3, generator=torch.Generator().manual_seed(5))
    prompts = [f"many prompts {index}" for index in range(150)]  # 3 decoder passes of at most 64 pairs
    maps = session.predict(images, prompts)
    assert maps.shape == (1, 150, 20, 24)
    union = session.mask(images, prompts)
    torch.testing.assert_close(union, maps.amax(dim=1), atol=1e-6, rtol=0)
    # a cache smaller than one call's prompts: every embedding still arrives, the same as when encoded alone
    monkeypatch.setattr(engine, "_PROMPT_CACHE_SIZE", 8)
    fresh = [f"evicted prompt {index}" for index in range(40)]
    embeddings = session.encode_prompts(fresh)
    assert embeddings.shape[0] == 40 and len(session._prompt_cache) == 8
    for index in (0, 17, 39):
        assert torch.equal(embeddings[index], session.encode_prompts(fresh[index])[0])


def test_many_prompts_in_the_node_and_cli(reference, tmp_path: Path, tiny_model_dir: Path) -> None:
    prompts = [f"thing number {index}" for index in range(120)]
    mask, _, _ = TextmaskCLIPSegMasking().mask(torch.rand(2, 10, 10, 3), "\n".join(prompts), clipseg_model=reference)
    assert mask.shape == (2, 10, 10) and _in_unit_range(mask)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    args = [str(tmp_path / "a.png")] + [part for prompt in prompts[:40] for part in ("-p", prompt)]
    assert _cli(*args, model=tiny_model_dir, out=tmp_path / "each").exit_code == 0
    assert len(files_in(tmp_path / "each")) == 40
    assert _cli(*args, "--combine", "union", model=tiny_model_dir, out=tmp_path / "union").exit_code == 0
    (union,) = files_in(tmp_path / "union")
    assert len(union) < 120  # the combined slug is cut and hashed


# ====================================================================================== models
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bad-config", "no-tokenizer"])
def test_damaged_model_folders(tiny_model_dir: Path, tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(os.urandom(4096))
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "bad-config":
        (folder / "config.json").write_text("{ not json")
    else:
        (folder / "vocab.json").unlink()
        (folder / "merges.txt").unlink()
    expected = "tokenizer could not be loaded" if damage == "no-tokenizer" else "could not be loaded"
    with pytest.raises(ModelLoadError, match=expected) as caught:
        textmask.load(str(folder))
    assert str(folder) in str(caught.value)


def test_damaged_or_missing_models_in_the_cli_and_nodes(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = _cli(str(tmp_path / "a.png"), "-p", "cat", model=broken, out=tmp_path / "out")
    assert result.exit_code == 3 and "corrupt or truncated" in result.stderr and "Traceback" not in result.stderr
    offline = invoke(
        "mask", str(tmp_path / "a.png"), "-p", "cat", "--model", "acme/not-here", "-o", str(tmp_path / "o")
    )
    assert offline.exit_code == 3 and "'acme/not-here' is not in" in offline.stderr
    assert "HF_HUB_OFFLINE" in offline.stderr and "textmask download acme/not-here" in offline.stderr
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        TextmaskCLIPSegLoader().load(str(broken), device="cpu", dtype="float32")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        SaltCLIPSegLoader().clipseg_model("acme/not-here")


# ============================================================================== out of memory
def _oom_above(limit: int, monkeypatch, error: BaseException | None = None) -> list[int]:
    """Make the vision tower fail like a full GPU for chunks of more than ``limit`` images; returns chunk sizes."""
    seen: list[int] = []
    original = Segmenter.encode_pixels

    def limited(self, pixels, sizes):
        seen.append(len(sizes))
        if len(sizes) > limit:
            raise error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)\ndetails")
        return original(self, pixels, sizes)

    monkeypatch.setattr(Segmenter, "encode_pixels", limited)
    return seen


def test_out_of_memory_halves_the_batch(tiny_session, monkeypatch, caplog) -> None:
    images = torch.rand(5, 24, 32, 3, generator=torch.Generator().manual_seed(3))
    prompts = ["a kitten", "a puppy"]  # not the other test files' prompts: the shared session caches embeddings
    expected = tiny_session.mask(images, prompts, negative_prompts="lawn", batch_size=8)  # no failure
    seen = _oom_above(2, monkeypatch)
    progress: list[int] = []
    with caplog.at_level(logging.WARNING, logger="textmask"):
        got = tiny_session.mask(
            images, prompts, negative_prompts="lawn", batch_size=8, progress=lambda d, t: progress.append(d)
        )
    assert seen == [5, 4, 2, 2, 1]  # 8 (all 5) fails, 4 fails, then 2 at a time (and the last one)
    assert progress == [2, 4, 5]
    assert torch.equal(got, expected)  # masks do not depend on the batch size
    assert "retrying with batch size 4" in caplog.text and "retrying with batch size 2" in caplog.text


def test_cpu_allocator_failures_are_retried_too(tiny_session, monkeypatch) -> None:
    cpu_error = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
    seen = _oom_above(1, monkeypatch, cpu_error)
    assert tiny_session.mask(torch.rand(3, 8, 8, 3), "cat", batch_size=4).shape == (3, 8, 8)
    assert seen == [3, 2, 1, 1, 1]


def test_other_runtime_errors_are_not_retried(tiny_session, monkeypatch) -> None:
    seen = _oom_above(0, monkeypatch, RuntimeError("a bug, not memory"))
    with pytest.raises(RuntimeError, match="a bug, not memory"):
        tiny_session.mask(torch.rand(3, 8, 8, 3), "cat", batch_size=4)
    assert seen == [3]


def test_out_of_memory_at_one_image_is_a_clear_error(tiny_session, reference, monkeypatch, tmp_path, tiny_model_dir):
    _oom_above(0, monkeypatch)
    with pytest.raises(textmask.OutOfMemoryError) as caught:
        tiny_session.mask(torch.rand(3, 8, 8, 3), "cat", batch_size=4)
    error = caught.value
    assert isinstance(error, TextmaskError) and isinstance(error, torch.OutOfMemoryError)  # ComfyUI's OOM handling
    message = str(error)
    assert message.startswith("images[0]: out of memory on cpu even one image at a time")
    assert "Tried to allocate 2.00 GiB" in message and "dtype='fast'" in message and "\n" not in message
    assert error.__cause__ is None and error.__suppress_context__  # no torch traceback chained on
    with pytest.raises(textmask.OutOfMemoryError, match="even one image at a time"):
        SaltCLIPSegMasking().CLIPSeg_image(torch.rand(2, 8, 8, 3), "cat", clipseg_model=reference)
    for index in range(3):
        Image.new("RGB", (8, 8), (index * 40, 0, 0)).save(tmp_path / f"{index}.png")
    result = _cli(str(tmp_path), "-p", "cat", "-b", "2", model=tiny_model_dir, out=tmp_path / "out")
    assert result.exit_code == 3 and "out of memory on cpu even one image at a time" in result.stderr
    assert "Traceback" not in result.stderr and files_in(tmp_path / "out") == set()


# =============================================================================== interruption
def age(folder: Path, seconds: float = 600) -> None:
    """Make every hidden file and folder under ``folder`` look ``seconds`` old."""
    then = time.time() - seconds
    for path in folder.rglob(".*"):
        os.utime(path, (then, then))


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    gone, alive = dead_pid(), os.getppid()
    (tmp_path / "sub").mkdir()
    (tmp_path / f".a.cat.png.{gone}.part").write_bytes(b"half a png")
    (tmp_path / "sub" / f".b.cat.png.{gone}.part").write_bytes(b"half")
    (tmp_path / f".clip.cat.{gone}.part").mkdir()  # an unfinished PNG-sequence folder
    (tmp_path / f".clip.cat.{gone}.part" / "000000.png").write_bytes(b"x")
    (tmp_path / f".c.cat.png.{alive}.part").write_bytes(b"a parallel run is writing this")
    (tmp_path / "a.cat.png").write_bytes(b"complete")
    (tmp_path / ".hidden").write_bytes(b"not ours")
    age(tmp_path)
    (tmp_path / f".d.cat.png.{gone}.part").write_bytes(b"still changing: another machine may be writing it")
    assert remove_stale_temporaries(tmp_path) == 3
    assert files_in(tmp_path) == {"a.cat.png", ".hidden", f".c.cat.png.{alive}.part", f".d.cat.png.{gone}.part"}
    assert remove_stale_temporaries(tmp_path / "missing") == 0


def test_sigkill_mid_run_then_rerun(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A killed run leaves only complete files under final names; the rerun resumes and cleans its temporaries."""
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(30):
        Image.fromarray(_rgb(16, 16, seed=index)).save(folder / f"{index:03d}.png")
    out = tmp_path / "out"
    args = ["mask", str(folder), "-p", "cat", "-k", "mask", "-k", "cutout", "--model", str(tiny_model_dir)]
    args += ["-o", str(out), "-b", "1"]
    env = dict(os.environ, PYTHONPATH=str(SRC))
    gate = tmp_path / "gate"
    gate.touch()  # after two images, the engine waits: the kill comes mid-run on any machine
    process = subprocess.Popen([sys.executable, str(GATED), str(gate), "2", *args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out.is_dir() and sum(p.suffix == ".png" for p in out.iterdir()) >= 4):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    finished = {name for name in files_in(out) if not name.startswith(".")}
    assert len(finished) == 4, finished  # the two images before the gate, mask and cut-out each
    for name in finished:  # every final name holds a whole image
        with Image.open(out / name) as image:
            image.load()
            assert image.size == (16, 16)
    # what a kill during a write leaves behind (whether or not this run was caught mid-write)
    (out / f".029.cat.png.{process.pid}.part").write_bytes(b"\x89PNG half written")
    age(out)  # the rerun comes later (temporaries younger than 2 minutes may belong to another machine's run)
    rerun = invoke(*args, "--json")
    summary = json.loads(rerun.stdout)
    assert rerun.exit_code == 0 and summary["processed"] + summary["skipped"] == 30
    assert len(files_in(out)) == 60 and not [n for n in files_in(out) if n.startswith(".")]


# ============================================================================ unwritable output
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT], ids=["ENOSPC", "EROFS", "EDQUOT"])
def test_full_or_read_only_disk_stops_and_keeps_what_was_written(tiny_model_dir, tmp_path, monkeypatch, code):
    """A rewrite (--overwrite) that fails mid-file leaves the previous outputs exactly as they were."""
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(_rgb(12, 12, seed=index)).save(folder / f"{index}.png")
    out = tmp_path / "out"
    assert _cli(str(folder), "-p", "cat", model=tiny_model_dir, out=out).exit_code == 0
    before = {name: (out / name).read_bytes() for name in files_in(out)}
    real_write = Path.write_bytes
    calls: list[str] = []

    def fail_after_first(self: Path, data: bytes) -> int:
        if not self.name.endswith(".part"):
            return real_write(self, data)
        calls.append(self.name)
        if len(calls) == 1:
            return real_write(self, data)
        with open(self, "wb") as partial:  # the disk fills up halfway through the file
            partial.write(data[: len(data) // 2])
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "write_bytes", fail_after_first)
    result = _cli(str(folder), "-p", "cat", "--invert", "--overwrite", "-b", "1", model=tiny_model_dir, out=out)
    assert result.exit_code == 3 and os.strerror(code) in result.stderr and "stopping" in result.stderr
    assert len(calls) == 2 and all(call.startswith(".") for call in calls)  # written under temporary names
    assert files_in(out) == set(before)  # no temporary left behind
    changed = [name for name in before if (out / name).read_bytes() != before[name]]
    assert changed == ["0.cat.png"]  # rewritten before the disk filled up; the others untouched


def test_permission_denied_on_one_output_fails_only_that_input(tiny_model_dir, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (8, 8), (index * 60, 0, 0)).save(folder / f"{index}.png")
    real_write = Path.write_bytes

    def deny_one(self: Path, data: bytes) -> int:
        if self.name.startswith(".1.cat.png."):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", deny_one)
    result = _cli(str(folder), "-p", "cat", "-b", "1", model=tiny_model_dir, out=tmp_path / "out")
    assert result.exit_code == 1 and "1.png: cannot write its output: " in result.stderr
    assert files_in(tmp_path / "out") == {"0.cat.png", "2.cat.png"}


def test_output_folder_not_writable_before_the_model_loads(tmp_path: Path, monkeypatch) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "blocker").write_text("a file where a folder should be")
    result = invoke("mask", str(tmp_path / "a.png"), "-p", "cat", "--model", "nobody/unused", "-o",
                    str(tmp_path / "blocker" / "out"))  # fmt: skip
    assert result.exit_code == 3 and "cannot write to output folder" in result.stderr
    assert "nobody/unused" not in result.stderr  # refused before any model is looked for


# ================================================================================ post-processing
def test_grow_is_the_square_window_and_huge_values_are_capped() -> None:
    mask = (torch.rand(2, 1, 17, 23, generator=torch.Generator().manual_seed(4)) > 0.9).float()
    for pixels in (1, 3, -2, 7):
        radius = abs(pixels)
        if pixels > 0:
            square = F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)
        else:
            square = 1 - F.max_pool2d(F.pad(1 - mask, (radius,) * 4), 2 * radius + 1, stride=1)
        assert torch.equal(grow(mask, pixels), square), pixels
    assert torch.equal(grow(mask, 10**9), grow(mask, 23))  # no kernel of a billion pixels
    assert torch.equal(grow(mask, -(10**9)), grow(mask, -23))


@pytest.mark.parametrize(
    ("field", "value"),
    [("blur", 1e9), ("feather", 5000.0), ("blur", float("nan")), ("grow", float("inf")), ("grow", 1.5),
     ("threshold", float("nan")), ("threshold", 2.0), ("normalize", "max")],
)  # fmt: skip
def test_mask_options_refuse_unusable_values(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        MaskOptions(**{field: value})


def test_unusable_options_in_the_faces(tiny_model_dir, tmp_path: Path, reference) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = _cli(str(tmp_path / "a.png"), "-p", "cat", "--blur", "1e9", model=tiny_model_dir, out=tmp_path / "o")
    assert result.exit_code == 2 and "blur: at most 1024 pixels" in result.stderr
    with pytest.raises(ValueError, match="combine"):
        TextmaskCLIPSegMasking().mask(torch.rand(1, 8, 8, 3), "cat", combine="xor", clipseg_model=reference)


# ========================================================================================= misc
def test_load_image_keeps_the_file_closed(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_rgb(5, 5)).save(path)
    image = load_image(path)
    path.unlink()  # the decoded image does not need the file any more (Windows could not delete an open file)
    assert np.asarray(ImageOps.exif_transpose(image)).shape == (5, 5, 3)
