"""Files in, masks out: what every file-based face (the command line, the Ray path) shares.

* **Discovery** (:func:`discover_inputs`): files, folders (recursive, filtered by ``--glob`` patterns) and
  ``-`` (one image on stdin) become :class:`InputItem` s, each with a *key*: its path relative to the folder
  it was found in, without the suffix (``holiday/beach``). Keys name the outputs, so they are unique per run.
* **Naming** (:func:`plan_outputs`): one output per input, mask target and kind::

      OUTDIR/<key>.<slug>.png              mask (8- or 16-bit grey PNG)
      OUTDIR/<key>.<slug>.overlay.png      heat-map overlay on the image
      OUTDIR/<key>.<slug>.cutout.png       RGBA cut-out, the mask as alpha
      OUTDIR/<key>.<slug>.mp4 / <key>.<slug>/000000.png ...   the same for videos (see textmask.video)

  where ``<slug>`` says which prompt(s) made the mask (:func:`prompt_slug`, :func:`make_targets`).
* **Resume**: an output that exists is never rewritten unless asked (:func:`pending_outputs`).
* **Atomic writes** (:func:`atomic_path`): everything is written to a hidden temporary name in the output
  folder and renamed into place, so an interrupted run never leaves a half-written file under a final name.
* **Rendering** (:func:`mask_levels`, :func:`overlay`, :func:`cutout`): batched tensor functions on
  ``[B, H, W]`` masks.

Nothing here imports click, PyAV or Ray.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import sys
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError, PromptError, TextmaskError
from .images import _is_pil
from .prompts import IMAGE_PREFIX, Blend, ImagePrompt, Prompt, TextPrompt, check_prompt, parse_prompt

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm", ".tga"}
)
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg", ".gif"})
OUTPUT_KINDS = ("mask", "overlay", "cutout")
VIDEO_FORMS = ("video", "frames")
COMBINE_CHOICES = ("each", "union", "intersection")
STDIN = "-"
_SLUG_LENGTH = 48


class CollisionError(TextmaskError, ValueError):
    """Two different inputs would write the same output names."""


# ---------------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class InputItem:
    """One input of a run.

    Attributes:
        source: the file path (as given or found), or ``"-"`` for an image read from stdin.
        key: the output name stem: the path relative to the folder it was found in (or the file name),
            without the suffix, ``/``-separated (``"holiday/beach"``); ``"stdin"`` for stdin.
        kind: ``"image"`` or ``"video"``.
    """

    source: str
    key: str
    kind: str


@dataclass
class Discovery:
    """What :func:`discover_inputs` found: the items in a stable order, and how many files it ignored."""

    items: list[InputItem]
    ignored: int = 0


def _is_animated_gif(path: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as image:
            return bool(getattr(image, "is_animated", False))
    except Exception:  # unreadable: let it fail later as an image, with a clear message
        return False


def input_kind(path: str | os.PathLike) -> str:
    """``"video"`` for video suffixes (and animated GIFs), else ``"image"``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return "video" if _is_animated_gif(path) else "image"
    return "video" if suffix in VIDEO_SUFFIXES else "image"


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    """Case-insensitive ``fnmatch`` on the relative path, or on the bare name for patterns without ``/``."""
    relative = relative.lower()
    name = relative.rsplit("/", 1)[-1]
    for pattern in patterns:
        pattern = pattern.lower().removeprefix("**/")
        if fnmatch.fnmatchcase(relative, pattern) or ("/" not in pattern and fnmatch.fnmatchcase(name, pattern)):
            return True
    return False


def _walk(folder: Path, exclude: Path | None) -> Iterator[Path]:
    """Files under ``folder`` in sorted order, skipping hidden files and folders and ``exclude``."""
    exclude_resolved = exclude.resolve() if exclude is not None else None
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        kept = []
        for name in sorted(dirs):
            if name.startswith("."):
                continue
            if exclude_resolved is not None and (root_path / name).resolve() == exclude_resolved:
                continue
            kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            if not name.startswith("."):
                yield root_path / name


def discover_inputs(
    inputs: Iterable[str | os.PathLike],
    globs: Sequence[str] = (),
    exclude: str | os.PathLike | None = None,
) -> Discovery:
    """Expand files, folders and ``-`` into :class:`InputItem` s with unique keys.

    Args:
        inputs: file paths (taken whatever their suffix; a missing file becomes an item that fails with
            "file not found"), folders (searched recursively; hidden files and folders skipped), or ``"-"``.
        globs: patterns for files inside folders (``"*.jpg"``, ``"shots/**/*.png"``; case-insensitive).
            Without any, folders yield files with a known image or video suffix.
        exclude: a folder never searched (the output folder, when it lies inside an input folder).

    Raises:
        CollisionError: two different files would get the same key even with their suffixes kept.

    Keys are the relative path without the suffix; when two inputs share one (``a.png`` and ``a.jpg``), both
    keep their suffix instead (``a.png``, ``a.jpg``). The same file given twice is taken once.
    """
    exclude_path = Path(exclude) if exclude is not None else None
    found: list[tuple[str, str, str]] = []  # (source, relative path with suffix, kind)
    ignored = 0
    seen_sources: set[str] = set()

    def add(source: str, relative: str, kind: str) -> None:
        identity = source if source == STDIN else os.path.realpath(source)
        if identity not in seen_sources:
            seen_sources.add(identity)
            found.append((source, relative, kind))

    for raw in inputs:
        text = os.fspath(raw)
        if text == STDIN:
            add(STDIN, "stdin", "image")
            continue
        path = Path(text)
        if path.is_dir():
            for file in _walk(path, exclude_path):
                relative = file.relative_to(path).as_posix()
                if globs:
                    if not _matches(relative, globs):
                        ignored += 1
                        continue
                elif file.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                    ignored += 1
                    continue
                add(str(file), relative, input_kind(file))
        else:
            add(text, path.name, input_kind(path))

    keys = [input_key(relative) for _, relative, _ in found]
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    keys = [relative if counts[key] > 1 else key for key, (_, relative, _) in zip(keys, found)]
    owners: dict[str, str] = {}
    for key, (source, _, _) in zip(keys, found):
        if key in owners:
            raise CollisionError(
                f"inputs {owners[key]!r} and {source!r} would write the same output names ({key}.*); "
                "mask them in separate runs or into different output folders"
            )
        owners[key] = source
    items = [InputItem(source=source, key=key, kind=kind) for key, (source, _, kind) in zip(keys, found)]
    return Discovery(items=items, ignored=ignored)


def input_key(relative: str) -> str:
    """An input's key from its ``/``-separated path relative to its folder: the path without the suffix
    (``"2024/garden.jpg"`` → ``"2024/garden"``; ``"stdin"`` stays). :func:`discover_inputs` keeps the suffix
    instead when two inputs would share a key."""
    if relative == "stdin":
        return relative
    head, _, name = relative.rpartition("/")
    base = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{base}" if head else base


# ------------------------------------------------------------------------------------------- prompts
def build_prompts(
    specs: Sequence[str] = (),
    examples: Sequence[str | os.PathLike] = (),
    example_masks: Sequence[str | os.PathLike] = (),
    *,
    blend: bool = False,
    example_weight: float = 1.0,
    name: str = "prompt",
    **image_settings: Any,
) -> list[Prompt]:
    """Command-line prompts → checked prompts (text, example images, or one blend of them).

    Args:
        specs: prompt strings (:func:`textmask.prompts.parse_prompt`): text, ``"image:PATH"`` (an example
            image), or ``"text:..."`` (a literal text, e.g. one that starts with ``image:``).
        examples: more example image files, after those among ``specs``.
        example_masks: masks of the examples (white = object): a file, ``"alpha"`` (the example's own
            transparency) or ``"none"``. One for every example, or one per example in order (the ``image:``
            specs first, then ``examples``).
        blend: average all the prompts into one (:class:`~textmask.prompts.Blend`): texts weigh 1, examples
            ``example_weight``.
        example_weight: an example's weight against a text in the blend.
        name: what to call the prompts in errors (``"prompt"``, ``"negative prompt"``).
        image_settings: :class:`~textmask.prompts.ImagePrompt` fields (``background``, ``blur``, ``crop``...).

    Returns:
        the prompts in order, without repeats (same text, or same example file with the same mask).
        Example files and masks have been read and checked (:func:`textmask.prompts.check_prompt`).

    Raises:
        PromptError: an empty text, a missing or unreadable example or mask, a mask count that fits no example.
    """
    parsed = [(spec, parse_prompt(spec)) for spec in specs]
    for spec, prompt in parsed:
        if isinstance(prompt, str) and not prompt.strip():
            raise PromptError(f"{name} {spec!r} is empty; describe what to mask, e.g. 'a cat'")
    example_specs = [spec for spec, prompt in parsed if isinstance(prompt, ImagePrompt)]
    example_specs += [IMAGE_PREFIX + os.fspath(path) for path in examples]
    masks = [os.fspath(mask) for mask in example_masks]
    if masks and not example_specs:
        raise PromptError(f"{len(masks)} example mask(s) but no example image; add one with image:PATH")
    if len(masks) == 1:
        masks *= len(example_specs)
    elif masks and len(masks) != len(example_specs):
        raise PromptError(
            f"{len(masks)} example masks for {len(example_specs)} example images; give one mask for all, "
            "or one per example (image: prompts first, then the other examples)"
        )
    masks = masks or ["none"] * len(example_specs)
    settings = dict(image_settings, weight=example_weight)

    def example(spec: str, mask: str) -> ImagePrompt:
        given = None if mask.lower() == "none" else ("alpha" if mask.lower() == "alpha" else Path(mask))
        prompt = parse_prompt(spec, mask=given, **settings)
        shown = spec[len(IMAGE_PREFIX) :] + ("" if given is None else f" (mask {mask})")
        check_prompt(prompt, f"{name} example {shown}")
        assert isinstance(prompt, ImagePrompt)
        return prompt

    pairs = iter(zip(example_specs, masks))
    prompts: list[Prompt] = []
    for _, prompt in parsed:
        prompts.append(example(*next(pairs)) if isinstance(prompt, ImagePrompt) else prompt)
    prompts += [example(spec, mask) for spec, mask in pairs]
    unique = list(_by_label(prompts).values())
    if blend and len(unique) > 1:
        return [Blend(unique)]  # each item's own weight: 1 for a text, example_weight for an example
    return unique


def _by_label(prompts: Iterable[Any]) -> dict[str, Any]:
    """``{prompt_label: prompt}`` in order, the first of repeats kept."""
    unique: dict[str, Any] = {}
    for prompt in prompts:
        unique.setdefault(prompt_label(prompt), prompt)
    return unique


def _content_hash(value: Any) -> str:
    """A short hash of an in-memory image or mask (tensor, array, PIL image)."""
    if _is_pil(value):
        return _hash8(f"{value.mode}{value.size}") + _hash_bytes(value.tobytes())
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        return _hash8(f"{tensor.dtype}{tuple(tensor.shape)}") + _hash_bytes(tensor.view(-1).view(torch.uint8).numpy())
    return _hash8(repr(value))


def _hash_bytes(data: Any) -> str:
    return hashlib.sha1(data).hexdigest()[:8]


def _source_label(value: Any) -> str:
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else "#" + _content_hash(value)


def prompt_label(prompt: Any) -> str:
    """A prompt's identity as text, stable from run to run: the text itself, ``image:PATH`` (plus
    ``|mask:PATH``) for an example, ``blend(w*label, ...)`` for a blend. In-memory images count by content."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, TextPrompt):
        return prompt.text
    if isinstance(prompt, Blend):
        items = ", ".join(f"{w:g}*{prompt_label(p)}" for p, w in zip(prompt.prompts, prompt.item_weights()))
        return f"blend({items})"
    if isinstance(prompt, ImagePrompt):
        label = IMAGE_PREFIX + _source_label(prompt.image)
        return label if prompt.mask is None else f"{label}|mask:{_source_label(prompt.mask)}"
    return IMAGE_PREFIX + _source_label(prompt)  # a bare image


def _words(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def _raw_slug(prompt: Any) -> str:
    if isinstance(prompt, str):
        return _words(prompt)
    if isinstance(prompt, TextPrompt):
        return _words(prompt.text)
    if isinstance(prompt, Blend):
        return "~".join(_raw_slug(p) or f"prompt-{_hash8(prompt_label(p))}" for p in prompt.prompts)
    image = prompt.image if isinstance(prompt, ImagePrompt) else prompt
    is_file = isinstance(image, (str, os.PathLike))
    slug = "example-" + ((_words(Path(image).stem) if is_file else "") or _hash8(prompt_label(prompt)))
    mask = prompt.mask if isinstance(prompt, ImagePrompt) else None
    if isinstance(mask, str) and mask == "alpha":
        slug += "-alpha"
    elif isinstance(mask, (str, os.PathLike)):
        slug += "-mask-" + (_words(Path(mask).stem) or _hash8(os.fspath(mask)))
    elif mask is not None:
        slug += "-masked"
    return slug


# ------------------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class MaskTarget:
    """One mask to make per input: these prompts combined (one prompt for ``combine="each"``).

    Attributes:
        prompts: the positive prompts merged into this mask (texts, example images, blends).
        slug: the file-name part that says which (``"a-cat"``, ``"cat+dog"``, ``"example-mug"``).
    """

    prompts: tuple[Any, ...]
    slug: str


def _hash8(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def prompt_slug(prompt: Any, max_length: int = _SLUG_LENGTH) -> str:
    """A file-name-safe, readable form of a prompt: ``"A red Car!"`` → ``"a-red-car"``.

    Lower-case ASCII letters and digits joined by ``-``; accents are dropped (``café`` → ``cafe``). A prompt
    with nothing left (emoji, other scripts) becomes ``prompt-<hash>``; one longer than ``max_length`` is
    cut and gets ``-<hash>`` so different long prompts stay apart.

    An example image is ``example-<file stem>`` (``image:shots/Mug 2.png`` → ``example-mug-2``), plus
    ``-alpha`` or ``-mask-<mask file stem>`` when it has a mask (``-masked`` for an in-memory mask; an
    in-memory image is ``example-<content hash>``). A blend joins its items with ``~``
    (``a-red-mug~example-mug``). The hash is of :func:`prompt_label`, so names are stable from run to run.
    """
    slug = _raw_slug(prompt)
    if not slug:
        return f"prompt-{_hash8(prompt_label(prompt))}"
    if len(slug) > max_length:
        return f"{slug[:max_length].rstrip('-~')}-{_hash8(prompt_label(prompt))}"
    return slug


def make_targets(prompts: Sequence[Any], combine: str = "each") -> list[MaskTarget]:
    """The masks to make for these prompts.

    Args:
        prompts: the positive prompts, in order (repeats, by :func:`prompt_label`, are dropped): texts,
            example images, blends (:func:`build_prompts`).
        combine: ``"each"`` (one mask per prompt), ``"union"`` (one mask: any prompt; slug ``a+b``) or
            ``"intersection"`` (one mask: every prompt; slug ``a_and_b``).
    """
    labels = _by_label(prompts)
    prompts = list(labels.values())
    names = list(labels)
    if not prompts:
        raise ValueError("give at least one prompt")
    if combine not in COMBINE_CHOICES:
        raise ValueError(f"combine: {combine!r} is not one of {COMBINE_CHOICES}")
    if combine == "each":
        slugs = [prompt_slug(p) for p in prompts]
        clashes = {s for s in slugs if slugs.count(s) > 1}
        slugs = [f"{s}-{_hash8(n)}" if s in clashes else s for s, n in zip(slugs, names)]
        return [MaskTarget((p,), s) for p, s in zip(prompts, slugs)]
    joiner = "+" if combine == "union" else "_and_"
    slug = joiner.join(prompt_slug(p, max_length=24) for p in prompts)
    if len(slug) > 2 * _SLUG_LENGTH:
        slug = f"{slug[: 2 * _SLUG_LENGTH].rstrip('-+_~')}-{_hash8(joiner.join(names))}"
    return [MaskTarget(tuple(prompts), slug)]


# -------------------------------------------------------------------------------------------- naming
@dataclass(frozen=True)
class PlannedOutput:
    """One output file (or PNG-sequence folder) of one input.

    Attributes:
        path: where it goes.
        target: index into the run's targets.
        kind: ``"mask"``, ``"overlay"`` or ``"cutout"``.
        form: ``"png"`` (an image's output), ``"video"`` or ``"frames"`` (a folder of PNGs).
    """

    path: Path
    target: int
    kind: str
    form: str


VIDEO_SUFFIX = {"mask": ".mp4", "overlay": ".mp4", "cutout": ".webm"}


def output_name(key: str, target: MaskTarget, kind: str, form: str = "png") -> str:
    """The output's path relative to the output folder (see the module docstring)."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"output kind: {kind!r} is not one of {OUTPUT_KINDS}")
    base = f"{key}.{target.slug}" + ("" if kind == "mask" else f".{kind}")
    if form == "png":
        return base + ".png"
    if form == "video":
        return base + VIDEO_SUFFIX[kind]
    if form == "frames":
        return base
    raise ValueError(f"output form: {form!r} is not png, video or frames")


def plan_outputs(
    item: InputItem,
    targets: Sequence[MaskTarget],
    outdir: str | os.PathLike,
    kinds: Sequence[str] = ("mask",),
    video_forms: Sequence[str] = ("video",),
) -> list[PlannedOutput]:
    """Every output of one input, in a fixed order (target, then kind, then form)."""
    outdir = Path(outdir)
    forms = list(video_forms) if item.kind == "video" else ["png"]
    return [
        PlannedOutput(outdir / output_name(item.key, target, kind, form), index, kind, form)
        for index, target in enumerate(targets)
        for kind in kinds
        for form in forms
    ]


def pending_outputs(planned: Sequence[PlannedOutput], overwrite: bool = False) -> list[PlannedOutput]:
    """The outputs still to write: all with ``overwrite``, else those that do not exist yet (resume)."""
    if overwrite:
        return list(planned)
    return [output for output in planned if not os.path.lexists(output.path)]


# ----------------------------------------------------------------------------------------- atomicity
def temporary_name(path: Path) -> Path:
    """The hidden name ``path`` is written under before the rename: ``.<name>.<pid>.part``."""
    return path.with_name(f".{path.name}.{os.getpid()}.part")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on any error remove it.

    Works for files and folders (a PNG sequence). An existing ``path`` is replaced: files atomically, folders
    by moving the old one aside first. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    _remove(temporary)
    try:
        yield temporary
        if temporary.is_dir() and path.is_dir():
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.replace(path, old)
            os.replace(temporary, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def encode_png(array: np.ndarray) -> bytes:
    """``[H, W]`` uint8/uint16 (grey) or ``[H, W, 3|4]`` uint8 (RGB/RGBA) → the bytes of the PNG file
    :func:`save_png` writes (for writers that are not the local disk: object stores, Ray)."""
    import io as _io

    from PIL import Image

    buffer = _io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``[H, W]`` uint8/uint16 (grey) or ``[H, W, 3|4]`` uint8 (RGB/RGBA) as a PNG, atomically."""
    data = encode_png(array)
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written there; raise ``OSError`` saying why not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".textmask-write-test-"):
            pass
    except OSError as exc:
        raise OSError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from None
    return folder


# ------------------------------------------------------------------------------------------- reading
@dataclass
class LoadedImage:
    """An input image ready for the engine and for rendering.

    Attributes:
        levels: ``[H, W, 3]`` uint8 RGB, upright (what the engine sees).
        alpha: ``[H, W]`` uint8 when the file has transparency, else None (kept in cut-outs).
    """

    levels: torch.Tensor
    alpha: torch.Tensor | None


def read_image(item: InputItem | str) -> LoadedImage:
    """Open one input image (a path, or ``-`` for stdin) with the engine's reader; raise :class:`InputError`."""
    from .images import load_image

    source = item.source if isinstance(item, InputItem) else str(item)
    if source == STDIN:
        return read_image_bytes(sys.stdin.buffer.read(), STDIN)
    image = load_image(source, Path(source).name)  # errors read "name: <what is wrong with> path"
    return _loaded(image, source)


def read_image_bytes(data: bytes, source: str) -> LoadedImage:
    """Decode a file's bytes exactly as :func:`read_image` decodes the file (same reader, same errors).

    Args:
        data: the whole file (read from stdin, an object store, ``ray.data.read_binary_files``...).
        source: the path the bytes came from (``-`` for stdin); error messages name it as if it was read.
    """
    from .images import load_image

    name, shown = ("stdin", "the data on stdin") if source == STDIN else (Path(source).name, source)
    with tempfile.TemporaryDirectory(prefix="textmask-bytes-") as folder:
        spooled = Path(folder) / "input"
        spooled.write_bytes(data)
        try:
            image = load_image(spooled, name)
        except InputError as exc:
            raise InputError(str(exc).replace(str(spooled), shown)) from None
    return _loaded(image, source)


def _loaded(image: PIL.Image.Image, source: str) -> LoadedImage:  # noqa: F821
    from .images import to_levels

    levels = to_levels(image, source).permute(1, 2, 0).contiguous()
    alpha = None
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        alpha = torch.from_numpy(np.array(image.convert("RGBA").getchannel("A"), dtype=np.uint8))
    return LoadedImage(levels=levels, alpha=alpha)


# ----------------------------------------------------------------------------------------- rendering
def mask_levels(masks: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Masks in [0, 1] → integer levels, rounded: uint8 (``bits=8``) or int32 holding 0..65535 (``bits=16``).

    Args:
        masks: ``[..., H, W]`` float.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits: must be 8 or 16, got {bits}")
    top = 255.0 if bits == 8 else 65535.0
    levels = torch.round(masks.float().clamp(0.0, 1.0) * top)
    return levels.to(torch.uint8) if bits == 8 else levels.to(torch.int32)


# A perceptual "heat" colour ramp: dark purple → red → orange → yellow → white-ish.
_HEAT_STOPS = torch.tensor(
    [[40, 10, 90], [150, 30, 110], [230, 60, 50], [250, 150, 30], [255, 235, 120]], dtype=torch.float32
)


def heat_colours(masks: torch.Tensor) -> torch.Tensor:
    """``[..., H, W]`` in [0, 1] → ``[..., H, W, 3]`` float RGB in [0, 255] along a heat ramp."""
    stops = _HEAT_STOPS.to(masks.device)
    position = masks.float().clamp(0.0, 1.0) * (len(stops) - 1)
    low = position.floor().long().clamp(max=len(stops) - 2)
    fraction = (position - low)[..., None]
    return stops[low] * (1.0 - fraction) + stops[low + 1] * fraction


def overlay(images: torch.Tensor, masks: torch.Tensor, opacity: float = 0.6) -> torch.Tensor:
    """Heat-map overlay: where the mask is high the image is tinted with a heat colour, elsewhere untouched.

    Args:
        images: ``[..., H, W, 3]`` uint8.
        masks: ``[..., H, W]`` in [0, 1].
        opacity: tint strength at mask 1.

    Returns:
        ``[..., H, W, 3]`` uint8.
    """
    weight = (masks.float().clamp(0.0, 1.0) * opacity)[..., None]
    mixed = images.float() * (1.0 - weight) + heat_colours(masks) * weight
    return torch.round(mixed).clamp(0, 255).to(torch.uint8)


def cutout(images: torch.Tensor, masks: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """RGBA cut-out: the image's colours with the mask as alpha (times the image's own alpha, if any).

    Args:
        images: ``[..., H, W, 3]`` uint8.
        masks: ``[..., H, W]`` in [0, 1].
        alpha: ``[..., H, W]`` uint8 existing transparency, or None.

    Returns:
        ``[..., H, W, 4]`` uint8.
    """
    coverage = masks.float().clamp(0.0, 1.0)
    if alpha is not None:
        coverage = coverage * (alpha.float() / 255.0)
    levels = torch.round(coverage * 255.0).to(torch.uint8)
    return torch.cat([images, levels[..., None]], dim=-1)


def render(kind: str, images: torch.Tensor, masks: torch.Tensor, alpha: torch.Tensor | None = None, bits: int = 8):
    """One output kind for a batch: ``"mask"`` → ``[..., H, W]`` levels, ``"overlay"`` → ``[..., H, W, 3]``
    uint8, ``"cutout"`` → ``[..., H, W, 4]`` uint8."""
    if kind == "mask":
        return mask_levels(masks, bits)
    if kind == "overlay":
        return overlay(images, masks)
    if kind == "cutout":
        return cutout(images, masks, alpha)
    raise ValueError(f"output kind: {kind!r} is not one of {OUTPUT_KINDS}")


def png_array(rendered: torch.Tensor, kind: str, bits: int = 8) -> np.ndarray:
    """A rendered single image as the numpy array :func:`save_png` writes (uint16 for 16-bit masks)."""
    array = rendered.cpu().numpy()
    if kind == "mask" and bits == 16:
        return array.astype(np.uint16)
    return array.astype(np.uint8, copy=False)
