"""textmask.matte and textmask.foreground: hard stays hard, soft stays soft, clean colours, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import textmask
from textmask.errors import InputError


def _coarse(truth: torch.Tensor) -> torch.Tensor:
    """A CLIPSeg-like coarse mask: the truth averaged on a 22×22 grid, low contrast, upsampled in logits."""
    patches = F.adaptive_avg_pool2d(truth[:, None], (22, 22))
    p = (0.5 + 0.6 * (patches - 0.5)).clamp(1e-4, 1 - 1e-4)
    logits = F.interpolate(torch.log(p / (1 - p)), size=truth.shape[-2:], mode="bilinear", align_corners=False)
    return torch.sigmoid(logits)[:, 0]


def _disk(height: int, width: int, radius: float) -> torch.Tensor:
    y = torch.arange(height, dtype=torch.float32)[:, None] - height / 2
    x = torch.arange(width, dtype=torch.float32)[None, :] - width / 2
    return (torch.sqrt(y * y + x * x) <= radius).float()[None]


def _textured(height: int, width: int, colour: tuple[float, float, float], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = F.interpolate(torch.rand(1, 3, height // 8, width // 8, generator=g), size=(height, width), mode="bilinear")
    return (torch.tensor(colour).view(1, 3, 1, 1) * 0.85 + 0.15 * noise).permute(0, 2, 3, 1)


def _composite(alpha: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    return torch.round(image * 255) / 255  # 8-bit, as photos are


@pytest.fixture(scope="module")
def scene() -> dict[str, torch.Tensor]:
    h, w = 160, 192
    return {
        "truth": _disk(h, w, 48),
        "fg": _textured(h, w, (0.9, 0.3, 0.2), 1),
        "bg": _textured(h, w, (0.1, 0.4, 0.9), 2),
    }


def test_hard_binary_mask_stays_hard(scene: dict[str, torch.Tensor]) -> None:
    truth = scene["truth"]
    image = _composite(truth, scene["fg"], scene["bg"])
    alpha, fg = textmask.matte(image, truth)
    assert alpha.shape == truth.shape and fg.shape == image.shape
    assert alpha.dtype == torch.float32 and fg.dtype == torch.float32
    fractional = ((alpha > 0.05) & (alpha < 0.95)).sum().item()
    edge = (F.max_pool2d(truth[:, None], 3, 1, 1) - -F.max_pool2d(-truth[:, None], 3, 1, 1)).sum().item()
    assert fractional <= edge  # soft values only on the edge pixels themselves
    assert ((alpha > 0.5) == (truth > 0.5)).float().mean().item() > 0.995


def test_constant_image_invents_no_edges() -> None:
    h, w = 128, 128
    mask = F.avg_pool2d(_disk(h, w, 36)[:, None], 21, 1, 10)[:, 0]  # a smooth blob
    image = torch.full((1, h, w, 3), 0.5)
    alpha, fg = textmask.matte(image, mask)
    gy, gx = torch.gradient(alpha[0])
    my, mx = torch.gradient(mask[0])
    assert torch.sqrt(gx**2 + gy**2).max() <= 1.5 * torch.sqrt(mx**2 + my**2).max() + 1e-3
    # Nothing to take out of a flat image: within 2 levels of 8 bits (the wide pass is upsampled bilinearly).
    assert (fg - image).abs().max().item() < 2 / 255


def test_foreground_is_the_image_where_alpha_is_one(scene: dict[str, torch.Tensor]) -> None:
    image = _composite(scene["truth"], scene["fg"], scene["bg"])
    alpha = F.avg_pool2d(scene["truth"][:, None], 9, 1, 4)[:, 0]
    fg = textmask.foreground(image, alpha)
    full = alpha >= 1
    assert full.sum() > 1000
    assert (fg[full] - image[full]).abs().max().item() < 1e-5
    matte = textmask.matte(image, _coarse(scene["truth"]))
    full = matte.alpha >= 1
    assert (matte.foreground[full] - image[full]).abs().max().item() < 1e-5


def test_soft_composite_beats_the_coarse_mask_and_the_old_cutout(scene: dict[str, torch.Tensor]) -> None:
    """A motion-blurred (box along x, 12 px) disk: matte's alpha is closer than the coarse mask's and refine's,
    and its cut-out over a new background is closer than one with the image's own colours."""
    truth = F.avg_pool2d(F.pad(scene["truth"][:, None], (6, 6, 0, 0), mode="replicate"), (1, 13), 1)[:, 0]
    image = _composite(truth, scene["fg"], scene["bg"])
    coarse = _coarse(truth)
    alpha, fg = textmask.matte(image, coarse)
    refined = textmask.refine(image, coarse)
    low, high = coarse.min(), coarse.max()
    stretched = (coarse - low) / (high - low)

    def mse(a: torch.Tensor) -> float:
        return ((a - truth) ** 2).mean().item()

    assert mse(alpha) < 0.8 * mse(stretched)
    assert mse(alpha) < mse(refined)
    new = torch.tensor([0.2, 0.9, 0.2]).view(1, 1, 1, 3)
    true_cut = truth[..., None] * scene["fg"] + (1 - truth[..., None]) * new

    def cut_error(a: torch.Tensor, colours: torch.Tensor) -> float:
        return ((a[..., None] * colours + (1 - a[..., None]) * new - true_cut) ** 2).mean().item()

    assert cut_error(alpha, fg) < 0.7 * cut_error(refined, image)


def test_defocused_edge_stays_soft() -> None:
    """A disk defocused by a Gaussian of 2 % of the image on textured colours: the blur estimate reads it as soft,
    so matte's alpha is closer to the truth than the coarse mask's (1.75e-3 before the estimate was corrected
    for the contrast beyond its reach, against the coarse mask's 0.69e-3; 0.50e-3 after) and far closer than
    refine's crisp border (5.2e-3)."""
    from scipy import ndimage

    h, w = 384, 512
    truth = torch.from_numpy(ndimage.gaussian_filter(_disk(h, w, 110)[0].numpy(), 0.02 * w))[None]
    image = _composite(truth, _textured(h, w, (0.9, 0.3, 0.2), 1), _textured(h, w, (0.1, 0.4, 0.9), 2))
    coarse = _coarse(truth)
    alpha = textmask.matte(image, coarse).alpha
    stretched = (coarse - coarse.min()) / (coarse.max() - coarse.min())

    def mse(a: torch.Tensor) -> float:
        return ((a - truth) ** 2).mean().item()

    assert mse(alpha) < mse(stretched)
    assert mse(alpha) < 0.2 * mse(textmask.refine(image, coarse))


def test_edge_width_inverts_the_blurred_step() -> None:
    """``_edge_width`` solves ``ratio = 1 / (√(2π) σ erf(reach / (√2 σ)))`` for σ, from sharp to wider than the
    reach."""
    import math

    from textmask.matting import _edge_width

    reach = 20.0
    widths = torch.tensor([0.5, 2.0, 8.0, 20.0, 50.0])
    ratios = 1.0 / (math.sqrt(2 * math.pi) * widths * torch.erf(reach / (math.sqrt(2) * widths)))
    assert torch.allclose(_edge_width(ratios, reach), widths, rtol=0.02)


def test_single_image_and_forms() -> None:
    image = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)
    mask = np.zeros((64, 80), np.float32)
    mask[16:48, 20:60] = 1
    alpha, fg = textmask.matte(image, mask)
    assert alpha.shape == (64, 80) and fg.shape == (64, 80, 3)
    assert textmask.foreground(image, mask).shape == (64, 80, 3)
    batch = textmask.matte(torch.from_numpy(image)[None].float() / 255, torch.from_numpy(mask)[None])
    assert isinstance(batch, textmask.Matte) and batch.alpha.shape == (1, 64, 80)


@pytest.mark.parametrize(
    ("images", "masks", "words"),
    [
        (torch.rand(2, 32, 32, 3), torch.rand(2, 3, 32, 32), "masks: expected [B, H, W]"),
        (torch.rand(1, 32, 32, 3), torch.rand(1, 16, 32), "differs from the images'"),
        (torch.rand(2, 32, 32, 3), torch.rand(3, 32, 32), "batch of 3"),
        (torch.rand(1, 32, 32, 3), torch.full((1, 32, 32), float("nan")), "NaN"),
        (torch.rand(0, 32, 32, 3), torch.rand(0, 32, 32), "empty"),
        (torch.rand(1, 32, 32, 3), torch.rand(0, 32, 32), "empty"),
        (torch.full((1, 32, 32, 3), float("nan")), torch.rand(1, 32, 32), "images"),
        (torch.rand(1, 32, 32, 3), "mask.png", "masks: expected a tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(images: torch.Tensor, masks: object, words: str) -> None:
    with pytest.raises(InputError, match=None) as caught:
        textmask.matte(images, masks)
    assert words in str(caught.value)
    if isinstance(masks, torch.Tensor) and masks.dim() == 3 and masks.shape[0]:
        with pytest.raises(InputError):
            textmask.foreground(images, masks)


def test_mask_options_refine_matte() -> None:
    assert textmask.MaskOptions(refine="matte").refine == "matte"
    assert textmask.MaskOptions(refine="MATTE").refine == "matte"
    assert isinstance(textmask.MaskOptions(refine=True).refine, textmask.RefineOptions)
    with pytest.raises(ValueError, match="matte"):
        textmask.MaskOptions(refine="glossy")
    session = textmask.load("random-tiny")
    image = torch.rand(1, 96, 112, 3)
    out = session.mask(image, "a cat", options=textmask.MaskOptions(refine="matte"))
    assert out.shape == (1, 96, 112) and 0 <= out.min() and out.max() <= 1


def test_foreground_in_bands_equals_the_whole_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """The full-resolution foreground pass runs in bands of rows with a halo; bands of 40 rows give what one band
    gives, within float rounding of the running sums (1e-4, far below one 8-bit level)."""
    import textmask.matting as matting

    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 300, 400, generator=g)
    alpha = F.avg_pool2d((torch.rand(2, 1, 300, 400, generator=g) > 0.5).float(), 9, 1, 4)
    whole = matting._foreground_chunk(image, alpha)
    monkeypatch.setattr(matting, "_BAND_PIXELS", 40 * 400 * 2)
    banded = matting._foreground_chunk(image, alpha)
    assert (whole - banded).abs().max().item() < 1e-4
    assert (whole - image).abs().max().item() > 0.05  # the pass does change colours (the test is not vacuous)
