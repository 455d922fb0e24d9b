"""Images per second through textmask's Ray path with 1 and 2 actors on this machine, side by side.

    PYTHONPATH=src python benchmarks/ray_throughput.py            # random-full, 32 photos 1280×720 (a few minutes)
    PYTHONPATH=src python benchmarks/ray_throughput.py --quick    # random-tiny, 96 small images (about a minute)

Every configuration masks the same JPEG files with the same model (``random-full`` has the architecture and cost
of ``CIDAS/clipseg-rd64-refined``, with random weights: no download needed) and writes the same mask PNGs, through
:class:`textmask.ray_data.RayExecutor` (what ``textmask mask --engine ray`` runs) on a local Ray. The in-process
engine (:func:`textmask.batch.local.run_job`, one torch thread) is measured too, as the no-Ray reference.

Two rates per column:

* **steady**: images per second once results flow (from the first finished batch to the last): the cost that
  scales to millions of images.
* **end to end**: including scheduling, actor start-up and model loading (a fixed cost per run, several seconds
  here, amortized on long runs).

It also measures what the paper estimate in docs/ray.md needs: the model's FLOPs per image (torch's FLOP
counter), and the CPU time per image of decoding the JPEG and encoding the mask PNG (one thread), which on a GPU
node stay on the CPUs. ``--json FILE`` saves every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import textmask  # noqa: F401
except ImportError:  # run from a checkout without PYTHONPATH=src
    sys.path.insert(0, str(ROOT / "src"))


def make_images(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """Photo-like JPEGs (smooth gradients, a few soft shapes, mild noise; quality 90), deterministic."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for index in range(count):
        a, b = rng.uniform(0, 1, 2)
        base = np.stack([xs / width * 200 * a + 30, ys / height * 180 * b + 40, (xs + ys) / (width + height) * 150], -1)
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.integers(0, width), rng.integers(0, height)
            size = rng.integers(min(width, height) // 10, min(width, height) // 3)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.ellipse([x0, y0, x0 + size, y0 + size], fill=colour)
        image = image.filter(ImageFilter.GaussianBlur(2))
        noisy = np.asarray(image).astype(np.int16) + rng.integers(-6, 7, (height, width, 3))
        path = folder / f"frame{index:05d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


class Clock:
    """``progress(done, total)`` callback that keeps when each result arrived."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: list[tuple[float, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.marks.append((time.perf_counter(), done))

    def rates(self, images: int, warm: int) -> dict[str, float | None]:
        """Rates; ``steady`` counts from the first result at which ``warm`` images were done (every actor has
        then finished its first batch, so its start-up is behind it) to the last."""
        end = self.marks[-1][0] if self.marks else time.perf_counter()
        steady = None
        started = [(when, done) for when, done in self.marks if done >= warm]
        if len(started) >= 2:
            (first_time, first_done), (last_time, last_done) = started[0], started[-1]
            if last_time > first_time:
                steady = (last_done - first_done) / (last_time - first_time)
        return {
            "wall_s": round(end - self.start, 2),
            "end_to_end_per_s": round(images / (end - self.start), 3),
            "steady_per_s": None if steady is None else round(steady, 3),
        }


def cpu_costs(paths: list[Path], session, samples: int = 6) -> dict[str, float]:
    """CPU seconds per image of one thread (``time.thread_time``: the CPU this thread used, so other work on a
    shared machine does not inflate it): decoding the file (textmask's reader), the masking itself (one torch
    thread), and encoding a mask PNG, for this model's soft mask (random weights: busier than a trained model's,
    so slower to compress) and for a smooth blob mask like a trained model's."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFilter

    from textmask.images import encode_png, read_image
    from textmask.postprocess import mask_levels

    paths = paths[:samples]
    started = time.thread_time()
    images = [read_image(str(path)) for path in paths]
    decode = (time.thread_time() - started) / len(paths)
    session.mask(images[0].levels, "a cat")  # warm-up (and the prompt's embedding is cached)
    started = time.thread_time()
    soft = [session.mask(image.levels, "a cat") for image in images]
    model = (time.thread_time() - started) / len(paths)
    height, width = images[0].levels.shape[:2]
    blob = Image.new("L", (width, height))
    ImageDraw.Draw(blob).ellipse([width // 4, height // 5, width * 3 // 4, height * 4 // 5], fill=255)
    blob = torch.from_numpy(np.asarray(blob.filter(ImageFilter.GaussianBlur(12)), dtype=np.float32) / 255.0)

    def encode_seconds(masks: list[torch.Tensor]) -> float:
        started = time.thread_time()
        for mask in masks:
            encode_png(mask_levels(mask).numpy())
        return (time.thread_time() - started) / len(masks)

    return {
        "decode_cpu_s": round(decode, 4),
        "mask_cpu_s": round(model, 4),
        "encode_png_model_mask_cpu_s": round(encode_seconds(soft), 4),
        "encode_png_blob_mask_cpu_s": round(encode_seconds([blob] * len(paths)), 4),
    }


def model_flops(session, path: Path) -> float:
    """FLOPs of one image's forward (vision tower, decoder, upsampling), one prompt already encoded."""
    from torch.utils.flop_counter import FlopCounterMode

    from textmask.images import read_image

    levels = read_image(str(path)).levels
    session.mask(levels, "a cat")  # the prompt embedding is cached: count only per-image work
    with FlopCounterMode(display=False) as counter:
        session.mask(levels, "a cat")
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="random-tiny on 96 small images (about a minute)")
    parser.add_argument("--model", help="default: random-full (random-tiny with --quick)")
    parser.add_argument("--images", type=int, help="how many images (default 32; 96 with --quick)")
    parser.add_argument("--size", default=None, help="WxH (default 1280x720; 320x240 with --quick)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per actor call and forward pass")
    parser.add_argument("--actors", default="1,2", help="actor counts to compare (default 1,2)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs (and torch threads) per actor")
    parser.add_argument("--no-local", action="store_true", help="skip the in-process engine column")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (alternating order); the best of each is shown")
    parser.add_argument("--json", dest="json_path", help="also write every figure to this JSON file")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = args.model or ("random-tiny" if args.quick else "random-full")
    count = args.images or (96 if args.quick else 32)
    width, height = (int(v) for v in (args.size or ("320x240" if args.quick else "1280x720")).lower().split("x"))
    actor_counts = [int(v) for v in args.actors.split(",")]

    import ray
    import torch

    import textmask
    from textmask import ray_data
    from textmask.batch import MaskJob, ModelSpec, discover_inputs, make_targets
    from textmask.batch.local import run_job
    from textmask.model import locate_model

    folder = Path(locate_model(model))  # built (random models) or found once, before any timing
    work = Path(tempfile.mkdtemp(prefix="textmask-ray-bench-"))
    try:
        paths = make_images(work / "images", count, width, height)
        items = discover_inputs([work / "images"]).items
        targets = make_targets(["a cat"])

        def job(name: str) -> MaskJob:
            return MaskJob(outdir=work / name, targets=targets, batch_size=args.batch_size)

        torch.set_num_threads(1)
        session = textmask.load(str(folder), device="cpu")
        costs = cpu_costs(paths, session)
        flops = model_flops(session, paths[0])

        cpus = os.cpu_count() or 1
        ray_data.connect(num_cpus=cpus, object_store_memory=128 * 1024 * 1024)
        threads = max(1, math.ceil(args.cpus_per_actor))
        configs = ([] if args.no_local else [0]) + actor_counts  # 0: the in-process engine
        columns: dict[str, dict] = {}
        for round_ in range(max(1, args.repeat)):
            # Alternate the order between rounds, so a slow spell on a shared machine does not hit one column only.
            for actors in configs if round_ % 2 == 0 else configs[::-1]:
                clock = Clock()
                name = "local engine" if actors == 0 else f"{actors} actor{'s' if actors > 1 else ''}"
                if actors == 0:
                    report = run_job(session, items, job(f"local-{round_}"), progress=clock)
                else:
                    spec = ModelSpec(str(folder), device="cpu")
                    executor = ray_data.RayExecutor(spec, actors=actors, cpus_per_actor=args.cpus_per_actor)
                    report = executor.run(items, job(f"ray{actors}-{round_}"), progress=clock)
                assert report.processed == count and report.fatal is None, report.to_dict()
                figures = {"actors": actors, "threads": 1 if actors == 0 else threads}
                figures.update(clock.rates(count, max(1, actors) * args.batch_size))
                best = columns.get(name)
                if best is None or (figures["steady_per_s"] or 0) > (best["steady_per_s"] or 0):
                    columns[name] = figures
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    one = next((c for c in columns.values() if c["actors"] == 1), None)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    header = (
        f"textmask Ray throughput: {count} JPEG images {width}×{height}, model {model}, 1 prompt, "
        f"batch {args.batch_size}, CPU only" + (f", best of {args.repeat} rounds" if args.repeat > 1 else "")
    )
    print(header)
    print(
        f"machine: {cpus} CPUs ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"Ray {ray.__version__}; load average at the end {load[0]:.1f} (other work on the machine slows every column)"
    )
    names = list(columns)
    rows = [
        ("actors × torch threads", [f"{c['actors'] or '-'} × {c['threads']}" for c in columns.values()]),
        ("steady images/s", [f"{c['steady_per_s']:.2f}" if c["steady_per_s"] else "-" for c in columns.values()]),
        (
            "steady s/image per actor",
            [f"{max(1, c['actors']) / c['steady_per_s']:.3f}" if c["steady_per_s"] else "-" for c in columns.values()],
        ),
        ("end-to-end images/s", [f"{c['end_to_end_per_s']:.2f}" for c in columns.values()]),
        ("wall s (incl. start-up)", [f"{c['wall_s']:.1f}" for c in columns.values()]),
    ]
    if one and one["steady_per_s"]:
        rows.append(
            (
                "steady speed-up vs 1 actor",
                [
                    f"{c['steady_per_s'] / one['steady_per_s']:.2f}×" if c["steady_per_s"] else "-"
                    for c in columns.values()
                ],
            )
        )
    width_label = max(len(label) for label, _ in rows)
    widths = [max(len(name), *(len(values[i]) for _, values in rows)) for i, name in enumerate(names)]
    print(" " * width_label + "  " + "  ".join(name.rjust(w) for name, w in zip(names, widths)))
    for label, values in rows:
        print(label.ljust(width_label) + "  " + "  ".join(v.rjust(w) for v, w in zip(values, widths)))
    print(
        f"per image: model forward {flops / 1e9:.1f} GFLOP; CPU time of one thread (not slowed by other load): "
        f"JPEG decode {costs['decode_cpu_s'] * 1e3:.1f} ms, masking {costs['mask_cpu_s'] * 1e3:.0f} ms, "
        f"mask PNG encode {costs['encode_png_model_mask_cpu_s'] * 1e3:.1f} ms (this model's mask) / "
        f"{costs['encode_png_blob_mask_cpu_s'] * 1e3:.1f} ms (a smooth blob mask)"
    )
    if args.json_path:
        result = {
            "model": model,
            "images": count,
            "size": [width, height],
            "batch_size": args.batch_size,
            "cpus": cpus,
            "load_average": list(load),
            "gflop_per_image": round(flops / 1e9, 2),
            **costs,
            "columns": columns,
        }
        Path(args.json_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
