"""Stabilize: temporally consistent video masks that follow motion, without the moving average's lag.

:func:`stabilize` (and its stateful form :class:`Stabilizer`, for a stream of chunks) blends each frame's mask
with the previous *result warped to the current frame* along the optical flow, instead of with the previous
result where it was (what :func:`~textmask.postprocess.smooth_temporal`, the moving average, does: it trails
anything that moves). Per frame ``t``:

1. **Flow**: OpenCV's DIS optical flow from frame ``t`` back to ``t - 1``, on grey frames reduced to
   ``flow_size`` pixels on their longer side (for speed; CLIPSeg's masks are coarser than that anyway), then
   scaled up to the masks' size.
2. **Warp**: the previous result, sampled where each pixel came from (``torch.grid_sample``, on the masks'
   device).
3. **Confidence**: how far to trust the warped result, per pixel: ``strength`` × flow confidence (the grey
   frame warped the same way must match the current one: occlusions, uncovered background and failed flow
   do not) × (1 − novelty), where novelty is 1 where the current mask departs from the warped one by much more
   than frame-to-frame noise (``novelty`` and up: an object that appears or leaves is followed at once).
4. **Blend**: ``out = mask + confidence · (warped − mask)``.

Each step uses only the previous frame and result, so a video stabilized chunk by chunk equals the same video
stabilized in one piece. Needs ``opencv-python-headless`` (``pip install 'textmask[video]'``), imported when
the first frames arrive.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import BackendUnavailable, InputError
from .images import frames_to_levels

__all__ = ["DEFAULT_STRENGTH", "Stabilizer", "check_strength", "stabilize"]

DEFAULT_STRENGTH = 0.8  # at most 80 % of each pixel comes from the warped past (measured in benchmarks/video.py)
FLOW_SIZE = 256  # longer side of the frames the flow is computed on
_LUMA = (0.299, 0.587, 0.114)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise BackendUnavailable(
            "stabilize needs OpenCV's optical flow: pip install 'textmask[video]' (or opencv-python-headless)"
        ) from None
    return cv2


def check_strength(strength: float) -> float:
    """A stabilize strength, checked to be in [0, 1)."""
    try:
        strength = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"stabilize strength: expected a number in [0, 1), got {strength!r}") from None
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"stabilize strength: must be in [0, 1), got {strength}")
    return strength


class Stabilizer:
    """Stabilize consecutive chunks of one video's masks (see the module docstring).

    Args:
        strength: in [0, 1): the most a pixel keeps of the warped past (0: off, masks pass through).
        flow_size: longer side, in pixels, of the frames the optical flow is computed on.
        novelty: a change of the mask by more than this (probability units) beyond the warped past starts to
            be followed at once; at twice this it is followed fully.
        photometric: grey-level error (0-255) of the flow's warp at which its confidence falls to 1/e.
        preset: DIS preset, ``"ultrafast"``, ``"fast"`` or ``"medium"``.
    """

    def __init__(
        self,
        strength: float = DEFAULT_STRENGTH,
        flow_size: int = FLOW_SIZE,
        novelty: float = 0.2,
        photometric: float = 20.0,
        preset: str = "fast",
    ) -> None:
        self.strength = check_strength(strength)
        if int(flow_size) < 16:
            raise ValueError(f"flow_size: must be at least 16 pixels, got {flow_size}")
        if not 0.0 < float(novelty) <= 1.0:
            raise ValueError(f"novelty: must be in (0, 1], got {novelty}")
        if not float(photometric) > 0:
            raise ValueError(f"photometric: must be > 0 grey levels, got {photometric}")
        if preset not in ("ultrafast", "fast", "medium"):
            raise ValueError(f"preset: {preset!r} is not one of ('ultrafast', 'fast', 'medium')")
        self.flow_size, self.novelty, self.photometric, self.preset = (
            int(flow_size),
            float(novelty),
            float(photometric),
            preset,
        )
        self._flow: Any = None
        self._grey: np.ndarray | None = None  # previous frame, grey uint8 at the flow size
        self._out: torch.Tensor | None = None  # previous result [..., H, W]
        self.frames = 0

    def __call__(self, images: Any, masks: Any) -> torch.Tensor:
        """Stabilize the next frames.

        Args:
            images: ``[B, H, W, C]`` frames (float in [0, 1] or uint8), following the previous call's.
            masks: ``[B, h, w]`` or ``[B, P, h, w]`` float in [0, 1] (P prompts per frame); any device. The
                masks may be of another size than the frames (the flow is scaled), not of another aspect.

        Returns:
            the stabilized masks, ``masks``' shape, float32, on its device.
        """
        return self.step_levels(frames_to_levels(images), masks)

    def reset(self) -> None:
        """Forget the past: the next frame starts a new video."""
        self._grey, self._out, self.frames = None, None, 0

    # ------------------------------------------------------------------------------------------- engine
    def step_levels(self, levels: torch.Tensor, masks: Any) -> torch.Tensor:
        """:meth:`__call__` on ``[B, 3, H, W]`` uint8 frames (the engine's form)."""
        if not isinstance(masks, torch.Tensor):
            try:
                masks = torch.as_tensor(np.asarray(masks))
            except (TypeError, ValueError):
                raise InputError(f"masks: expected a [T, H, W] tensor or array, got {type(masks).__name__}") from None
        if masks.dim() not in (3, 4):
            raise InputError(f"masks: expected [T, H, W] (or [T, P, H, W]), got shape {list(masks.shape)}")
        if masks.dtype == torch.uint8:
            masks = masks.float() / 255.0
        masks = masks.float()
        if levels.shape[0] != masks.shape[0]:
            raise InputError(f"images: {levels.shape[0]} frames for {masks.shape[0]} masks; give one image per mask")
        height, width = masks.shape[-2:]
        frame_h, frame_w = levels.shape[-2:]
        if abs(frame_h / frame_w - height / width) > 0.02 * height / width + 2.0 / min(height, frame_h):
            raise InputError(
                f"images: frames of {[frame_h, frame_w]} do not have the aspect of masks of {[height, width]}"
            )
        if self._out is not None and tuple(self._out.shape) != tuple(masks.shape[1:]):
            raise InputError(f"masks: {list(masks.shape[1:])} after {list(self._out.shape)}; one size per video")
        if self.strength == 0.0 or masks.shape[0] == 0:
            self.frames += masks.shape[0]
            return masks
        cv2 = _cv2()
        if self._flow is None:
            presets = {
                "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
            }
            self._flow = cv2.DISOpticalFlow_create(presets[self.preset])
        greys = self._greys(levels)
        out = torch.empty_like(masks)
        for t in range(masks.shape[0]):
            current = masks[t]
            if self._out is None or self._grey is None:
                result = current
            else:
                result = self._blend(cv2, greys[t], current)
            out[t] = result
            self._out, self._grey = result, greys[t]
            self.frames += 1
        return out

    def _greys(self, levels: torch.Tensor) -> np.ndarray:
        """``[B, 3, H, W]`` uint8 → ``[B, h, w]`` uint8 grey at the flow size (area-averaged)."""
        frame_h, frame_w = levels.shape[-2:]
        scale = min(1.0, self.flow_size / max(frame_h, frame_w))
        size = (max(8, round(frame_h * scale)), max(8, round(frame_w * scale)))
        weights = torch.tensor(_LUMA, dtype=torch.float32, device=levels.device).view(1, 3, 1, 1)
        grey = (levels.float() * weights).sum(1, keepdim=True)
        if size != (frame_h, frame_w):
            grey = F.interpolate(grey, size=size, mode="area")
        return grey[:, 0].round().clamp(0, 255).to(torch.uint8).cpu().numpy()

    def _blend(self, cv2: Any, grey: np.ndarray, current: torch.Tensor) -> torch.Tensor:
        assert self._grey is not None and self._out is not None
        h, w = grey.shape
        flow = self._flow.calc(grey, self._grey, None)  # [h, w, 2] (dx, dy): where each pixel was in t - 1
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        map_x, map_y = xs + flow[..., 0], ys + flow[..., 1]
        warped_grey = cv2.remap(self._grey, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        error = cv2.blur(np.abs(grey.astype(np.float32) - warped_grey.astype(np.float32)), (3, 3))
        inside = (map_x >= -0.5) & (map_x <= w - 0.5) & (map_y >= -0.5) & (map_y <= h - 0.5)
        confidence = np.exp(-((error / self.photometric) ** 2)) * inside
        device = current.device
        height, width = current.shape[-2:]
        # flow and confidence up to the masks' size; the flow as a grid in [-1, 1] (align_corners=False)
        small = torch.from_numpy(np.stack([flow[..., 0], flow[..., 1], confidence.astype(np.float32)]))
        small = small[None].to(device)
        big = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)[0]
        gx = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
        gy = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
        grid_x = gx[None, :] + big[0] * (2.0 / w)  # flow in flow-size pixels = (2 / w) in grid units
        grid_y = gy[:, None] + big[1] * (2.0 / h)
        grid = torch.stack([grid_x, grid_y], -1)[None]
        previous = self._out.to(device)
        planes = previous.reshape(1, -1, height, width)
        warped = F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=False)
        warped = warped.reshape(previous.shape)
        novelty = ((current - warped).abs() - self.novelty).div(self.novelty).clamp(0, 1)
        keep = self.strength * big[2].clamp(0, 1) * (1 - novelty)
        return current + keep * (warped - current)


def stabilize(images: Any, masks: Any, strength: float = DEFAULT_STRENGTH, **options: Any) -> torch.Tensor:
    """Temporally consistent masks that follow motion (see the module docstring).

    Args:
        images: ``[T, H, W, C]`` frames in order (float in [0, 1] or uint8; C = 1, 3 or 4).
        masks: ``[T, h, w]`` (or ``[T, P, h, w]``) float in [0, 1], one per frame, of the frames' aspect.
        strength: in [0, 1): the most each pixel keeps of the warped past.
        options: the other :class:`Stabilizer` settings (``flow_size``, ``novelty``, ``photometric``,
            ``preset``).

    Returns:
        ``masks``' shape, float32 in [0, 1], on its device.

    Raises:
        InputError: bad shapes (the message names the input); BackendUnavailable: no OpenCV.
    """
    return Stabilizer(strength, **options)(images, masks)
