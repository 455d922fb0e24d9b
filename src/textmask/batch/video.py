"""Videos in, mask videos out, as a stream: decode → chunk of frames → masks → encode (PyAV).

Memory stays flat whatever the length: only ``batch_size`` frames (and their masks) are held at a time.
Outputs keep the input's frame count, size and timing (each frame's timestamp is copied, so the frame rate,
constant or variable, is the input's). Per input, target and kind (see :mod:`textmask.batch.naming` for names):

=========  ==========================================  =============================================
kind       ``video`` form                              ``frames`` form (a folder of PNGs)
=========  ==========================================  =============================================
mask       ``<key>.<slug>.mp4`` (H.264, grey mask)     ``<key>.<slug>/000000.png`` … (8 or 16 bit)
overlay    ``<key>.<slug>.overlay.mp4`` (H.264)        ``<key>.<slug>.overlay/000000.png`` …
cutout     ``<key>.<slug>.cutout.webm`` (VP9 + alpha)  ``<key>.<slug>.cutout/000000.png`` … (RGBA)
instances ``<key>.<slug>.tracks.json`` + per track id:       the same JSON + ``<key>.<slug>.track-01/`` …
           ``<key>.<slug>.track-01.mp4`` …
=========  ==========================================  =============================================

``instances`` tracks the target's objects over the frames (:func:`textmask.track`): each track id gets a mask
video (black where the object is absent) and the JSON lists, per frame, each object's id, box, score and area
(and its COCO RLE with ``rle``).

Every output is written under a temporary name and renamed when the whole video is done. Audio is not copied.
The masks come from a ``frames → masks`` callable (the engine's :meth:`textmask.Segmenter.stream`, which also
applies temporal smoothing or stabilization), so this module knows nothing of models or prompts.

PyAV is imported only when a video is opened (``pip install 'textmask[video]'``); torch when frames are read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, Interrupted, TextmaskError
from .naming import PlannedOutput, track_name
from .store import atomic_path

FramesToMasks = Callable[[Any], Any]
"""``masks_for(frames [B, H, W, 3] uint8) → [B, T, H, W]`` masks in [0, 1], called on consecutive chunks."""

_DEFAULT_RATE = Fraction(25)
# Encoders tried in order per container; PyAV's wheels bundle libx264 and libvpx.
_ENCODERS = {".mp4": ("libx264", "h264", "mpeg4"), ".webm": ("libvpx-vp9", "libvpx")}
_ENCODER_OPTIONS = {
    "libx264": {"crf": "17", "preset": "medium"},
    "h264": {"crf": "17"},
    "libvpx-vp9": {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"},
    "libvpx": {"crf": "10", "b": "1M"},
}


class VideoUnavailable(TextmaskError):
    """PyAV is not installed, or this FFmpeg build cannot encode the output format."""


class VideoError(TextmaskError):
    """A video could not be encoded."""


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise VideoUnavailable("video files need PyAV: pip install 'textmask[video]' (or pip install av)") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video's first video stream.

    Attributes:
        frames: frame count from the container, or an estimate from the duration; 0 when unknown.
        width, height: frame size in pixels.
        rate: average frame rate (frames per second), None when unknown.
        time_base: the stream's timestamp unit, None when unknown.
    """

    frames: int
    width: int
    height: int
    rate: Fraction | None
    time_base: Fraction | None


def probe(path: str | os.PathLike) -> VideoInfo:
    """Open a video and read its stream info, or raise :class:`InputError` saying why not."""
    av = _av()
    name = os.fspath(path)
    if not Path(name).is_file():
        raise InputError(f"{name}: file not found" if not Path(name).exists() else f"{name}: not a file")
    try:
        with av.open(name) as container:
            if not container.streams.video:
                raise InputError(f"{name}: has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            frames = int(stream.frames or 0)
            if not frames and stream.duration and stream.time_base and rate:
                frames = round(float(stream.duration * stream.time_base * rate))
            width, height = stream.codec_context.width, stream.codec_context.height
            if not width or not height:
                raise InputError(f"{name}: the video stream has no frame size")
            return VideoInfo(
                frames=max(0, frames),
                width=int(width),
                height=int(height),
                rate=Fraction(rate) if rate else None,
                time_base=Fraction(stream.time_base) if stream.time_base else None,
            )
    except av.FFmpegError as exc:
        raise InputError(f"{name}: not a video FFmpeg can read ({exc})") from None


def read_frames(path: str | os.PathLike, info: VideoInfo, chunk: int) -> Iterator[tuple[Any, list[Any]]]:
    """Decode a video in chunks.

    Yields:
        ``(frames [B, H, W, 3] uint8 RGB, timestamps)`` with B ≤ ``chunk``; every frame is brought to the
        first stream size; timestamps are the frames' ``pts`` in ``info.time_base`` (None when absent).
    """
    import torch

    av = _av()
    name = os.fspath(path)
    decoded = 0
    try:
        with av.open(name) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames: list[np.ndarray] = []
            stamps: list[Any] = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24", width=info.width, height=info.height))
                stamps.append(frame.pts)
                if len(frames) == chunk:
                    decoded += len(frames)
                    yield torch.from_numpy(np.stack(frames)), stamps
                    frames, stamps = [], []
            if frames:
                decoded += len(frames)
                yield torch.from_numpy(np.stack(frames)), stamps
    except av.FFmpegError as exc:
        raise InputError(f"{name}: decoding failed after {decoded} frames ({exc})") from None


def _encoder(suffix: str) -> str:
    av = _av()
    for name in _ENCODERS[suffix]:
        try:
            av.codec.Codec(name, "w")
        except Exception:
            continue
        return name
    raise VideoUnavailable(f"this FFmpeg build has none of the encoders {_ENCODERS[suffix]} for {suffix} files")


class VideoWriter:
    """Encode frames to one video file, keeping the source's timestamps (so its frame rate)."""

    def __init__(self, path: Path, container_format: str, kind: str, info: VideoInfo) -> None:
        av = _av()
        suffix = ".webm" if container_format == "webm" else ".mp4"
        codec = _encoder(suffix)
        self.kind = kind
        self.rate = info.rate or _DEFAULT_RATE
        self.time_base = info.time_base or 1 / self.rate
        self.tick = max(1, round(1 / (self.rate * self.time_base)))  # one frame's duration in time_base units
        self.last: int | None = None
        self.container = av.open(os.fspath(path), "w", format=container_format)
        self.stream = self.container.add_stream(codec, rate=self.rate)
        self.stream.width, self.stream.height = info.width, info.height
        self.stream.time_base = self.time_base
        even = info.width % 2 == 0 and info.height % 2 == 0
        if kind == "cutout":
            self.stream.pix_fmt, self.source_format = "yuva420p", "rgba"
        else:
            formats = [f.name for f in (self.stream.codec_context.codec.video_formats or [])]
            self.stream.pix_fmt = "yuv420p" if even or "yuv444p" not in formats else "yuv444p"
            self.source_format = "gray" if kind == "mask" else "rgb24"
        self.stream.options = dict(_ENCODER_OPTIONS.get(codec, {}))
        self.closed = False

    def write(self, frames: Any, stamps: Sequence[Any]) -> None:
        """Encode ``[B, H, W]`` (mask) / ``[B, H, W, 3|4]`` uint8 frames with their source timestamps."""
        av = _av()
        array = frames.cpu().numpy()
        for values, stamp in zip(array, stamps):
            if stamp is None or (self.last is not None and stamp <= self.last):
                stamp = 0 if self.last is None else self.last + self.tick
            self.last = int(stamp)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(values), format=self.source_format)
            frame.pts, frame.time_base = self.last, self.time_base
            self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        if not self.closed:
            self.closed = True
            self.container.mux(self.stream.encode(None))
            self.container.close()

    def abort(self) -> None:
        """Close without flushing (the temporary file is deleted by the caller)."""
        if not self.closed:
            self.closed = True
            try:
                self.container.close()
            except Exception:
                pass


class FrameWriter:
    """Write each frame as ``NNNNNN.png`` (frame index, from 0) into one folder."""

    def __init__(self, folder: Path, kind: str, bits: int) -> None:
        folder.mkdir(parents=True, exist_ok=False)
        self.folder, self.kind, self.bits, self.index = folder, kind, bits, 0

    def write(self, frames: Any, stamps: Sequence[Any]) -> None:
        from PIL import Image

        array = frames.cpu().numpy()
        if self.kind == "mask" and self.bits == 16:
            array = array.astype(np.uint16)
        for values in array:
            Image.fromarray(np.ascontiguousarray(values)).save(self.folder / f"{self.index:06d}.png", format="PNG")
            self.index += 1

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


@dataclass(frozen=True)
class TrackOutputs:
    """How a video's ``instances`` outputs are made: objects are the connected pixels above ``threshold`` (at
    least ``min_area``), tracked (:class:`textmask.Tracker`); each track's masks go to every form of ``forms``
    (``video``, ``frames``) at ``bits`` (frames); ``rle`` adds COCO RLE (pycocotools) to the JSON."""

    threshold: float = 0.5
    min_area: int = 0
    forms: tuple[str, ...] = ("video",)
    bits: int = 8
    rle: bool = False


class _TrackWriter:
    """One target's tracks over one video: a writer per track id and form, opened when the id first appears
    (earlier frames written black), the tracks JSON at the end."""

    def __init__(self, output: PlannedOutput, settings: TrackOutputs, info: VideoInfo, stack: ExitStack) -> None:
        from ..tracking import Tracker

        if settings.rle:
            try:
                import pycocotools.mask  # noqa: F401
            except ImportError:
                raise VideoUnavailable("--rle needs pycocotools: pip install pycocotools") from None
        self.output, self.settings, self.info, self.stack = output, settings, info, stack
        self.tracker = Tracker(threshold=settings.threshold, min_area=settings.min_area)
        self.writers: dict[tuple[int, str], VideoWriter | FrameWriter] = {}
        self.paths: list[str] = []
        self.frames: list[dict[str, Any]] = []
        self.stamps: list[Any] = []
        self.waiting: list[Any] = []  # stamps of the frames the tracker holds back (its retro split)
        # entered first, so renamed last: a tracks JSON on disk means its track videos are complete
        self.json_path = stack.enter_context(atomic_path(output.path))

    def _open(self, track_id: int, form: str) -> VideoWriter | FrameWriter:
        path = track_name(self.output, track_id, form)
        temporary = self.stack.enter_context(atomic_path(path))
        if form == "video":
            try:
                writer: VideoWriter | FrameWriter = VideoWriter(temporary, "mp4", "mask", self.info)
            except _av().FFmpegError as exc:
                raise VideoError(f"cannot start encoding {path}: {exc}") from None
        else:
            writer = FrameWriter(temporary, "mask", self.settings.bits)
        self.stack.callback(writer.abort)
        self.paths.append(str(path))
        return writer

    def write(self, frames: Any, masks: Any, stamps: Sequence[Any]) -> None:
        """The next chunk: frames ``[B, H, W, 3]`` uint8 and this target's masks ``[B, H, W]``."""
        self.waiting.extend(stamps)
        self._write(self.tracker.update(masks, frames), masks.shape[-2:])

    def _write(self, found: list[Any], size: Any) -> None:
        """The tracker's next frames (it gives them out a few frames late: see ``Tracker.retro``)."""
        import torch

        from ..postprocess import mask_levels
        from ..tracking import describe_tracks

        if not found:
            return
        stamps, self.waiting = self.waiting[: len(found)], self.waiting[len(found) :]
        described = describe_tracks(found, first_frame=len(self.frames))
        if self.settings.rle:
            _add_rle(described, found)
        self.frames.extend(described)
        for item in found:
            for track_id in item.ids.tolist():
                for form in self.settings.forms:
                    key = (int(track_id), form)
                    if key not in self.writers:
                        self.writers[key] = writer = self._open(*key)
                        blank = mask_levels(torch.zeros((1, *size)), self._bits(form))
                        for stamp in self.stamps:  # the frames before it appeared: black
                            writer.write(blank, [stamp])
        self.stamps.extend(stamps)
        for (track_id, form), writer in self.writers.items():
            chunk = torch.zeros((len(found), *size), dtype=torch.float32)
            for t, item in enumerate(found):
                hit = (item.ids == track_id).nonzero().flatten()
                if len(hit):
                    chunk[t] = item.masks[int(hit[0])].cpu()
            writer.write(mask_levels(chunk, self._bits(form)), stamps)

    def _bits(self, form: str) -> int:
        return self.settings.bits if form == "frames" else 8

    def close(self, source: str) -> list[str]:
        import json

        if self.tracker.size is not None:
            self._write(self.tracker.finish(), self.tracker.size)
        for writer in self.writers.values():
            writer.close()
        height, width = self.info.height, self.info.width
        summary = {
            "source": source,
            "height": height,
            "width": width,
            "threshold": self.settings.threshold,
            "box_format": "x0, y0, x1, y1 in pixels; x1 and y1 exclusive (mask[y0:y1, x0:x1] is the object)",
            "tracks": {
                str(track_id): {
                    "frames": [f["frame"] for f in self.frames if any(o["id"] == track_id for o in f["objects"])],
                    "masks": {form: track_name(self.output, track_id, form).name for form in self.settings.forms},
                }
                for track_id in sorted({i for i, _ in self.writers})
            },
            "frames": self.frames,
        }
        self.json_path.write_text(json.dumps(summary, indent=1) + "\n")
        return [*self.paths, str(self.output.path)]


def _add_rle(described: list[dict[str, Any]], found: Sequence[Any]) -> None:
    """Each object's COCO RLE (``{"size": [H, W], "counts": str}``, pycocotools' column-major form)."""
    import pycocotools.mask as coco

    for frame, item in zip(described, found):
        for entry, k in zip(frame["objects"], range(len(item))):
            binary = np.asfortranarray((item.labels == k + 1).cpu().numpy().astype(np.uint8))
            rle = coco.encode(binary)
            entry["rle"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_video(
    source: str,
    outputs: Sequence[PlannedOutput],
    info: VideoInfo,
    masks_for: FramesToMasks,
    *,
    bits: int = 8,
    batch_size: int = 8,
    cutout: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    tracking: TrackOutputs | None = None,
) -> tuple[list[str], int]:
    """Mask one video into its planned outputs, streaming ``batch_size`` frames at a time.

    Args:
        source: the video file.
        outputs: what to write (:meth:`textmask.batch.MaskJob.plan`); ``output.target`` indexes the masks' T axis.
        masks_for: frames → masks (see :data:`FramesToMasks`).
        bits: bit depth of PNG-frame masks (video files are 8-bit).
        tracking: how ``instances`` outputs (``form="tracks"``) are tracked and written (default settings: None).
        cutout: ``matte=`` / ``background=`` for cut-outs (:meth:`textmask.batch.MaskJob.cutout_settings`).

    Returns:
        ``(written paths, frame count)``.

    Raises:
        InputError: the video cannot be decoded (nothing is written).
        Interrupted: ``should_stop()`` said so after a chunk (nothing is written).
    """
    from ..postprocess import render

    count = 0
    tracked = [output for output in outputs if output.form == "tracks"]
    outputs = [output for output in outputs if output.form != "tracks"]
    with ExitStack() as stack:
        trackers = [_TrackWriter(output, tracking or TrackOutputs(), info, stack) for output in tracked]
        writers: list[VideoWriter | FrameWriter] = []
        for output in outputs:
            temporary = stack.enter_context(atomic_path(output.path))
            # A cut-out on a background colour is RGB, written as an overlay is (no alpha plane).
            painted = output.kind == "cutout" and (cutout or {}).get("background") is not None
            kind = "overlay" if painted else output.kind
            if output.form == "video":
                container_format = "webm" if output.path.suffix == ".webm" else "mp4"
                try:
                    writer: VideoWriter | FrameWriter = VideoWriter(temporary, container_format, kind, info)
                except _av().FFmpegError as exc:
                    raise VideoError(f"cannot start encoding {output.path}: {exc}") from None
            else:
                writer = FrameWriter(temporary, kind, bits)
            stack.callback(writer.abort)  # runs before the temporary file is removed, on any error
            writers.append(writer)
        for frames, stamps in read_frames(source, info, max(1, int(batch_size))):
            masks = masks_for(frames)  # [B, T, H, W]
            for output, writer in zip(outputs, writers):
                depth = bits if output.form == "frames" else 8
                rendered = render(output.kind, frames, masks[:, output.target], None, depth, **(cutout or {}))
                try:
                    writer.write(rendered, stamps)
                except _av().FFmpegError as exc:
                    if isinstance(exc, OSError) and exc.errno:
                        raise
                    raise VideoError(f"cannot encode {output.path}: {exc}") from None
            for output, tracker in zip(tracked, trackers):
                try:
                    tracker.write(frames, masks[:, output.target], stamps)
                except _av().FFmpegError as exc:
                    if isinstance(exc, OSError) and exc.errno:
                        raise
                    raise VideoError(f"cannot encode the tracks of {output.path}: {exc}") from None
            count += len(frames)
            if progress is not None:
                progress(len(frames))
            if should_stop is not None and should_stop():
                raise Interrupted
        if count == 0:
            raise InputError(f"{source}: the video has no frames")
        for writer in writers:
            writer.close()
        written = [str(output.path) for output in outputs]
        for tracker in trackers:
            written.extend(tracker.close(source))
    return written, count
