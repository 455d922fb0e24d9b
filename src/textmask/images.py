"""Input conversion: every image form textmask accepts becomes 8-bit RGB levels ``[3, H, W]`` uint8.

One place decides how inputs are read, so every face (API, ComfyUI, CLI, Ray) reads them the same way:

* torch tensors and numpy arrays are channels-last: ``[H, W]`` (grey), ``[H, W, C]`` or ``[B, H, W, C]``
  with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA). Floats are read as [0, 1]; values a little
  outside are clipped, values that look like 0–255 or NaN/inf are refused. uint8 is used as is, uint16 is
  scaled to 8 bits, bool is 0/255.
* PIL images are turned upright from their EXIF orientation, then converted from any mode
  (1, L, LA, P, RGB, RGBA, CMYK, YCbCr, I;16, I, F). CMYK JPEGs without Adobe's marker are read with plain
  polarity (Pillow would read them as negatives); ICC profiles are not applied, as in ComfyUI's LoadImage.
* file paths are opened with Pillow, with clear errors for missing, non-image, truncated and
  oversized files.

Alpha is dropped, as ``PIL.Image.convert("RGB")`` and ComfyUI's LoadImage do: the mask is computed from
the colour channels. Float images become 8-bit levels by truncation (``floor(255 x)``), which is what
CLIPSeg's processor and the seed node do, so textmask feeds the model the same pixels they do.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from .errors import ImageTooLargeError, InputError

ImageInput = Union[torch.Tensor, np.ndarray, "PIL.Image.Image", str, os.PathLike]  # noqa: F821

# Float images whose values go past these bounds are refused rather than silently clipped to black/white.
_FLOAT_LOW, _FLOAT_HIGH = -1.0, 2.0


def _is_pil(value: Any) -> bool:
    module = type(value).__module__
    return module.startswith("PIL.") and hasattr(value, "mode") and hasattr(value, "size")


def _plain_cmyk(image: PIL.Image.Image) -> PIL.Image.Image:  # noqa: F821
    """Undo Pillow's CMYK inversion for a CMYK JPEG that lacks Adobe's APP14 marker.

    Photoshop writes CMYK JPEGs inverted and says so with an APP14 "Adobe" marker; Pillow assumes that
    polarity for every CMYK JPEG. A file without the marker stores plain CMYK, which Pillow would turn into
    a negative (mostly black); such files are inverted back here. Files with the marker (Photoshop's, and
    Pillow's own) are left as Pillow reads them. ICC profiles are not applied (neither does ComfyUI).
    """
    if image.mode == "CMYK" and getattr(image, "format", None) == "JPEG" and "adobe" not in image.info:
        return image.point(lambda value: 255 - value)
    return image


def load_image(path: str | os.PathLike, name: str = "image", data: bytes | None = None) -> PIL.Image.Image:  # noqa: F821
    """Open an image file fully (decoded, EXIF-upright) or raise :class:`InputError` saying why not.

    Args:
        path: the file; with ``data``, only what error messages call it (``"-"``: stdin).
        name: how to call this input in an error message (e.g. ``"images[3]"``).
        data: the file's bytes, read from memory instead of ``path`` (an upload, stdin, an object store).
    """
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    shown = "the data on stdin" if data is not None and str(path) == "-" else str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as opened:
                opened.load()
                image = ImageOps.exif_transpose(_plain_cmyk(opened))
                if image is opened:
                    image = opened.copy()
    except FileNotFoundError:
        raise InputError(f"{name}: file not found: {shown}") from None
    except IsADirectoryError:
        raise InputError(f"{name}: {shown} is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: {shown} is not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(
            f"{name}: {shown} is too large to open safely (over Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels); if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: {shown} is truncated or corrupt ({exc})") from None
    if image.width == 0 or image.height == 0:
        raise InputError(f"{name}: {shown} has zero size ({image.width}×{image.height})")
    return image


def image_size(data: bytes, name: str = "image", shown: str = "the upload") -> tuple[int, int]:
    """``(width, height)`` of an encoded image from its header alone (no pixel is decoded): to refuse an image too
    large for a limit before decoding it.

    Raises:
        InputError: the bytes are not an image Pillow can read (the message calls it ``name``: ``shown``).
    """
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the caller compares the size
            with Image.open(io.BytesIO(data)) as opened:
                return int(opened.width), int(opened.height)
    except UnidentifiedImageError:
        raise InputError(f"{name}: {shown} is not an image Pillow can read") from None
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"{name}: {shown} is too large to open safely") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: {shown} is truncated or corrupt ({exc})") from None


def alpha_channel(image: Any) -> torch.Tensor | None:
    """An image's own transparency as ``[H, W]`` (uint8 for PIL images; the array's dtype otherwise), or None
    when it has none.

    Args:
        image: a PIL image (any mode; made upright from EXIF first), or a channels-last tensor/array
            ``[H, W, C]`` (also ``[1, H, W, C]``) whose alpha is the last channel when C is 2 or 4.
    """
    if _is_pil(image):
        from PIL import ImageOps

        image = ImageOps.exif_transpose(image)
        if "A" not in image.getbands() and "transparency" not in image.info and image.mode not in ("RGBa", "La"):
            return None
        return torch.from_numpy(np.array(image.convert("RGBA").getchannel("A"), dtype=np.uint8))
    if isinstance(image, (np.ndarray, torch.Tensor)):
        values = image[0] if image.ndim == 4 and image.shape[0] == 1 else image
        if values.ndim != 3 or values.shape[-1] not in (2, 4):
            return None
        alpha = values[..., -1]
        if isinstance(alpha, np.ndarray):
            alpha = torch.from_numpy(np.ascontiguousarray(alpha))
        return alpha.contiguous()
    return None


@dataclass
class LoadedImage:
    """A decoded input image, as the engine and the renderers take it.

    Attributes:
        levels: ``[H, W, 3]`` uint8 RGB, upright (what the engine sees).
        alpha: ``[H, W]`` uint8 when the file has transparency, else None (kept in cut-outs).
    """

    levels: torch.Tensor
    alpha: torch.Tensor | None


def read_image(source: str | os.PathLike | Any, name: str | None = None, data: bytes | None = None) -> LoadedImage:
    """Read one image into colour levels and its transparency: a file, its bytes, or a decoded image.

    Args:
        source: a path (with ``data``: what the bytes are called in messages, ``"-"`` for stdin), or an
            already decoded image (PIL, or a channels-last array such as a ``ray.data.read_images`` row).
        name: how to call it in errors (default: the file name).
        data: the file's bytes (an upload, stdin, an object store), decoded from memory.

    Raises:
        InputError: naming the input and what is wrong with it.
    """
    if isinstance(source, (str, os.PathLike)):
        label = name or ("stdin" if str(source) == "-" else Path(source).name)
        image = load_image(source, label, data)
        where = os.fspath(source)
    else:
        image, where = source, name or "image"
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] in (2, 4) and image.dtype != np.uint8:
        alpha = None  # a float or 16-bit alpha has no 8-bit cut-out meaning; only uint8 arrays keep theirs
    else:
        alpha = alpha_channel(image)
    levels = to_levels(image, where).permute(1, 2, 0).contiguous()
    return LoadedImage(levels=levels, alpha=alpha)


def encode_png(array: np.ndarray) -> bytes:
    """``[H, W]`` uint8/uint16 (grey) or ``[H, W, 3|4]`` uint8 (RGB/RGBA) → the bytes of a PNG file."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _pil_to_array(image: PIL.Image.Image, name: str = "image") -> np.ndarray:  # noqa: F821
    """Any PIL mode → numpy ``[H, W]`` or ``[H, W, C]`` (uint8, uint16 or float32), upright."""
    from PIL import ImageOps

    try:
        return _pil_mode_to_array(ImageOps.exif_transpose(_plain_cmyk(image)))
    except OSError as exc:  # a lazily opened file whose pixels cannot be decoded
        raise InputError(f"{name}: the image is truncated or corrupt ({exc})") from None
    except ValueError as exc:  # a mode Pillow cannot convert
        raise InputError(f"{name}: cannot convert this {image.mode} image to RGB ({exc})") from None


def _pil_mode_to_array(image: PIL.Image.Image) -> np.ndarray:  # noqa: F821

    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if mode == "I":
        array = np.asarray(image, dtype=np.int64)
        high = 255 if array.size == 0 or array.max() <= 255 else 65535
        return (np.clip(array, 0, high) * (65535 // high)).astype(np.uint16)
    if mode == "F":
        array = np.asarray(image, dtype=np.float32)
        return array / 255.0 if array.size and np.nanmax(array) > _FLOAT_HIGH else array
    if mode in ("L", "RGB"):
        return np.asarray(image)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "La":  # premultiplied grey + alpha: Pillow converts it only to LA
        image = image.convert("LA")
    elif mode not in ("LA", "RGBA"):
        image = image.convert("RGB")  # 1, CMYK, YCbCr, LAB, HSV, La, RGBa, RGBX, ...
    return np.asarray(image)


def _image_label(name: str, first_index: int | None, offset: int) -> str:
    return name if first_index is None else f"{name}[{first_index + offset}]"


def _check_float(values: torch.Tensor, name: str, first_index: int | None = None) -> None:
    """Refuse NaN/inf and values far outside [0, 1], naming the first offending image (``images[3]``)."""
    if values.numel() == 0:
        return
    flat = values.reshape(values.shape[0], -1)
    finite = torch.isfinite(flat).all(dim=1)
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0, 0])
        raise InputError(
            f"{_image_label(name, first_index, index)} contains NaN or infinite values; clean the image before masking"
        )
    lows, highs = flat.amin(dim=1), flat.amax(dim=1)
    bad = (lows < _FLOAT_LOW) | (highs > _FLOAT_HIGH)
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        low, high = float(lows[index]), float(highs[index])
        hint = " (it looks like 0–255: divide by 255)" if high <= 255.0 + 1e-3 and low >= 0 else ""
        raise InputError(
            f"{_image_label(name, first_index, index)}: float images must hold values in [0, 1], "
            f"got [{low:g}, {high:g}]{hint}"
        )


def _check_layout(values: torch.Tensor, name: str) -> None:
    """Shape and dtype checks of a channels-last batch ``[B, H, W, C]`` (no pixel is read)."""
    if values.dim() != 4:
        raise InputError(f"{name}: expected [B, H, W, C], got shape {list(values.shape)}")
    if values.shape[-1] not in (1, 2, 3, 4):
        raise InputError(
            f"{name}: the last dimension must be 1, 2, 3 or 4 channels (channels-last), got shape {list(values.shape)}"
        )
    if values.shape[1] == 0 or values.shape[2] == 0:
        raise InputError(f"{name}: image has zero size ({values.shape[1]}×{values.shape[2]})")
    if not (values.dtype in (torch.uint8, torch.bool, torch.uint16) or values.is_floating_point()):
        raise InputError(f"{name}: unsupported dtype {values.dtype}; use float in [0, 1], uint8, uint16 or bool")


def frames_to_levels(frames: Any, name: str = "images") -> torch.Tensor:
    """A video's frames as 8-bit RGB levels, with errors that name ``name``.

    Args:
        frames: ``[T, H, W, C]`` tensor or array (C = 1, 2, 3 or 4; float read as [0, 1], uint8, uint16 or bool).

    Returns:
        ``[T, 3, H, W]`` uint8 on the frames' device.
    """
    if not isinstance(frames, torch.Tensor):
        try:
            frames = torch.as_tensor(np.asarray(frames))
        except (TypeError, ValueError):
            raise InputError(f"{name}: expected a [T, H, W, C] tensor or array, got {type(frames).__name__}") from None
    if frames.dim() != 4:
        raise InputError(f"{name}: expected [T, H, W, C] frames, got shape {list(frames.shape)}")
    return channels_last_to_levels(frames, name)


def channels_last_to_levels(values: torch.Tensor, name: str = "images", first_index: int | None = None) -> torch.Tensor:
    """Convert a channels-last batch to 8-bit RGB levels.

    Args:
        values: ``[B, H, W, C]`` with C in {1, 2, 3, 4}; float (read as [0, 1]), uint8, uint16 or bool.
        name: how to call this input in an error message.
        first_index: the batch index of ``values[0]`` when ``values`` is (part of) a caller's batch: a
            value error then names the image (``images[11]``); None names the input as a whole.

    Returns:
        ``[B, 3, H, W]`` uint8 on the same device. Grey is repeated to RGB; alpha is dropped.
    """
    _check_layout(values, name)
    channels = values.shape[-1]
    colour = values[..., :3] if channels >= 3 else values[..., :1]
    if colour.dtype == torch.uint8:
        levels = colour
    elif colour.dtype == torch.bool:
        levels = colour.to(torch.uint8) * 255
    elif colour.dtype == torch.uint16:
        levels = ((colour.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
    else:  # floating point (_check_layout refused the rest)
        colour = colour.float()
        _check_float(colour, name, first_index)
        # floor(clip(255 x)): the 8-bit conversion of the processor and the seed node.
        levels = torch.clamp(colour * 255.0, 0, 255).to(torch.uint8)
    levels = levels.permute(0, 3, 1, 2)
    if levels.shape[1] == 1:
        levels = levels.expand(-1, 3, -1, -1)
    return levels.contiguous()


def _array_to_tensor(array: np.ndarray, name: str) -> torch.Tensor:
    if array.dtype == np.uint16:
        # torch's uint16 support is thin; scale to 8 bits here (round to nearest).
        return torch.from_numpy(((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
    if array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)
    if array.dtype not in (np.uint8, np.bool_, np.float32):
        raise InputError(f"{name}: unsupported dtype {array.dtype}; use float in [0, 1], uint8, uint16 or bool")
    if not array.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array))


def _as_channels_last_batch(value: torch.Tensor, name: str, batched: bool) -> torch.Tensor:
    if value.dim() == 2:
        value = value[:, :, None]
    if value.dim() == 3 and not batched:
        value = value[None]
    if value.dim() != 4:
        expected = "[B, H, W, C]" if batched else "[H, W], [H, W, C] or [B, H, W, C]"
        raise InputError(f"{name}: expected {expected}, got shape {list(value.shape)}")
    return value


def to_levels(image: ImageInput, name: str = "image") -> torch.Tensor:
    """Convert one image of any accepted form to ``[3, H, W]`` uint8 RGB levels (CPU unless a tensor)."""
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image, name)
    if _is_pil(image):
        if image.width == 0 or image.height == 0:
            raise InputError(f"{name}: image has zero size ({image.width}×{image.height})")
        image = _pil_to_array(image, name)
    if isinstance(image, np.ndarray):
        image = _array_to_tensor(image, name)
    if not isinstance(image, torch.Tensor):
        raise InputError(
            f"{name}: unsupported type {type(image).__name__}; pass a torch tensor, numpy array, PIL image or file path"
        )
    batch = _as_channels_last_batch(image, name, batched=False)
    if batch.shape[0] != 1:
        raise InputError(f"{name}: expected one image, got a batch of {batch.shape[0]}")
    return channels_last_to_levels(batch, name)[0]


@dataclass
class ImageBatch:
    """Images waiting to be masked, converted to levels one chunk at a time.

    Either ``stacked`` holds a channels-last batch ``[B, H, W, C]`` (all one size), or ``items`` holds
    single images of any form and size. ``batched`` says whether the caller passed a batch (results keep
    the batch dimension) or a single image (results drop it).
    """

    stacked: torch.Tensor | None
    items: Sequence[ImageInput] | None
    batched: bool
    name: str = "images"

    def __len__(self) -> int:
        return self.stacked.shape[0] if self.stacked is not None else len(self.items or ())

    @property
    def uniform_size(self) -> tuple[int, int] | None:
        """``(H, W)`` when every image is known to share one size without reading them, else None."""
        if self.stacked is not None:
            return int(self.stacked.shape[1]), int(self.stacked.shape[2])
        return None

    def levels(self, start: int, stop: int) -> list[torch.Tensor]:
        """Images ``start..stop`` as a list of ``[3, H, W]`` uint8 tensors."""
        if self.stacked is not None:
            return list(channels_last_to_levels(self.stacked[start:stop], self.name, first_index=start).unbind(0))
        assert self.items is not None
        label = self.name if not self.batched else None
        return [to_levels(self.items[i], label or f"{self.name}[{i}]") for i in range(start, stop)]


def as_image_batch(images: Any, name: str = "images") -> ImageBatch:
    """Wrap any accepted input (single image, batch tensor/array, or a list of images) as an ImageBatch.

    A 4-D tensor/array is a batch ``[B, H, W, C]``; 2-D and 3-D ones are single images; lists and tuples
    are batches of single images of any form and size.
    """
    if isinstance(images, (list, tuple)):
        return ImageBatch(stacked=None, items=list(images), batched=True, name=name)
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            stacked = _array_to_tensor(images, name)
            _check_layout(stacked, name)
            return ImageBatch(stacked=stacked, items=None, batched=True, name=name)
        return ImageBatch(stacked=None, items=[images], batched=False, name=name)
    if isinstance(images, torch.Tensor):
        if images.dim() == 4:
            _check_layout(images, name)  # shape and dtype now, for the whole batch; values chunk by chunk
            return ImageBatch(stacked=images, items=None, batched=True, name=name)
        if images.dim() in (2, 3):
            return ImageBatch(stacked=None, items=[images], batched=False, name=name)
        raise InputError(f"{name}: expected [H, W], [H, W, C] or [B, H, W, C], got shape {list(images.shape)}")
    if isinstance(images, (str, os.PathLike)) or _is_pil(images):
        return ImageBatch(stacked=None, items=[images], batched=False, name=name)
    raise InputError(
        f"{name}: unsupported type {type(images).__name__}; pass a torch tensor, numpy array, PIL image, "
        "file path, or a list of those"
    )
