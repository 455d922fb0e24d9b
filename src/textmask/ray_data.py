"""Mask millions of images on a Ray cluster with the same engine, names, resume and failures as ``textmask mask``.

Two entry points:

* :func:`run_ray_job` is what ``textmask mask --engine ray`` runs: the CLI's inputs (:func:`textmask.io.
  discover_inputs`) and :class:`~textmask.jobs.MaskJob` in, a :class:`~textmask.jobs.Report` out. Outputs that
  exist are skipped on the driver before anything is scheduled; the rest become a ``ray.data.Dataset`` of
  paths that :class:`MaskActor` s read, mask and write.
* :func:`mask_dataset` masks any ``ray.data.Dataset`` of images, lazily: rows with a ``path`` (read by the
  actors), raw ``bytes`` (``ray.data.read_binary_files(..., include_paths=True)``, any pyarrow filesystem) or a
  decoded ``image`` (``ray.data.read_images(..., include_paths=True)``). It returns a Dataset of result rows
  (``path, key, status, error, outputs`` and, when asked, the float ``masks``).

**Why the actors read the files themselves.** A row that is a path (or the file's compressed bytes) is decoded
inside the actor by textmask's own reader (:func:`textmask.io.read_image`), so EXIF orientation, every Pillow
mode (palette, 16-bit, CMYK, transparency kept for cut-outs), the decompression-bomb limit and the error
messages are exactly the CLI's, and a corrupt file becomes a result row instead of a failed read task that
would stop the whole Dataset. It also keeps the object store nearly empty: a row is a path of a few dozen bytes
instead of a decoded image (a 1080p RGB frame is 6 MB; at 10 million images an hour that would be 17 GB/s of
object-store traffic). Datasets from ``ray.data.read_images`` are accepted too (the ``image`` column is used as
it is), but Ray's reader neither turns photos upright from EXIF nor reads every mode the way textmask does, so
its masks can differ from the CLI's on such files, and one unreadable file fails its whole read task.

**Why the module is ``ray_data``, not ``ray``.** ``import ray`` inside ``textmask/ray.py`` is an absolute
import and would find the real Ray, but the file would still shadow Ray whenever ``src/textmask`` itself lands
on ``sys.path`` (running a file from that folder, some IDE and notebook setups), and ``from textmask import
ray`` next to ``import ray`` reads badly. ``textmask.ray_data`` cannot shadow anything.

The engine never imports Ray; this face imports the engine (:mod:`textmask.io`, :mod:`textmask.jobs`).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import ray
    import ray.data
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("textmask.ray_data needs Ray Data: pip install 'textmask[ray]'") from exc

from .errors import InputError, TextmaskError
from .io import (
    STDIN,
    InputItem,
    LoadedImage,
    MaskTarget,
    PlannedOutput,
    encode_png,
    input_key,
    make_targets,
    pending_outputs,
    plan_outputs,
    png_array,
    read_image_bytes,
    remove_stale_temporaries,
    render,
)
from .jobs import (
    _FATAL_ERRNOS,
    _OOM_ERRORS,
    Failure,
    MaskJob,
    PromptTable,
    Report,
    _load,
    _one_line,
    chunk_masks,
    write_image_outputs,
)
from .model import DEFAULT_MODEL
from .postprocess import MaskOptions

log = logging.getLogger("textmask")

# Result row statuses.
WRITTEN, MASKED, SKIPPED, FAILED, FATAL = "written", "masked", "skipped", "failed", "fatal"
_OBJECT_STORES = ("s3", "gcs", "gs", "abfs", "az")  # filesystems where an object appears whole or not at all


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class ModelSpec:
    """Which model each actor loads (see :func:`textmask.load`); sent to the actors, so it must be reachable
    there: a hub id (each node downloads or finds it in its cache) or a folder on storage every node sees."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "float32"
    cache_dir: str | None = None
    allow_pickle: bool = False
    download: bool = True


@dataclass(frozen=True)
class Resources:
    """How many actors and what each one holds.

    Attributes:
        actors: number of model replicas: an int, a ``(min, max)`` range the pool scales within, or None for
            as many as the cluster's CPUs (or GPUs) hold now.
        cpus_per_actor: CPUs each actor reserves (fractions allowed: ``0.5`` packs two actors per core); also
            its torch threads and its file reading/writing threads (rounded up, at least 1).
        gpus_per_actor: GPUs each actor reserves (``0.5``: two actors share a GPU, so one reads and writes
            files while the other computes). None: 1 when the cluster has GPUs and the device allows, else 0.
    """

    actors: int | tuple[int, int] | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None


@dataclass(frozen=True)
class _ActorSpec:
    """Everything a :class:`MaskActor` needs (pickled once per actor)."""

    model: ModelSpec
    device: str
    job: MaskJob
    write: bool
    return_masks: bool
    filesystem: Any = None  # a pyarrow FileSystem, or None for the local disk (atomic renames)
    threads: int = 1


@dataclass
class RayReport(Report):
    """A :class:`~textmask.jobs.Report` plus how the cluster was used (``to_dict()["ray"]``)."""

    cluster: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "ray": dict(self.cluster)}


# --------------------------------------------------------------------------------------- filesystems
def resolve_output(output_dir: str | os.PathLike, filesystem: Any = None) -> tuple[Any, str]:
    """``(filesystem, root)`` for an output folder: a local path (filesystem None: the local disk, written with
    atomic renames), ``file://...``, or a URI pyarrow understands (``s3://bucket/masks``, ``gs://...``,
    ``hdfs://...``). With an explicit pyarrow ``filesystem``, ``output_dir`` is a path inside it."""
    text = os.fspath(output_dir)
    if filesystem is not None:
        return filesystem, text.rstrip("/") or "/"
    if text.startswith("file://"):
        return None, text[len("file://") :]
    if "://" in text:
        import pyarrow.fs

        fs, root = pyarrow.fs.FileSystem.from_uri(text)
        return fs, root.rstrip("/")
    return None, text


def _is_object_store(fs: Any) -> bool:
    name = str(getattr(fs, "type_name", "")).lower()
    return any(store in name for store in _OBJECT_STORES)


def _write_file(fs: Any, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` in a pyarrow filesystem so that no partial file ever has the final name:
    object stores publish an object only once complete; elsewhere a hidden temporary name is renamed."""
    parent, _, name = path.rpartition("/")
    if parent:
        fs.create_dir(parent, recursive=True)
    if _is_object_store(fs):
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    temporary = f"{parent}/.{name}.{os.getpid()}.part" if parent else f".{name}.{os.getpid()}.part"
    try:
        with fs.open_output_stream(temporary) as stream:
            stream.write(data)
        fs.move(temporary, path)
    except BaseException:
        try:
            fs.delete_file(temporary)
        except Exception:  # already gone, or the filesystem is failing anyway
            pass
        raise


def _existing(fs: Any, paths: Sequence[str]) -> set[str]:
    """Which of ``paths`` exist in ``fs`` (one batched metadata call)."""
    import pyarrow.fs

    if not paths:
        return set()
    return {info.path for info in fs.get_file_info(list(paths)) if info.type != pyarrow.fs.FileType.NotFound}


def _list_existing(fs: Any, root: str) -> set[str]:
    """Every file below ``root`` (one recursive listing: far cheaper on an object store than a request each)."""
    import pyarrow.fs

    selector = pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)
    return {info.path for info in fs.get_file_info(selector) if info.type == pyarrow.fs.FileType.File}


# ------------------------------------------------------------------------------------------- actors
def _array_image(array: np.ndarray, source: str) -> LoadedImage:
    """A decoded image from a ``read_images`` row (``[H, W]`` or ``[H, W, C]``) → levels (+ alpha if C is 2 or 4)."""
    from .images import to_levels

    array = np.asarray(array)
    levels = to_levels(array, source).permute(1, 2, 0).contiguous()
    alpha = None
    if array.ndim == 3 and array.shape[-1] in (2, 4) and array.dtype == np.uint8:
        alpha = torch.from_numpy(np.ascontiguousarray(array[..., -1]))
    return LoadedImage(levels=levels, alpha=alpha)


def _column(batch: dict[str, Any], name: str, count: int, kinds: type | tuple[type, ...]) -> list[Any]:
    """A batch column's values, with None for missing ones. Missing values come as None, or as NaN when a whole
    block lacks them (Ray turns an all-null column into float NaNs), so only values of ``kinds`` are kept."""
    values = batch.get(name)
    if values is None:
        return [None] * count
    return [value if isinstance(value, kinds) else None for value in values]


def _load_session(spec: _ActorSpec) -> tuple[Any, str | None]:
    """``(session, None)``, or ``(None, why)`` when the model does not load here (reported as a fatal row)."""
    import textmask

    torch.set_num_threads(max(1, spec.threads))
    model = spec.model
    try:
        session = textmask.load(
            model.model,
            device=spec.device,
            dtype=model.dtype,
            cache_dir=model.cache_dir,
            allow_pickle=model.allow_pickle,
            download=model.download,
        )
    except (TextmaskError, ValueError, OSError, RuntimeError) as exc:
        where = f"{spec.device} on {platform.node() or 'a Ray node'}"
        return None, f"cannot load model {model.model!r} on {where}: {_one_line(exc)}"
    return session, None


class MaskActor:
    """The ``map_batches`` callable: loads the model once per actor, then masks batches of rows.

    Input rows: ``path`` (required: the source, used in messages), optional ``key`` (the output name stem;
    default: the file name without its suffix), ``index`` (for ordering), ``todo`` (indices of the planned
    outputs still to write, from the driver), and at most one of ``bytes`` (the file's content) or ``image``
    (a decoded array); without them the actor reads ``path`` itself.

    Output rows: ``index, path, key, status, error, outputs`` (+ ``masks``, ``[T, H, W]`` float32, when asked),
    where status is ``written``, ``masked`` (no output folder), ``skipped`` (outputs exist), ``failed`` (this
    input; ``error`` says why) or ``fatal`` (the run cannot go on: the model does not load, the disk is full).
    """

    def __init__(self, spec: _ActorSpec) -> None:
        from PIL import Image

        Image.init()  # register every Pillow plugin now, not concurrently from the reading threads
        self.spec = spec
        self.table = PromptTable.build(spec.job.targets, spec.job.negative_prompts)
        self.pool = ThreadPoolExecutor(max_workers=max(2, spec.threads), thread_name_prefix="textmask-io")
        self.session, self.error = _load_session(spec)

    # -- helpers
    def _plan(self, item: InputItem, todo: Any, overwrite: bool) -> list[PlannedOutput]:
        job = self.spec.job
        planned = plan_outputs(item, job.targets, job.outdir, job.kinds)
        if todo is not None:
            planned = [planned[int(i)] for i in todo]
        if overwrite:
            return planned
        if self.spec.filesystem is None:
            return pending_outputs(planned)  # finished meanwhile (a parallel run) → skip, like the CLI
        there = _existing(self.spec.filesystem, [output.path.as_posix() for output in planned])
        return [output for output in planned if output.path.as_posix() not in there]

    def _read(self, item: InputItem, data: Any, image: Any) -> LoadedImage | Failure:
        try:
            if image is not None:
                return _array_image(image, item.source)
            if data is not None:
                return read_image_bytes(bytes(data), item.source)
        except InputError as exc:
            return Failure(item.source, _one_line(exc))
        except (OSError, ValueError, MemoryError) as exc:
            return Failure(item.source, f"cannot read {item.source}: {_one_line(exc)}")
        return _load(item)  # the CLI's reader and its exact messages

    def _write(self, image: LoadedImage, masks: torch.Tensor, outputs: list[PlannedOutput], item: InputItem):
        bits = self.spec.job.bits
        fs = self.spec.filesystem
        if fs is None:
            return write_image_outputs(item, image, masks, outputs, bits)
        written = []
        for output in outputs:
            rendered = render(output.kind, image.levels, masks[output.target], image.alpha, bits)
            path = output.path.as_posix()
            _write_file(fs, path, encode_png(png_array(rendered, output.kind, bits)))
            written.append(path)
        return written

    # -- the batch
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        paths = [str(p) for p in batch["path"]]
        count = len(paths)
        keys = _column(batch, "key", count, str)
        keys = [key or input_key(os.path.basename(path)) for key, path in zip(keys, paths)]
        indices = [-1 if i is None else int(i) for i in _column(batch, "index", count, (int, np.integer))]
        todos = _column(batch, "todo", count, (list, np.ndarray))
        datas = _column(batch, "bytes", count, (bytes, bytearray, memoryview))
        arrays = _column(batch, "image", count, np.ndarray)
        items = [InputItem(source=p, key=k, kind="image") for p, k in zip(paths, keys)]
        status = [MASKED] * count
        errors = [""] * count
        outputs: list[list[str]] = [[] for _ in range(count)]
        masks_out: list[Any] = [None] * count

        def result() -> dict[str, Any]:
            columns: dict[str, Any] = {
                "index": np.asarray(indices, dtype=np.int64),
                "path": paths,
                "key": [item.key for item in items],
                "status": status,
                "error": errors,
                "outputs": outputs,
            }
            if self.spec.return_masks:
                columns["masks"] = [m if m is not None else np.zeros((0, 0, 0), np.float32) for m in masks_out]
            return columns

        if self.session is None:
            status[:] = [FATAL] * count
            errors[:] = [self.error or "the model did not load"] * count
            return result()

        planned: list[list[PlannedOutput]] = [[] for _ in range(count)]
        todo_rows = list(range(count))
        if self.spec.write:
            overwrite = [self.spec.job.overwrite or item.source == STDIN for item in items]
            planned = list(self.pool.map(self._plan, items, todos, overwrite))
            todo_rows = [i for i in range(count) if planned[i]]
            for i in set(range(count)) - set(todo_rows):
                status[i] = SKIPPED

        loaded = list(self.pool.map(lambda i: self._read(items[i], datas[i], arrays[i]), todo_rows))
        ready = []
        for i, image in zip(todo_rows, loaded):
            if isinstance(image, Failure):
                status[i], errors[i] = FAILED, image.error
            else:
                ready.append((i, image))
        if not ready:
            return result()
        try:
            masks = chunk_masks(
                self.session,
                [image for _, image in ready],
                [items[i].source for i, _ in ready],
                self.table,
                self.spec.job.options,
                self.spec.job.batch_size,
            )
        except _OOM_ERRORS as exc:  # the engine already halved the batch down to one image
            for i, _ in ready:
                status[i] = FATAL
                detail = getattr(exc, "detail", "") or _one_line(exc)  # textmask.OutOfMemoryError: torch's line
                errors[i] = f"out of memory on {self.session.device} even one image at a time ({detail})"
            return result()

        def finish(position: int) -> None:
            i, image = ready[position]
            mask = masks[position]
            if isinstance(mask, Failure):
                status[i], errors[i] = FAILED, mask.error
                return
            if self.spec.return_masks:
                masks_out[i] = mask.numpy()
            if not self.spec.write:
                return
            try:
                outputs[i] = self._write(image, mask, planned[i], items[i])
                status[i] = WRITTEN
            except OSError as exc:
                if exc.errno in _FATAL_ERRNOS:
                    status[i] = FATAL
                    errors[i] = f"cannot write outputs for {items[i].source}: {exc.strerror or exc}; stopping"
                else:
                    status[i], errors[i] = FAILED, f"cannot write its output: {_one_line(exc)}"

        list(self.pool.map(finish, range(len(ready))))
        return result()


# ------------------------------------------------------------------------------------------ cluster
def runtime_env() -> dict[str, Any]:
    """A Ray ``runtime_env`` that ships this process's textmask package to every worker, for your own
    ``ray.init(runtime_env=textmask.ray_data.runtime_env())``: the workers then run exactly this code (and
    name files the same way) and need only textmask's dependencies (torch, tokenizers, Pillow...)."""
    import textmask

    return {"py_modules": [str(Path(textmask.__file__).parent)]}


_SHIPPED = False  # whether connect() started this Ray session with runtime_env()


def connect(address: str | None = None, *, ship_code: bool = True, **init_kwargs: Any) -> None:
    """Make sure this process is connected to Ray: to ``address`` (or ``RAY_ADDRESS``) if given, else to a new
    local Ray on this machine, with :func:`runtime_env` unless ``ship_code=False``. Does nothing when Ray is
    already initialized (e.g. by your own ``ray.init``)."""
    global _SHIPPED
    if ray.is_initialized():
        return
    options: dict[str, Any] = {"logging_level": logging.WARNING, **init_kwargs}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        options["address"] = address
    else:
        options.setdefault("include_dashboard", False)
    if ship_code:
        env = dict(options.get("runtime_env") or {})
        env["py_modules"] = [*env.get("py_modules", []), *runtime_env()["py_modules"]]
        options["runtime_env"] = env
    ray.init(**options)
    _SHIPPED = ship_code


def _task_runtime_env() -> dict[str, Any] | None:
    """For a Ray someone else started: on this machine only, let the workers import this textmask (a checkout
    put on ``sys.path`` by hand is not inherited by them). Elsewhere textmask must be installed on the nodes,
    or Ray started with :func:`runtime_env`."""
    if _SHIPPED or not _single_node_here():
        return None
    import textmask

    parent = str(Path(textmask.__file__).parent.parent)
    inherited = os.environ.get("PYTHONPATH", "")
    return {"env_vars": {"PYTHONPATH": os.pathsep.join([parent, inherited]) if inherited else parent}}


def _single_node_here() -> bool:
    """Whether every alive Ray node is this machine (a local Ray): then the driver can resolve the model once."""
    try:
        here = ray.util.get_node_ip_address()
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        return bool(nodes) and all(node.get("NodeManagerAddress") == here for node in nodes)
    except Exception:  # an unusual cluster: let each actor resolve the model itself
        return False


def _plan_resources(resources: Resources, device: str, batches: int) -> tuple[Any, float, float, str, int]:
    """``(compute strategy, cpus, gpus, device, actors)`` for this cluster; raise ``ValueError`` if impossible."""
    total = ray.cluster_resources()
    cpus = float(resources.cpus_per_actor)
    if cpus < 0:
        raise ValueError(f"cpus per actor: must be >= 0, got {cpus}")
    gpus = resources.gpus_per_actor
    cluster_gpus = float(total.get("GPU", 0))
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 and (device == "auto" or device.startswith("cuda")) else 0.0
    gpus = float(gpus)
    if gpus < 0:
        raise ValueError(f"gpus per actor: must be >= 0, got {gpus}")
    if gpus > 0 and cluster_gpus <= 0:
        raise ValueError("GPU actors were asked for, but the Ray cluster has no GPUs; use --gpus-per-actor 0")
    if device.startswith("cuda") and gpus == 0:
        raise ValueError(f"device {device!r} needs GPU actors: give each actor a GPU (--gpus-per-actor 1)")
    actor_device = device if device != "auto" else ("cuda" if gpus > 0 else "cpu")
    fits = math.inf
    if cpus > 0:
        fits = min(fits, float(total.get("CPU", 0)) // cpus)
    if gpus > 0:
        fits = min(fits, cluster_gpus // gpus)
    fits = int(max(1, fits if math.isfinite(fits) else 1))
    wanted = resources.actors
    if isinstance(wanted, tuple):
        low, high = int(wanted[0]), int(wanted[1])
        if not 1 <= low <= high:
            raise ValueError(f"actors: need 1 <= min <= max, got {wanted}")
        return ray.data.ActorPoolStrategy(min_size=low, max_size=high), cpus, gpus, actor_device, high
    if wanted is None:
        size = max(1, min(fits, batches))
    else:
        size = int(wanted)
        if size < 1:
            raise ValueError(f"actors: must be at least 1, got {size}")
    if size > fits:  # the cluster holds fewer now: start what fits, the autoscaler may add the rest
        log.warning("only %d of %d actors fit the Ray cluster's resources now; starting with %d", fits, size, fits)
        return ray.data.ActorPoolStrategy(min_size=fits, max_size=size), cpus, gpus, actor_device, size
    return ray.data.ActorPoolStrategy(size=size), cpus, gpus, actor_device, size


def _map(
    dataset: Any,
    spec: _ActorSpec,
    compute: Any,
    cpus: float,
    gpus: float,
    batch_size: int,
) -> Any:
    remote: dict[str, Any] = {"num_cpus": cpus}
    if gpus > 0:
        remote["num_gpus"] = gpus
    env = _task_runtime_env()
    if env is not None:
        remote["runtime_env"] = env
    return dataset.map_batches(
        MaskActor,
        fn_constructor_args=(spec,),
        batch_size=batch_size,
        batch_format="numpy",
        compute=compute,
        zero_copy_batch=True,
        **remote,
    )


def _targets(prompts: Sequence[str] | Sequence[MaskTarget], combine: str) -> list[MaskTarget]:
    if prompts and all(isinstance(p, MaskTarget) for p in prompts):
        return list(prompts)  # type: ignore[arg-type]
    return make_targets([str(p) for p in prompts], combine)


# ------------------------------------------------------------------------------------- mask_dataset
def mask_dataset(
    dataset: Any,
    prompts: Sequence[str],
    output_dir: str | os.PathLike | None = None,
    *,
    negative_prompts: Sequence[str] = (),
    combine: str = "each",
    options: MaskOptions | None = None,
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
        dataset: rows with ``path`` and optionally ``key``, ``bytes`` or ``image`` (see :class:`MaskActor`):
            ``ray.data.from_items([{"path": p} for p in paths])``,
            ``ray.data.read_binary_files(uri, include_paths=True)`` (any pyarrow filesystem; decoded by textmask)
            or ``ray.data.read_images(uri, include_paths=True)`` (decoded by Ray; see the module notes).
        prompts: what to mask; one mask per prompt (``combine="each"``) or one for all (``union``,
            ``intersection``).
        output_dir: where masks go, named like the CLI's (``<key>.<prompt>.png``): a local folder, a
            ``file://`` or pyarrow URI (``s3://bucket/masks``), or a path in ``filesystem``. None: nothing is
            written and each row carries its ``masks`` ``[T, H, W]`` float32 in [0, 1].
        negative_prompts, combine, options, option_overrides: as for :meth:`textmask.Segmenter.mask`.
        kinds: ``mask``, ``overlay``, ``cutout``; bits: 8 or 16 for masks.
        overwrite: rewrite outputs that exist (default: the row is ``skipped``).
        return_masks: also return the masks when writing (default: only without ``output_dir``).
        model, device, dtype: what each actor loads (a :class:`ModelSpec` for more); the model must be
            reachable from every node.
        batch_size: images per actor call and per forward pass.
        actors, cpus_per_actor, gpus_per_actor: see :class:`Resources`.
        address, ship_code: the cluster, when not connected yet (see :func:`connect`).

    Keys are the file names without suffix unless the rows carry a ``key`` column (the CLI's names come from
    :func:`run_ray_job`, which also skips finished inputs before scheduling and avoids name collisions).
    """
    connect(address, ship_code=ship_code)
    spec_model = model if isinstance(model, ModelSpec) else ModelSpec(model=model, device=device, dtype=dtype)
    options = MaskOptions.from_kwargs(options, **option_overrides)
    fs, root = (None, ".") if output_dir is None else resolve_output(output_dir, filesystem)
    job = MaskJob(
        outdir=Path(root),
        targets=_targets(prompts, combine),
        negative_prompts=tuple(dict.fromkeys(negative_prompts)),
        options=options,
        kinds=tuple(dict.fromkeys(kinds)),
        bits=int(bits),
        batch_size=int(batch_size),
        overwrite=overwrite,
    )
    resources = Resources(actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor)
    compute, cpus, gpus, actor_device, _ = _plan_resources(resources, spec_model.device, batches=10**9)
    spec = _ActorSpec(
        model=spec_model,
        device=actor_device,
        job=job,
        write=output_dir is not None,
        return_masks=output_dir is None if return_masks is None else bool(return_masks),
        filesystem=fs,
        threads=max(1, math.ceil(cpus)),
    )
    return _map(dataset, spec, compute, cpus, gpus, int(batch_size))


# -------------------------------------------------------------------------------------- run_ray_job
def run_ray_job(
    items: Sequence[InputItem],
    job: MaskJob,
    model: ModelSpec,
    resources: Resources = Resources(),
    *,
    filesystem: Any = None,
    address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_failure: Callable[[Failure], None] | None = None,
    ship_code: bool = True,
    show_ray_progress: bool = False,
) -> RayReport:
    """:func:`textmask.jobs.run_job` on a Ray cluster: same outputs, names, resume and report.

    Args:
        items: the inputs, from :func:`textmask.io.discover_inputs` (which makes keys unique).
        job: what to make; ``job.outdir`` is a local (or shared) folder, or a path inside ``filesystem``
            (see :func:`resolve_output`).
        model: what each actor loads. On a Ray that runs on this machine only, the driver resolves it once
            (downloads or builds it) and the actors load that folder.
        resources: actors and what each one holds.
        address: a Ray cluster to connect to (default ``RAY_ADDRESS``, else a local Ray is started).
        progress, should_stop, on_failure: as for :func:`textmask.jobs.run_job`; ``should_stop`` is checked as
            results arrive, and stops the run cleanly (finished files stay, a rerun resumes).

    Videos are masked whole, one Ray task each, after the images (local or shared output folders only).
    """
    if model.device != "auto" and not model.device.startswith(("cpu", "cuda")):
        raise ValueError(f"device {model.device!r}: Ray actors run on cpu or cuda")
    started = time.perf_counter()
    stop = should_stop or (lambda: False)
    report = RayReport(inputs=len(items))
    fs = filesystem
    root = job.outdir.as_posix()
    existing = _list_existing(fs, root) if fs is not None and not job.overwrite else set()
    if fs is None:
        remove_stale_temporaries(job.outdir)  # left by a run that was killed mid-write

    rows: list[dict[str, Any]] = []
    videos: list[tuple[int, InputItem, list[PlannedOutput]]] = []
    for index, item in enumerate(items):
        report.images += item.kind == "image"
        report.videos += item.kind == "video"
        planned = plan_outputs(item, job.targets, job.outdir, job.kinds, job.video_forms)
        if fs is None:
            pending = pending_outputs(planned, overwrite=job.overwrite or item.source == STDIN)
        else:
            pending = [output for output in planned if output.path.as_posix() not in existing]
        if not pending:
            report.skipped += 1
            continue
        if item.kind == "video":
            videos.append((index, item, pending))
            continue
        row: dict[str, Any] = {
            "index": index,
            "path": item.source,
            "key": item.key,
            "todo": [planned.index(output) for output in pending],
        }
        if item.source == STDIN:
            import sys

            row["bytes"] = sys.stdin.buffer.read()
        rows.append(row)

    if not rows and not videos:
        report.seconds = time.perf_counter() - started
        return report

    connect(address, ship_code=ship_code)
    started = time.perf_counter()  # the rate covers scheduling, actor start-up and masking, not Ray's start
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = show_ray_progress
    if not show_ray_progress:  # textmask shows its own bar; Ray Data would also say that its bars are off
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    batch = max(1, int(job.batch_size))
    compute, cpus, gpus, actor_device, actors = _plan_resources(resources, model.device, -(-len(rows) // batch))
    if _single_node_here():  # resolve (download, build) once here rather than once per actor
        from .model import locate_model

        folder = locate_model(model.model, cache_dir=model.cache_dir, download=model.download)
        model = ModelSpec(str(folder), model.device, model.dtype, None, model.allow_pickle, False)
    threads = max(1, math.ceil(cpus))
    spec = _ActorSpec(model, actor_device, job, write=True, return_masks=False, filesystem=fs, threads=threads)
    report.cluster = {
        "address": address or os.environ.get("RAY_ADDRESS") or "local",
        "nodes": len([node for node in ray.nodes() if node.get("Alive")]),
        "actors": actors,
        "cpus_per_actor": cpus,
        "gpus_per_actor": gpus,
        "device": actor_device,
    }

    total = len(rows) + len(videos)
    done = 0
    written: dict[int, list[str]] = {}
    failures: dict[int, Failure] = {}

    def fail(index: int, failure: Failure) -> None:
        failures[index] = failure
        if on_failure is not None:
            on_failure(failure)

    if rows:
        if any("bytes" in row for row in rows):  # stdin: one row carries its bytes, the others None
            for row in rows:
                row.setdefault("bytes", None)
        results = _map(ray.data.from_items(rows), spec, compute, cpus, gpus, batch)
        iterator = iter(results.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            for result in iterator:
                for index, path, status, error, outputs in zip(
                    result["index"], result["path"], result["status"], result["error"], result["outputs"]
                ):
                    index = int(index)
                    if status == WRITTEN:
                        report.processed += 1
                        written[index] = [str(p) for p in outputs]
                    elif status == SKIPPED:
                        report.skipped += 1
                    elif status == FAILED:
                        fail(index, Failure(str(path), str(error)))
                    elif status == FATAL and report.fatal is None:
                        report.fatal = str(error)
                done += len(result["index"])
                if progress is not None:
                    progress(done, total)
                if report.fatal is not None:
                    break
                if stop():
                    report.interrupted = True
                    break
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # stops the Dataset's execution (and its actors) when leaving early
    if videos and report.fatal is None and not report.interrupted:
        done = _run_videos(videos, spec, cpus, gpus, report, written, fail, stop, progress, done, total)
    report.written = [path for index in sorted(written) for path in written[index]]
    report.failures = [failures[index] for index in sorted(failures)]
    report.seconds = time.perf_counter() - started
    return report


def _video_task(spec: _ActorSpec, item: InputItem, outputs: list[PlannedOutput]) -> dict[str, Any]:
    """One whole video in a Ray task: ``{"written", "frames"}`` or ``{"error", "fatal"}``."""
    from . import video as video_io

    session, error = _load_session(spec)  # textmask.load caches the model per worker process: tasks reuse it
    if session is None:
        return {"error": error, "fatal": True}
    table = PromptTable.build(spec.job.targets, spec.job.negative_prompts)
    try:
        info = video_io.probe(item.source)
        written, frames = video_io.mask_video(session, item, outputs, info, table, spec.job)
    except OSError as exc:
        if exc.errno in _FATAL_ERRNOS:
            return {"error": f"cannot write outputs for {item.source}: {exc.strerror or exc}; stopping", "fatal": True}
        return {"error": f"cannot write its output: {_one_line(exc)}", "fatal": False}
    except TextmaskError as exc:
        return {"error": _one_line(exc), "fatal": False}
    return {"written": written, "frames": frames}


def _run_videos(
    videos: Iterable[tuple[int, InputItem, list[PlannedOutput]]],
    spec: _ActorSpec,
    cpus: float,
    gpus: float,
    report: RayReport,
    written: dict[int, list[str]],
    fail: Callable[[int, Failure], None],
    stop: Callable[[], bool],
    progress: Callable[[int, int], None] | None,
    done: int,
    total: int,
) -> int:
    options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
    env = _task_runtime_env()
    if env is not None:
        options["runtime_env"] = env
    task = ray.remote(_video_task).options(**options)
    if spec.filesystem is not None:
        for index, item, _ in videos:
            fail(index, Failure(item.source, "videos need a local or shared output folder with --engine ray"))
            done += 1
        return done
    pending = {task.remote(spec, item, outputs): (index, item) for index, item, outputs in videos}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if not ready:
                if stop():
                    report.interrupted = True
                    break
                continue
            index, item = pending.pop(ready[0])
            outcome = ray.get(ready[0])
            if "error" in outcome:
                if outcome["fatal"]:
                    report.fatal = outcome["error"]
                    break
                fail(index, Failure(item.source, outcome["error"]))
            else:
                written[index] = list(outcome["written"])
                report.frames += int(outcome["frames"])
                report.processed += 1
                report.processed_videos += 1
            done += 1
            if progress is not None:
                progress(done, total)
    finally:
        for ref in pending:
            ray.cancel(ref)
    return done
