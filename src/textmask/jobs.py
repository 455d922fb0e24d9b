"""Masking many files: plan the outputs, skip what is done, stream inputs in chunks, report failures.

:func:`run_job` is the loop behind ``textmask mask``; faces only parse options, show progress and print
the :class:`Report`. The parts a distributed runner needs on its own are public: :class:`PromptTable`
and :func:`finish_targets` (probabilities → one mask per target) and :func:`target_masks` (images →
masks), plus the naming and resume helpers of :mod:`textmask.io`.

Memory stays flat: images are read ``batch_size`` at a time (the next chunk is read while the current one
is computed) and videos are streamed frame chunk by frame chunk.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, TextmaskError
from .io import (
    InputItem,
    LoadedImage,
    MaskTarget,
    PlannedOutput,
    pending_outputs,
    plan_outputs,
    png_array,
    read_image,
    render,
    save_png,
)
from .postprocess import MaskOptions, finish_masks

log = logging.getLogger("textmask")

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)`` in units (an image or a video frame) after each chunk."""

_OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    error
    for error in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
    if error
) or (MemoryError,)
# Errors that mean the output folder cannot take more files: stop the run instead of failing every input.
_FATAL_ERRNOS = {errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}


class Interrupted(Exception):
    """The run was asked to stop: ``should_stop()`` returned True between two chunks."""


class OutputError(TextmaskError, OSError):
    """The output folder cannot be written (disk full, read-only): the run stops."""


# ----------------------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class PromptTable:
    """The unique prompts of a run and where each target's prompts sit among them.

    Attributes:
        prompts: unique positive and negative prompts (texts, example images, blends; the same object
            counts once), in the order the engine is asked for them.
        targets: per target, the indices of its positive prompts in ``prompts``.
        negative: indices of the negative prompts.
    """

    prompts: tuple[Any, ...]
    targets: tuple[tuple[int, ...], ...]
    negative: tuple[int, ...]

    @classmethod
    def build(cls, targets: Sequence[MaskTarget], negative_prompts: Sequence[Any] = ()) -> PromptTable:
        unique = list(dict.fromkeys([p for t in targets for p in t.prompts] + list(negative_prompts)))
        where = {p: i for i, p in enumerate(unique)}
        return cls(
            prompts=tuple(unique),
            targets=tuple(tuple(where[p] for p in t.prompts) for t in targets),
            negative=tuple(dict.fromkeys(where[p] for p in negative_prompts)),
        )


def finish_targets(probs: torch.Tensor, table: PromptTable, options: MaskOptions) -> torch.Tensor:
    """Per-prompt probabilities → one finished mask per target.

    Args:
        probs: ``[B, P, H, W]`` maps of ``table.prompts`` (already normalized as ``options.normalize`` says).
        table: which prompts make which target, and the negatives.
        options: post-processing (combine, threshold, grow, blur, feather, invert).

    Returns:
        ``[B, T, H, W]`` float32 in [0, 1], exactly what :meth:`Segmenter.mask` gives for each target's prompts.
    """
    negative = probs[:, list(table.negative)] if table.negative else None
    return torch.stack([finish_masks(probs[:, list(idx)], negative, options) for idx in table.targets], dim=1)


def target_masks(
    session: Any,
    images: Sequence[torch.Tensor],
    table: PromptTable,
    options: MaskOptions,
    batch_size: int | None = None,
) -> list[torch.Tensor]:
    """Images (any sizes) → ``[T, H, W]`` masks each: every image is encoded once for all targets.

    Args:
        session: a :class:`textmask.Segmenter`.
        images: ``[H, W, 3]`` uint8 tensors (or anything :meth:`Segmenter.predict` accepts in a list).
    """
    probs = session.predict(list(images), list(table.prompts), normalize=options.normalize, batch_size=batch_size)
    return [finish_targets(p[None], table, options)[0] for p in probs]


# ------------------------------------------------------------------------------------------- report
@dataclass
class Failure:
    """An input that could not be masked, and why (one line, no traceback)."""

    input: str
    error: str


def chunk_masks(
    session: Any,
    images: Sequence[LoadedImage],
    sources: Sequence[str],
    table: PromptTable,
    options: MaskOptions,
    batch_size: int | None = None,
) -> list[torch.Tensor | Failure]:
    """Read images → ``[T, H, W]`` masks each (one forward pass for the chunk), or a :class:`Failure` for an
    image the engine refuses; the others are still masked. Shared by :func:`run_job` and the Ray actors.

    Args:
        sources: the inputs' names, for failures.
    """
    try:
        return list(target_masks(session, [image.levels for image in images], table, options, batch_size))
    except (TextmaskError, ValueError) as exc:
        # Should not happen once the images are read; if it does, isolate the bad one instead of losing the chunk.
        if len(images) == 1:
            return [Failure(sources[0], _one_line(exc))]
    masks: list[torch.Tensor | Failure] = []
    for source, image in zip(sources, images):
        try:
            masks.append(target_masks(session, [image.levels], table, options, 1)[0])
        except (TextmaskError, ValueError) as inner:
            masks.append(Failure(source, _one_line(inner)))
    return masks


@dataclass
class Report:
    """What a run did. ``to_dict()`` is the ``--json`` summary; ``seconds`` is the masking loop's time."""

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

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def units(self) -> int:
        """Images masked plus video frames masked (what the progress bar counts)."""
        return self.processed - self.processed_videos + self.frames

    def to_dict(self) -> dict[str, Any]:
        return {
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


# ---------------------------------------------------------------------------------------------- job
@dataclass
class MaskJob:
    """Everything ``textmask mask`` needs besides the inputs and the model.

    Attributes:
        outdir: output folder.
        targets: the masks to make per input (:func:`textmask.io.make_targets`).
        negative_prompts: prompts (texts, example images) subtracted from every target.
        options: post-processing; ``options.combine`` applies inside each target.
        kinds: output kinds (``mask``, ``overlay``, ``cutout``).
        bits: 8 or 16 for mask PNGs.
        video_forms: for videos: ``video`` (a video file) and/or ``frames`` (a folder of PNGs).
        smoothing: temporal EMA strength for videos, in [0, 1); 0 = off.
        batch_size: images (or frames) per forward pass.
        overwrite: rewrite outputs that exist (else they are skipped: resume).
    """

    outdir: Path
    targets: list[MaskTarget]
    negative_prompts: tuple[Any, ...] = ()
    options: MaskOptions = field(default_factory=MaskOptions)
    kinds: tuple[str, ...] = ("mask",)
    bits: int = 8
    video_forms: tuple[str, ...] = ("video",)
    smoothing: float = 0.0
    batch_size: int = 8
    overwrite: bool = False

    @property
    def table(self) -> PromptTable:
        return PromptTable.build(self.targets, self.negative_prompts)

    def plan(self, item: InputItem) -> list[PlannedOutput]:
        """The outputs still to write for ``item`` (stdin is always written: its content is new each time)."""
        planned = plan_outputs(item, self.targets, self.outdir, self.kinds, self.video_forms)
        return pending_outputs(planned, overwrite=self.overwrite or item.source == "-")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _load(item: InputItem) -> LoadedImage | Failure:
    try:
        return read_image(item)
    except InputError as exc:
        return Failure(item.source, _one_line(exc))
    except (OSError, ValueError, MemoryError) as exc:
        return Failure(item.source, f"cannot read {item.source}: {_one_line(exc)}")


def write_image_outputs(
    item: InputItem, image: LoadedImage, masks: torch.Tensor, outputs: Sequence[PlannedOutput], bits: int = 8
) -> list[str]:
    """Render and write one image's outputs atomically; returns the written paths.

    Args:
        masks: ``[T, H, W]`` in [0, 1], one per target.
    """
    written = []
    for output in outputs:
        rendered = render(output.kind, image.levels, masks[output.target], image.alpha, bits)
        save_png(output.path, png_array(rendered, output.kind, bits))
        written.append(str(output.path))
    return written


def _write_failure(report: Report, item: InputItem, exc: OSError) -> None:
    if exc.errno in _FATAL_ERRNOS:
        raise OutputError(f"cannot write outputs for {item.source}: {exc.strerror or exc}; stopping") from None
    report.failures.append(Failure(item.source, f"cannot write its output: {_one_line(exc)}"))


def run_job(
    session: Any,
    items: Sequence[InputItem],
    job: MaskJob,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_failure: Callable[[Failure], None] | None = None,
) -> Report:
    """Mask every item (images in chunks, then videos frame chunk by chunk), skipping finished outputs.

    A bad input becomes a :class:`Failure` and the run goes on. ``should_stop()`` is checked between chunks
    (of images, or of a video's frames) and ends the run cleanly: ``report.interrupted``, nothing half-written.
    A full or read-only disk ends the run with ``report.fatal`` set.
    """
    started = time.perf_counter()
    stop = should_stop or (lambda: False)
    report = Report(inputs=len(items))
    table = job.table
    images: list[InputItem] = []  # pending images; their outputs are planned again per chunk (memory stays flat)
    videos: list[tuple[InputItem, list[PlannedOutput], Any]] = []
    failures_seen = 0

    def flush_failures() -> None:
        nonlocal failures_seen
        if on_failure is not None:
            for failure in report.failures[failures_seen:]:
                on_failure(failure)
        failures_seen = len(report.failures)

    for item in items:
        report.images += item.kind == "image"
        report.videos += item.kind == "video"
        outputs = job.plan(item)
        if not outputs:
            report.skipped += 1
        elif item.kind == "image":
            images.append(item)
        else:
            videos.append((item, outputs, None))

    if videos:
        from . import video as video_io

        probed = []
        for item, outputs, _ in videos:
            try:
                probed.append((item, outputs, video_io.probe(item.source)))
            except (InputError, video_io.VideoUnavailable) as exc:
                report.failures.append(Failure(item.source, _one_line(exc)))
        videos = probed
        flush_failures()

    total = len(images) + sum(max(1, info.frames) for _, _, info in videos)
    done = 0
    step = max(1, int(job.batch_size))
    starts = range(0, len(images), step)

    def report_progress(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, max(total, done))

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="textmask-read") as reader:

            def read_chunk(start: int) -> tuple[list[tuple[InputItem, list[PlannedOutput]]], list[Any]]:
                chunk = [(item, job.plan(item)) for item in images[start : start + step]]
                return chunk, [_load(item) if outputs else None for item, outputs in chunk]

            upcoming: Future | None = reader.submit(read_chunk, 0) if images else None
            for start in starts:
                if stop():
                    if upcoming is not None:
                        upcoming.cancel()
                    raise Interrupted
                assert upcoming is not None
                chunk, loaded = upcoming.result()
                following = start + step
                upcoming = reader.submit(read_chunk, following) if following < len(images) else None
                _mask_chunk(session, chunk, loaded, table, job, report)
                flush_failures()
                report_progress(len(chunk))

        for item, outputs, info in videos:
            if stop():
                raise Interrupted
            before = done
            try:
                written, frames = video_io.mask_video(
                    session, item, outputs, info, table, job, progress=report_progress, should_stop=stop
                )
            except OSError as exc:
                _write_failure(report, item, exc)
            except TextmaskError as exc:  # unreadable video, missing PyAV or encoder
                report.failures.append(Failure(item.source, _one_line(exc)))
            else:
                report.written.extend(written)
                report.frames += frames
                report.processed += 1
                report.processed_videos += 1
            flush_failures()
            estimated = max(1, info.frames)
            if done - before < estimated:  # a failed or shorter video: keep the total honest
                report_progress(estimated - (done - before))
    except Interrupted:
        report.interrupted = True
    except OutputError as exc:
        report.fatal = str(exc)
    except _OOM_ERRORS as exc:  # the engine already retried with halved batches down to one image
        report.fatal = (
            f"out of memory on {getattr(session, 'device', 'the device')} even one image at a time "
            f"({_one_line(exc)}); try smaller inputs, --dtype fast, or --device cpu"
        )
    report.seconds = time.perf_counter() - started
    flush_failures()
    return report


def _mask_chunk(
    session: Any,
    chunk: list[tuple[InputItem, list[PlannedOutput]]],
    loaded: list[LoadedImage | Failure | None],
    table: PromptTable,
    job: MaskJob,
    report: Report,
) -> None:
    ready = [(item, outputs, image) for (item, outputs), image in zip(chunk, loaded) if isinstance(image, LoadedImage)]
    report.failures.extend(image for image in loaded if isinstance(image, Failure))
    report.skipped += sum(image is None for image in loaded)  # finished meanwhile (e.g. by a parallel run)
    if not ready:
        return
    sources = [item.source for item, _, _ in ready]
    masks = chunk_masks(session, [image for _, _, image in ready], sources, table, job.options, job.batch_size)
    for (item, outputs, image), mask in zip(ready, masks):
        if isinstance(mask, Failure):
            report.failures.append(mask)
            continue
        try:
            report.written.extend(write_image_outputs(item, image, mask, outputs, job.bits))
        except OSError as exc:
            _write_failure(report, item, exc)
            continue
        report.processed += 1
