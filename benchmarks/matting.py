"""Matting benchmark: soft alpha and cut-out colours on composites with known alpha and known foreground colours.

Run from the repository root (needs the ``quality`` extra: scikit-image's photos, kornia, pymatting)::

    python benchmarks/matting.py                      # 1024×768, 4 composites per kind, timing, 4K memory
    python benchmarks/matting.py --size 1280x720 --seed 7 --no-timing --no-memory   # a size/seed not tuned on
    python benchmarks/matting.py --pictures docs/images/matting   # also write the before/after strips

Kinds (photos from scikit-image; in half of them the object is cut from the same photo, mirrored, so that the
colours overlap): **hard** shapes (anti-aliased), **defocus** (the hard alpha blurred by a Gaussian of 1-3 % of
the image's longer side), **motion** (a directional blur 2-6 % of the longer side long, any direction),
**hair** (a blob with hundreds of curved strands 1-3 px wide, drawn at 4× and reduced, so coverage is partial)
and a **semi-transparent** object (reported only: a text mask cannot know physical transparency). Each image is
``alpha · F + (1 − alpha) · B`` rounded to 8 bits, with F the object photo and B the background photo.

The coarse mask is what CLIPSeg would give for a perfect detector (``benchmarks/quality.py``'s
:func:`coarse_mask`). Compared in one run, all from that coarse mask:

* **coarse**: the coarse mask with its levels stretched (1st/99th percentile → 0/1), the image as colours;
* **guided filter**: kornia's guided filter of the stretched coarse mask (as in ``benchmarks/quality.py``), image
  colours;
* **refine**: ``textmask.refine`` with the image's colours: today's cut-out;
* **pymatting**: closed-form matting (Levin et al. 2008) on a wide trimap from the stretched coarse mask
  (unknown where 0.1 < p < 0.9), foreground by pymatting's multi-level estimator (what rembg ``-a`` does);
* **matte**: ``textmask.matte``.

Metrics, per composite then averaged: alpha SAD (sum of |Δ| / 1000), MSE (×1e3), gradient error (sum of the
squared difference of Gaussian (σ 1.4) gradient magnitudes / 1000; the alphamatting.com measures), the boundary
F-score at 2 px (hard kind), and the **cut-out error**: MSE (×1e3) of the cut-out composited over a new
background photo against the true one, over the pixels where either alpha is above 0.01 (what a user sees).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "src", ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import quality  # noqa: E402  (benchmarks/quality.py: photos, shapes, coarse masks, boundary F)

KINDS = ("hard", "defocus", "motion", "hair", "semi-transparent")
SOFT_KINDS = ("defocus", "motion", "hair")
METHODS = ("coarse", "guided filter", "refine", "pymatting", "matte")
# (background, object source, shape scene index in quality.scenes or None for hair/semi): "same" = mirrored
PAIRS = (("coffee", "astronaut"), ("rocket", "same"), ("astronaut", "immunohistochemistry"), ("coffee", "same"))
SCENES = (0, 1, 4, 5)  # star, lollipop, ring, stars
NEW_BACKGROUNDS = ("chelsea", "motorcycle", "chelsea", "motorcycle")


# ------------------------------------------------------------------------------------------- alphas
def _reduce(canvas: np.ndarray, factor: int) -> np.ndarray:
    h, w = canvas.shape[0] // factor, canvas.shape[1] // factor
    return canvas[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))


def hair_alpha(height: int, width: int, rng: np.random.Generator, strands: int = 320) -> np.ndarray:
    """A blob with ``strands`` curved strands 1-3 px wide, drawn at 4× (PIL) and area-reduced: ``[H, W]`` float32."""
    from PIL import Image, ImageDraw

    s = 4
    unit = min(height, width)
    canvas = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(canvas)
    cy, cx = height / 2 + rng.uniform(-0.05, 0.05) * unit, width / 2 + rng.uniform(-0.05, 0.05) * unit
    ry, rx = rng.uniform(0.18, 0.24) * unit, rng.uniform(0.2, 0.28) * unit
    draw.ellipse(((cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s), fill=255)
    for _ in range(strands):
        t = rng.uniform(0, 2 * math.pi)
        y, x = cy + 0.92 * ry * math.sin(t), cx + 0.92 * rx * math.cos(t)
        heading = math.atan2(math.sin(t) / ry, math.cos(t) / rx) + rng.normal(0, 0.35)
        length = rng.uniform(0.05, 0.16) * unit
        steps = 10
        points = [(x * s, y * s)]
        bend = rng.normal(0, 0.12)
        for _ in range(steps):
            heading += bend + rng.normal(0, 0.08)
            x += math.cos(heading) * length / steps
            y += math.sin(heading) * length / steps
            points.append((x * s, y * s))
        draw.line(points, fill=255, width=max(1, round(rng.uniform(1.0, 3.0) * s)), joint="curve")
    return _reduce(np.asarray(canvas, dtype=np.float32) / 255.0, s).astype(np.float32)


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """A normalized anti-aliased line ``length`` px long at ``angle`` (drawn at 4×, reduced)."""
    from PIL import Image, ImageDraw

    s = 4
    size = math.ceil(length) | 1
    canvas = Image.new("L", (size * s, size * s), 0)
    c = size * s / 2
    dx, dy = math.cos(angle) * length * s / 2, math.sin(angle) * length * s / 2
    ImageDraw.Draw(canvas).line((c - dx, c - dy, c + dx, c + dy), fill=255, width=s)
    kernel = _reduce(np.asarray(canvas, dtype=np.float64), s)
    return kernel / kernel.sum()


def make_alpha(kind: str, index: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage, signal

    longer = max(height, width)
    if kind == "hair":
        return hair_alpha(height, width, rng)
    scene = quality.scenes(width / height)[SCENES[index]]
    hard = quality.shape_mask(list(scene.parts), height, width)
    if kind == "hard":
        return hard
    if kind == "defocus":
        sigma = rng.uniform(0.01, 0.03) * longer
        return ndimage.gaussian_filter(hard, sigma, mode="nearest").astype(np.float32)
    if kind == "motion":
        kernel = motion_kernel(rng.uniform(0.02, 0.06) * longer, rng.uniform(0, math.pi))
        pad = kernel.shape[0]
        padded = np.pad(hard, pad, mode="edge")
        return np.clip(signal.fftconvolve(padded, kernel, mode="same")[pad:-pad, pad:-pad], 0, 1).astype(np.float32)
    if kind == "semi-transparent":
        level = rng.uniform(0.4, 0.7)
        return (hard * level).astype(np.float32)
    raise ValueError(kind)


# ------------------------------------------------------------------------------------------- harness
@dataclass
class Case:
    """One kind's composites: images ``[N, 3, H, W]`` uint8, true alpha and coarse ``[N, H, W]``, true foreground
    and new backgrounds ``[N, H, W, 3]`` float in [0, 1]."""

    kind: str
    names: list[str]
    levels: torch.Tensor
    alpha: torch.Tensor
    foreground: torch.Tensor
    new_background: torch.Tensor
    coarse: torch.Tensor
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def build_case(kind: str, height: int, width: int, seed: int) -> Case:
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    images, alphas, foregrounds, news, names = [], [], [], [], []
    for index, (background_name, source_name) in enumerate(PAIRS):
        background = quality.cover(quality._photo(background_name), height, width).astype(np.float32) / 255
        if source_name == "same":
            source = np.ascontiguousarray(background[::-1, ::-1])
        else:
            source = quality.cover(quality._photo(source_name), height, width).astype(np.float32) / 255
        alpha = make_alpha(kind, index, height, width, rng)
        image = alpha[..., None] * source + (1 - alpha[..., None]) * background
        images.append(np.clip(np.round(image * 255), 0, 255).astype(np.uint8))
        alphas.append(alpha)
        foregrounds.append(source)
        news.append(quality.cover(quality._photo(NEW_BACKGROUNDS[index]), height, width).astype(np.float32) / 255)
        names.append(f"{kind}: {source_name} on {background_name}")
    levels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    alpha = torch.from_numpy(np.stack(alphas))
    coarse = quality.coarse_mask(alpha)
    return Case(
        kind,
        names,
        levels,
        alpha,
        torch.from_numpy(np.stack(foregrounds)),
        torch.from_numpy(np.stack(news)),
        coarse,
    )


def stretch(coarse: torch.Tensor) -> torch.Tensor:
    """The coarse mask's own levels (1st and 99th percentile) stretched to 0 and 1, per image."""
    flat = coarse.flatten(1)
    q = torch.quantile(flat, torch.tensor([0.01, 0.99]), dim=1)
    low, high = q[0].clamp(max=0.45), q[1].clamp(min=0.55)
    return ((coarse - low[:, None, None]) / (high - low)[:, None, None]).clamp(0, 1)


def _image_colours(levels: torch.Tensor) -> torch.Tensor:
    return levels.permute(0, 2, 3, 1).float() / 255.0


def method_coarse(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    return stretch(case.coarse), _image_colours(case.levels)


def method_guided(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    return quality.guided_baseline(case.levels, stretch(case.coarse)), _image_colours(case.levels)


def method_refine(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    return quality.refined(case.levels, case.coarse), _image_colours(case.levels)


def method_pymatting(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    from pymatting import estimate_alpha_cf, estimate_foreground_ml

    images = _image_colours(case.levels).double().numpy()
    coarse = stretch(case.coarse).double().numpy()
    alphas, foregrounds = [], []
    for image, p in zip(images, coarse):
        trimap = np.where(p >= 0.9, 1.0, np.where(p <= 0.1, 0.0, 0.5))
        if (trimap == 1).any() and (trimap == 0).any():
            alpha = np.clip(estimate_alpha_cf(image, trimap), 0, 1)
        else:  # no sure foreground (a faint, semi-transparent object): closed-form cannot run; keep the coarse
            alpha = p
        alphas.append(alpha)
        foregrounds.append(np.clip(estimate_foreground_ml(image, alpha), 0, 1))
    return torch.from_numpy(np.stack(alphas)).float(), torch.from_numpy(np.stack(foregrounds)).float()


def method_matte(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    import textmask

    alpha, foreground = textmask.matte(_image_colours(case.levels), case.coarse)
    return alpha, foreground


RUNNERS = {
    "coarse": method_coarse,
    "guided filter": method_guided,
    "refine": method_refine,
    "pymatting": method_pymatting,
    "matte": method_matte,
}


# ------------------------------------------------------------------------------------------- metrics
def gradient_error(pred: np.ndarray, truth: np.ndarray) -> float:
    from scipy import ndimage

    gp = ndimage.gaussian_gradient_magnitude(pred.astype(np.float64), 1.4)
    gt = ndimage.gaussian_gradient_magnitude(truth.astype(np.float64), 1.4)
    return float(((gp - gt) ** 2).sum() / 1000)


def measure(case: Case, alpha: torch.Tensor, foreground: torch.Tensor) -> dict[str, list[float]]:
    truth = case.alpha
    diff = alpha - truth
    out: dict[str, list[float]] = {
        "sad": (diff.abs().sum(dim=(1, 2)) / 1000).tolist(),
        "mse": ((diff**2).mean(dim=(1, 2)) * 1000).tolist(),
        "grad": [gradient_error(p.numpy(), t.numpy()) for p, t in zip(alpha, truth)],
        "f": quality.boundary_f(alpha, truth).tolist(),
    }
    new = case.new_background
    seen = alpha[..., None] * foreground + (1 - alpha[..., None]) * new
    true = truth[..., None] * case.foreground + (1 - truth[..., None]) * new
    region = ((alpha > 0.01) | (truth > 0.01)).float()
    error = ((seen - true) ** 2).mean(-1) * region
    out["cutout"] = (error.sum(dim=(1, 2)) / region.sum(dim=(1, 2)).clamp(min=1) * 1000).tolist()
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def run_methods(case: Case, methods: tuple[str, ...]) -> dict[str, dict[str, float]]:
    results = {}
    for method in methods:
        start = time.perf_counter()
        alpha, foreground = RUNNERS[method](case)
        case.seconds[method] = (time.perf_counter() - start) / len(case.names)
        case.outputs[method] = (alpha, foreground)
        results[method] = {k: _mean(v) for k, v in measure(case, alpha, foreground).items()}
    return results


# ------------------------------------------------------------------------------------------- targets
def targets(table: dict[str, dict[str, dict[str, float]]]) -> list[tuple[str, float, bool]]:
    anchors = ("coarse", "guided filter", "refine", "pymatting")
    checks = []
    for kind in SOFT_KINDS:
        best = min(table[kind][a]["mse"] for a in anchors)
        ratio = table[kind]["matte"]["mse"] / best
        checks.append((f"{kind}: alpha MSE / best anchor's ≤ 0.9", ratio, ratio <= 0.9))
    soft_mean = _mean([table[k]["matte"]["mse"] for k in SOFT_KINDS])
    best_mean = min(_mean([table[k][a]["mse"] for k in SOFT_KINDS]) for a in anchors)
    checks.append(
        ("soft kinds' mean alpha MSE / best anchor's mean ≤ 0.9", soft_mean / best_mean, soft_mean <= 0.9 * best_mean)
    )
    scored = [k for k in KINDS if k != "semi-transparent"]
    cut = {m: _mean([table[k][m]["cutout"] for k in scored]) for m in METHODS}
    checks.append(
        (
            "cut-out error / refine's (today's cut-out) ≤ 0.7",
            cut["matte"] / cut["refine"],
            cut["matte"] <= 0.7 * cut["refine"],
        )
    )
    checks.append(
        ("cut-out error / pymatting's ≤ 0.9", cut["matte"] / cut["pymatting"], cut["matte"] <= 0.9 * cut["pymatting"])
    )
    hard = table["hard"]
    ratio = hard["matte"]["mse"] / hard["refine"]["mse"]
    checks.append(("hard: alpha MSE / refine's ≤ 1.1", ratio, ratio <= 1.1))
    gap = hard["refine"]["f"] - hard["matte"]["f"]
    checks.append(("hard: boundary F, refine − matte ≤ 0.02", gap, gap <= 0.02))
    return checks


# ------------------------------------------------------------------------------------------- timing
def time_against_mask(levels: torch.Tensor, coarse: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds per image of ``textmask.matte``, ``textmask.refine`` and a float32 single-prompt ``session.mask``
    on ``random-full``, the same 1024² images, round-robin, best repeat kept."""
    import textmask

    session = textmask.load("random-full")
    images = levels.permute(0, 2, 3, 1).float() / 255.0
    count = images.shape[0]
    rows = {
        "session.mask (float32, 1 prompt)": lambda: session.mask(images, "a cat"),
        "textmask.refine": lambda: textmask.refine(images, coarse),
        "textmask.matte": lambda: textmask.matte(images, coarse),
    }
    return quality.best_seconds(rows, repeats, count)


_MEMORY_CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
import textmask
torch.set_num_threads(int(sys.argv[2]))
def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))
g = torch.Generator().manual_seed(0)
small = torch.rand(1, 216, 384, 3, generator=g)
textmask.matte(small, torch.rand(1, 216, 384, generator=g))  # warm-up
images = torch.rand(1, 2160, 3840, 3, generator=g)
cells = torch.rand(1, 1, 22, 22, generator=g)
coarse = torch.nn.functional.interpolate(cells, size=(2160, 3840), mode="bilinear")[:, 0]
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
start = time.perf_counter()
alpha, foreground = textmask.matte(images, coarse)
seconds = time.perf_counter() - start
print(json.dumps({"before": before, "peak": status("VmHWM"), "seconds": seconds,
                  "inputs": images.numel() * 4 + coarse.numel() * 4,
                  "output": alpha.numel() * 4 + foreground.numel() * 4}))
"""


def memory_4k() -> dict[str, float]:
    """Peak resident memory of matting one 3840×2160 float image, in a fresh process, above the inputs."""
    import json
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(ROOT / "src"), str(torch.get_num_threads())],
        check=True,
        capture_output=True,
        text=True,
    )
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info["delta"] = max(0, info["peak"] - info["before"])
    return info


# ------------------------------------------------------------------------------------------- pictures
def busiest_crop(alpha: torch.Tensor, size: int) -> tuple[int, int]:
    """``(top, left)`` of the ``size``² square with the most fractional true alpha (where the edges are)."""
    import torch.nn.functional as F

    soft = ((alpha > 0.02) & (alpha < 0.98)).float()[None, None]
    counts = F.avg_pool2d(soft, size, stride=max(1, size // 8))
    index = int(counts.flatten().argmax())
    step = max(1, size // 8)
    return (index // counts.shape[-1]) * step, (index % counts.shape[-1]) * step


def save_strip(path: Path, case: Case, index: int, size: int, panel: int = 256) -> None:
    """Cut-outs over the new background, zoomed on the ``size``² square with the most soft edge: truth | refine
    (today's cut-out) | pymatting | textmask.matte, with a row of their alphas under them."""
    from PIL import Image, ImageDraw

    top, left = busiest_crop(case.alpha[index], size)
    new = case.new_background[index]
    columns = [("truth", case.alpha[index], case.foreground[index])]
    for method, label in (("refine", "today's cut-out"), ("pymatting", "pymatting"), ("matte", "textmask.matte")):
        alpha, foreground = case.outputs[method]
        columns.append((label, alpha[index], foreground[index]))
    rows: list[list[np.ndarray]] = [[], []]
    for _, alpha, foreground in columns:
        seen = alpha[..., None] * foreground + (1 - alpha[..., None]) * new
        for r, picture in enumerate((seen, alpha[..., None].expand(-1, -1, 3))):
            part = picture[top : top + size, left : left + size].clamp(0, 1).numpy()
            image = Image.fromarray((part * 255 + 0.5).astype(np.uint8)).resize((panel, panel), Image.NEAREST)
            rows[r].append(np.asarray(image))
    strip = Image.fromarray(np.concatenate([np.concatenate(row, 1) for row in rows], 0))
    draw = ImageDraw.Draw(strip)
    for k, (label, _, _) in enumerate(columns):
        x = k * panel + 4
        draw.rectangle((x - 2, 2, x + 6 * len(label) + 4, 14), fill=(0, 0, 0))
        draw.text((x, 2), label, fill=(255, 255, 0))
    strip.save(path, optimize=True)


PICTURES = (  # (file, kind, composite index, crop size as a fraction of the height)
    ("hair.png", "hair", 0, 0.2),
    ("hair-same-photo.png", "hair", 1, 0.2),
    ("defocus.png", "defocus", 0, 0.3),
    ("defocus-same-photo.png", "defocus", 1, 0.3),
)


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import os

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the composites (default 1024x768)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the blurs, strands and transparency")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds to run")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods to run")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing against session.mask")
    parser.add_argument("--no-memory", action="store_true", help="skip the 4K peak-memory run")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--pictures", metavar="DIR", help="write before/after strips there")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    kinds = tuple(k for k in args.kinds.split(",") if k)
    methods = tuple(m for m in args.methods.split(",") if m)
    started = time.perf_counter()
    table: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    cases = {}
    for kind in kinds:
        case = build_case(kind, height, width, args.seed)
        table[kind] = run_methods(case, methods)
        cases[kind] = case
        for m in methods:
            seconds[m].append(case.seconds[m])
        print(f"\n{kind} ({len(case.names)} composites, {width}×{height}, seed {args.seed})")
        print(f"  {'method':14s} {'SAD':>7s} {'MSE×1e3':>8s} {'grad':>7s} {'F@2px':>6s} {'cut-out MSE×1e3':>16s}")
        for m in methods:
            v = table[kind][m]
            print(f"  {m:14s} {v['sad']:7.2f} {v['mse']:8.3f} {v['grad']:7.2f} {v['f']:6.3f} {v['cutout']:16.3f}")
    print(
        "\nseconds per image (this run, this machine): " + ", ".join(f"{m} {_mean(s):.2f}" for m, s in seconds.items())
    )
    figures: dict[str, Any] = {"size": [width, height], "seed": args.seed, "table": table}
    if set(methods) == set(METHODS) and set(kinds) == set(KINDS):
        print("\ntargets (averages over the composites of each kind)")
        checks = targets(table)
        for what, value, met in checks:
            print(f"  {what:58s} {value:7.3f}  [{'met' if met else 'missed'}]")
        figures["targets"] = [list(c) for c in checks]
    if not args.no_timing:
        case = build_case("hair", 1024, 1024, args.seed)
        times = time_against_mask(case.levels, case.coarse, args.repeats)
        mask_time = times["session.mask (float32, 1 prompt)"]
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"\ntiming, 1024², batch of {len(case.names)}, {torch.get_num_threads()} threads, load average {load} "
            f"on {os.cpu_count()} CPUs (seconds per image, best of {args.repeats})"
        )
        for name, value in times.items():
            print(f"  {name:34s} {value:7.3f} s   {value / mask_time:5.2f}× session.mask")
        if "pymatting" in methods:
            scale = 1024 * 1024 / (width * height)
            py = _mean(seconds["pymatting"]) * scale
            print(f"  {'pymatting (above, scaled to 1024²)':34s} {py:7.3f} s   {py / mask_time:5.2f}× session.mask")
        ratio = times["textmask.matte"] / mask_time
        print(f"  target matte ≤ 1.0× session.mask: {ratio:.2f}  [{'met' if ratio <= 1.0 else 'missed'}]")
        figures["timing"] = times
    if not args.no_memory:
        info = memory_4k()
        print(
            f"\n4K (3840×2160, batch of 1): peak {info['delta'] / 2**20:.0f} MiB above the inputs "
            f"({info['inputs'] / 2**20:.0f} MiB; the {info['output'] / 2**20:.0f} MiB outputs included), "
            f"{info['seconds']:.2f} s"
        )
        figures["memory_4k"] = info
    if args.pictures:
        folder = Path(args.pictures)
        folder.mkdir(parents=True, exist_ok=True)
        for name, kind, index, fraction in PICTURES:
            if kind in cases and {"refine", "pymatting", "matte"} <= set(methods):
                save_strip(folder / name, cases[kind], index, round(fraction * height))
                print(f"wrote {folder / name}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=float))
    print(f"\ndone in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
