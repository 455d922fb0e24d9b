"""textmask.refine: shapes and batching, options, flat masks, quality on a synthetic composite, soft edges,
the banded (bounded-memory) path."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import textmask.edges as refine_module
from textmask.edges import DEFAULT_REFINE, RefineOptions, refine, refine_levels
from textmask.postprocess import gaussian_blur

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread while these tests run: many small tensor ops are slow when two threads share busy
    cores (a shared CI machine), and nothing here tests threading."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _quality():
    """benchmarks/quality.py (shapes, coarse masks, metrics: numpy and torch only at import)."""
    name = "textmask_quality_benchmark"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "quality.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _texture(height: int, width: int, seed: int) -> torch.Tensor:
    """``[H, W, 3]`` float: smooth random colours with some fine grain, like a photo's."""
    generator = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(1, 3, 9, 9, generator=generator), size=(height, width), mode="bicubic")[0]
    grain = 0.06 * torch.rand(3, height, width, generator=generator)
    return (smooth + grain).clamp(0, 1).permute(1, 2, 0)


@functools.lru_cache(maxsize=16)
def _composite(size: int = 512, soft_sigma: float = 0.0, seed: int = 0):
    """``(image [1, H, W, 3] float, truth [1, H, W], coarse [1, H, W])``: a star and an ellipse on a thin pole
    cut from one texture onto another; the coarse mask as CLIPSeg would draw it (benchmarks/quality.py)."""
    quality = _quality()
    parts = [
        ("star", 0.3, 0.3, 0.2, 0.09, 5, 0.2),
        ("ellipse", 0.62, 0.68, 0.14, 0.18, 0.3),
        ("bar", (0.7, 0.68), (0.97, 0.78), 0.02),
    ]
    truth = torch.from_numpy(quality.shape_mask(parts, size, size))[None]
    if soft_sigma:
        truth = gaussian_blur(truth, soft_sigma)
    alpha = truth[0, ..., None]
    image = alpha * _texture(size, size, seed) + (1 - alpha) * _texture(size, size, seed + 1)
    return image[None], truth, quality.coarse_mask(truth)


# ------------------------------------------------------------------------------------ shapes
def test_shapes_dtypes_and_forms() -> None:
    image, _, coarse = _composite(128)
    out = refine(image, coarse)
    assert out.shape == (1, 128, 128) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    single = refine(image[0], coarse[0])  # [H, W, 3] + [H, W] → [H, W]
    assert single.shape == (128, 128)
    assert torch.allclose(single, out[0], atol=1e-6)
    as_uint8 = refine((image * 255).to(torch.uint8).numpy(), (coarse * 255).to(torch.uint8).numpy())
    assert as_uint8.shape == (1, 128, 128)
    listed = refine([image[0], image[0, :64]], [coarse[0], coarse[0, :64]])
    assert [tuple(m.shape) for m in listed] == [(128, 128), (64, 128)]
    broadcast = refine(image, torch.cat([coarse, 1 - coarse, coarse]))  # one image, three masks
    assert broadcast.shape == (3, 128, 128)
    assert torch.allclose(broadcast[0], out[0], atol=1e-5) and torch.allclose(broadcast[2], out[0], atol=1e-5)


def test_batch_equals_one_by_one() -> None:
    images, coarses = [], []
    for seed in range(3):
        image, _, coarse = _composite(200, seed=seed)
        images.append(image)
        coarses.append(coarse if seed != 1 else coarse.flip(-1))
    batch = refine(torch.cat(images), torch.cat(coarses))
    for k in range(3):
        alone = refine(images[k], coarses[k])[0]
        assert torch.allclose(batch[k], alone, atol=1e-4), float((batch[k] - alone).abs().max())


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
        pytest.param("mps", marks=pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no MPS")),
    ],
)
def test_devices(device: str) -> None:
    image, _, coarse = _composite(160)
    levels = (image * 255).to(torch.uint8).permute(0, 3, 1, 2).contiguous()
    expected = refine_levels(levels, coarse)
    out = refine_levels(levels.to(device), coarse.to(device))
    assert out.device.type == device
    assert torch.allclose(out.cpu(), expected, atol=2e-3)
    assert refine(image, coarse.to(device)).device.type == device  # results follow the masks


def test_result_is_an_ordinary_tensor() -> None:
    image, _, coarse = _composite(96)
    out = refine(image, coarse)
    out.clamp_(0.2, 0.8)  # no "inference tensor" error: callers may post-process in place


# ----------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("radii", ()),
        ("radii", (0.5, -1)),
        ("radii", (0.5,) * 9),
        ("radii", "big"),
        ("eps", 0),
        ("eps", float("nan")),
        ("grid", 0),
        ("grid", (22, 22, 22)),
        ("grid", 2.5),
        ("detail", 3),
        ("detail", 12.5),
        ("softness", 0),
        ("softness", 2),
        ("thin", 1.5),
        ("noise", -1),
        ("match_radius", 0),
        ("eps", True),
    ],
)
def test_option_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        RefineOptions(**{field: value})


def test_options_normalize_and_override() -> None:
    options = RefineOptions(grid=64, radii=[0.5, 0.25])
    assert options.grid == (64, 64) and options.radii == (0.5, 0.25)
    assert RefineOptions.from_kwargs(options, eps=1e-3).eps == 1e-3
    with pytest.raises(TypeError, match="unknown refine option"):
        refine(torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32), radius=3)
    assert DEFAULT_REFINE == RefineOptions()


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="size"):
        refine(torch.rand(1, 32, 32, 3), torch.rand(1, 32, 30))
    with pytest.raises(ValueError, match="batch"):
        refine(torch.rand(2, 32, 32, 3), torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        refine(torch.rand(1, 32, 32, 3), torch.full((1, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="levels"):
        refine_levels(torch.rand(1, 3, 32, 32), torch.rand(1, 32, 32))
    empty = refine(torch.rand(0, 32, 32, 3), torch.rand(0, 32, 32))
    assert empty.shape == (0, 32, 32)


# ---------------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("value", [0.0, 1.0, 0.3])
def test_flat_masks_come_back_unchanged(value: float) -> None:
    image, _, _ = _composite(128)
    mask = torch.full((1, 128, 128), value)
    assert torch.equal(refine(image, mask), mask)


def test_binary_mask_interiors_stay_saturated() -> None:
    image, truth, _ = _composite(256)
    out = refine(image, (truth > 0.5).float())
    inside = F.max_pool2d(-(truth > 0.5).float()[:, None], 31, 1, 15)[:, 0] < -0.5  # 15 px inside the edge
    outside = F.max_pool2d((truth > 0.5).float()[:, None], 61, 1, 30)[:, 0] < 0.5  # 30 px outside
    assert float(out[inside].min()) == 1.0 and float(out[outside].max()) == 0.0


def test_refine_improves_boundary_and_iou_over_the_coarse_mask() -> None:
    quality = _quality()
    image, truth, coarse = _composite(512)
    out = refine(image, coarse)
    f_coarse, f_refined = float(quality.boundary_f(coarse, truth)), float(quality.boundary_f(out, truth))
    iou_coarse, iou_refined = float(quality.iou(coarse, truth)), float(quality.iou(out, truth))
    assert f_refined >= 1.25 * f_coarse and f_refined >= f_coarse + 0.15, (f_coarse, f_refined)  # 0.66 → 0.92
    assert iou_refined >= iou_coarse + 0.04, (iou_coarse, iou_refined)
    # The thin pole (2 % of the side, under half a patch) fades out of the coarse mask and comes back.
    pole = (truth[0] > 0.5) & (torch.arange(512)[:, None] > 0.85 * 512)
    assert float(coarse[0][pole].mean()) < 0.5 < float(out[0][pole].mean())


def test_soft_truth_stays_soft() -> None:
    quality = _quality()
    image, truth, coarse = _composite(512, soft_sigma=4.0)
    out = refine(image, coarse)
    transition = (truth > 0.1) & (truth < 0.9)
    soft_share = float(((out > 0.1) & (out < 0.9))[transition].float().mean())
    assert soft_share > 0.3, soft_share  # measured: 0.40; a binarized mask gives 0
    band = quality.edge_band(truth, 3)
    error = float(quality.band_abs(out, truth, band))
    hard = float(quality.band_abs((out > 0.5).float(), truth, band))
    assert error < 0.8 * hard, (error, hard)


def test_other_grids() -> None:
    """A finer mask (e.g. SAM's) with a matching grid: the search band is narrower and the result is as good."""
    quality = _quality()
    image, truth, _ = _composite(512)
    cells = 0.5 + 0.6 * (F.adaptive_avg_pool2d(truth[:, None], (32, 32)) - 0.5)
    fine = F.interpolate(cells, size=(512, 512), mode="bilinear", align_corners=False)[:, 0]
    out = refine(image, fine, grid=32)
    assert float(quality.boundary_f(out, truth)) > float(quality.boundary_f(fine, truth)) + 0.1  # 0.81 → 0.97


def test_banded_path_matches_the_direct_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny band budget every full-resolution step runs in many bands of rows: same result."""
    generator = torch.Generator().manual_seed(3)
    height, width = 700, 1100
    levels = (torch.rand(1, 3, 12, 18, generator=generator) * 255).to(torch.uint8)
    levels = F.interpolate(levels.float(), size=(height, width), mode="bicubic").clamp(0, 255).to(torch.uint8)
    mask = F.interpolate(torch.rand(1, 1, 22, 22, generator=generator), size=(height, width), mode="bilinear")[:, 0]
    direct = refine_levels(levels, mask)
    monkeypatch.setattr(refine_module, "_BAND_BYTES", 256 * 1024)
    assert refine_module._band_rows(width * 4 * 16, height) < 10  # really banded
    banded = refine_levels(levels, mask)
    # The reduction's bands average their own rows (area windows a pixel off at band seams): nearly equal.
    assert float((banded - direct).abs().mean()) < 1e-2
    # The full-resolution apply is exact in bands.
    coefficients = torch.rand(1, 4, 30, 40, generator=generator) - 0.5
    whole = torch.empty(1, height, width)
    refine_module._apply(levels, coefficients, whole)
    monkeypatch.setattr(refine_module, "_BAND_BYTES", 2**40)
    one_band = torch.empty(1, height, width)
    refine_module._apply(levels, coefficients, one_band)
    assert torch.allclose(whole, one_band, atol=1e-5)


def test_working_resolution_caps_at_the_image() -> None:
    """Images smaller than the working grid are refined at their own size (no reduction)."""
    image, _, coarse = _composite(200)
    out = refine(image, coarse, detail=16)  # 22 × 16 = 352 > 200
    assert out.shape == (1, 200, 200)
    assert np.isfinite(out.numpy()).all()


def test_the_guided_filter_inside_refine_is_kornias():
    """refine runs its own colour guided filter (box sums shared between passes: 4-8× faster here); away from the
    borders (where kornia reflects and refine cuts the windows) it is kornia's ``guided_blur``."""
    kornia = pytest.importorskip("kornia")
    from textmask.edges import _guide_stats, _guided_coefficients

    generator = torch.Generator().manual_seed(3)
    guide = torch.rand((2, 3, 64, 80), generator=generator)
    target = torch.rand((2, 1, 64, 80), generator=generator)
    for radius, eps in ((4, 1e-3), (7, 1e-4)):
        a, b = _guided_coefficients(guide, _guide_stats(guide, radius, radius, eps), target, radius, radius)
        ours = (a * guide).sum(1, keepdim=True) + b
        theirs = kornia.filters.guided_blur(guide, target, (2 * radius + 1, 2 * radius + 1), eps)
        inner = (slice(None), slice(None), slice(2 * radius, -2 * radius), slice(2 * radius, -2 * radius))
        assert (ours[inner] - theirs[inner]).abs().max() < 1e-4, (radius, eps)
