"""Other CLIPSeg node packs' algorithms, reproduced in batched torch code, for textmask's drop-in nodes.

Two orphaned ComfyUI packs still run in many saved workflows:

* biegert/ComfyUI-CLIPSeg (``CLIPSeg``, ``CombineSegMasks``; 2023, transformers 4.27, OpenCV 4, matplotlib):
  sigmoid at 352×352, keep values above a threshold, Gaussian blur (SciPy), min-max stretch, square dilation,
  matplotlib colour maps to 8 bits (``Greys_r`` for the mask, ``viridis`` for the heat-map), OpenCV bilinear
  resize to the image, a 50 % heat-map overlay. :func:`biegert_segment`, :func:`biegert_combine`.
* WAS Node Suite (``CLIPSeg Masking``, ``CLIPSeg Batch Masking``): SaltAI's formula ``(p - min) / max``, but
  inverted before the 8-bit truncation and inverted back after Pillow's bicubic resize; a batch of more than one
  image takes another path (one min and max for the whole batch, bilinear antialiased resize in floats, a
  ``[B, H, W, 1]`` MASK). :func:`was_masks`, :func:`was_batch_masks`.

Everything runs on the masks' device as whole-batch tensor operations; the model work is the engine's
(:func:`model_logits`). Colour maps are matplotlib's tables as the packs read them (8-bit, ``int(x · 256)``
clipped to 255; NaN black), stored here so matplotlib is not needed. Outputs agree with the packs' own code
within 1/255 on the same weights (tests/test_compat.py runs their algorithms side by side).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .resize import pil_resize

__all__ = ["biegert_combine", "biegert_segment", "model_logits", "to_levels", "was_batch_masks", "was_masks"]

# matplotlib's viridis and Greys_r as 8-bit tables: (cmap(i)[:3] * 255).astype(uint8) for i in 0..255.
_VIRIDIS_HEX = (
    "44015444025544035745055845065a45085b46095c460b5e460c5f460e61470f6247116347126547146647156747166947186a48196b481a"
    "6c481c6e481d6f481e70482071482172482273482374472575472676472777472878472a79472b7a472c7b462d7c462f7c46307d46317e45"
    "327f45347f453580453681443781443982433a83433b83433c84423d84423e854240854141864142864043874044873f45873f47883e4888"
    "3e49893d4a893d4b893d4c893c4d8a3c4e8a3b508a3b518a3a528b3a538b39548b39558b38568b38578c37588c37598c365a8c365b8c355c"
    "8c355d8c345e8d345f8d33608d33618d32628d32638d31648d31658d31668d30678d30688d2f698d2f6a8d2e6b8e2e6c8e2e6d8e2d6e8e2d"
    "6f8e2c708e2c718e2c728e2b738e2b748e2a758e2a768e2a778e29788e29798e287a8e287a8e287b8e277c8e277d8e277e8e267f8e26808e"
    "26818e25828e25838d24848d24858d24868d23878d23888d23898d22898d228a8d228b8d218c8d218d8c218e8c208f8c20908c20918c1f92"
    "8c1f938b1f948b1f958b1f968b1e978a1e988a1e998a1e998a1e9a891e9b891e9c891e9d881e9e881e9f881ea0871fa1871fa2861fa38620"
    "a48520a58521a68521a78422a78423a88323a98224aa8225ab8126ac8127ad8028ae7f29af7f2ab07e2bb17d2cb17d2eb27c2fb37b30b47a"
    "32b57a33b67935b77836b87738b97639b9763bba753dbb743ebc7340bd7242be7144be7045bf6f47c06e49c16d4bc26c4dc26b4fc36951c4"
    "6853c56755c66657c66559c7645bc8625ec96160c96062ca5f64cb5d67cc5c69cc5b6bcd596dce5870ce5672cf5574d05477d05279d1517c"
    "d24f7ed24e81d34c83d34b86d44988d5478bd5468dd64490d64392d74195d73f97d83e9ad83c9dd93a9fd938a2da37a5da35a7db33aadb32"
    "addc30afdc2eb2dd2cb5dd2bb7dd29bade27bdde26bfdf24c2df22c5df21c7e01fcae01ecde01dcfe11cd2e11bd4e11ad7e219dae218dce2"
    "18dfe318e1e318e4e318e7e419e9e419ece41aeee51bf1e51cf3e51ef6e61ff8e621fae622fde724"
)
_GREYS_R_HEX = (
    "0001020304050608090a0b0c0d0f1011121314161718191a1b1d1e1f20212223252628292a2c2d2f303133343637383a3b3d3e4041424445"
    "4748494b4c4e4f5052535455565758595a5b5c5d5e5f6061626364656668696a6b6c6d6e6f7071727374757677787a7b7c7d7e7f80818283"
    "84868788898a8b8c8d8e8f91929394959697999a9b9c9d9fa0a1a2a4a5a6a7a8aaabacadafb0b1b2b3b5b6b7b8babbbcbdbebfc0c1c1c2c3"
    "c4c5c6c7c8c8c9cacbcccdcecfcfd0d1d2d3d4d5d6d7d7d8d9dadadbdcdddddedfe0e0e1e2e2e3e4e5e5e6e7e7e8e9eaeaebecededeeefef"
    "f0f0f1f1f2f2f3f3f4f4f5f5f6f6f7f7f7f8f8f9f9fafafbfbfcfcfdfdfefeff"
)


def _table(hex_text: str, channels: int) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(bytes.fromhex(hex_text), dtype=np.uint8).copy()).reshape(256, channels)


def colormap_levels(values: torch.Tensor, name: str) -> torch.Tensor:
    """``values`` ``[...]`` float → 8-bit colours ``[..., C]`` (``viridis``: 3 channels, ``greys_r``: 1), as
    ``(matplotlib_cmap(values)[..., :3] * 255).astype(uint8)`` gives them: index ``int(x · 256)`` clipped to
    0..255, NaN black."""
    table = _table(_VIRIDIS_HEX, 3) if name == "viridis" else _table(_GREYS_R_HEX, 1)
    table = table.to(values.device)
    nan = torch.isnan(values)
    index = torch.floor(torch.nan_to_num(values.float(), nan=0.0) * 256).clamp(0, 255).long()
    colours = table[index]
    return torch.where(nan[..., None], torch.zeros_like(colours), colours)


def to_levels(images: torch.Tensor) -> torch.Tensor:
    """IMAGE floats → uint8 as ``(x * 255).astype(uint8)`` (truncation; values kept in 0..255)."""
    return (images.float() * 255).clamp(0, 255).to(torch.uint8)


def model_logits(segmenter: Any, images: Any, texts: Sequence[str], per_image: bool = False) -> torch.Tensor:
    """The model's logits ``[B, S, S]`` (S = 352) for each image: with one text, that text for every image; with
    ``per_image``, text ``i`` for image ``i`` (as a processor call with one text per image pairs them).

    ``images``: ``[B, H, W, C]`` floats in [0, 1] or a list of ``[H, W, C]``; their pixels are prepared as the
    session's processor prepares 8-bit images."""
    features = segmenter.encode_images(images)
    unique = list(dict.fromkeys(texts))
    logits = segmenter.decode(features, segmenter.encode_prompts(unique))  # [B, P, S, S]
    if not per_image:
        return logits[:, unique.index(texts[0])]
    rows = torch.arange(logits.shape[0], device=logits.device)
    columns = torch.tensor([unique.index(text) for text in texts], device=logits.device)
    return logits[rows, columns]


def _resize_levels(levels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """OpenCV's ``cv2.resize(..., INTER_LINEAR)`` of 8-bit ``[B, h, w, C]`` to ``size`` (within one level: OpenCV
    rounds 11-bit fixed-point weights, this rounds the exact bilinear value)."""
    if tuple(levels.shape[1:3]) == tuple(size):
        return levels
    values = F.interpolate(levels.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", align_corners=False)
    return values.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _overlay(image: torch.Tensor, colours: torch.Tensor, alpha: float) -> torch.Tensor:
    """``cv2.addWeighted(image, 1 - alpha, colours, alpha, 0)`` on 8-bit ``[B, H, W, 3]``: rounded, saturated."""
    mixed = image.float() * (1 - alpha) + colours.float() * alpha
    return mixed.round().clamp(0, 255).to(torch.uint8)


def _previews(image_levels: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """biegert's outputs from a float map ``[B, h, w]``: the grey-level mask ``[B, H, W]`` 8-bit at the image's
    size and the heat-map overlay ``[B, H, W, 3]`` 8-bit."""
    size = (int(image_levels.shape[1]), int(image_levels.shape[2]))
    grey = _resize_levels(colormap_levels(values, "greys_r"), size)[..., 0]
    heat = _resize_levels(colormap_levels(values, "viridis"), size)
    return grey, _overlay(image_levels[..., :3], heat, 0.5)


def biegert_segment(
    segmenter: Any, images: torch.Tensor, text: str, blur: float, threshold: float, dilation_factor: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """biegert's ``CLIPSeg.segment_image`` for a batch: IMAGE ``[B, H, W, 3]`` →
    (mask ``[B, H, W]``, heat-map overlay ``[B, H, W, 3]``, black-and-white mask image ``[B, H, W, 3]``), floats
    in [0, 1] on the images' device.

    Per image: sigmoid of the 352×352 logits; values not above ``threshold`` set to 0; Gaussian blur of sigma
    ``blur`` (SciPy, reflect borders, truncated at 4 sigma); min-max stretch (a flat map gives NaN, drawn black);
    dilation by a ``2·dilation_factor + 1`` square; matplotlib's ``Greys_r`` and ``viridis`` to 8 bits; bilinear
    resize to the image; the heat-map blended 50 % over the image. The mask is the grey level / 255.
    """
    from scipy import ndimage

    device = images.device
    probs = torch.sigmoid(model_logits(segmenter, images, [text])).float().cpu()
    kept = torch.where(probs > float(threshold), probs, torch.zeros(()))
    if float(blur) > 0:
        kept = torch.from_numpy(ndimage.gaussian_filter(kept.numpy(), sigma=(0.0, float(blur), float(blur))))
    low = kept.amin(dim=(1, 2), keepdim=True)
    high = kept.amax(dim=(1, 2), keepdim=True)
    stretched = (kept - low) / (high - low)
    radius = int(dilation_factor * 2) // 2
    if radius > 0:
        stretched = F.max_pool2d(stretched[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]
    grey, overlay = _previews(to_levels(images).cpu(), stretched)
    bw = grey.float() / 255.0
    return bw.to(device), (overlay.float() / 255.0).to(device), bw[..., None].expand(-1, -1, -1, 3).to(device)


def biegert_combine(
    image: torch.Tensor, masks: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """biegert's ``CombineSegMasks``: the masks' plain sum (not clipped), and its heat-map overlay and
    black-and-white image on ``image`` (colour maps clip the sum at 1). ``image`` ``[1, H, W, 3]``, masks
    ``[h, w]`` (``[1, h, w]`` too) → (sum as given, ``[1, H, W, 3]``, ``[1, H, W, 3]``)."""
    combined = masks[0]
    for mask in masks[1:]:
        combined = combined + mask
    values = combined.float().cpu().reshape(-1, *combined.shape[-2:])[:1]
    grey, overlay = _previews(to_levels(image.reshape(-1, *image.shape[-3:])[:1]).cpu(), values)
    bw = grey.float()[..., None].expand(-1, -1, -1, 3) / 255.0
    return combined, (overlay.float() / 255.0).to(image.device), bw.to(image.device)


def _was_levels(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """WAS's 8-bit path for maps ``[B, S, S]``: ``1 - (p - min) / max`` truncated to 8 bits, Pillow's bicubic
    resize to ``size`` → 8-bit levels ``[B, H, W]`` of the *inverted* mask."""
    low = probs.amin(dim=(1, 2), keepdim=True)
    high = probs.amax(dim=(1, 2), keepdim=True)
    inverted = (255.0 * (1.0 - (probs - low) / high)).clamp(0, 255).to(torch.uint8)
    return pil_resize(inverted[:, None], size, "bicubic")[:, 0]


def was_masks(segmenter: Any, images: torch.Tensor, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """WAS's ``CLIPSeg Masking``: IMAGE ``[B, H, W, 3]`` → (MASK, MASK_IMAGE).

    One image: the 8-bit path (:func:`_was_levels`) → MASK ``[H, W]`` and MASK_IMAGE ``[1, H, W, 3]``. A batch:
    ``(p - min) / max`` with one min and max over the whole batch, bilinear antialiased resize in floats →
    MASK ``[B, H, W, 1]`` and MASK_IMAGE ``[B, H, W, 3]``, as WAS returns them.
    """
    height, width = int(images.shape[1]), int(images.shape[2])
    probs = torch.sigmoid(model_logits(segmenter, images, [text])).float()
    if images.shape[0] == 1:
        levels = _was_levels(probs, (height, width))[0].float()
        mask = 1.0 - levels / 255.0
        return mask.to(images.device), mask[None, ..., None].expand(-1, -1, -1, 3).to(images.device)
    values = (probs - probs.min()) / probs.max()
    values = F.interpolate(values[:, None], size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    mask = values[:, 0, :, :, None].to(images.device)
    return mask, mask.expand(-1, -1, -1, 3).contiguous()


def was_batch_masks(
    segmenter: Any, images: Sequence[torch.Tensor], texts: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """WAS's ``CLIPSeg Batch Masking``: image ``i`` ``[H, W, 3]`` with text ``i`` → (the images as 8-bit floats
    ``[N, H, W, 3]``, MASK ``[N, 1, H, W]``, MASK_IMAGE ``[N, H, W, 3]``), every mask at the first image's size."""
    levels = [to_levels(image) for image in images]
    size = (int(levels[0].shape[0]), int(levels[0].shape[1]))
    probs = torch.sigmoid(model_logits(segmenter, list(images), list(texts), per_image=True)).float()
    inverted = _was_levels(probs, size).float()
    device = images[0].device
    mask = (1.0 - inverted / 255.0)[:, None]
    batch = torch.stack([item[..., :3] for item in levels]).float() / 255.0
    return batch.to(device), mask.to(device), mask[:, 0, :, :, None].expand(-1, -1, -1, 3).to(device)
