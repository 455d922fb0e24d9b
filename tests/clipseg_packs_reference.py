"""The orphaned CLIPSeg packs' algorithms, written out for parity tests (their published behaviour, restated).

* :func:`biegert_segment` / :func:`biegert_combine`: biegert/ComfyUI-CLIPSeg's ``CLIPSeg.segment_image`` and
  ``CombineSegMasks.combine_masks`` with the libraries that pack used: transformers' processor and model (here
  passed in, not reloaded per call), SciPy's Gaussian filter, OpenCV's dilate / resize / addWeighted and
  matplotlib's colour maps. The pack was written for transformers 4.27, whose CLIPSeg returned ``[352, 352]``
  logits for one image; newer versions return ``[1, 352, 352]``, which its OpenCV and matplotlib calls cannot
  take (OpenCV 5 refuses the 352-channel array, and OpenCV 4 dilates along one axis only before its resize
  fails), so the batch axis is squeezed here as the pack's own environment did.
* :func:`was_masks` / :func:`was_batch_masks`: WAS Node Suite's ``CLIPSeg Masking`` (both its one-image and its
  batch path) and ``CLIPSeg Batch Masking``.

Plain module (no pytest) so a real ComfyUI's Python can run it too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps


def _colours(values: np.ndarray, name: str) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps[name](values)[:, :, :3] * 255).astype(np.uint8)


def biegert_segment(image: torch.Tensor, text: str, blur: float, threshold: float, dilation_factor: int,
                    pair: tuple[Any, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """→ (mask ``[H, W]``, heat-map overlay ``[1, H, W, 3]``, mask overlay ``[1, H, W, 3]``)."""
    import cv2
    from scipy.ndimage import gaussian_filter

    processor, model = pair
    image_np = (image.numpy().squeeze() * 255).astype(np.uint8)
    picture = Image.fromarray(image_np, mode="RGB")
    inputs = processor(text=text, images=picture, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    tensor = torch.sigmoid(outputs[0]).squeeze()  # transformers 4.27's [352, 352]
    kept = torch.where(tensor > threshold, tensor, torch.tensor(0, dtype=torch.float))
    smoothed = torch.from_numpy(gaussian_filter(kept.numpy(), sigma=blur))
    normalized = (smoothed - smoothed.min()) / (smoothed.max() - smoothed.min())
    size = int(dilation_factor * 2) + 1
    dilated = torch.from_numpy(cv2.dilate(normalized.numpy(), np.ones((size, size), np.uint8), iterations=1))
    heatmap, binary = _colours(dilated.numpy(), "viridis"), _colours(dilated.numpy(), "Greys_r")
    dimensions = (image_np.shape[1], image_np.shape[0])
    heatmap = cv2.resize(heatmap, dimensions, interpolation=cv2.INTER_LINEAR)
    binary = cv2.resize(binary, dimensions, interpolation=cv2.INTER_LINEAR)
    overlay_heatmap = cv2.addWeighted(image_np, 0.5, heatmap, 0.5, 0)
    overlay_binary = cv2.addWeighted(image_np, 0, binary, 1, 0)
    bw = np.array(Image.fromarray(binary[..., 0]).convert("RGB")).astype(np.float32) / 255.0
    return (
        torch.from_numpy(bw)[..., 0],
        torch.from_numpy(overlay_heatmap.astype(np.float32) / 255.0)[None],
        torch.from_numpy(overlay_binary.astype(np.float32) / 255.0)[None],
    )


def biegert_combine(image: torch.Tensor, masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import cv2

    combined = masks[0] + masks[1] + masks[2] if len(masks) == 3 else masks[0] + masks[1]
    image_np = (image.numpy().squeeze() * 255).astype(np.uint8)
    heatmap, binary = _colours(combined.numpy(), "viridis"), _colours(combined.numpy(), "Greys_r")
    dimensions = (image_np.shape[1], image_np.shape[0])
    heatmap = cv2.resize(heatmap, dimensions, interpolation=cv2.INTER_LINEAR)
    binary = cv2.resize(binary, dimensions, interpolation=cv2.INTER_LINEAR)
    overlay_heatmap = cv2.addWeighted(image_np, 0.5, heatmap, 0.5, 0)
    overlay_binary = cv2.addWeighted(image_np, 0, binary, 1, 0)
    return (
        combined,
        torch.from_numpy(overlay_heatmap.astype(np.float32) / 255.0)[None],
        torch.from_numpy(overlay_binary.astype(np.float32) / 255.0)[None],
    )


def _to_pil(t: torch.Tensor) -> Image.Image:
    return Image.fromarray(np.clip(255.0 * t.cpu().numpy().squeeze(), 0, 255).astype(np.uint8))


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image).astype(np.float32) / 255.0).unsqueeze(0)


def _pil_to_mask(image: Image.Image) -> torch.Tensor:
    return 1.0 - torch.from_numpy(np.array(image.convert("L")).astype(np.float32) / 255.0)


def was_masks(image: torch.Tensor, text: str, pair: tuple[Any, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    processor, model = pair
    count, height, width, _ = image.shape
    if count == 1:
        picture = _to_pil(image)
        with torch.no_grad():
            result = model(**processor(text=text, images=picture, padding=True, return_tensors="pt"))
        tensor = torch.sigmoid(result[0])
        mask = 1.0 - (tensor - tensor.min()) / tensor.max()
        mask = _to_pil(mask.unsqueeze(0)).convert("L").resize(picture.size)
        return _pil_to_mask(mask), _pil_to_tensor(ImageOps.invert(mask.convert("RGB")))
    with torch.no_grad():
        # WAS hands the processor image * 255 as floats, which transformers takes only when they are whole
        # numbers (else "values outside the range [0, 1]"); those whole numbers are 8-bit images:
        pixels = [_to_pil(frame) for frame in image]
        result = model(**processor(text=[text] * count, images=pixels, padding=True, return_tensors="pt"))
        t = torch.sigmoid(result[0])
        mask = (t - t.min()) / t.max()
        mask = F.interpolate(mask[:, None], size=(height, width), mode="bilinear", antialias=True)[:, 0]  # torchvision
        mask = mask.unsqueeze(-1)
        return mask, mask.repeat(1, 1, 1, 3)


def was_batch_masks(images: list[torch.Tensor], texts: list[str], pair: tuple[Any, Any]) -> tuple[torch.Tensor, ...]:
    processor, model = pair
    pictures = [_to_pil(image) for image in images]
    batch = torch.cat([torch.from_numpy(np.array(p.convert("RGB")).astype(np.float32) / 255.0)[None] for p in pictures])
    with torch.no_grad():
        result = model(**processor(text=texts, images=pictures, padding=True, return_tensors="pt"))
    masks, mask_images = [], []
    for res in result.logits:
        tensor = torch.sigmoid(res)
        mask = 1.0 - (tensor - tensor.min()) / tensor.max()
        mask = _to_pil(mask.unsqueeze(0)).convert("L").resize(pictures[0].size)
        masks.append(_pil_to_mask(mask).unsqueeze(0).unsqueeze(1))
        mask_images.append(_pil_to_tensor(ImageOps.invert(mask.convert("RGB"))).squeeze(0))
    return batch, torch.cat(masks), torch.stack(mask_images)


if __name__ == "__main__":  # python clipseg_packs_reference.py MODEL_DIR IMAGE OUT.npz (example workflow settings)
    import sys

    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    folder, path, out = sys.argv[1:4]
    pair = (CLIPSegProcessor.from_pretrained(folder), CLIPSegForImageSegmentation.from_pretrained(folder).eval())
    picture = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255.0)[None]
    person = biegert_segment(picture, "a person", 7, 0.4, 4, pair)
    sky = biegert_segment(picture, "the sky", 7, 0.4, 4, pair)
    combined = biegert_combine(picture, [person[0], sky[0]])
    was_one = was_masks(picture, "a cat", pair)
    was_batch = was_batch_masks([picture, picture], ["a cat", "the sky"], pair)
    detector = biegert_segment(picture, "a cat", 0.0, 0.9, 0, pair)
    np.savez(
        out,
        biegert_bw=person[2].numpy(),
        biegert_combined=combined[2].numpy(),
        was_mask=was_one[1].numpy(),
        was_batch=was_batch[2].numpy(),
        detector_mask=detector[0].numpy(),
    )
