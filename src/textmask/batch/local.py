"""The in-process executor: mask every input in this process, images in chunks, then videos frame chunk by chunk.

Memory stays flat: images are read ``batch_size`` at a time (the next chunk is read on a thread while the current
one is computed) and videos are streamed (:mod:`textmask.batch.video`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, Interrupted, OutputError, TextmaskError, first_line, is_out_of_memory
from .inputs import InputItem
from .job import (
    Failure,
    MaskJob,
    ModelSpec,
    Report,
    mask_images,
    out_of_memory_fatal,
    read_input,
    write_error,
    write_image_outputs,
)
from .naming import PlannedOutput

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)`` in units (an image or a video frame) after each chunk."""


@dataclass(frozen=True)
class LocalExecutor:
    """Runs a :class:`MaskJob` in this process on the model of ``model`` (loaded only if there is work)."""

    model: ModelSpec

    def run(
        self,
        items: Sequence[InputItem],
        job: MaskJob,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_failure: Callable[[Failure], None] | None = None,
    ) -> Report:
        session = None
        if any(job.plan(item) for item in items):  # everything done already: no model needed
            session = self.model.load()
            self.model.warn_if_random(session.loaded.folder)
        report = run_job(session, items, job, progress, should_stop, on_failure)
        if session is not None:
            report.device = str(session.device)
            report.dtype = session.precision_name  # "float32", "fast-int8", "openvino-bfloat16"...
        return report


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
    A full or read-only disk ends the run with ``report.fatal`` set, and so does running out of memory even
    one image at a time.
    """
    started = time.perf_counter()
    stop = should_stop or (lambda: False)
    report = Report(inputs=len(items))
    job.store.clean()  # temporaries of a run that was killed mid-write
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
                report.failures.append(Failure(item.source, first_line(exc)))
        videos = probed
        flush_failures()

    total = len(images) + sum(max(1, info.frames) for _, _, info in videos)
    done = 0
    step = max(1, int(job.batch_size))

    def report_progress(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, max(total, done))

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="textmask-read") as reader:

            def read_chunk(start: int) -> tuple[list[tuple[InputItem, list[PlannedOutput]]], list[Any]]:
                chunk = [(item, job.plan(item)) for item in images[start : start + step]]
                return chunk, [read_input(item) if outputs else None for item, outputs in chunk]

            upcoming: Future | None = reader.submit(read_chunk, 0) if images else None
            for start in range(0, len(images), step):
                if stop():
                    if upcoming is not None:
                        upcoming.cancel()
                    raise Interrupted
                assert upcoming is not None
                chunk, loaded = upcoming.result()
                following = start + step
                upcoming = reader.submit(read_chunk, following) if following < len(images) else None
                _mask_chunk(session, chunk, loaded, job, report)
                flush_failures()
                report_progress(len(chunk))

        for item, outputs, info in videos:
            if stop():
                raise Interrupted
            before = done
            try:
                masks_for = session.stream(job.engine_targets, batch_size=job.batch_size, **job.stream_settings)
                written, frames = video_io.mask_video(
                    item.source,
                    outputs,
                    info,
                    masks_for,
                    bits=job.bits,
                    batch_size=job.batch_size,
                    progress=report_progress,
                    should_stop=stop,
                    tracking=job.tracking,
                )
            except OSError as exc:
                outcome = write_error(item, exc)
                if isinstance(outcome, OutputError):
                    raise outcome from None
                report.failures.append(outcome)
            except TextmaskError as exc:  # unreadable video, missing PyAV or encoder
                if is_out_of_memory(exc):
                    raise
                report.failures.append(Failure(item.source, first_line(exc)))
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
    except (RuntimeError, MemoryError, TextmaskError) as exc:  # the engine already retried down to one image
        if not is_out_of_memory(exc):
            raise
        report.fatal = out_of_memory_fatal(exc, getattr(session, "device", "the device"))
    report.seconds = time.perf_counter() - started
    flush_failures()
    return report


def _mask_chunk(
    session: Any,
    chunk: list[tuple[InputItem, list[PlannedOutput]]],
    loaded: list[Any],
    job: MaskJob,
    report: Report,
) -> None:
    ready = [(item, outputs, image) for (item, outputs), image in zip(chunk, loaded) if image is not None]
    ready = [entry for entry in ready if not isinstance(entry[2], Failure)]
    report.failures.extend(image for image in loaded if isinstance(image, Failure))
    report.skipped += sum(image is None for image in loaded)  # finished meanwhile (e.g. by a parallel run)
    if not ready:
        return
    sources = [item.source for item, _, _ in ready]
    masks = mask_images(session, [image for _, _, image in ready], sources, job)
    for (item, outputs, image), mask in zip(ready, masks):
        if isinstance(mask, Failure):
            report.failures.append(mask)
            continue
        try:
            report.written.extend(write_image_outputs(job, image, mask, outputs))
        except OSError as exc:
            outcome = write_error(item, exc)
            if isinstance(outcome, OutputError):
                raise outcome from None
            report.failures.append(outcome)
            continue
        report.processed += 1
