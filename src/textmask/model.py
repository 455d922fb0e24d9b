"""Finding, loading and caching CLIPSeg weights, and choosing device and dtype.

A model *source* is one of:

* a Hugging Face id such as ``CIDAS/clipseg-rd64-refined`` (the default), looked up in the Hugging Face
  cache first (``cache_dir``: ComfyUI keeps it in ``models/clipseg``) and downloaded only when missing and
  the machine is online;
* a local folder in ``save_pretrained`` layout (``config.json`` + ``model.safetensors`` + tokenizer files),
  or a Hugging Face cache folder of one model (``models--ORG--NAME``);
* ``random-tiny`` or ``random-full``: random-weight models built offline (the real CLIP tokenizer, the
  rd64-refined architecture for ``random-full``) for tests, demos and benchmarks. Their masks are
  meaningless.

Only safetensors weights are loaded unless ``allow_pickle=True``; remote code never runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .clipseg import CLIPSeg, CLIPSegConfig, CLIPTextTokenizer, TokenizerFilesError, load_clipseg
from .clipseg.model import same_device as _same_device
from .constants import BACKENDS, DEFAULT_MODEL, IMAGENET_MEAN, IMAGENET_STD, RANDOM_SOURCES
from .errors import ModelLoadError, ModelNotFoundError, first_line
from .vocab import VOCAB_SIZE as CLIP_VOCAB_SIZE

log = logging.getLogger("textmask")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# --------------------------------------------------------------------------------------------- devices
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None → CUDA, then MPS, then CPU; otherwise the named device, checked to exist."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device: {device!r} is not a device name (try 'auto', 'cpu', 'cuda', 'cuda:1', 'mps')"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but this torch build sees no CUDA GPU; use 'cpu' or 'auto'")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device: {device!r} was asked for but MPS is not available here; use 'cpu' or 'auto'")
    return resolved


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), where bf16 pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def int8_available() -> bool:
    """Whether this torch build has a quantized CPU engine for int8 dynamic linear layers."""
    engines = getattr(torch.backends.quantized, "supported_engines", [])
    return any(engine in engines for engine in ("fbgemm", "x86", "onednn"))


def fast_precision(device: torch.device) -> tuple[torch.dtype, str | None]:
    """What ``dtype="fast"`` runs on ``device`` with the torch backend: ``(dtype, quantize)`` (with OpenVINO
    installed, ``dtype="fast"`` on a bf16 CPU runs OpenVINO instead: :func:`resolve_backend`).

    CUDA/MPS: float16. CPU: float32 activations with int8 vision linear layers (dynamic quantization;
    int8 multiplies at about twice bfloat16's rate and four times float32's on VNNI CPUs), or bfloat16
    where this torch has no quantized engine and the CPU multiplies bf16 natively, else float32. The
    fast mode also rearranges the vision layers (``textmask.fast``); its masks agree with float32 to
    about 1e-2 in probability.
    """
    if device.type in ("cuda", "mps"):
        return torch.float16, None
    if int8_available():
        return torch.float32, "int8"
    return (torch.bfloat16 if cpu_has_native_bf16() else torch.float32), None


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"float32"``, ``"bfloat16"``, ``"float16"``, a torch dtype, or ``"fast"``: the activation dtype of
    the fast mode on this device (see :func:`fast_precision`)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype: {dtype} is not supported; use float32, bfloat16 or float16")
        chosen = dtype
    elif dtype == "fast":
        return fast_precision(device)[0]
    elif dtype in DTYPES:
        chosen = DTYPES[dtype]
    else:
        raise ValueError(f"dtype: {dtype!r} is not one of {[*sorted(DTYPES), 'fast']}")
    if chosen == torch.float16 and device.type == "cpu":
        raise ValueError("dtype: float16 is very slow or unsupported on CPU; use bfloat16 or 'fast' there")
    return chosen


def resolve_backend(
    backend: str | None, device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[str, str | None]:
    """Which backend runs the vision tower, and in what OpenVINO precision: ``(backend, precision)``.

    * ``"torch"``: textmask's torch modules (the only GPU path); precision None.
    * ``"openvino"``: OpenVINO on the CPU (:mod:`textmask.openvino_backend`); ``dtype`` ``float32``,
      ``bfloat16``, ``int8`` or ``fast`` (see :func:`textmask.openvino_backend.fast_precision`).
    * ``"auto"``/None: ``"openvino"`` in bfloat16 for ``dtype="fast"`` on the CPU when OpenVINO is installed and
      the CPU has native bf16 (as fast as torch's int8, with a third of its error: docs/benchmarks.md), and for
      ``dtype="int8"``; else ``"torch"``.

    Raises:
        ValueError: an unknown backend; ``backend="openvino"`` with a GPU device; a dtype the backend does not run.
        BackendUnavailable: ``backend="openvino"`` without OpenVINO installed.
    """
    name = "auto" if backend is None else str(backend)
    if name not in BACKENDS:
        raise ValueError(f"backend: {backend!r} is not one of {list(BACKENDS)}")
    if name == "auto":
        if isinstance(dtype, str) and dtype == "int8":
            name = "openvino"
        elif isinstance(dtype, str) and dtype == "fast" and resolve_device(device).type == "cpu":
            from . import openvino_backend as ovb

            # /proc/cpuinfo rules bf16 out cheaply on Linux (without importing OpenVINO); OpenVINO's own view decides.
            if ovb.openvino_installed() and (cpu_has_native_bf16() or not Path("/proc/cpuinfo").exists()):
                try:
                    ovb.import_openvino()
                    if ovb.cpu_supports_bf16():
                        return "openvino", "bfloat16"
                except Exception as exc:  # installed but broken: the torch fast mode, as without it
                    log.warning("OpenVINO is installed but unusable (%s); dtype='fast' runs on torch", first_line(exc))
            return "torch", None
        else:
            return "torch", None
    if name == "torch":
        if isinstance(dtype, str) and dtype == "int8":
            raise ValueError(
                "dtype: 'int8' is the OpenVINO backend's (backend='openvino'); torch's int8 mode is dtype='fast'"
            )
        return "torch", None
    if device is not None and str(device) not in ("auto", "cpu"):
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError):
            kind = str(device)
        if kind != "cpu":
            raise ValueError(
                f"device: {device!r} with backend='openvino': the OpenVINO backend runs on the CPU only; use "
                "backend='torch' (the default) for GPUs"
            )
    from . import openvino_backend as ovb

    ovb.import_openvino()
    return "openvino", ovb.resolve_precision(dtype)


# ------------------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class PreprocessConfig:
    """How the model wants its pixels: the fields of ``preprocessor_config.json`` that matter.

    Defaults are those of ``CIDAS/clipseg-rd64-refined``: resize to 352×352 with Pillow's bilinear
    filter, scale by 1/255, normalize with the ImageNet mean and std.
    """

    size: tuple[int, int] = (352, 352)
    resample: str = "bilinear"
    rescale_factor: float = 1 / 255
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    backend: str = "pil"  # "torchvision": transformers' torchvision image processors (see from_image_processor)

    @classmethod
    def from_folder(cls, folder: Path) -> PreprocessConfig:
        """Read ``preprocessor_config.json`` when the folder has one, else the rd64-refined defaults."""
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            return cls()
        try:
            raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path} is not valid JSON ({exc}); delete it to use the defaults") from exc
        return cls.from_mapping(raw, str(path))

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], where: str = "preprocessor config") -> PreprocessConfig:
        """Build from ``preprocessor_config.json``-style fields (missing ones take the rd64-refined defaults)."""
        size = raw.get("size", 352)
        if size is None:
            size = 352
        if not isinstance(size, (int, dict, tuple, list)):  # transformers 5 SizeDict
            size = {k: getattr(size, k, None) for k in ("height", "width", "shortest_edge")}
        if isinstance(size, dict):
            size = {k: v for k, v in size.items() if v is not None}
            size = (
                size.get("height", size.get("shortest_edge", 352)),
                size.get("width", size.get("shortest_edge", 352)),
            )
        elif isinstance(size, int):
            size = (size, size)
        resample_code = raw.get("resample", 2)
        resample = {2: "bilinear", 3: "bicubic"}.get(int(resample_code) if resample_code is not None else 2)
        if resample is None:
            log.warning("%s: resample=%s is not supported; using bilinear", where, resample_code)
            resample = "bilinear"
        return cls(
            size=(int(size[0]), int(size[1])),
            resample=resample,
            rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
            mean=tuple(float(x) for x in raw.get("image_mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
            std=tuple(float(x) for x in raw.get("image_std", IMAGENET_STD)),  # type: ignore[arg-type]
            do_resize=bool(raw.get("do_resize", True)),
            do_rescale=bool(raw.get("do_rescale", True)),
            do_normalize=bool(raw.get("do_normalize", True)),
        )

    @classmethod
    def from_image_processor(cls, image_processor: Any) -> PreprocessConfig:
        """Read the settings of a loaded transformers image processor (e.g. ``processor.image_processor``)."""
        names = ("size", "resample", "rescale_factor", "image_mean", "image_std", "do_resize", "do_rescale")
        raw = {name: getattr(image_processor, name) for name in (*names, "do_normalize")}
        raw = {name: value for name, value in raw.items() if value is not None}
        config = cls.from_mapping(raw, type(image_processor).__name__)
        # transformers 5 (with torchvision installed) and the 4.x "fast" processors resize with torchvision
        # and normalize in float32; the others resize with Pillow. Follow whichever this processor uses.
        bases = {base.__name__ for base in type(image_processor).__mro__}
        if bases & {"TorchvisionBackend", "BaseImageProcessorFast"}:
            config = replace(config, backend="torchvision")
        return config


# ------------------------------------------------------------------------------------------- locate
def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False


def _how_to_get(source: str, cache_dir: Path | None) -> str:
    where = f" --dir {cache_dir}" if cache_dir else ""
    return (
        "To get the weights: on a machine with internet run `textmask download "
        f"{source}{where}` (or `huggingface-cli download {source}"
        + (f" --cache-dir {cache_dir}" if cache_dir else "")
        + "`), or copy a folder holding config.json, model.safetensors and the tokenizer files "
        "(vocab.json, merges.txt) and pass its path as the model. Set HF_HUB_OFFLINE=1 to stop textmask "
        "from trying the network."
    )


def _snapshot_in(folder: Path) -> Path | None:
    """The newest snapshot folder of a ``models--ORG--NAME`` Hugging Face cache folder."""
    ref = folder / "refs" / "main"
    if ref.is_file():
        snapshot = folder / "snapshots" / ref.read_text().strip()
        if (snapshot / "config.json").is_file():
            return snapshot
    snapshots = sorted((folder / "snapshots").glob("*/config.json"), key=lambda p: p.stat().st_mtime)
    return snapshots[-1].parent if snapshots else None


def locate_model(
    source: str = DEFAULT_MODEL,
    cache_dir: str | Path | None = None,
    download: bool = True,
    search_dirs: Sequence[str | Path] = (),
) -> Path:
    """Resolve a model source to a local folder holding ``config.json`` (downloading only if needed).

    Looks, in this order: a random model (``random-tiny``/``random-full``, built once); an absolute folder; a
    folder of that name in each of ``search_dirs`` (ComfyUI's ``models/clipseg`` folders); a folder relative to
    the working directory; for a hub id, the Hugging Face cache in each of ``search_dirs``, then in
    ``cache_dir``, then the default cache; last, a download into ``cache_dir`` (else the first of
    ``search_dirs``, else the default cache), only when ``download`` and online.

    Args:
        source: hub id (``ORG/NAME``), folder (``save_pretrained`` layout, or a ``models--ORG--NAME`` cache folder).
        cache_dir: Hugging Face cache to look in and download to.
        download: allow a download when the weights are not cached.
        search_dirs: more folders holding models (by folder name or in Hugging Face cache layout).

    Raises:
        ModelNotFoundError: naming the source, where it was looked for, and how to get the weights.
    """
    source = str(source).strip() or DEFAULT_MODEL
    roots = [Path(folder).expanduser() for folder in search_dirs]
    cache = Path(cache_dir).expanduser() if cache_dir else None
    target = cache or (roots[0] if roots else None)  # where a download goes
    if source in RANDOM_SOURCES:
        from .testmodels import ensure_random_model

        return ensure_random_model(source)
    path = Path(source).expanduser()
    candidates = [path] if path.is_absolute() else [*(root / source for root in roots), path]
    for candidate in candidates:
        if candidate.is_dir():
            return _model_folder(candidate, source, target)
    if path.exists():
        raise ModelNotFoundError(f"model {source!r} is a file; pass the folder that holds config.json")
    looks_like_path = (
        source.startswith((".", "/", "~", "\\"))
        or os.sep in source.replace("/", "", 1)
        or (len(source) > 1 and source[1] == ":")
    )
    where = "".join(f", {root}" for root in roots)
    if looks_like_path or not _REPO_ID.match(source):
        raise ModelNotFoundError(
            f"model {source!r}: no such folder (looked in the working directory{where}), and it is not a Hugging "
            f"Face id (ORG/NAME). Check the path. {_how_to_get(DEFAULT_MODEL, target)}"
        )
    from huggingface_hub import snapshot_download

    caches = list(dict.fromkeys([*roots, *([cache] if cache else []), None]))
    for folder in caches:
        try:
            found = snapshot_download(
                source, cache_dir=str(folder) if folder else None, local_files_only=True, allow_patterns=_HUB_PATTERNS
            )
            return Path(found)
        except Exception:
            continue
    shown = ", ".join(str(folder) for folder in caches if folder)
    default = "the default: ~/.cache/huggingface/hub"
    searched = "the Hugging Face cache (" + (f"{shown} and " if shown else "") + f"{default})"
    if _hub_offline() or not download:
        why = "HF_HUB_OFFLINE is set" if _hub_offline() else "downloads are disabled"
        raise ModelNotFoundError(f"model {source!r} is not in {searched} and {why}. {_how_to_get(source, target)}")
    try:
        log.info("downloading %s into %s", source, target or "the Hugging Face cache")
        return Path(
            snapshot_download(
                source, cache_dir=str(target) if target else None, allow_patterns=_HUB_PATTERNS, etag_timeout=10
            )
        )
    except Exception as exc:
        raise ModelNotFoundError(
            f"model {source!r} is not in {searched} and could not be downloaded ({first_line(exc)}). "
            f"{_how_to_get(source, target)}"
        ) from None


def _model_folder(folder: Path, source: str, target: Path | None) -> Path:
    """An existing folder → the model folder in it (itself, or the snapshot of a ``models--ORG--NAME`` cache)."""
    if (folder / "config.json").is_file():
        return folder
    if folder.name.startswith("models--") and (snapshot := _snapshot_in(folder)) is not None:
        return snapshot
    raise ModelNotFoundError(
        f"model {source!r}: the folder {folder} exists but holds no config.json (nor a Hugging Face snapshot). "
        f"A model folder is what `save_pretrained` writes. {_how_to_get(DEFAULT_MODEL, target)}"
    )


def download_model(source: str = DEFAULT_MODEL, cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """Make a model's files present locally: download a hub id (safetensors, configs, tokenizer) into the
    Hugging Face cache (``cache_dir``: e.g. ComfyUI's ``models/clipseg``), build a random model, or find a folder.

    Returns:
        ``(folder, what happened)``: "downloaded (or already complete)", "built", "found", or "already
        present" with the reason nothing was downloaded (offline, hub unreachable).

    Raises:
        ModelNotFoundError: neither downloadable nor present, saying why and what to do.
    """
    source = str(source).strip()
    if source in RANDOM_SOURCES or Path(source).expanduser().is_dir():
        return locate_model(source, cache_dir=cache_dir, download=False), (
            "built" if source in RANDOM_SOURCES else "found"
        )
    if _hub_offline():  # raises a clear error if absent
        folder = locate_model(source, cache_dir=cache_dir, download=False)
        return folder, "already present (offline: nothing downloaded)"
    from huggingface_hub import snapshot_download

    cache_arg = str(Path(cache_dir).expanduser()) if cache_dir else None
    try:
        return Path(snapshot_download(source, cache_dir=cache_arg, allow_patterns=_HUB_PATTERNS)), (
            "downloaded (or already complete)"
        )
    except Exception as exc:
        reason = first_line(exc)
    try:  # the hub is unreachable, but a complete copy may already be here
        folder = locate_model(source, cache_dir=cache_dir, download=False)
    except ModelNotFoundError:
        raise ModelNotFoundError(
            f"could not download {source!r} ({reason}). Check the model id and the network (proxy: HTTPS_PROXY); "
            "on an offline machine copy a model folder over and pass its path as the model."
        ) from None
    return folder, f"already present (the hub could not be reached: {reason})"


# --------------------------------------------------------------------------------------------- load
@dataclass
class LoadedModel:
    """A CLIPSeg model ready for inference, with the tokenizer and pixel settings that go with it."""

    source: str
    folder: Path
    model: CLIPSeg  # textmask's own modules, eval mode, on ``device`` in ``dtype``
    tokenizer: Any  # CLIPTextTokenizer, or a foreign processor's transformers tokenizer
    preprocess: PreprocessConfig
    device: torch.device
    dtype: torch.dtype
    fast: bool = False  # dtype="fast": the vision tower runs textmask.fast layers
    quantize: str | None = None  # "int8": those layers' linear maps are int8 (CPU)
    shares_parameters_of: Any = None  # adopt_model: the caller's model whose parameters ``model`` uses as they are
    backend: str = "torch"  # "openvino": the vision tower runs through OpenVINO (textmask.openvino_backend)
    precision: str | None = None  # the OpenVINO precision: "float32", "bfloat16" or "int8"
    calibration: Any = None  # int8: the caller's calibration images (None: the built-in set)
    adopted: bool = False  # adopt_model: the weights came in memory (the OpenVINO cache keys on their hash)
    openvino_tower: Any = None  # the compiled OpenVINO vision graph, made by the first Segmenter over it
    openvino_decoder: Any = None  # and the compiled OpenVINO decoder

    @property
    def precision_name(self) -> str:
        """What runs the vision tower, in words: ``float32``, ``bfloat16``, ``float16``, ``fast-int8`` (torch's fast
        mode: int8 linears; ``fast-float16`` on a GPU), or ``openvino-bfloat16``, ``openvino-int8``..."""
        if self.backend == "openvino":
            return f"openvino-{self.precision}"
        dtype = str(self.dtype).removeprefix("torch.")
        return f"fast-{self.quantize or dtype}" if self.fast else dtype


def _read_config(folder: Path) -> CLIPSegConfig:
    """The folder's ``config.json``, checked to be a CLIPSeg textmask can run.

    Raises:
        ModelLoadError: unreadable, not CLIPSeg, or an unsupported setting (named).
    """
    path = folder / "config.json"
    return CLIPSegConfig.from_file(path).check_supported(str(path))


def _load_weights(
    folder: Path, config: CLIPSegConfig, allow_pickle: bool, device: torch.device, dtype: torch.dtype
) -> CLIPSeg:
    """textmask's CLIPSeg with the folder's weights (safetensors, mmapped; a pickle only with ``allow_pickle``)."""
    try:
        return load_clipseg(folder, config, device=device, dtype=dtype, allow_pickle=allow_pickle)
    except (ModelNotFoundError, ModelLoadError):
        raise
    except Exception as exc:  # safetensors' SafetensorError, OSError, missing or misshapen tensors...
        files = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file()))
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        detail = text.strip().splitlines()[0] if text.strip() else "no detail"
        raise ModelLoadError(
            f"model folder {folder}: the weights could not be loaded ({type(exc).__name__}: {detail}). "
            f"The files may be corrupt or truncated; delete the folder and download it again. Files there: {files}"
        ) from None


def _load_tokenizer(folder: Path, vocab_size: int | None = None) -> CLIPTextTokenizer:
    """The folder's tokenizer (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``); CLIP's own vocabulary,
    shipped with textmask, when the folder has no tokenizer files at all.

    ``vocab_size`` (the text model's) catches an empty or foreign vocabulary, which would turn every prompt
    into unknown tokens and give meaningless masks.
    """
    needs = "The folder needs vocab.json + merges.txt (or tokenizer.json)."
    try:
        tokenizer = CLIPTextTokenizer.from_folder(folder)
    except TokenizerFilesError as exc:
        raise ModelLoadError(f"model folder {folder}: the tokenizer could not be loaded ({exc}). {needs}") from None
    if tokenizer is None:
        if vocab_size not in (None, CLIP_VOCAB_SIZE):
            raise ModelLoadError(
                f"model folder {folder}: the tokenizer could not be loaded: the folder has no tokenizer files and the "
                f"model's vocabulary ({vocab_size} tokens) is not CLIP's ({CLIP_VOCAB_SIZE}). {needs}"
            )
        log.info("%s has no tokenizer files; using CLIP's tokenizer (shipped with textmask)", folder)
        tokenizer = CLIPTextTokenizer.shipped()
    if vocab_size and len(tokenizer) < vocab_size // 2:
        raise ModelLoadError(
            f"model folder {folder}: the tokenizer could not be loaded: it has {len(tokenizer)} tokens but the "
            f"model expects {vocab_size} (its vocabulary files are missing or empty). {needs}"
        )
    return tokenizer


_CACHE: dict[tuple[Any, ...], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def _calibration_token(calibration: Any) -> Any:
    """A process-cache key for calibration images: paths by name, anything else by identity."""
    if calibration is None:
        return None
    if isinstance(calibration, (str, Path)):
        return str(calibration)
    if isinstance(calibration, (list, tuple)) and all(isinstance(item, (str, Path)) for item in calibration):
        return tuple(str(item) for item in calibration)
    return ("object", id(calibration))


def load_model(
    source: str = DEFAULT_MODEL,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "float32",
    cache_dir: str | Path | None = None,
    allow_pickle: bool = False,
    download: bool = True,
    reuse: bool = True,
    backend: str | None = "auto",
    calibration: Any = None,
) -> LoadedModel:
    """Load a CLIPSeg model once per (source, device, dtype, backend) per process; later calls return the same
    object.

    Args:
        source: Hugging Face id, local folder, HF cache folder, or ``random-tiny`` / ``random-full``.
        device: ``"cpu"``, ``"cuda"``, ``"mps"``, ``"auto"``...
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"fast"``, or (OpenVINO) ``"int8"``.
        cache_dir: Hugging Face cache folder to look in / download to (ComfyUI: ``models/clipseg``).
        allow_pickle: also load ``pytorch_model.bin`` (pickle) weights. Only for sources you trust.
        download: allow a download when the weights are not cached.
        reuse: return the process-wide cached object when there is one, and cache a new one. False loads
            from disk afresh and caches nothing (to verify the files as they are now).
        backend: ``"torch"``, ``"openvino"`` (CPU) or ``"auto"`` (see :func:`resolve_backend`).
        calibration: ``backend="openvino"``, ``dtype="int8"``: images to calibrate the quantization on (None:
            textmask's built-in set).
    """
    backend_name, precision = resolve_backend(backend, device, dtype)
    if calibration is not None and precision != "int8":
        raise ValueError("calibration: images to calibrate on apply only to backend='openvino' with dtype='int8'")
    openvino = backend_name == "openvino"
    resolved_device = torch.device("cpu") if openvino else resolve_device(device)
    resolved_dtype = torch.float32 if openvino else resolve_dtype(dtype, resolved_device)
    fast = isinstance(dtype, str) and dtype == "fast" and not openvino
    quantize = fast_precision(resolved_device)[1] if fast else None
    key: tuple[Any, ...] = (str(source), str(cache_dir or ""), str(resolved_device), str(resolved_dtype), allow_pickle)
    if fast:
        key += ("fast", str(quantize))
    if openvino:
        key += ("openvino", precision, _calibration_token(calibration))
    with _CACHE_LOCK:
        cached = _CACHE.get(key) if reuse else None
        if cached is not None:
            return cached
        folder = locate_model(source, cache_dir=cache_dir, download=download)
        config = _read_config(folder)
        model = _load_weights(folder, config, allow_pickle, resolved_device, resolved_dtype)
        loaded = LoadedModel(
            source=str(source),
            folder=folder,
            model=model,
            tokenizer=_load_tokenizer(folder, config.text_config.vocab_size),
            preprocess=PreprocessConfig.from_folder(folder),
            device=resolved_device,
            dtype=resolved_dtype,
            fast=fast,
            quantize=quantize,
            backend=backend_name,
            precision=precision,
            calibration=calibration,
        )
        if reuse:
            _CACHE[key] = loaded
        return loaded


def clear_model_cache() -> None:
    """Forget every loaded model (they are freed once nothing else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ------------------------------------------------------------------------------ foreign (processor, model)
def adopt_model(
    processor: Any,
    model: Any,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    backend: str | None = "auto",
) -> LoadedModel:
    """Take a ``(CLIPSegProcessor, CLIPSegForImageSegmentation)`` pair that someone else loaded into textmask's
    own modules.

    The model's config becomes textmask's (:class:`~textmask.clipseg.CLIPSegConfig`) and its weights go into a
    :class:`~textmask.clipseg.CLIPSeg`: when the model already sits on ``device`` in ``dtype``, as the very
    same parameter objects (no copy; ``shares_parameters_of`` is then the caller's model), otherwise as
    converted copies. The caller's model is never changed. The tokenizer is the processor's, used as it is;
    the pixel settings (size, resample, mean, std, rescale factor, Pillow or torchvision) are read from its
    image processor.

    Args:
        processor: anything with ``.tokenizer`` and ``.image_processor`` (a ``CLIPSegProcessor``).
        model: a ``CLIPSegForImageSegmentation`` (or textmask's ``CLIPSeg``).
        device: target device; None keeps the model's own device.
        dtype: target dtype; None keeps the model's own dtype. With ``backend="openvino"``: the OpenVINO
            precision (``float32`` by default, ``bfloat16``, ``int8``, ``fast``); the torch parts run in float32
            on the CPU.
        backend: ``"torch"``, ``"openvino"`` or ``"auto"`` (default; see :func:`resolve_backend`).

    Raises:
        ModelLoadError: when the pair is not a CLIPSeg processor and model, or the model's config is one
            textmask's modules do not support.
    """
    from .clipseg.hf import from_transformers

    tokenizer = getattr(processor, "tokenizer", None)
    image_processor = getattr(processor, "image_processor", None)
    parameters = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    if (
        tokenizer is None
        or image_processor is None
        or not parameters
        or not hasattr(getattr(model, "clip", None), "vision_model")
        or not hasattr(model, "decoder")
        or getattr(model, "config", None) is None
    ):
        raise ModelLoadError(
            "expected a (CLIPSegProcessor, CLIPSegForImageSegmentation) pair, got "
            f"({type(processor).__name__}, {type(model).__name__})"
        )
    current_device, current_dtype = parameters[0].device, parameters[0].dtype
    backend_name, precision = resolve_backend(backend, current_device if device is None else device, dtype)
    if backend_name == "openvino":
        device, dtype = "cpu", torch.float32
    target_device = current_device if device is None else resolve_device(device)
    target_dtype = current_dtype if dtype is None else resolve_dtype(dtype, target_device)
    as_is = _same_device(current_device, target_device) and current_dtype == target_dtype
    if isinstance(model, CLIPSeg):
        model.complete_vision_tower()
    own = from_transformers(model, device=None if as_is else target_device, dtype=None if as_is else target_dtype)
    name = str(getattr(model.config, "_name_or_path", "") or getattr(model.config, "name_or_path", "") or "")
    return LoadedModel(
        source=name or f"{type(model).__name__}@{id(model):x}",
        folder=Path(name) if name else Path("."),
        model=own,
        tokenizer=tokenizer,
        preprocess=PreprocessConfig.from_image_processor(image_processor),
        device=current_device if as_is else target_device,
        dtype=target_dtype,
        shares_parameters_of=model if as_is else None,
        backend=backend_name,
        precision=precision,
        adopted=True,
    )
