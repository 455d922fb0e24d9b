"""The ``textmask`` command line: argument parsing, a progress bar and the summary. Nothing else.

The work lives in the engine's modules: :mod:`textmask.io` (inputs, output names, resume, atomic writes,
rendering), :mod:`textmask.jobs` (the masking loop and its report), :mod:`textmask.video` (PyAV streaming)
and :mod:`textmask.info`. Heavy imports (torch) happen inside the commands, so ``--help`` is
instant.

Exit codes: 0 all done; 1 some inputs failed (the others were written); 2 usage error; 3 could not start
or had to stop (model missing or broken, output folder not writable, disk full); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import click

from . import __version__
from .constants import DEFAULT_MODEL

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
RANDOM_NOTE = "model {model!r} has random weights: its masks are meaningless (it exists for tests and demos)"

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _err(message: str) -> None:
    click.echo(f"textmask: {message}", err=True)


def _quiet_libraries() -> None:
    """Route textmask's log and warnings to stderr as one-liners."""
    logger = logging.getLogger("textmask")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("textmask: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


class _Warnings:
    """Show Python warnings (long or empty prompts...) as ``textmask: warning: ...`` and keep them."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __enter__(self) -> _Warnings:
        self._saved = warnings.showwarning
        warnings.showwarning = self._show  # type: ignore[assignment]
        return self

    def _show(self, message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None):
        text = str(message)
        if text not in self.messages:
            self.messages.append(text)
            _err(f"warning: {text}")

    def __exit__(self, *exc: object) -> None:
        warnings.showwarning = self._saved


class _StopOnInterrupt:
    """First Ctrl-C: finish the current batch, then stop. Second Ctrl-C: stop now (temp files are removed)."""

    def __init__(self, announce: bool) -> None:
        self.requested = False
        self.announce = announce
        self._saved: Any = None

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._saved = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            _err("stopping after the current batch (Ctrl-C again to stop at once)")

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            signal.signal(signal.SIGINT, self._saved)

    def __call__(self) -> bool:
        return self.requested


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="textmask")
def main() -> None:
    """textmask: text-prompted segmentation masks (CLIPSeg) for images, folders and videos.

    \b
    Quick start (offline; random weights, so the mask itself is meaningless):
      textmask mask examples/images/cat-on-lawn.png -p "a cat" --model random-tiny -o out/
    Real masks (downloads CIDAS/clipseg-rd64-refined once, ~600 MB):
      textmask download
      textmask mask photos/ -p "a cat" -p "a dog" -o masks/
    """


# --------------------------------------------------------------------------------------------- mask
@main.command("mask", context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, metavar="INPUT...")
@click.option(
    "-p",
    "--prompt",
    "prompts",
    multiple=True,
    metavar="TEXT",
    help="What to mask (repeat for more). image:PATH: an example image, mask what looks like it; "
    "text:... a literal text.",
)
@click.option("-o", "--output-dir", "outdir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("-n", "--negative", "negatives", multiple=True, metavar="TEXT", help="Subtract what this matches.")
@click.option("--example", "examples", multiple=True, metavar="PATH", help="An example image prompt (= -p image:PATH).")
@click.option(
    "--example-mask",
    "example_masks",
    multiple=True,
    metavar="PATH|alpha|none",
    help="Marks the object in the example (white = object; alpha: its transparency; none). Once for all "
    "examples, or once per example.",
)
@click.option(
    "--example-background",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    metavar="F",
    help="Masked examples: how much of the background is kept.",
)
@click.option(
    "--example-blur",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    metavar="SIGMA",
    help="Masked examples: background blur, pixels at 352 px.",
)
@click.option(
    "--example-crop/--no-example-crop", default=True, show_default=True, help="Masked examples: crop to the object."
)
@click.option("--blend", is_flag=True, help="Average all prompts (texts and examples) into one prompt: one mask.")
@click.option(
    "--example-weight",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    metavar="W",
    help="With --blend: an example's weight against a text.",
)
@click.option(
    "--combine",
    type=click.Choice(["each", "union", "intersection"]),
    default="each",
    show_default=True,
    help="each: one mask per prompt; union/intersection: one mask for all prompts.",
)
@click.option("-t", "--threshold", type=click.FloatRange(0, 1), help="Binarize at this value (default: soft mask).")
@click.option("--softness", type=click.FloatRange(0, 1), default=0.0, help="Width of a soft threshold ramp.")
@click.option("--blur", type=click.FloatRange(min=0), default=0.0, metavar="SIGMA", help="Gaussian blur, pixels.")
@click.option("--grow", type=int, default=0, metavar="PX", help="Grow (>0) or shrink (<0) the mask by PX pixels.")
@click.option("--shrink", type=click.IntRange(min=0), default=0, metavar="PX", help="Shrink by PX (= --grow -PX).")
@click.option("--feather", type=click.FloatRange(min=0), default=0.0, metavar="PX", help="Fade edges outward.")
@click.option("--invert", is_flag=True, help="Mask everything except what the prompts match.")
@click.option(
    "--normalize",
    type=click.Choice(["none", "minmax", "seed"]),
    default="none",
    show_default=True,
    help="none: probabilities; minmax: stretch each map to [0,1]; seed: the old Salt node's formula.",
)
@click.option(
    "-k",
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(["mask", "overlay", "cutout"]),
    help="Outputs: mask (grey PNG), overlay (heat map on the image), cutout (RGBA). Repeatable. [default: mask]",
)
@click.option("--bits", type=click.Choice(["8", "16"]), default="8", show_default=True, help="Mask PNG bit depth.")
@click.option(
    "--video-output",
    type=click.Choice(["video", "frames", "both"]),
    default="video",
    show_default=True,
    help="For videos: a video file, a folder of PNG frames, or both.",
)
@click.option(
    "--smooth",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    metavar="S",
    help="Video: temporal smoothing strength in [0, 1) (0 off, 0.5 mild, 0.8 strong).",
)
@click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True, help="Hub id, folder, or random-tiny.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16", "fast"]),
    default="float32",
    show_default=True,
)
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Hugging Face cache to look in.")
@click.option("--allow-pickle", is_flag=True, help="Also load pytorch_model.bin weights (trusted sources only).")
@click.option("-g", "--glob", "globs", multiple=True, metavar="PATTERN", help="Files to take from folders.")
@click.option(
    "--files-from",
    type=click.File("r", encoding="utf-8"),
    help="Read input paths from a file, one per line ('-': stdin).",
)
@click.option("--overwrite", is_flag=True, help="Rewrite outputs that exist (default: skip them, i.e. resume).")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this process; ray: Ray actors on a local Ray or a cluster (see docs/ray.md).",
)
@click.option(
    "--ray-address", metavar="ADDRESS", help="--engine ray: cluster to join [default: RAY_ADDRESS, else local]."
)
@click.option("--actors", type=click.IntRange(min=1), help="--engine ray: model replicas [default: as many as fit].")
@click.option(
    "--cpus-per-actor",
    type=click.FloatRange(min=0),
    help="--engine ray: CPUs each actor reserves; fractions pack several per core [default: 1].",
)
@click.option(
    "--gpus-per-actor",
    type=click.FloatRange(min=0),
    help="--engine ray: GPUs each actor reserves (0.5: two per GPU) [default: 1 if the cluster has GPUs, else 0].",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary unless something failed.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def mask_command(
    inputs: tuple[str, ...],
    prompts: tuple[str, ...],
    outdir: str,
    negatives: tuple[str, ...],
    examples: tuple[str, ...],
    example_masks: tuple[str, ...],
    example_background: float,
    example_blur: float,
    example_crop: bool,
    blend: bool,
    example_weight: float,
    combine: str,
    threshold: float | None,
    softness: float,
    blur: float,
    grow: int,
    shrink: int,
    feather: float,
    invert: bool,
    normalize: str,
    kinds: tuple[str, ...],
    bits: str,
    video_output: str,
    smooth: float,
    model: str,
    device: str,
    dtype: str,
    batch_size: int,
    cache_dir: str | None,
    allow_pickle: bool,
    globs: tuple[str, ...],
    files_from: Any,
    overwrite: bool,
    engine: str,
    ray_address: str | None,
    actors: int | None,
    cpus_per_actor: float | None,
    gpus_per_actor: float | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Mask images, folders (recursive) and videos: one output per input and prompt.

    INPUT is a file, a folder, or '-' for one image on stdin. Outputs are named
    OUTDIR/<relative path without suffix>.<prompt>.png (see docs/cli.md); outputs that already exist are
    skipped unless --overwrite, so an interrupted run resumes where it stopped. With --engine ray the same
    files are written by Ray actors (OUTDIR may then also be a URI such as s3://bucket/masks).

    A prompt is a text, or an example image (-p image:PATH or --example PATH; outputs
    <name>.example-<file stem>.png): CLIPSeg then masks what looks like the example.
    """
    from .io import CollisionError, build_prompts, check_writable, discover_inputs, make_targets

    if not prompts and not examples:
        raise click.UsageError("give at least one prompt with -p/--prompt, e.g. -p 'a cat' or -p image:example.png")
    if example_weight != 1.0 and not blend:
        raise click.UsageError("--example-weight only matters with --blend")
    sources = list(inputs)
    if files_from is not None:
        if files_from.name == "<stdin>" and "-" in sources:
            raise click.UsageError("stdin cannot be both an image ('-') and the --files-from list")
        sources += [line.strip() for line in files_from if line.strip()]
    if not sources:
        raise click.UsageError("give at least one INPUT (file, folder or '-'), or --files-from")
    ray_options = {"--ray-address": ray_address, "--actors": actors}
    ray_options.update({"--cpus-per-actor": cpus_per_actor, "--gpus-per-actor": gpus_per_actor})
    if engine != "ray":
        given = [name for name, value in ray_options.items() if value is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply with --engine ray")
    remote_output = "://" in outdir and not outdir.startswith("file://")
    if remote_output and engine != "ray":
        raise click.UsageError(f"output folder {outdir}: URIs need --engine ray; the local engine writes to a folder")

    from .jobs import MaskJob
    from .postprocess import MaskOptions

    try:
        options = MaskOptions(
            normalize=normalize,
            combine="intersection" if combine == "intersection" else "union",
            threshold=threshold,
            threshold_softness=softness,
            grow=grow - shrink,
            blur=blur,
            feather=feather,
            invert=invert,
        )
        settings = dict(background=example_background, blur=example_blur, crop=example_crop)
        positive = build_prompts(
            prompts, examples, example_masks, blend=blend, example_weight=example_weight, **settings
        )
        negative = build_prompts(negatives, name="negative prompt")
        targets = make_targets(positive, combine)
        discovery = discover_inputs(sources, globs=globs, exclude=None if remote_output else outdir)
    except CollisionError as exc:
        raise click.UsageError(str(exc)) from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not discovery.items:
        known = " (images: png jpg webp bmp tif...; videos: mp4 mov webm mkv gif)"
        hint = f" matching {list(globs)}" if globs else known
        raise click.UsageError(f"no images or videos found in {', '.join(sources)}{hint}")
    filesystem, root = None, outdir
    try:
        if engine == "ray":
            filesystem, root = _ray_output(outdir)
        if filesystem is None:
            check_writable(root)
    except OSError as exc:
        _err(str(exc))
        sys.exit(EXIT_CANNOT_RUN)

    video_forms = ("video", "frames") if video_output == "both" else (video_output,)
    job = MaskJob(
        outdir=Path(root),
        targets=targets,
        negative_prompts=tuple(negative),
        options=options,
        kinds=tuple(dict.fromkeys(kinds or ("mask",))),
        bits=int(bits),
        video_forms=video_forms,
        smoothing=smooth,
        batch_size=batch_size,
        overwrite=overwrite,
    )
    show_progress = not quiet and not as_json and sys.stderr.isatty()
    summary: dict[str, Any] = {"command": "mask", "version": __version__, "model": model}
    started = time.perf_counter()
    with _Warnings() as caught, _StopOnInterrupt(announce=not as_json) as stop:
        try:
            if engine == "ray":
                summary.update(engine="ray", device=device, dtype=dtype)
                ray_settings = (ray_address, actors, cpus_per_actor, gpus_per_actor, filesystem)
                model_settings = (model, device, dtype, cache_dir, allow_pickle)
                report = _run_on_ray(discovery, job, model_settings, ray_settings, show_progress, stop)
                summary.update(device=report.cluster.get("device", device))
            else:
                session = None
                if any(job.plan(item) for item in discovery.items):  # everything done already: no model needed
                    session = _load_session(model, device, dtype, cache_dir, allow_pickle)
                    summary.update(device=str(session.device), dtype=str(session.dtype).removeprefix("torch."))
                    from .info import is_random_model

                    if is_random_model(session.loaded.folder):
                        warnings.warn(RANDOM_NOTE.format(model=model), stacklevel=1)
                report = _run_with_progress(
                    discovery,
                    show_progress,
                    lambda progress, failed: _run_local(session, discovery, job, stop, progress, failed),
                )
        except KeyboardInterrupt:
            _err("interrupted")
            if as_json:
                click.echo(json.dumps({**summary, "interrupted": True, "exit_code": EXIT_INTERRUPTED}))
            sys.exit(EXIT_INTERRUPTED)
        except click.ClickException:
            raise
        except Exception as exc:  # a bug, not a bad input: one line, the traceback on request
            if os.environ.get("TEXTMASK_DEBUG"):
                raise
            _err(f"unexpected error: {type(exc).__name__}: {exc} (TEXTMASK_DEBUG=1 shows the traceback)")
            sys.exit(EXIT_CANNOT_RUN)
        report.ignored = discovery.ignored
        summary["warnings"] = caught.messages
    code = _exit_code(report)
    total_seconds = time.perf_counter() - started
    summary.update(report.to_dict(), total_seconds=round(total_seconds, 3), exit_code=code)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not quiet or report.failures or report.fatal or report.interrupted:
        _print_summary(report, outdir, total_seconds)
    sys.exit(code)


def _load_session(model: str, device: str, dtype: str, cache_dir: str | None, allow_pickle: bool) -> Any:
    _quiet_libraries()
    import textmask
    from textmask.errors import TextmaskError

    try:
        return textmask.load(model, device=device, dtype=dtype, cache_dir=cache_dir, allow_pickle=allow_pickle)
    except TextmaskError as exc:
        _err(str(exc))
        sys.exit(EXIT_CANNOT_RUN)
    except ValueError as exc:  # a device or dtype this machine cannot use
        raise click.UsageError(str(exc)) from None


def _run_local(session: Any, discovery: Any, job: Any, stop: _StopOnInterrupt, progress: Any, failed: Any) -> Any:
    from .jobs import run_job

    return run_job(session, discovery.items, job, progress=progress, should_stop=stop, on_failure=failed)


def _ray_output(outdir: str) -> tuple[Any, str]:
    """``(pyarrow filesystem or None, path in it)`` for ``--engine ray``'s OUTDIR (a folder or a URI)."""
    ray_data = _ray_module()
    try:
        return ray_data.resolve_output(outdir)
    except (ValueError, ImportError) as exc:  # pyarrow: unknown scheme, missing filesystem support
        raise click.UsageError(f"output folder {outdir}: {exc}") from None


def _ray_module() -> Any:
    try:
        from . import ray_data
    except ImportError:
        raise click.UsageError("--engine ray needs Ray Data: pip install 'textmask[ray]'") from None
    return ray_data


def _run_on_ray(
    discovery: Any, job: Any, model_settings: tuple, ray_settings: tuple, show: bool, stop: _StopOnInterrupt
) -> Any:
    """``--engine ray``: the same job on Ray actors (textmask.ray_data does the work)."""
    ray_data = _ray_module()
    from .errors import TextmaskError
    from .model import RANDOM_SOURCES

    _quiet_libraries()
    model, device, dtype, cache_dir, allow_pickle = model_settings
    address, actors, cpus, gpus, filesystem = ray_settings
    if model in RANDOM_SOURCES or (Path(model).is_dir() and _is_random_folder(model)):
        warnings.warn(RANDOM_NOTE.format(model=model), stacklevel=1)
    spec = ray_data.ModelSpec(model=model, device=device, dtype=dtype, cache_dir=cache_dir, allow_pickle=allow_pickle)
    resources = ray_data.Resources(actors=actors, cpus_per_actor=1.0 if cpus is None else cpus, gpus_per_actor=gpus)

    def run(progress: Any, failed: Any) -> Any:
        return ray_data.run_ray_job(
            discovery.items,
            job,
            spec,
            resources,
            filesystem=filesystem,
            address=address,
            progress=progress,
            should_stop=stop,
            on_failure=failed,
        )

    try:
        return _run_with_progress(discovery, show, run)
    except TextmaskError as exc:  # the model cannot be found or built on this machine
        _err(str(exc))
        sys.exit(EXIT_CANNOT_RUN)
    except ValueError as exc:  # resources the cluster cannot give (GPUs, device)
        raise click.UsageError(str(exc)) from None
    except ConnectionError as exc:
        _err(f"cannot connect to Ray{' at ' + address if address else ''}: {exc}")
        sys.exit(EXIT_CANNOT_RUN)


def _is_random_folder(folder: str) -> bool:
    from .info import is_random_model

    return is_random_model(folder)


def _run_with_progress(discovery: Any, show: bool, run: Any) -> Any:
    """``run(progress, on_failure)`` with a tqdm bar on stderr (items/s, ETA) when ``show``; failures are
    printed as they come."""
    from tqdm import tqdm

    from .jobs import Failure

    unit = "item" if any(item.kind == "video" for item in discovery.items) else "img"  # videos count frames
    bars: list[Any] = []

    def progress(done: int, total: int) -> None:
        if not show:
            return
        if not bars:
            bars.append(tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr, smoothing=0.1))
        bar = bars[0]
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def failed(failure: Failure) -> None:
        message = _failure_line(failure)
        if bars:
            bars[0].write(f"textmask: failed: {message}", file=sys.stderr)
        else:
            _err(f"failed: {message}")

    try:
        return run(progress, failed)
    finally:
        for bar in bars:
            bar.close()


def _failure_line(failure: Any) -> str:
    """The error alone when it names the input already, else ``input: error``."""
    return failure.error if failure.input in failure.error else f"{failure.input}: {failure.error}"


def _exit_code(report: Any) -> int:
    if report.interrupted:
        return EXIT_INTERRUPTED
    if report.fatal:
        return EXIT_CANNOT_RUN
    return EXIT_FAILED if report.failures else EXIT_OK


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _print_summary(report: Any, outdir: str, total_seconds: float) -> None:
    if report.fatal:
        _err(report.fatal)
    rate = ""
    if report.seconds > 0 and report.units:
        what = "images and frames" if report.frames else "images"
        rate = f" ({report.units / report.seconds:.1f} {what}/s)"
    parts = [f"{report.processed} masked", f"{report.skipped} skipped (outputs exist)"]
    if report.failures:
        parts.append(f"{report.failed} failed")
    if report.ignored:
        parts.append(f"{report.ignored} other files ignored")
    click.echo(
        f"textmask: {', '.join(parts)}; {_plural(len(report.written), 'file')} written to {outdir} "
        f"in {total_seconds:.1f} s{rate}" + ("; interrupted, run again to resume" if report.interrupted else "")
    )
    if report.failures:
        click.echo(f"failed ({report.failed}):")
        for failure in report.failures:
            message = _failure_line(failure)
            click.echo(f"  {message}")


# ----------------------------------------------------------------------------------------- download
@main.command("download", context_settings=CONTEXT)
@click.argument("model", default=DEFAULT_MODEL)
@click.option(
    "--dir",
    "cache_dir",
    type=click.Path(file_okay=False),
    help="Hugging Face cache folder to download into (default: the standard cache; ComfyUI: models/clipseg).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def download_command(model: str, cache_dir: str | None, as_json: bool) -> None:
    """Fetch a model's weights (safetensors, configs, tokenizer) into the cache and check that they load.

    MODEL is a Hugging Face id (default CIDAS/clipseg-rd64-refined), random-tiny / random-full (built
    locally, no download), or a local folder (only verified).
    """
    _quiet_libraries()
    from .errors import TextmaskError
    from .model import _HUB_PATTERNS, RANDOM_SOURCES, _hub_offline, locate_model

    started = time.perf_counter()
    try:
        if model in RANDOM_SOURCES or Path(model).expanduser().is_dir():
            folder = locate_model(model, cache_dir=cache_dir, download=False)
            action = "built" if model in RANDOM_SOURCES else "found"
        elif _hub_offline():
            folder = locate_model(model, cache_dir=cache_dir, download=False)  # raises a clear error if absent
            action = "already present (offline: nothing downloaded)"
        else:
            from huggingface_hub import snapshot_download

            try:
                folder = Path(snapshot_download(model, cache_dir=cache_dir, allow_patterns=_HUB_PATTERNS))
                action = "downloaded (or already complete)"
            except Exception as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                try:  # the hub is unreachable, but a complete copy may already be here
                    folder = locate_model(model, cache_dir=cache_dir, download=False)
                except TextmaskError:
                    _err(
                        f"could not download {model!r} ({reason}). Check the model id and the network (proxy: "
                        "HTTPS_PROXY); on an offline machine copy a model folder over and pass its path as --model."
                    )
                    sys.exit(EXIT_CANNOT_RUN)
                action = f"already present (the hub could not be reached: {reason})"
        checked = _verify_model(folder)
    except TextmaskError as exc:
        _err(str(exc))
        sys.exit(EXIT_CANNOT_RUN)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    size = sum(p.stat().st_size for p in files)
    result = {
        "command": "download",
        "model": model,
        "path": str(folder),
        "action": action,
        "files": [p.name for p in files],
        "size_mb": round(size / 1e6, 1),
        "verified": checked,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{model}: {action}; {len(files)} files, {size / 1e6:.1f} MB in {folder}")
        click.echo(f"verified: {checked}")
        if model in RANDOM_SOURCES:
            click.echo(f"note: {RANDOM_NOTE.format(model=model)}")


def _verify_model(folder: Path) -> str:
    """Load weights and tokenizer from ``folder`` and run one tiny mask; raise TextmaskError if anything fails."""
    import numpy as np

    from textmask.engine import Segmenter
    from textmask.errors import ModelLoadError
    from textmask.model import load_model

    # A fresh load, not the process-wide cache: the point is to check the files as they are on disk now.
    session = Segmenter(load_model(str(folder), device="cpu", dtype="float32", download=False, reuse=False))
    mask = session.mask(np.zeros((32, 32, 3), dtype=np.uint8), "a cat")
    if tuple(mask.shape) != (32, 32) or not bool(mask.isfinite().all()):
        raise ModelLoadError(f"model folder {folder}: loads, but a test mask came out wrong ({tuple(mask.shape)})")
    session.clipseg.complete_vision_tower()  # read the layers masks skip too: every weight in the file is checked
    parameters = sum(p.numel() for p in session.clipseg.parameters())
    return f"weights ({parameters / 1e6:.1f} M parameters) and tokenizer load, and a test mask runs"


# --------------------------------------------------------------------------------------------- info
@main.command("info", context_settings=CONTEXT)
@click.option("--dir", "cache_dir", type=click.Path(file_okay=False), help="Also look in this Hugging Face cache.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def info_command(cache_dir: str | None, as_json: bool) -> None:
    """Versions, devices, threads, dtype support, where models are looked for and which are present."""
    from .info import environment

    env = environment(cache_dir)
    if as_json:
        click.echo(json.dumps(env, indent=2))
        return
    echo = click.echo
    echo(f"textmask {env['textmask']}  (Python {env['python']}, {env['platform']})")
    echo(
        f"torch {env['torch']}, transformers {env['transformers'] or '-'} (interop only), Pillow {env['pillow']}, "
        f"PyAV {env['av'] or '-'}"
    )
    echo(f"devices (--device auto → {env['auto_device']}):")
    for device in env["devices"]:
        echo(f"  {device['name']}: {device['detail']}")
        dtypes = "; ".join(f"{name} {support}" for name, support in device["dtypes"].items() if name != "fast")
        echo(f"    dtypes: {dtypes}; --dtype fast → {device['dtypes']['fast']}")
    threads = env["threads"]
    echo(f"threads: {threads['intra_op']} intra-op, {threads['inter_op']} inter-op ({env['cpu_count']} CPUs)")
    search = env["model_search"]
    echo("models are looked for in:")
    echo("  a folder passed as --model (config.json + model.safetensors + tokenizer files)")
    if search["cache_dir"]:
        echo(f"  --dir / --cache-dir: {search['cache_dir']}")
    offline = " (offline: HF_HUB_OFFLINE is set)" if search["offline"] else " (downloads allowed)"
    echo(f"  Hugging Face cache: {search['huggingface_cache']}{offline}")
    echo(f"  textmask cache (random-tiny, random-full): {search['textmask_cache']}")
    echo(f"default model: {env['default_model']}")
    if env["models"]:
        echo("models present:")
        for found in env["models"]:
            note = "  [random weights: meaningless masks]" if found["random"] else ""
            pickle = "" if found["safetensors"] else "  [no safetensors: needs --allow-pickle]"
            echo(f"  {found['source']}  {found['size_mb']} MB  {found['path']}{note}{pickle}")
    else:
        echo("models present: none (run `textmask download`, or use --model random-tiny to try textmask offline)")


if __name__ == "__main__":  # pragma: no cover
    main()
