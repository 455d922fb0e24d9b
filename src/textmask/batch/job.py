"""What a batch run is and what it reports, shared by every executor: :class:`MaskJob` (what to make, where),
:class:`ModelSpec` (which model each worker loads), :class:`Report` and :class:`Failure`, plus the steps every
executor takes per image: read it (:func:`read_input`), mask a chunk with one engine call (:func:`mask_images`),
render and store its outputs (:func:`write_image_outputs`).

Torch-free at import: the engine is imported when a run starts.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..constants import DEFAULT_MODEL, RANDOM_SOURCES
from ..errors import InputError, OutputError, TextmaskError, first_line, is_out_of_memory, write_failure
from .inputs import STDIN, InputItem
from .naming import MaskTarget, PlannedOutput, pending_outputs, plan_outputs
from .store import Store

RANDOM_NOTE = "model {model!r} has random weights: its masks are meaningless (it exists for tests and demos)"


@dataclass(frozen=True)
class ModelSpec:
    """Which model a worker loads (see :func:`textmask.load`). Sent to remote workers, so it must be reachable
    there: a hub id (each node downloads or finds it in its cache) or a folder on storage every node sees."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "float32"
    cache_dir: str | None = None
    allow_pickle: bool = False
    download: bool = True
    backend: str = "auto"  # "torch", "openvino" (CPU) or "auto": see textmask.load

    @property
    def cpu_only(self) -> bool:
        """True when the model runs on OpenVINO, hence on the CPU: ``backend="openvino"`` or ``dtype="int8"``."""
        return self.backend == "openvino" or self.dtype == "int8"

    def load(self, device: str | None = None) -> Any:
        """The :class:`textmask.Segmenter` (cached per process); raises :class:`textmask.TextmaskError` or
        ``ValueError`` (a device or dtype this machine cannot use)."""
        from ..engine import load

        return load(
            self.model,
            device=device or self.device,
            dtype=self.dtype,
            cache_dir=self.cache_dir,
            allow_pickle=self.allow_pickle,
            download=self.download,
            backend=self.backend,
        )

    def warn_if_random(self, folder: str | os.PathLike | None = None) -> None:
        """Warn (``warnings.warn``) when the model has random weights, so nobody mistakes its masks for real ones."""
        from ..info import is_random_model

        folder = folder if folder is not None else self.model
        if self.model in RANDOM_SOURCES or (Path(folder).is_dir() and is_random_model(folder)):
            warnings.warn(RANDOM_NOTE.format(model=self.model), stacklevel=2)


@dataclass
class MaskJob:
    """What a run makes, besides the inputs and the model.

    Attributes:
        outdir: output folder (a local path, or a path inside ``filesystem``).
        targets: the masks to make per input (:func:`textmask.batch.naming.make_targets`).
        negative_prompts: prompts (texts, example images) subtracted from every target.
        options: a :class:`textmask.MaskOptions` (None: the defaults); ``options.combine`` applies inside each
            target.
        kinds: output kinds (``mask``, ``overlay``, ``cutout``).
        bits: 8 or 16 for mask PNGs.
        video_forms: for videos: ``video`` (a video file) and/or ``frames`` (a folder of PNGs).
        smoothing: temporal EMA strength for videos, in [0, 1); 0 = off.
        batch_size: images (or frames) per forward pass.
        overwrite: rewrite outputs that exist (else they are skipped: resume).
        filesystem: a pyarrow filesystem ``outdir`` lies in (object stores), or None for the local disk.
        instance_threshold: with the ``instances`` kind: an object is the pixels above this, connected.
        min_area: with the ``instances`` kind: objects smaller than this many pixels are dropped.
        stabilize: videos: motion-following temporal consistency (:func:`textmask.stabilize`) in [0, 1); 0 = off.
        rle: videos with the ``instances`` kind: also each object's COCO RLE in the tracks JSON (pycocotools).
    """

    outdir: Path
    targets: list[MaskTarget]
    negative_prompts: tuple[Any, ...] = ()
    options: Any = None
    kinds: tuple[str, ...] = ("mask",)
    bits: int = 8
    video_forms: tuple[str, ...] = ("video",)
    smoothing: float = 0.0
    batch_size: int = 8
    overwrite: bool = False
    filesystem: Any = None
    instance_threshold: float = 0.5
    min_area: int = 0
    stabilize: float = 0.0
    rle: bool = False

    def __post_init__(self) -> None:
        if self.options is None:
            from ..postprocess import MaskOptions

            self.options = MaskOptions()

    @property
    def store(self) -> Store:
        return Store(Path(self.outdir).as_posix() if self.filesystem is not None else str(self.outdir), self.filesystem)

    @property
    def stream_settings(self) -> dict[str, Any]:
        """What :meth:`textmask.Segmenter.stream` takes besides the targets, for a video of this job."""
        settings: dict[str, Any] = dict(negative_prompts=list(self.negative_prompts), options=self.options)
        settings["smoothing"] = self.smoothing
        if self.stabilize:
            settings["stabilize"] = self.stabilize
        return settings

    @property
    def tracking(self) -> Any:
        """How a video's ``instances`` are tracked and written (:class:`textmask.batch.video.TrackOutputs`)."""
        from .video import TrackOutputs

        return TrackOutputs(self.instance_threshold, self.min_area, self.video_forms, self.bits, self.rle)

    @property
    def engine_targets(self) -> list[list[Any]]:
        """The targets as :meth:`textmask.Segmenter.mask` takes them (``targets=``)."""
        return [list(target.prompts) for target in self.targets]

    def planned(self, item: InputItem) -> list[PlannedOutput]:
        """Every output of ``item``, done or not."""
        return plan_outputs(item, self.targets, self.outdir, self.kinds, self.video_forms)

    def plan(self, item: InputItem) -> list[PlannedOutput]:
        """The outputs still to write for ``item`` (stdin is always written: its content is new each time)."""
        return pending_outputs(self.planned(item), overwrite=self.overwrite or item.source == STDIN)


@dataclass
class Failure:
    """An input that could not be masked, and why (one line, no traceback)."""

    input: str
    error: str


@dataclass
class Report:
    """What a run did. ``to_dict()`` is the ``--json`` summary; ``seconds`` is the masking loop's time.

    ``device`` and ``dtype`` say what the masks were computed on; ``cluster`` how a distributed executor used
    its cluster (``to_dict()["ray"]``, absent when empty).
    """

    inputs: int = 0
    images: int = 0
    videos: int = 0
    processed: int = 0
    skipped: int = 0
    frames: int = 0
    processed_videos: int = 0
    written: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    ignored: int = 0
    interrupted: bool = False
    fatal: str | None = None
    seconds: float = 0.0
    device: str | None = None
    dtype: str | None = None
    cluster: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def units(self) -> int:
        """Images masked plus video frames masked (what the progress bar counts)."""
        return self.processed - self.processed_videos + self.frames

    def to_dict(self) -> dict[str, Any]:
        summary = {
            "inputs": self.inputs,
            "images": self.images,
            "videos": self.videos,
            "processed": self.processed,
            "skipped": self.skipped,
            "failed": self.failed,
            "ignored": self.ignored,
            "frames": self.frames,
            "written": len(self.written),
            "outputs": list(self.written),
            "failures": [{"input": f.input, "error": f.error} for f in self.failures],
            "interrupted": self.interrupted,
            "fatal": self.fatal,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.units / self.seconds, 2) if self.seconds > 0 else None,
        }
        if self.cluster:
            summary["ray"] = dict(self.cluster)
        return summary


def out_of_memory_fatal(error: BaseException, device: Any) -> str:
    """The run-stopping line for an out-of-memory error the engine could not avoid even one image at a time."""
    from ..errors import out_of_memory_message

    detail = getattr(error, "detail", "") or first_line(error)  # textmask.OutOfMemoryError carries torch's line
    advice = "Try smaller inputs, fewer prompts per run, --dtype fast, or --device cpu"
    return out_of_memory_message("the run", device, detail, advice)


def read_input(item: InputItem, data: bytes | None = None, image: Any = None) -> Any:
    """One input image as a :class:`textmask.images.LoadedImage`, or a :class:`Failure` saying why not.

    Args:
        item: the input (``item.source`` names it in messages; ``"-"`` reads stdin).
        data: the file's bytes when they are already in memory (read by Ray, an upload).
        image: an already decoded image (a ``ray.data.read_images`` row).
    """
    from ..images import read_image

    try:
        if image is not None:
            return read_image(image, item.source)
        if data is None and item.source == STDIN:
            import sys

            data = sys.stdin.buffer.read()
        return read_image(item.source, data=data)
    except InputError as exc:
        return Failure(item.source, first_line(exc))
    except (OSError, ValueError, MemoryError) as exc:
        return Failure(item.source, f"cannot read {item.source}: {first_line(exc)}")


def mask_images(session: Any, images: Sequence[Any], sources: Sequence[str], job: MaskJob) -> list[Any]:
    """Read images (:class:`~textmask.images.LoadedImage`) → ``[T, H, W]`` masks each, one engine call for the
    chunk, or a :class:`Failure` for an image the engine refuses (the others are still masked).

    Raises:
        the engine's out-of-memory error (it already retried one image at a time): the run stops.
    """
    levels = [image.levels for image in images]

    def run(chunk: list[Any]) -> list[Any]:
        return list(
            session.mask(
                chunk,
                targets=job.engine_targets,
                negative_prompts=list(job.negative_prompts),
                options=job.options,
                batch_size=job.batch_size,
            )
        )

    try:
        return run(levels)
    except (TextmaskError, ValueError) as exc:
        # Should not happen once the images are read; if it does, isolate the bad one instead of losing the chunk.
        if is_out_of_memory(exc):
            raise
        if len(levels) == 1:
            return [Failure(sources[0], first_line(exc))]
    masks: list[Any] = []
    for source, image in zip(sources, levels):
        try:
            masks.append(run([image])[0])
        except (TextmaskError, ValueError) as inner:
            if is_out_of_memory(inner):
                raise
            masks.append(Failure(source, first_line(inner)))
    return masks


def write_image_outputs(job: MaskJob, image: Any, masks: Any, outputs: Sequence[PlannedOutput]) -> list[str]:
    """Render and store one image's outputs atomically; returns the written paths.

    Args:
        job: where and how (its store, bit depth, instance settings).
        image: its :class:`~textmask.images.LoadedImage` (colours for overlays, alpha for cut-outs).
        masks: ``[T, H, W]`` in [0, 1], one per target.

    Raises:
        OSError: an output could not be written (see :func:`write_error`).
    """
    store, written = job.store, []
    for output in outputs:
        if output.kind == "instances":
            written.extend(_write_instances(job, output, masks[output.target]))
        else:
            written.append(store.write(output.path, render_png(output.kind, image, masks[output.target], job.bits)))
    return written


def _write_instances(job: MaskJob, output: PlannedOutput, mask: Any) -> list[str]:
    """One target's instances: a PNG per object (largest first), then the JSON that lists them (written last,
    so a JSON on disk means its PNGs are complete)."""
    import json

    from ..components import describe_instances, instances
    from ..images import encode_png
    from ..postprocess import mask_levels
    from ..prompts import prompt_label
    from .naming import instance_name

    found = instances(mask, threshold=job.instance_threshold, min_area=job.min_area)
    store, written, entries = job.store, [], describe_instances(found)
    for index, (entry, instance) in enumerate(zip(entries, found.masks), start=1):
        path = instance_name(output, index, len(entries))
        levels = mask_levels(instance, job.bits).cpu().numpy()
        written.append(store.write(path, encode_png(levels.astype("uint16" if job.bits == 16 else "uint8"))))
        entry["mask"] = path.name
    target = job.targets[output.target]
    summary = {
        "target": target.slug,
        "prompts": [prompt_label(prompt) for prompt in target.prompts],
        "height": int(mask.shape[-2]),
        "width": int(mask.shape[-1]),
        "threshold": job.instance_threshold,
        "box_format": "x0, y0, x1, y1 in pixels; x1 and y1 exclusive (mask[y0:y1, x0:x1] is the object)",
        "instances": entries,
    }
    written.append(store.write(output.path, (json.dumps(summary, indent=2) + "\n").encode()))
    return written


def render_png(kind: str, image: Any, mask: Any, bits: int = 8) -> bytes:
    """One output of one image as the bytes of its PNG file (what the CLI writes and the HTTP service answers).

    Args:
        kind: ``mask`` (8- or 16-bit grey), ``overlay`` (RGB heat map on the image) or ``cutout`` (RGBA).
        image: its :class:`~textmask.images.LoadedImage` (colours for overlays, alpha for cut-outs).
        mask: ``[H, W]`` in [0, 1].
        bits: 8 or 16, for masks.
    """
    from ..images import encode_png
    from ..postprocess import render

    array = render(kind, image.levels, mask, image.alpha, bits).cpu().numpy()
    array = array.astype("uint16") if kind == "mask" and bits == 16 else array.astype("uint8", copy=False)
    return encode_png(array)


def write_error(item: InputItem, error: OSError) -> OutputError | Failure:
    """An output write that failed: :class:`OutputError` (stop the run) or a :class:`Failure` of this input."""
    return write_failure(item.source, error) or Failure(item.source, f"cannot write its output: {first_line(error)}")
