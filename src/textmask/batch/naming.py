"""Naming and resume: which masks each input gets, what their files are called, and which are still to write.

One output per input, mask target and kind::

    OUTDIR/<key>.<slug>.png              mask (8- or 16-bit grey PNG)
    OUTDIR/<key>.<slug>.overlay.png      heat-map overlay on the image
    OUTDIR/<key>.<slug>.cutout.png       RGBA cut-out, the mask as alpha
    OUTDIR/<key>.<slug>.instances.json   the mask's connected objects: boxes, scores, areas (images only),
    OUTDIR/<key>.<slug>.instance-01.png  ... and one mask per object, largest first
    OUTDIR/<key>.<slug>.mp4 / <key>.<slug>/000000.png ...   the same for videos (see textmask.batch.video)
    OUTDIR/<key>.<slug>.tracks.json      a video's tracked objects (instances): per frame, ids, boxes, scores, areas,
    OUTDIR/<key>.<slug>.track-01.mp4 / <key>.<slug>.track-01/000000.png ...   and one mask video per track id

where ``<slug>`` says which prompt(s) made the mask (:func:`prompt_slug`, :func:`make_targets`). An output that
exists is never rewritten unless asked (:func:`pending_outputs`).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..constants import OUTPUT_KINDS
from .inputs import InputItem

VIDEO_FORMS = ("video", "frames")
COMBINE_CHOICES = ("each", "union", "intersection")
_SLUG_LENGTH = 48


def _words(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def _raw_slug(prompt: Any) -> str:
    from ..prompts import Blend, ImagePrompt, TextPrompt, prompt_label, short_hash

    if isinstance(prompt, str):
        return _words(prompt)
    if isinstance(prompt, TextPrompt):
        return _words(prompt.text)
    if isinstance(prompt, Blend):
        return "~".join(_raw_slug(p) or f"prompt-{short_hash(prompt_label(p))}" for p in prompt.prompts)
    image = prompt.image if isinstance(prompt, ImagePrompt) else prompt
    is_file = isinstance(image, (str, os.PathLike))
    slug = "example-" + ((_words(Path(image).stem) if is_file else "") or short_hash(prompt_label(prompt)))
    mask = prompt.mask if isinstance(prompt, ImagePrompt) else None
    if isinstance(mask, str) and mask == "alpha":
        slug += "-alpha"
    elif isinstance(mask, (str, os.PathLike)):
        slug += "-mask-" + (_words(Path(mask).stem) or short_hash(os.fspath(mask)))
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
    from ..prompts import prompt_label, short_hash

    slug = _raw_slug(prompt)
    if not slug:
        return f"prompt-{short_hash(prompt_label(prompt))}"
    if len(slug) > max_length:
        return f"{slug[:max_length].rstrip('-~')}-{short_hash(prompt_label(prompt))}"
    return slug


def make_targets(prompts: Sequence[Any], combine: str = "each") -> list[MaskTarget]:
    """The masks to make for these prompts.

    Args:
        prompts: the positive prompts, in order (repeats, by :func:`prompt_label`, are dropped): texts,
            example images, blends (:func:`build_prompts`).
        combine: ``"each"`` (one mask per prompt), ``"union"`` (one mask: any prompt; slug ``a+b``) or
            ``"intersection"`` (one mask: every prompt; slug ``a_and_b``).
    """
    from ..prompts import short_hash, unique_prompts

    labels = unique_prompts(prompts)
    prompts = list(labels.values())
    names = list(labels)
    if not prompts:
        raise ValueError("give at least one prompt")
    if combine not in COMBINE_CHOICES:
        raise ValueError(f"combine: {combine!r} is not one of {COMBINE_CHOICES}")
    if combine == "each":
        slugs = [prompt_slug(p) for p in prompts]
        clashes = {s for s in slugs if slugs.count(s) > 1}
        slugs = [f"{s}-{short_hash(n)}" if s in clashes else s for s, n in zip(slugs, names)]
        return [MaskTarget((p,), s) for p, s in zip(prompts, slugs)]
    joiner = "+" if combine == "union" else "_and_"
    slug = joiner.join(prompt_slug(p, max_length=24) for p in prompts)
    if len(slug) > 2 * _SLUG_LENGTH:
        slug = f"{slug[: 2 * _SLUG_LENGTH].rstrip('-+_~')}-{short_hash(joiner.join(names))}"
    return [MaskTarget(tuple(prompts), slug)]


# -------------------------------------------------------------------------------------------- files
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
    if kind == "instances" and form == "tracks":  # a video's: tracked over its frames (textmask.track)
        return f"{key}.{target.slug}.tracks.json"  # written last: the track videos beside it are complete
    if kind == "instances":
        if form != "png":
            raise ValueError("output kind 'instances' is for images, not videos")
        return base + ".json"  # written last: the instance PNGs beside it are complete when it exists
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
    """Every output of one input, in a fixed order (target, then kind, then form). A video's ``instances`` are
    one ``tracks`` output per target (its track videos are written in every form of ``video_forms``)."""
    outdir = Path(outdir)
    forms = list(video_forms) if item.kind == "video" else ["png"]
    return [
        PlannedOutput(outdir / output_name(item.key, target, kind, form), index, kind, form)
        for index, target in enumerate(targets)
        for kind in kinds
        for form in (["tracks"] if kind == "instances" and item.kind == "video" else forms)
    ]


def instance_name(output: PlannedOutput, index: int, count: int) -> Path:
    """The PNG of instance ``index`` (1-based, of ``count``) of an ``instances`` output:
    ``<key>.<slug>.instance-01.png``, numbered with as many digits as ``count`` needs (at least 2), so the
    names sort in order."""
    stem = output.path.name.removesuffix(".instances.json")
    return output.path.with_name(f"{stem}.instance-{index:0{max(2, len(str(count)))}d}.png")


def track_name(output: PlannedOutput, track_id: int, form: str) -> Path:
    """The mask video (``form="video"``: ``<key>.<slug>.track-01.mp4``) or PNG-frame folder (``"frames"``:
    ``<key>.<slug>.track-01``) of one track id of a video's ``tracks`` output (ids of at least 2 digits)."""
    stem = output.path.name.removesuffix(".tracks.json")
    return output.path.with_name(f"{stem}.track-{track_id:02d}" + (VIDEO_SUFFIX["mask"] if form == "video" else ""))


def pending_outputs(planned: Sequence[PlannedOutput], overwrite: bool = False) -> list[PlannedOutput]:
    """The outputs still to write: all with ``overwrite``, else those that do not exist yet (resume)."""
    if overwrite:
        return list(planned)
    return [output for output in planned if not os.path.lexists(output.path)]
