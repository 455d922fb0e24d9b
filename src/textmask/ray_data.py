"""The Ray face: the batch layer's per-image steps (:mod:`textmask.batch.job`) in a Ray Data actor pool.

* :class:`RayExecutor`, the ``ray`` executor of :func:`textmask.batch.executor` (``textmask mask --engine ray``):
  the local executor's outputs, names, resume, failures and report; finished outputs are skipped on the driver.
* :func:`mask_dataset` masks any ``ray.data.Dataset`` of images, lazily, into result rows (:class:`MaskActor`).

Ray Data runs the autoscaling actor pool, batching, back-pressure, object-store reads and early stops; each
actor decodes, masks, renders and stores with the batch layer.

**Why the actors decode the files.** A row is a path (or the file's compressed bytes), decoded in the actor by
textmask's reader, so EXIF orientation, every Pillow mode (palette, 16-bit, CMYK, alpha kept for cut-outs), the
decompression-bomb limit and the error messages are the CLI's; a corrupt file is one ``failed`` row, where a Ray
read task would fail the Dataset; and the object store carries paths, not decoded frames. ``read_images`` rows are
used as Ray decoded them (no EXIF orientation). Not ``textmask.ray``: that name could shadow Ray itself.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

try:
    import ray.data
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("textmask.ray_data needs Ray Data: pip install 'textmask[ray]'") from exc

from .batch import Failure, MaskJob, ModelSpec, Report, Store
from .batch.inputs import STDIN, InputItem, input_key
from .batch.job import mask_images, out_of_memory_fatal, read_input, write_error, write_image_outputs
from .batch.naming import MaskTarget, PlannedOutput, make_targets
from .constants import DEFAULT_MODEL
from .errors import OutputError, TextmaskError, first_line, is_out_of_memory

WRITTEN, MASKED, SKIPPED, FAILED, FATAL = "written", "masked", "skipped", "failed", "fatal"  # result row statuses


def _column(batch: dict[str, Any], name: str, count: int, kinds: type | tuple[type, ...]) -> list[Any]:
    """A column's values, None where missing (Ray turns an all-null column of a block into float NaNs)."""
    values = batch.get(name)
    return [None] * count if values is None else [value if isinstance(value, kinds) else None for value in values]


def _pending(job: MaskJob, item: InputItem, planned: list[PlannedOutput], existing: set[str] | None = None) -> list:
    """``planned`` minus the outputs that exist (in ``existing``, else asked of the job's store)."""
    if job.overwrite or item.source == STDIN or not planned:
        return planned
    there = existing if existing is not None else job.store.existing([output.path for output in planned])
    return [output for output in planned if output.path.as_posix() not in there]


def _write_failed(item: InputItem, error: OSError) -> dict[str, Any]:
    outcome = write_error(item, error)  # a full or read-only disk stops the run, anything else fails this input
    fatal = isinstance(outcome, OutputError)
    return {"status": FATAL if fatal else FAILED, "error": str(outcome) if fatal else outcome.error}  # type: ignore[union-attr]


class MaskActor:
    """The ``map_batches`` callable: loads the model once per actor, then reads, masks and writes batches.

    Input rows: ``path`` (the source, named in messages), optional ``key`` (output name stem; default the file
    name without its suffix), ``kind`` (``image``, ``video``), ``index``, ``todo`` (indices of the planned
    outputs still to write) and at most one of ``bytes`` (the file) or ``image`` (a decoded array).

    Output rows: ``index, path, key, status, error, outputs`` (+ ``frames`` for videos, + ``masks`` ``[T, H, W]``
    float32 when asked); status ``written``, ``masked`` (nothing written), ``skipped`` (outputs exist), ``failed``
    (this input; ``error`` says why) or ``fatal`` (the model does not load, disk full, out of memory: stop). The
    constructor never raises, so a model that does not load gives fatal rows rather than dying actors.
    """

    def __init__(
        self, model: ModelSpec, device: str, job: MaskJob, write: bool = True, masks: bool = False, threads: int = 1
    ) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.job, self.write, self.masks, self.session, self.error = job, write, masks, None, ""
        try:
            self.session = model.load(device=device)
        except (TextmaskError, ValueError, OSError, RuntimeError) as exc:
            where = f"{device} on {platform.node() or 'a Ray node'}"
            self.error = f"cannot load model {model.model!r} on {where}: {first_line(exc)}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        job, paths = self.job, [str(path) for path in batch["path"]]
        n = len(paths)
        keys = [key or input_key(os.path.basename(p)) for key, p in zip(_column(batch, "key", n, str), paths)]
        items = [InputItem(p, k, kind or "image") for p, k, kind in zip(paths, keys, _column(batch, "kind", n, str))]
        todos, arrays = _column(batch, "todo", n, (list, np.ndarray)), _column(batch, "image", n, np.ndarray)
        datas = _column(batch, "bytes", n, (bytes, bytearray, memoryview))
        none = np.zeros((0, 0, 0), np.float32)
        rows = [{"status": MASKED, "error": "", "outputs": [], "frames": 0, "masks": none} for _ in paths]
        ready = []  # (row, image, its outputs)
        for i, item in enumerate(items):
            if self.session is None:
                rows[i].update(status=FATAL, error=self.error)
                continue
            todo = job.planned(item) if self.write else []
            todo = _pending(job, item, todo if todos[i] is None else [todo[int(t)] for t in todos[i]])
            if self.write and not todo:
                rows[i]["status"] = SKIPPED  # finished meanwhile (a parallel run), as the CLI does
            elif item.kind == "video":
                rows[i].update(self._video(item, todo))
            else:
                image = read_input(item, data=None if datas[i] is None else bytes(datas[i]), image=arrays[i])
                if isinstance(image, Failure):
                    rows[i].update(status=FAILED, error=image.error)
                else:
                    ready.append((i, image, todo))
        if ready:
            self._mask(ready, items, rows)
        indices = [-1 if i is None else int(i) for i in _column(batch, "index", n, (int, np.integer))]
        names = ["status", "error", "outputs"] + ["frames"] * any(item.kind == "video" for item in items)
        result = {"index": np.asarray(indices, np.int64), "path": paths, "key": keys}
        return result | {name: [row[name] for row in rows] for name in names + ["masks"] * self.masks}

    def _mask(self, ready: list[tuple[int, Any, list[PlannedOutput]]], items: list[InputItem], rows: list) -> None:
        """One engine call for the batch's readable images, then each one's outputs."""
        job = self.job
        try:
            masks = mask_images(self.session, [r[1] for r in ready], [items[r[0]].source for r in ready], job)
        except (RuntimeError, MemoryError, TextmaskError) as exc:  # the engine already went down to one image
            if not is_out_of_memory(exc):
                raise
            for i, _, _ in ready:
                rows[i].update(status=FATAL, error=out_of_memory_fatal(exc, self.session.device))  # type: ignore[union-attr]
            return
        for (i, image, todo), mask in zip(ready, masks):
            if isinstance(mask, Failure):
                rows[i].update(status=FAILED, error=mask.error)
                continue
            if self.masks:
                rows[i]["masks"] = mask.cpu().numpy()
            if self.write:
                try:
                    rows[i].update(status=WRITTEN, outputs=write_image_outputs(job, image, mask, todo))
                except OSError as exc:
                    rows[i].update(_write_failed(items[i], exc))

    def _video(self, item: InputItem, todo: list[PlannedOutput]) -> dict[str, Any]:
        """One whole video, streamed (:func:`textmask.batch.video.mask_video` over :meth:`Segmenter.stream`)."""
        from .batch import video

        job, session, size = self.job, self.session, self.job.batch_size
        try:
            # the whole video on this actor: the stream's smoothing / stabilize and the tracker carry state
            masks_for = session.stream(job.engine_targets, batch_size=size, **job.stream_settings)  # type: ignore[union-attr]
            info = video.probe(item.source)
            written, frames = video.mask_video(
                item.source, todo, info, masks_for, bits=job.bits, batch_size=size, tracking=job.tracking
            )
        except OSError as exc:
            return _write_failed(item, exc)
        except (TextmaskError, RuntimeError, MemoryError) as exc:  # unreadable, no PyAV or encoder, out of memory
            if is_out_of_memory(exc):
                return {"status": FATAL, "error": out_of_memory_fatal(exc, session.device)}  # type: ignore[union-attr]
            if not isinstance(exc, TextmaskError):
                raise
            return {"status": FAILED, "error": first_line(exc)}
        return {"status": WRITTEN, "outputs": written, "frames": frames}


# ------------------------------------------------------------------------------------------ cluster
def runtime_env() -> dict[str, Any]:
    """A ``runtime_env`` shipping this process's textmask to every worker (for your own ``ray.init``): the
    workers run exactly this code and need only textmask's dependencies."""
    return {"py_modules": [str(Path(__file__).parent)]}


_SHIPPED = False  # whether connect() started this Ray session with runtime_env()


def connect(address: str | None = None, *, ship_code: bool = True, **init_kwargs: Any) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray, with :func:`runtime_env` unless
    ``ship_code=False``. Does nothing when Ray is already initialized (e.g. by your own ``ray.init``)."""
    global _SHIPPED
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    where = {"address": address} if address else {"include_dashboard": False}
    options: dict[str, Any] = {"logging_level": logging.WARNING, **where, **init_kwargs}
    if ship_code:
        env = dict(options.get("runtime_env") or {})
        options["runtime_env"] = {**env, "py_modules": [*env.get("py_modules", []), *runtime_env()["py_modules"]]}
    ray.init(**options)
    _SHIPPED = ship_code


def _pool(actors: int | tuple[int, int] | None, batches: int | None = None) -> tuple[Any, Any]:
    """Ray Data's actor pool (it checks the sizes), and how the report shows it: N (fixed), ``(min, max)``, or
    None: autoscaling from 1 to what the cluster holds, at most one per batch. Actors that do not fit wait."""
    if isinstance(actors, tuple):
        return ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1]), list(actors)
    if actors is None:
        return ray.data.ActorPoolStrategy(min_size=1, max_size=batches), [1, batches]
    return ray.data.ActorPoolStrategy(size=int(actors)), int(actors)


@dataclass(frozen=True)
class RayExecutor:
    """Runs a :class:`~textmask.batch.MaskJob` on Ray Data actors; the cluster is contacted only if there is work.

    Attributes:
        model: what each actor loads, reachable from every node (a Ray on this machine only: the driver resolves
            it once and the actors load that folder).
        address: the cluster (default ``RAY_ADDRESS``, else a new local Ray).
        actors: model replicas: N, a ``(min, max)`` range, or None (autoscaled by Ray Data).
        cpus_per_actor: CPUs (and torch threads, rounded up) per actor; fractions pack several per core. Default 1.
        gpus_per_actor: GPUs per actor (``0.5``: two per GPU); None: 1 if the cluster has GPUs, else 0.
    """

    model: ModelSpec
    address: str | None = None
    actors: int | tuple[int, int] | None = None
    cpus_per_actor: float | None = None
    gpus_per_actor: float | None = None
    ship_code: bool = True

    def mapper(self, job: MaskJob, write: bool = True, masks: bool = False, batches: int | None = None) -> Any:
        """Connect, check resources (``ValueError`` if the cluster lacks them): ``(map(dataset, size), cluster)``."""
        device, cpus, gpus = self.model.device, self.cpus_per_actor, self.gpus_per_actor
        if device != "auto" and not device.startswith(("cpu", "cuda")):
            raise ValueError(f"device {device!r}: Ray actors run on cpu or cuda")
        if self.model.cpu_only and (device.startswith("cuda") or (gpus or 0) > 0):
            raise ValueError("the OpenVINO backend (--backend openvino, --dtype int8) runs on the CPU: no GPU actors")
        connect(self.address, ship_code=self.ship_code)
        cpus, cluster_gpus = 1.0 if cpus is None else float(cpus), float(ray.cluster_resources().get("GPU", 0))
        wants_gpu = not self.model.cpu_only and device.startswith(("auto", "cuda"))
        gpus = float(gpus if gpus is not None else cluster_gpus >= 1 and wants_gpu)
        if gpus > 0 and cluster_gpus <= 0:
            raise ValueError("GPU actors were asked for, but the Ray cluster has no GPUs; use --gpus-per-actor 0")
        if device.startswith("cuda") and gpus == 0:
            raise ValueError(f"device {device!r} needs GPU actors: give each actor a GPU (--gpus-per-actor 1)")
        device = device if device != "auto" else ("cuda" if gpus > 0 else "cpu")
        compute, shown = _pool(self.actors, batches)
        model, remote = self.model, {"num_cpus": cpus, **({"num_gpus": gpus} if gpus > 0 else {})}
        here, nodes = ray.util.get_node_ip_address(), [node for node in ray.nodes() if node.get("Alive")]
        if all(node.get("NodeManagerAddress") == here for node in nodes):  # a local Ray: resolve the model once here
            from .model import locate_model

            folder = locate_model(model.model, cache_dir=model.cache_dir, download=model.download)
            model = replace(model, model=str(folder), cache_dir=None, download=False)
            if not _SHIPPED:  # a Ray someone else started on this machine: its workers import this checkout
                path = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH")]))
                remote["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
        model.warn_if_random()
        arguments = (model, device, job, write, masks, max(1, math.ceil(cpus)))
        address = self.address or os.environ.get("RAY_ADDRESS") or "local"
        cluster = dict(address=address, nodes=len(nodes), actors=shown, cpus_per_actor=cpus, gpus_per_actor=gpus)

        def mapped(dataset: Any, batch_size: int) -> Any:
            options = dict(batch_size=batch_size, batch_format="numpy", compute=compute, **remote)
            return dataset.map_batches(MaskActor, fn_constructor_args=arguments, **options)

        return mapped, {**cluster, "device": device}

    def run(
        self,
        items: Sequence[InputItem],
        job: MaskJob,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_failure: Callable[[Failure], None] | None = None,
    ) -> Report:
        """As :func:`textmask.batch.local.run_job`: images in batches, then videos one per call. Progress counts an
        image or a whole video as one. ``should_stop`` is checked as results arrive and stops cleanly (finished
        files stay, a rerun resumes; batches already on the actors may still write theirs)."""
        started = time.perf_counter()
        report, store = Report(inputs=len(items)), job.store
        store.clean()  # temporaries of a run that was killed mid-write
        existing = store.existing() if not store.local and not job.overwrite else None  # one listing
        stages: dict[str, list[dict[str, Any]]] = {"image": [], "video": []}
        written: list[tuple[int, list[str]]] = []  # (input index, its outputs), sorted at the end
        failures: list[tuple[int, Failure]] = []

        def fail(index: int, failure: Failure) -> None:
            failures.append((index, failure))
            if on_failure is not None:
                on_failure(failure)

        for index, item in enumerate(items):
            report.images += item.kind == "image"
            report.videos += item.kind == "video"
            planned = job.planned(item)
            pending = _pending(job, item, planned, existing)
            if not pending:
                report.skipped += 1
            elif item.kind == "video" and not store.local:
                fail(index, Failure(item.source, "videos need a local or shared output folder with --engine ray"))
            else:
                row = {"index": index, "path": item.source, "key": item.key, "kind": item.kind}
                row["todo"] = [planned.index(output) for output in pending]
                row["bytes"] = sys.stdin.buffer.read() if item.source == STDIN else None  # read by the actors
                stages[item.kind].append(row)
        size, mapped = max(1, int(job.batch_size)), None
        if stages["image"] or stages["video"]:
            batches = max(1, -(-len(stages["image"]) // size), len(stages["video"]))
            mapped, report.cluster = self.mapper(job, batches=batches)
            started, report.device = time.perf_counter(), report.cluster["device"]  # the rate covers actor start-up
            ray.data.DataContext.get_current().enable_progress_bars = False  # textmask shows its own bar
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        done, total, stop = 0, len(stages["image"]) + len(stages["video"]), should_stop or (lambda: False)
        for kind, rows in stages.items():  # the same actors' class in Ray Data's pool; a video alone per call
            if not rows or report.fatal is not None or report.interrupted:
                continue
            results = mapped(ray.data.from_items(rows), size if kind == "image" else 1)
            iterator = iter(results.iter_batches(batch_size=None, batch_format="numpy"))
            try:
                for result in iterator:
                    self._fold(result, kind, report, written, fail)
                    done += len(result["index"])
                    if progress is not None:
                        progress(done, total)
                    report.interrupted = report.fatal is None and stop()
                    if report.fatal is not None or report.interrupted:
                        break
            finally:
                getattr(iterator, "close", lambda: None)()  # stops the Dataset (and its actors) early
        report.written = [path for _, paths in sorted(written, key=lambda entry: entry[0]) for path in paths]
        report.failures = [failure for _, failure in sorted(failures, key=lambda entry: entry[0])]
        report.seconds = time.perf_counter() - started
        return report

    @staticmethod
    def _fold(result: dict[str, Any], kind: str, report: Report, written: list, fail: Callable) -> None:
        """Count one batch of result rows into the report."""
        frames = result.get("frames", [0] * len(result["index"]))
        for index, path, status, error, outputs, count in zip(
            result["index"], result["path"], result["status"], result["error"], result["outputs"], frames
        ):
            if status == WRITTEN:
                written.append((int(index), [str(output) for output in outputs]))
                report.processed += 1
                report.frames += int(count)
                report.processed_videos += kind == "video"
            elif status == SKIPPED:
                report.skipped += 1
            elif status == FAILED:
                fail(int(index), Failure(str(path), str(error)))
            elif status == FATAL and report.fatal is None:
                report.fatal = str(error)


def mask_dataset(
    dataset: Any,
    prompts: Sequence[str] | Sequence[MaskTarget],
    output_dir: str | os.PathLike | None = None,
    *,
    negative_prompts: Sequence[str] = (),
    combine: str = "each",
    options: Any = None,
    kinds: Sequence[str] = ("mask",),
    bits: int = 8,
    overwrite: bool = False,
    filesystem: Any = None,
    return_masks: bool | None = None,
    model: str | ModelSpec = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "float32",
    batch_size: int = 8,
    actors: int | tuple[int, int] | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    address: str | None = None,
    ship_code: bool = True,
    **option_overrides: Any,
) -> Any:
    """Mask a ``ray.data.Dataset`` of images: a lazy Dataset of result rows (see :class:`MaskActor`).

    Args:
        dataset: rows with ``path`` and optionally ``key``, ``bytes`` or ``image``: ``ray.data.from_items([{"path":
            p} ...])``, ``read_binary_files(uri, include_paths=True)`` or ``read_images(uri, include_paths=True)``.
        prompts: one mask per prompt (``combine="each"``) or one for all (``union``, ``intersection``).
        output_dir: a folder, a ``file://`` or pyarrow URI (``s3://bucket/masks``) or a path in ``filesystem``;
            names as the CLI's. None: nothing is written and the rows carry ``masks`` (or ``return_masks=True``).
        negative_prompts, options, option_overrides: as for :meth:`textmask.Segmenter.mask`; kinds, bits,
            overwrite: as ``textmask mask -k``, ``--bits``, ``--overwrite``.
        model, device, dtype: what each actor loads; actors, cpus_per_actor, gpus_per_actor, address, ship_code:
            as for :class:`RayExecutor` and :func:`connect`.
    """
    from .postprocess import MaskOptions

    store = Store(".") if output_dir is None else Store.open(output_dir, filesystem)
    given = list(prompts) if prompts and all(isinstance(p, MaskTarget) for p in prompts) else None
    targets = given or make_targets([str(p) for p in prompts], combine)  # type: ignore[arg-type]
    negative, options = tuple(dict.fromkeys(negative_prompts)), MaskOptions.from_kwargs(options, **option_overrides)
    settings = dict(kinds=tuple(dict.fromkeys(kinds)), bits=int(bits), batch_size=int(batch_size), overwrite=overwrite)
    job = MaskJob(Path(store.root), targets, negative, options, filesystem=store.filesystem, **settings)
    spec = model if isinstance(model, ModelSpec) else ModelSpec(model=model, device=device, dtype=dtype)
    executor = RayExecutor(spec, address, actors, cpus_per_actor, gpus_per_actor, ship_code)
    masks = output_dir is None if return_masks is None else bool(return_masks)
    return executor.mapper(job, write=output_dir is not None, masks=masks)[0](dataset, int(batch_size))
