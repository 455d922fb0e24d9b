"""What textmask's ComfyUI nodes do when they run: load models, pick the device, convert tensors, report progress.

Imported only when a node runs (never at ComfyUI start-up), so an incompatible torch or transformers shows
up as a clear error on the node instead of breaking ComfyUI. Every ComfyUI module is optional: outside
ComfyUI (unit tests, scripts) the nodes run on the CPU without progress bars or model management.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..constants import BACKENDS, COMFY_DEVICES, COMFY_DTYPES
from ..engine import Segmenter, session_from_hf
from ..errors import InputError, ModelLoadError, PromptError
from ..images import as_image_batch
from ..model import DTYPES, load_model
from ..prompts import Blend, ImagePrompt, check_prompt, examples
from .folders import DEFAULT_MODEL, comfy_module, resolve_model

log = logging.getLogger("textmask")

DEVICE_CHOICES = COMFY_DEVICES
DTYPE_CHOICES = COMFY_DTYPES
BACKEND_CHOICES = BACKENDS
BROKEN_TRANSFORMERS = ("4.46.0",)  # its CLIPSeg interpolates position embeddings wrongly at 352×352

_LOCK = threading.Lock()
_PAIRS: dict[int, tuple[Any, Deferred, Deferred]] = {}  # id(LoadedModel) -> (it, its processor, its model)
_SESSIONS: dict[tuple[str, str, str, str, str], Segmenter] = {}
_PATCHERS: OrderedDict[int, tuple[Segmenter, Any]] = OrderedDict()
_PATCHERS_MAX = 4


# ------------------------------------------------------------------------------------------ models
class ClipsegModel(tuple):
    """``CLIPSEG_MODEL``: the ``(CLIPSegProcessor, CLIPSegForImageSegmentation)`` pair other packs expect.

    The pair itself is plain: CPU, float32, as SaltAI's and WAS Node Suite's CLIPSeg nodes use it. The
    attributes carry what textmask's nodes should do with it (model ``folder``, ``device`` and ``dtype``
    choice); other packs never see them.
    """

    folder: Path | None
    device: str
    dtype: str
    backend: str

    def __new__(
        cls,
        pair: Sequence[Any],
        folder: Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        backend: str = "auto",
    ) -> ClipsegModel:
        self = super().__new__(cls, tuple(pair))
        self.folder = folder
        self.device = device
        self.dtype = dtype
        self.backend = backend
        return self


def check_transformers() -> None:
    """Refuse transformers versions whose CLIPSeg is broken, with what to do (read from the installed package's
    metadata: transformers is not imported for this)."""
    import sys
    from importlib import metadata

    try:
        loaded = sys.modules.get("transformers")  # a foreign pair: transformers is imported already
        version = loaded.__version__ if loaded is not None else metadata.version("transformers")
    except metadata.PackageNotFoundError:
        raise ModelLoadError(
            "this needs transformers (pip install -r requirements.txt in textmask's node folder): another pack's "
            "CLIPSeg model, or another pack's node using textmask's loader output, runs on transformers"
        ) from None
    if version in BROKEN_TRANSFORMERS:
        raise ModelLoadError(
            f"transformers {version} has a CLIPSeg bug (position-embedding interpolation) that ruins masks; "
            "install another version: pip install 'transformers>=4.45,!=4.46.0'"
        )


class Deferred:
    """Stands in for a transformers object (the pair's processor or model) that only other packs' nodes use:
    built on first use, then every attribute access and call goes to it, and ``isinstance`` sees its class.
    textmask's own nodes never touch it, so they neither import transformers nor build these objects."""

    __slots__ = ("_build", "_lock", "_value")

    def __init__(self, build: Callable[[], Any]) -> None:
        object.__setattr__(self, "_build", build)
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_value", None)

    def materialize(self) -> Any:
        """The real object (built on the first call)."""
        with self._lock:
            if self._value is None:
                check_transformers()
                object.__setattr__(self, "_value", self._build())
            return self._value

    def __getattr__(self, name: str) -> Any:
        return getattr(self.materialize(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.materialize(), name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.materialize()(*args, **kwargs)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(pair[1], CLIPSegForImageSegmentation) holds
        return type(self.materialize())

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        import copy

        return copy.deepcopy(self.materialize(), memo)

    def __repr__(self) -> str:
        return repr(self._value) if self._value is not None else "<transformers object, built on first use>"


def comfy_backend(dtype: str, backend: str = "auto") -> str:
    """The loader's backend choice → ``"torch"`` or ``"openvino"`` (``"auto"``: OpenVINO for int8, else torch).

    Raises:
        ValueError: an unknown choice, or int8 on the torch backend.
        BackendUnavailable: OpenVINO asked for but not installed.
    """
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend: {backend!r} is not one of {BACKEND_CHOICES}")
    if backend == "openvino" or (backend == "auto" and dtype == "int8"):
        from ..model import resolve_backend

        resolve_backend("openvino", "cpu", _openvino_dtype(dtype))  # not installed, float16: say so now
        return "openvino"
    if dtype == "int8":
        raise ValueError("dtype: int8 runs on OpenVINO; set backend to openvino (or auto)")
    return "torch"


def _openvino_dtype(choice: str | None) -> str:
    """A loader dtype choice as an OpenVINO precision (``"auto"``: the fast one, bfloat16 where the CPU has it)."""
    return "fast" if choice in (None, "auto") else str(choice)


def load_pair(name: str, device: str = "auto", dtype: str = "auto", backend: str = "auto") -> ClipsegModel:
    """Load (once per process) the model ``name`` as a plain CPU float32 ``(processor, model)`` pair.

    textmask's own modules load now (mmapped weights, no transformers); the pair's transformers
    ``CLIPSegProcessor`` and ``CLIPSegForImageSegmentation`` (over the same parameters) are built only when
    another pack's node first uses them (:class:`Deferred`).

    Args:
        name: hub id, folder, or a choice from :func:`textmask.comfy.folders.list_models`.
        device, dtype: what textmask's masking nodes should run it on (``"auto"``: ComfyUI's choice).
        backend: ``"torch"``, ``"openvino"`` (the CPU, whatever ``device`` says) or ``"auto"`` (see
            :func:`comfy_backend`).
    """
    backend = comfy_backend(dtype, backend)
    folder = resolve_model(name)
    loaded = load_model(str(folder), device="cpu", dtype="float32")
    with _LOCK:
        pair = _PAIRS.get(id(loaded))
        if pair is None or pair[0] is not loaded:
            processor = Deferred(lambda: _processor(folder))
            model = Deferred(lambda: _transformers_model(loaded.model, folder))
            pair = _PAIRS[id(loaded)] = (loaded, processor, model)
    return ClipsegModel((pair[1], pair[2]), folder=folder, device=device, dtype=dtype, backend=backend)


def _processor(folder: Path) -> Any:
    from transformers import CLIPSegProcessor

    try:
        return CLIPSegProcessor.from_pretrained(str(folder))
    except Exception as exc:
        raise ModelLoadError(
            f"CLIPSeg model folder {folder}: the processor could not be loaded ({type(exc).__name__}: {exc}). "
            "The folder needs preprocessor_config.json, vocab.json and merges.txt."
        ) from None


def _transformers_model(model: Any, folder: Path) -> Any:
    """The pair's model, for other packs' nodes (they call transformers' forward on it): a transformers
    ``CLIPSegForImageSegmentation`` over the very parameters textmask loaded (nothing is copied), or, should
    this transformers' CLIPSeg not take them, its own load of the folder."""
    from ..clipseg.hf import to_transformers

    try:
        return to_transformers(model)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError):
        log.warning("textmask: transformers' CLIPSeg would not share textmask's weights; loading again", exc_info=True)
        from transformers import CLIPSegForImageSegmentation

        try:
            return CLIPSegForImageSegmentation.from_pretrained(str(folder)).eval()
        except Exception as exc:
            raise ModelLoadError(
                f"CLIPSeg model folder {folder}: transformers could not load it ({type(exc).__name__}: {exc})"
            ) from None


def comfy_device(choice: str = "auto") -> torch.device:
    """``"auto"``: ComfyUI's torch device (honours ``--cpu``), CPU outside ComfyUI; ``"cpu"``: the CPU."""
    if choice == "cpu":
        return torch.device("cpu")
    if choice != "auto":
        raise ValueError(f"device: {choice!r} is not one of {DEVICE_CHOICES}")
    mm = comfy_module("comfy.model_management")
    return torch.device(mm.get_torch_device()) if mm is not None else torch.device("cpu")


def comfy_dtype(choice: str | None, device: torch.device) -> torch.dtype:
    """``"auto"``: float16 where ComfyUI would use it on this GPU, else float32; float16 falls back to float32
    on the CPU (where it is slow or unsupported)."""
    if choice in (None, "auto"):
        if device.type == "cpu":
            return torch.float32
        mm = comfy_module("comfy.model_management")
        try:
            fp16 = bool(mm is not None and mm.should_use_fp16(device))
        except Exception:
            fp16 = False
        return torch.float16 if fp16 else torch.float32
    if choice not in DTYPES:
        raise ValueError(f"dtype: {choice!r} is not one of {DTYPE_CHOICES}")
    if choice == "float16" and device.type == "cpu":
        log.warning("textmask: float16 is not usable on the CPU; running CLIPSeg in float32")
        return torch.float32
    return DTYPES[choice]


def segmenter_for(clipseg_model: Any = None) -> Segmenter:
    """The session a node runs on, on ComfyUI's device and loaded there through ComfyUI's model management.

    * None: the default model (``CIDAS/clipseg-rd64-refined`` from ``models/clipseg``), float32, loaded once.
    * a :class:`ClipsegModel` from textmask's loaders: textmask's own modules for its folder, on its device
      and dtype choice (no transformers object is built or imported).
    * any other ``(processor, model)`` pair (SaltAI, WAS, hand-made): used as is, or a copy moved to
      ComfyUI's device; the caller's model is never changed.

    Pixels are prepared as a ``CLIPSegProcessor`` prepares them here (for a foreign pair: its own processor),
    so the masks equal what the seed node computes in this ComfyUI.
    """
    if clipseg_model is None:
        clipseg_model = load_pair(DEFAULT_MODEL, device="auto", dtype="float32")
    if isinstance(clipseg_model, ClipsegModel) and clipseg_model.folder is not None:
        if getattr(clipseg_model, "backend", "torch") == "openvino":  # the CPU, whatever ComfyUI's device
            precision = _openvino_dtype(clipseg_model.dtype)
            return _own_session(clipseg_model.folder, torch.device("cpu"), precision, "openvino")
        device = comfy_device(clipseg_model.device)
        segmenter = _own_session(clipseg_model.folder, device, comfy_dtype(clipseg_model.dtype, device))
        _load_into_comfy(segmenter)
        return segmenter
    if not isinstance(clipseg_model, (tuple, list)) or len(clipseg_model) != 2:
        raise ModelLoadError(
            "clipseg_model: expected a (CLIPSegProcessor, CLIPSegForImageSegmentation) pair from a CLIPSeg "
            f"loader node, got {type(clipseg_model).__name__}"
        )
    check_transformers()
    processor, model = clipseg_model
    try:  # a foreign model keeps its dtype
        segmenter = session_from_hf(processor, model, device=comfy_device("auto"), dtype=None, backend="torch")
    except ModelLoadError as exc:
        raise ModelLoadError(f"clipseg_model: {exc}") from None
    if segmenter.model is not model:  # never manage a model another pack still uses as it is
        _load_into_comfy(segmenter)
    return segmenter


def seed_pixel_backend() -> str:
    """How a ``CLIPSegProcessor`` resizes images in this environment, hence the seed node's pixels: transformers 5
    with torchvision installed uses torchvision (``"torchvision"``), otherwise Pillow (``"pil"``). Read from
    package metadata; nothing is imported."""
    import importlib.util
    from importlib import metadata

    try:
        major = int(metadata.version("transformers").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return "pil"
    return "torchvision" if major >= 5 and importlib.util.find_spec("torchvision") is not None else "pil"


def _own_session(
    folder: Path, device: torch.device, dtype: torch.dtype | str, runtime: str = "torch", check: bool = True
) -> Segmenter:
    """textmask's session for a model folder, its pixels prepared as this environment's processor would.

    ``runtime``: ``"torch"``, or ``"openvino"`` (CPU; ``dtype`` is then an OpenVINO precision). A reduced precision
    is checked against float32 once per model (``check``; :func:`textmask.engine.checked_session`): when it does not
    hold, the next precision runs, with a warning; the precision that runs is logged."""
    from dataclasses import replace

    from ..engine import checked_session
    from ..precision import describe

    backend = seed_pixel_backend()
    key = (str(folder), str(device), str(dtype), backend, runtime)

    def with_pixels(loaded: Any) -> Any:
        if backend != loaded.preprocess.backend:
            return replace(loaded, preprocess=replace(loaded.preprocess, backend=backend))
        return loaded

    with _LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = _SESSIONS[key] = Segmenter(
                with_pixels(load_model(str(folder), device=device, dtype=dtype, backend=runtime))
            )
    if not check:
        return session

    def again(other: str, other_runtime: str) -> Segmenter:
        return _own_session(folder, device, other, other_runtime, check=False)

    def reference() -> Segmenter:
        return Segmenter(with_pixels(load_model(str(folder), device=device, dtype="float32", reuse=False)))

    runs = checked_session(session, again, reference)
    with _LOCK:
        if key not in _LOGGED:
            _LOGGED.add(key)
            log.info("textmask: CLIPSeg %s on %s runs %s", folder.name, runs.device, describe(runs))
    return runs


_LOGGED: set[tuple[str, ...]] = set()


def _holder_class() -> type[torch.nn.Module]:
    class TextmaskCLIPSeg(torch.nn.Module):
        """A container ComfyUI's ModelPatcher can move: transformers models have a read-only ``device``."""

        def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
            super().__init__()
            self.hf = model
            self.device = device

    return TextmaskCLIPSeg


def _load_into_comfy(segmenter: Segmenter) -> None:
    """Register the session's model with ComfyUI's model management (once) and make sure it is loaded.

    ComfyUI may offload it to its offload device when other models need the memory; this brings it back
    before each run. Only models textmask owns are registered: never a model another pack handed over.
    """
    mm = comfy_module("comfy.model_management")
    patcher_module = comfy_module("comfy.model_patcher")
    if mm is None or patcher_module is None:
        return
    try:
        with _LOCK:
            entry = _PATCHERS.get(id(segmenter))
            if entry is None or entry[0] is not segmenter:
                holder = _holder_class()(segmenter.model, segmenter.device)
                offload = segmenter.device if segmenter.device.type == "cpu" else mm.text_encoder_offload_device()
                patcher = patcher_module.ModelPatcher(holder, load_device=segmenter.device, offload_device=offload)
                entry = _PATCHERS[id(segmenter)] = (segmenter, patcher)
                while len(_PATCHERS) > _PATCHERS_MAX:
                    _PATCHERS.popitem(last=False)
            _PATCHERS.move_to_end(id(segmenter))
        mm.load_models_gpu([entry[1]], force_full_load=True)
    except Exception as exc:  # a ComfyUI whose model management differs: run unmanaged rather than not at all
        if type(exc).__name__ == "InterruptProcessingException":
            raise
        log.warning("textmask: ComfyUI model management failed; running CLIPSeg unmanaged", exc_info=True)
        segmenter.model.to(segmenter.device)


# ------------------------------------------------------------------------------------- conversion
def as_images(images: Any, name: str = "images") -> torch.Tensor | list[torch.Tensor]:
    """A ComfyUI IMAGE in any layout → ``[B, H, W, C]`` (or a list of ``[H, W, C]`` for a list input).

    Accepts ``[B, H, W, C]``, a single ``[H, W, C]``, a grey ``[B, H, W]`` / ``[H, W]`` (a MASK wired in), and
    lists of those (images of different sizes). Shape, channels and dtype are checked as the engine checks
    them (:func:`textmask.images.as_image_batch`); an empty batch is refused, since a node's output takes the
    first image's size.
    """
    if isinstance(images, (list, tuple)):
        items: list[torch.Tensor] = []
        for index, item in enumerate(images):
            batch = as_images(item, f"{name}[{index}]")
            items.extend(batch.unbind(0))  # type: ignore[union-attr]
        if not items:
            raise InputError(f"{name}: the batch is empty")
        return items
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{name}: expected an IMAGE tensor [B, H, W, C], got {type(images).__name__}")
    if images.dim() == 2:
        images = images[None, :, :, None]
    elif images.dim() == 3:
        images = images[None] if images.shape[-1] in (1, 2, 3, 4) else images[..., None]
    if images.dim() != 4:
        raise InputError(f"{name}: expected an IMAGE tensor [B, H, W, C], got shape {list(images.shape)}")
    if images.shape[0] == 0:
        raise InputError(f"{name}: the batch is empty")
    as_image_batch(images, name)  # the engine's layout checks, now, before a size becomes the output size
    return images


def as_masks(mask: torch.Tensor) -> torch.Tensor:
    """A ComfyUI MASK in any layout (``[H, W]``, ``[B, H, W]``, ``[B, 1, H, W]``) → ``[B, H, W]`` float."""
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1]).float()


def check_mask(mask: Any, name: str) -> torch.Tensor:
    """A MASK input: a tensor ``[H, W]`` / ``[B, H, W]``, else a clear error naming the input."""
    if not isinstance(mask, torch.Tensor) or mask.dim() < 2:
        shape = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputError(f"{name}: expected a MASK tensor [B, H, W], got {shape}")
    return mask


def first_size(images: torch.Tensor | list[torch.Tensor]) -> tuple[int, int]:
    """``(H, W)`` of the first image: the seed node's output size for the whole batch."""
    first = images[0]
    return int(first.shape[0]), int(first.shape[1])


def stack_at(images: torch.Tensor | list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Images as one ``[B, H, W, C]`` float batch at ``size`` (bilinear where a list holds other sizes)."""
    if isinstance(images, torch.Tensor):
        return images.float()
    resized = []
    for image in images:
        colour = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
        chw = colour.float().permute(2, 0, 1)[None]
        if tuple(chw.shape[-2:]) != size:
            chw = F.interpolate(chw, size=size, mode="bilinear", align_corners=False)
        resized.append(chw[0].permute(1, 2, 0).expand(-1, -1, 3))
    return torch.stack(resized)


def mask_to_image(masks: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` masks → ``[B, H, W, 3]`` black-and-white IMAGE."""
    return masks[..., None].expand(-1, -1, -1, 3).contiguous()


def prompt_lines(text: str, name: str, required: bool) -> list[str]:
    """One prompt per non-empty line."""
    prompts = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    if required and not prompts:
        raise PromptError(f"{name}: write at least one prompt (one per line), e.g. 'a cat'")
    return prompts


def example_prompt(
    example: Any, example_mask: Any = None, invert_mask: bool = False, weight: float = 1.0, **settings: Any
) -> ImagePrompt | Blend | None:
    """A ComfyUI example IMAGE (and optional MASK) → one prompt: an :class:`ImagePrompt`, or a :class:`Blend`
    averaging a batch of examples (:func:`textmask.prompts.examples`). None when no example is connected.

    Args:
        example: IMAGE ``[N, H, W, C]`` (any layout :func:`as_images` takes).
        example_mask: MASK ``[H, W]``, ``[1, H, W]`` (one for every example) or ``[N, H, W]``; 1 = object.
        invert_mask: use ``1 - mask``: Load Image's MASK is ``1 - alpha``, so a cut-out's shape needs this.
        weight, settings: the prompt's weight and :class:`ImagePrompt` fields (``background``, ``blur``, ``crop``).
    """
    if example is None:
        return None
    batch = as_images(example, "example")
    masks = None
    if example_mask is not None:
        if not isinstance(example_mask, torch.Tensor):
            raise PromptError(f"example_mask: expected a MASK tensor [B, H, W], got {type(example_mask).__name__}")
        masks = as_masks(example_mask)
        size = first_size(batch)
        if tuple(masks.shape[-2:]) == (64, 64) != size and not bool(masks.any()):
            raise PromptError(
                "example_mask: an empty 64×64 mask, which is what Load Image outputs for an image without "
                "transparency; connect a real mask of the example (1 = object) or leave example_mask unconnected"
            )
        if invert_mask:
            masks = 1.0 - masks
        empty = [index for index, peak in enumerate(masks.flatten(1).amax(1).tolist()) if peak <= 0]
        if empty:
            flip = "off" if invert_mask else "on"
            raise PromptError(
                f"example_mask{'' if len(masks) == 1 else f' {empty}'}: the mask is empty (all 0), so it marks no "
                f"object (1 = object). Load Image's MASK is 1 - alpha: try invert_example_mask {flip}"
            )
    prompt = examples(batch, masks, blend=True, weight=weight, **settings)
    checked = check_prompt(prompt, "example")  # reads and checks it now, naming the input
    assert isinstance(checked, (ImagePrompt, Blend))
    return checked


# --------------------------------------------------------------------------------------- running
def progress_reporter(total: int) -> Callable[[int, int], None]:
    """``progress(done, total)`` for the engine: advances ComfyUI's progress bar and stops when the user cancels."""
    utils = comfy_module("comfy.utils")
    mm = comfy_module("comfy.model_management")
    bar = utils.ProgressBar(total) if utils is not None else None

    def report(done: int, of: int) -> None:
        if bar is not None:
            bar.update_absolute(done, of)
        if mm is not None:
            mm.throw_exception_if_processing_interrupted()

    return report


def output_device() -> torch.device:
    """Where node outputs go: ComfyUI's intermediate device (the CPU unless ``--gpu-only``)."""
    mm = comfy_module("comfy.model_management")
    return torch.device(mm.intermediate_device()) if mm is not None else torch.device("cpu")


def run_masks(
    segmenter: Segmenter,
    images: torch.Tensor | list[torch.Tensor],
    prompts: Any,
    output_size: tuple[int, int],
    smoothing: float = 0.0,
    batch_size: int | None = None,
    negative_prompts: Any = (),
    **options: Any,
) -> torch.Tensor:
    """``segmenter.mask`` with ComfyUI's progress bar, cancel button and output device: ``[B, H, W]`` in [0, 1].

    With ``smoothing`` > 0 the batch is a video's frames, in order (``segmenter.stream``)."""
    total = len(images)
    run = {"output_size": output_size, "progress": progress_reporter(total), "output_device": output_device()}
    stabilize = float(options.pop("stabilize", 0.0))  # a video's frames too, flow-warped (textmask.stabilize)
    if smoothing > 0 or stabilize > 0:
        if stabilize > 0:
            options["stabilize"] = stabilize
        stream = segmenter.stream(
            [prompts], negative_prompts=negative_prompts, smoothing=smoothing, batch_size=batch_size, **options
        )
        masks = stream(images, **run)[:, 0]
    else:
        masks = segmenter.mask(
            images, prompts, negative_prompts=negative_prompts, batch_size=batch_size, **run, **options
        )
    assert isinstance(masks, torch.Tensor)
    return masks


def matte_images(images: Any, masks: Any, background: Any = "#ffffff", grid: int = 22) -> tuple[Any, Any, Any]:
    """The Matte node: IMAGE ``[B, H, W, C]`` and MASK ``[B', h, w]`` → ``(foreground [B, H, W, 3], alpha
    [B, H, W], composite on ``background`` [B, H, W, 3])`` on ComfyUI's output device (broadcast and resize as
    :func:`refine_masks`)."""
    from ..matting import matte
    from ..postprocess import parse_colour

    try:
        colour = parse_colour(background) or (255, 255, 255)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    batch, values = _image_mask_pair(images, masks, "matte")
    count = max(values.shape[0], batch.shape[0])
    alpha, fg = matte(batch.expand(count, -1, -1, -1), values.expand(count, -1, -1).clamp(0, 1), grid=grid)
    paint = torch.tensor(colour, dtype=fg.dtype, device=fg.device) / 255.0
    composite = alpha[..., None] * fg + (1 - alpha[..., None]) * paint
    device = output_device()
    return fg.to(device), alpha.to(device), composite.to(device)


def _image_mask_pair(images: Any, masks: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE and MASK for the refine and matte nodes: one size, masks resized to the images, batches that match."""
    batch = as_images(images)
    if isinstance(batch, list):
        raise InputError(f"images: the images of a batch to {what} must share one size")
    if not isinstance(masks, torch.Tensor):
        raise InputError(f"masks: expected a MASK tensor [B, H, W], got {type(masks).__name__}")
    values = as_masks(masks)
    size = first_size(batch)
    if tuple(values.shape[-2:]) != size:
        values = F.interpolate(values[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    if values.shape[0] != batch.shape[0] and 1 not in (values.shape[0], batch.shape[0]):
        raise InputError(f"masks: a batch of {values.shape[0]} does not match images' batch of {batch.shape[0]}")
    return batch, values


def refine_masks(images: Any, masks: Any, **settings: Any) -> torch.Tensor:
    """The Refine Mask node: IMAGE ``[B, H, W, C]`` and MASK ``[B', h, w]`` → ``[B, H, W]`` refined masks on
    ComfyUI's output device. A batch of one image or one mask is used for every item of the other; a mask of
    another size than the images is resized (bilinear) first. ``settings`` are :class:`textmask.RefineOptions`
    fields."""
    from ..edges import refine

    batch, values = _image_mask_pair(images, masks, "refine")
    count = max(values.shape[0], batch.shape[0])
    refined = refine(batch.expand(count, -1, -1, -1), values.expand(count, -1, -1).clamp(0, 1), **settings)
    return refined.to(output_device())


def mask_instances(
    masks: Any, threshold: float, min_area: int, max_instances: int, label: str
) -> tuple[torch.Tensor, list[Any], list[Any], Any, int, list[Any], list[Any]]:
    """The Mask to Instances node: MASK ``[B, H, W]`` → its outputs (see :func:`instance_outputs`).

    ``min_area`` is the only size floor: 0 keeps every object, single pixels too."""
    from ..components import instances

    if not isinstance(masks, torch.Tensor):
        raise InputError(f"masks: expected a MASK tensor [B, H, W], got {type(masks).__name__}")
    values = as_masks(masks).clamp(0, 1)
    found = instances(
        values, threshold=threshold, min_area=min_area, min_fraction=0.0, max_instances=max_instances or None
    )
    return instance_outputs(found, (int(values.shape[-2]), int(values.shape[-1])), label)


def instance_outputs(
    found: list[Any], size: tuple[int, int], label: str
) -> tuple[torch.Tensor, list[Any], list[Any], Any, int, list[Any], list[Any]]:
    """One :class:`textmask.components.Instances` per frame → Mask to Instances' outputs, each in the convention
    of the nodes it feeds (docs/comfyui.md, "Boxes and frames"):

    * ``instance_masks`` ``[N, H, W]``: every frame's objects in frame order, largest first (one empty mask
      when N = 0);
    * ``boxes``, core ``BOUNDING_BOX``: per frame a list of ``{"x", "y", "width", "height", "score", "label"}``,
      ``[]`` for a frame without objects (as SAM3 Detect outputs them);
    * ``bboxes``, KJNodes ``BBOX``: one ``(x, y, w, h)`` per frame, the largest object, ``(0, 0, 0, 0)`` for an
      empty frame;
    * ``segs``: one Impact ``SEGS`` holding every frame's objects (as Impact's MASK to SEGS does for a batch);
    * ``count``: N;
    * ``segs_per_frame``: a list output, one ``SEGS`` per frame (``((H, W), [])`` for an empty frame);
    * ``instance_bboxes``, KJNodes ``BBOX``: one ``(x, y, w, h)`` per object, pairing with ``instance_masks``.
    """
    from ..components import to_bounding_boxes, to_kj_bboxes, to_kj_frame_bboxes, to_segs

    height, width = size
    stacked = [item.masks for item in found if len(item)]
    instance_masks = torch.cat(stacked) if stacked else torch.zeros((1, height, width))
    per_frame = [to_segs(item, label=label) for item in found]
    segs = ((int(height), int(width)), [seg for _, frame in per_frame for seg in frame])
    count = sum(len(item) for item in found)
    return (
        instance_masks.to(output_device()),
        to_bounding_boxes(found, label=label),
        to_kj_frame_bboxes(found),
        segs,
        count,
        per_frame,
        to_kj_bboxes(found),
    )


def tracked_instances(
    masks: Any, threshold: float, min_area: int, max_instances: int, label: str
) -> tuple[torch.Tensor, list[Any], list[Any], Any, int, list[Any], list[Any]]:
    """Mask to Instances with ``track``: MASK ``[B, H, W]`` (a video's frames) → the outputs of
    :func:`instance_outputs`, with ``instance_masks`` ``[B × N, H, W]`` (per frame, one mask per track in id order,
    empty where absent), ``count`` N (the tracks), ``boxes`` labelled ``label #id``, and ``instance_bboxes`` one per
    instance mask (``(0, 0, 0, 0)`` where the track is absent). ``max_instances`` keeps the N tracks of largest
    total area."""
    from ..components import to_kj_frame_bboxes, to_segs
    from ..tracking import track, track_ids, track_masks

    if not isinstance(masks, torch.Tensor):
        raise InputError(f"masks: expected a MASK tensor [B, H, W], got {type(masks).__name__}")
    values = as_masks(masks).clamp(0, 1)
    found = track(values, threshold=threshold, min_area=min_area, min_fraction=0.0)
    ids = track_ids(found)
    per_track = track_masks(found, ids)  # [N, B, H, W]
    if max_instances and len(ids) > max_instances:
        order = torch.argsort((per_track > 0).flatten(1).sum(1), descending=True, stable=True)[:max_instances]
        keep = sorted(int(i) for i in order)
        ids, per_track = [ids[i] for i in keep], per_track[keep]
    frames, height, width = values.shape
    if ids:
        stacked = per_track.permute(1, 0, 2, 3).reshape(frames * len(ids), height, width)
    else:
        stacked = torch.zeros((1, height, width))
    per_frame = [to_segs(item, label=label) for item in found]
    segs = ((int(height), int(width)), [seg for _, frame in per_frame for seg in frame])
    instance_bboxes = []
    for item in found:
        boxes = {int(i): box for i, box in zip(item.ids.tolist(), item.boxes.tolist())}
        for track_id in ids:
            x0, y0, x1, y1 = boxes.get(track_id, (0, 0, 0, 0))
            instance_bboxes.append((int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
    return (
        stacked.to(output_device()),
        _labelled_boxes(found, ids, label),
        to_kj_frame_bboxes(found),
        segs,
        len(ids),
        per_frame,
        instance_bboxes,
    )


def _labelled_boxes(found: list[Any], ids: list[int], label: str) -> list[list[dict[str, Any]]]:
    """ComfyUI ``BOUNDING_BOX`` per frame for the tracks in ``ids``, in id order, each labelled ``label #id``."""
    keep = set(ids)
    frames = []
    for item in found:
        frame = []
        for track_id, (x0, y0, x1, y1), score in zip(item.ids.tolist(), item.boxes.tolist(), item.scores.tolist()):
            if track_id in keep:
                entry = {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0, "score": score}
                frame.append({**entry, "label": f"{label} #{track_id}", "id": track_id})
        frames.append(frame)
    return frames


def track_video(
    images: Any, masks: Any, threshold: float, min_area: int, window: int, label: str
) -> tuple[list[torch.Tensor], list[Any], list[Any], str, int]:
    """The Track Masks node: IMAGE ``[T, H, W, C]`` + MASK ``[T, H, W]`` → (a list of ``[T, H, W]`` MASK
    batches, one per track id; ``BOUNDING_BOX`` per frame, labels ``label #id``; KJNodes ``BBOX``; the tracks as
    JSON; the track count)."""
    import json

    from ..components import to_kj_frame_bboxes
    from ..tracking import describe_tracks, track, track_ids, track_masks

    if not isinstance(masks, torch.Tensor):
        raise InputError(f"masks: expected a MASK tensor [T, H, W], got {type(masks).__name__}")
    values = as_masks(masks).clamp(0, 1)
    batch = as_images(images)
    if isinstance(batch, list) or batch.shape[0] != values.shape[0] or batch.shape[1:3] != values.shape[1:]:
        shape = [len(batch)] if isinstance(batch, list) else list(batch.shape)
        raise InputError(f"images: {shape} do not match masks {list(values.shape)}: one frame per mask, same size")
    found = track(values, batch, threshold=threshold, min_area=min_area, min_fraction=0.0, window=window)
    ids = track_ids(found)
    per_track = track_masks(found, ids).to(output_device())
    described = {"ids": ids, "frames": describe_tracks(found)}
    tracks = [per_track[n] for n in range(len(ids))] or [torch.zeros_like(values).to(output_device())]
    return tracks, _labelled_boxes(found, ids, label), to_kj_frame_bboxes(found), json.dumps(described), len(ids)


__all__ = [
    "BACKEND_CHOICES",
    "DEFAULT_MODEL",
    "DEVICE_CHOICES",
    "DTYPE_CHOICES",
    "ClipsegModel",
    "as_images",
    "as_masks",
    "check_transformers",
    "comfy_device",
    "comfy_dtype",
    "example_prompt",
    "first_size",
    "load_pair",
    "mask_to_image",
    "prompt_lines",
    "run_masks",
    "segmenter_for",
    "stack_at",
]
