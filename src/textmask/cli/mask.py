"""``textmask mask``: files, folders, globs, stdin and videos in, mask files out (declarations and calls only;
the work is the batch layer's, :mod:`textmask.batch`, on the executor ``--engine`` names)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from .. import __version__
from .app import (
    CONTEXT,
    EXIT_CANNOT_RUN,
    EXIT_INTERRUPTED,
    ShowWarnings,
    StopOnInterrupt,
    err,
    exit_code,
    main,
    model_options,
    print_summary,
    quiet_libraries,
    run_with_progress,
)


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
    "--detail",
    default="off",
    show_default=True,
    metavar="off|auto|RxC",
    help="Detail mode for large images and small objects: also look at overlapping tiles (auto: from the image "
    "size; 3x2: 3 rows, 2 columns), gated by the whole-image pass. Each tile costs one more forward pass.",
)
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
    type=click.Choice(["mask", "overlay", "cutout", "instances"]),
    help="Outputs: mask (grey PNG), overlay (heat map on the image), cutout (RGBA), instances (see --instances). "
    "Repeatable. [default: mask]",
)
@click.option(
    "--instances",
    "with_instances",
    is_flag=True,
    help="Also split each mask into its objects: one PNG per object (<name>.instance-01.png, largest first) and "
    "<name>.instances.json with their boxes (x0, y0, x1, y1; exclusive), scores and areas. Videos: objects are "
    "tracked with persistent ids: one mask video (or PNG folder, see --video-output) per track, "
    "<name>.track-01.mp4, and <name>.tracks.json with each frame's ids, boxes, scores and areas.",
)
@click.option("--rle", is_flag=True, help="--instances on videos: also each object's COCO RLE in the tracks JSON.")
@click.option(
    "--instance-threshold",
    type=click.FloatRange(0, 1, max_open=True),
    metavar="T",
    help="--instances: an object is the connected pixels above T [default: the mask's --threshold, else 0.5].",
)
@click.option(
    "--min-area",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="PX",
    help="--instances: drop objects smaller than PX pixels (and always those under 0.01 percent of the image).",
)
@click.option(
    "--refine",
    is_flag=True,
    help="Move the mask's borders onto the image's edges at full resolution (before threshold, grow and blur).",
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
@click.option(
    "--stabilize",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    metavar="S",
    help="Video: motion-following temporal consistency in [0, 1) (0 off; 0.8 steady): the previous masks are "
    "warped along the optical flow before blending, so moving objects do not trail. Not with --smooth.",
)
@model_options
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
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
    detail: str,
    refine: bool,
    with_instances: bool,
    rle: bool,
    instance_threshold: float | None,
    min_area: int,
    normalize: str,
    kinds: tuple[str, ...],
    bits: str,
    video_output: str,
    smooth: float,
    stabilize: float,
    model: str,
    device: str,
    dtype: str,
    backend: str,
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
    from ..batch import CollisionError, MaskJob, ModelSpec, Store, discover_inputs, executor, make_targets
    from ..errors import TextmaskError
    from ..postprocess import MaskOptions
    from ..prompts import build_prompts

    if not prompts and not examples:
        raise click.UsageError("give at least one prompt with -p/--prompt, e.g. -p 'a cat' or -p image:example.png")
    if example_weight != 1.0 and not blend:
        raise click.UsageError("--example-weight only matters with --blend")
    if smooth and stabilize:
        raise click.UsageError("give --smooth or --stabilize, not both")
    if rle and not (with_instances or "instances" in kinds):
        raise click.UsageError("--rle only matters with --instances")
    sources = list(inputs)
    if files_from is not None:
        if files_from.name == "<stdin>" and "-" in sources:
            raise click.UsageError("stdin cannot be both an image ('-') and the --files-from list")
        sources += [line.strip() for line in files_from if line.strip()]
    if not sources:
        raise click.UsageError("give at least one INPUT (file, folder or '-'), or --files-from")
    ray_settings = {"address": ray_address, "actors": actors, "cpus_per_actor": cpus_per_actor}
    ray_settings["gpus_per_actor"] = gpus_per_actor
    if engine != "ray":
        given = [f"--{name.replace('_', '-')}".replace("--address", "--ray-address") for name, value in
                 ray_settings.items() if value is not None]  # fmt: skip
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply with --engine ray")
    if "://" in outdir and not outdir.startswith("file://") and engine != "ray":
        raise click.UsageError(f"output folder {outdir}: URIs need --engine ray; the local engine writes to a folder")
    try:
        store = Store.open(outdir)
    except (ValueError, ImportError) as exc:  # pyarrow: unknown scheme, missing filesystem support
        raise click.UsageError(f"output folder {outdir}: {exc}") from None

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
            detail=detail,
            refine=refine,
        )
        settings = dict(background=example_background, blur=example_blur, crop=example_crop)
        positive = build_prompts(
            prompts, examples, example_masks, blend=blend, example_weight=example_weight, **settings
        )
        negative = build_prompts(negatives, name="negative prompt")
        targets = make_targets(positive, combine)
        discovery = discover_inputs(sources, globs=globs, exclude=store.root if store.local else None)
    except CollisionError as exc:
        raise click.UsageError(str(exc)) from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not discovery.items:
        known = " (images: png jpg webp bmp tif...; videos: mp4 mov webm mkv gif)"
        hint = f" matching {list(globs)}" if globs else known
        raise click.UsageError(f"no images or videos found in {', '.join(sources)}{hint}")
    try:
        store.check()
    except OSError as exc:
        err(str(exc))
        sys.exit(EXIT_CANNOT_RUN)

    job = MaskJob(
        outdir=Path(store.root),
        targets=targets,
        negative_prompts=tuple(negative),
        options=options,
        kinds=tuple(dict.fromkeys([*(kinds or ("mask",)), *(["instances"] if with_instances else [])])),
        bits=int(bits),
        video_forms=("video", "frames") if video_output == "both" else (video_output,),
        smoothing=smooth,
        batch_size=batch_size,
        overwrite=overwrite,
        filesystem=store.filesystem,
        instance_threshold=instance_threshold if instance_threshold is not None else _instance_level(threshold),
        min_area=min_area,
        stabilize=stabilize,
        rle=rle,
    )
    spec = ModelSpec(
        model=model, device=device, dtype=dtype, cache_dir=cache_dir, allow_pickle=allow_pickle, backend=backend
    )
    show_progress = not quiet and not as_json and sys.stderr.isatty()
    summary: dict[str, Any] = {"command": "mask", "version": __version__, "model": model}
    if engine == "ray":
        summary.update(engine="ray", device=device, dtype=dtype)
    started = time.perf_counter()
    quiet_libraries()
    with ShowWarnings() as caught, StopOnInterrupt(announce=not as_json) as stop:
        try:
            settings = {key: value for key, value in ray_settings.items() if value is not None}
            runner = executor(engine, spec, **settings)

            def run(progress: Any, failed: Any) -> Any:
                return runner.run(discovery.items, job, progress=progress, should_stop=stop, on_failure=failed)

            report = run_with_progress(discovery, show_progress, run)
        except KeyboardInterrupt:
            err("interrupted")
            if as_json:
                click.echo(json.dumps({**summary, "interrupted": True, "exit_code": EXIT_INTERRUPTED}))
            sys.exit(EXIT_INTERRUPTED)
        except TextmaskError as exc:  # the model cannot be found or loaded; a missing executor package
            err(str(exc))
            sys.exit(EXIT_CANNOT_RUN)
        except ValueError as exc:  # a device, dtype or cluster resource this machine cannot give
            raise click.UsageError(str(exc)) from None
        except ConnectionError as exc:
            err(f"cannot connect to Ray{' at ' + ray_address if ray_address else ''}: {exc}")
            sys.exit(EXIT_CANNOT_RUN)
        except Exception as exc:  # a bug, not a bad input: one line, the traceback on request
            if os.environ.get("TEXTMASK_DEBUG"):
                raise
            err(f"unexpected error: {type(exc).__name__}: {exc} (TEXTMASK_DEBUG=1 shows the traceback)")
            sys.exit(EXIT_CANNOT_RUN)
        report.ignored = discovery.ignored
        summary["warnings"] = caught.messages
    if report.device is not None:
        summary.update(device=report.device, **({"dtype": report.dtype} if report.dtype else {}))
    code = exit_code(report)
    total_seconds = time.perf_counter() - started
    summary.update(report.to_dict(), total_seconds=round(total_seconds, 3), exit_code=code)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not quiet or report.failures or report.fatal or report.interrupted:
        print_summary(report, outdir, total_seconds)
    sys.exit(code)


def _instance_level(threshold: float | None) -> float:
    """Where ``--instances`` cuts objects when ``--instance-threshold`` is not given: at the mask's own threshold
    (its masks are then 0/1 already), else at 0.5."""
    return threshold if threshold is not None and threshold < 1 else 0.5
