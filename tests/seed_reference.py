"""The seed node's algorithm, written out for tests: SaltAI's ``SaltCLIPSegMasking.CLIPSeg_image`` with its
helpers (see shared/seed/SaltAI-context.md), the model passed in instead of reloaded per image.

Plain module (no pytest) so that the ComfyUI integration test can run it inside ComfyUI's own Python.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image


def tensor2pil(t: torch.Tensor) -> Image.Image:
    """× 255, clip, truncate to uint8, squeeze every size-1 dimension; PIL picks L / RGB / RGBA."""
    return Image.fromarray(np.clip(255.0 * t.cpu().numpy().squeeze(), 0, 255).astype(np.uint8))


def pil2tensor(image: Image.Image) -> torch.Tensor:
    """uint8 / 255 as float32 with a leading batch dimension."""
    return torch.from_numpy(np.array(image).astype(np.float32) / 255.0).unsqueeze(0)


def image2mask(t: torch.Tensor) -> torch.Tensor:
    """BT.601 luminance over the last dimension."""
    return t[..., 0] * 0.299 + t[..., 1] * 0.587 + t[..., 2] * 0.114


def seed_reference(
    images: Any,
    text: str,
    clipseg_model: tuple[Any, Any] | None = None,
    reload: Callable[[], tuple[Any, Any]] | None = None,
    device: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SaltCLIPSegMasking.CLIPSeg_image as published: returns (masks [B, H, W], mask images [B, H, W, 3]).

    ``clipseg_model``: the (processor, model) pair; or ``reload``: called for every image to load the pair
    afresh, as the seed does without ``clipseg_model`` (the benchmark's "seed as written" row).
    ``device``: where the processor's tensors go (the model must be there already).
    """
    masks, image_masks, master_size = [], [], None
    for image in images:
        image = tensor2pil(image)
        if not master_size:
            master_size = image.size
        processor, model = reload() if clipseg_model is None else clipseg_model
        inputs = processor(text=text, images=image, padding=True, return_tensors="pt")
        with torch.no_grad():
            result = model(**(inputs if device is None else inputs.to(device)))
        # transformers versions give [352, 352] or [1, 352, 352] for one image; the seed copes with both
        assert tuple(result[0].shape) in ((352, 352), (1, 352, 352)), tuple(result[0].shape)
        tensor = torch.sigmoid(result[0])
        mask = (tensor - tensor.min()) / tensor.max()
        mask = mask.unsqueeze(0)
        mask = tensor2pil(mask)
        mask = mask.resize(master_size)
        mask_image_tensor = pil2tensor(mask.convert("RGB"))
        masks.append(image2mask(mask_image_tensor))
        image_masks.append(mask_image_tensor)
    return torch.cat(masks, dim=0), torch.cat(image_masks, dim=0)


if __name__ == "__main__":  # python seed_reference.py MODEL_DIR IMAGE TEXT OUT.npy
    import sys

    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    folder, path, text, out = sys.argv[1:5]
    pair = (
        CLIPSegProcessor.from_pretrained(folder),
        CLIPSegForImageSegmentation.from_pretrained(folder).eval(),
    )
    picture = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255.0)[None]
    np.save(out, seed_reference(picture, text, pair)[0][0].numpy())  # [H, W]
