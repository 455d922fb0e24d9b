"""Mask refinement quality benchmark: synthetic composites with true masks and CLIPSeg-like coarse masks.

Run from the repository root (needs scikit-image for its bundled photos, scipy, kornia)::

    python benchmarks/quality.py              # 3 sizes, sharp + soft truths, timing, 4K memory (~3 min, 2 cores)
    python benchmarks/quality.py --quick      # 1024² only, no 4K memory run (~1 min)
    python benchmarks/quality.py --pictures docs/images/quality   # also write the before/after strips

Random weights cannot judge CLIPSeg, and this stage does not need them: the composites are photos with sharp
shapes (a star, an ellipse on a thin pole, bars down to 8 px, a blob with a thin wavy tail, a ring, two stars)
cut from one photo and pasted onto another, or cut from the same photo (mirrored), so that colours overlap
as in real scenes; soft truths are the same shapes blurred (Gaussian, sigma 3 px at 1024) or feathered (a
16 px linear ramp), composited with that alpha. The coarse mask is what CLIPSeg would give for a perfect
detector (:func:`coarse_mask`): the truth area-averaged to the 22×22 patch grid, its contrast lowered
(``p → 0.5 + 0.6 (p − 0.5)``), turned to logits, upsampled bilinearly to 352² and then to the image, sigmoid.

For each mask (coarse, kornia's plain guided filter, ``textmask.refine``) it reports IoU at 0.5, the boundary
F-score within 2 px and mean |Δ| against the truth (and |Δ| within 3 px of the truth's edge for soft truths),
the targets met or missed, the time of refine against a float32 single-prompt ``session.mask`` of the same
1024² images on ``random-full`` (same run, round-robin), and the peak memory of refining one 3840×2160 image.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

GRID = 22  # CLIPSeg's patch grid (352 / 16)
MODEL_SIZE = 352  # CLIPSeg's logits resolution


# ----------------------------------------------------------------------------------------- photos
def _photo(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def cover(photo: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (Lanczos) and centre-crop an ``[h, w, 3]`` uint8 photo to cover ``height × width``."""
    from PIL import Image

    h, w = photo.shape[:2]
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    resized = np.asarray(Image.fromarray(photo).resize(size, Image.LANCZOS))
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width, :3])


# ----------------------------------------------------------------------------------------- shapes
def _grid(height: int, width: int, supersample: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Pixel-centre coordinates in units of the image's shorter side, supersampled."""
    hs, ws = height * supersample, width * supersample
    unit = min(height, width)
    y = (np.arange(hs, dtype=np.float64) + 0.5) / supersample / unit
    x = (np.arange(ws, dtype=np.float64) + 0.5) / supersample / unit
    return y[:, None], x[None, :], unit


def _segment_distance(y: np.ndarray, x: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    (ay, ax), (by, bx) = a, b
    dy, dx = by - ay, bx - ax
    t = np.clip(((y - ay) * dy + (x - ax) * dx) / max(dy * dy + dx * dx, 1e-12), 0.0, 1.0)
    return np.hypot(y - (ay + t * dy), x - (ax + t * dx))


def _inside_polygon(y: np.ndarray, x: np.ndarray, points: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule on a broadcast grid; ``points`` are ``(y, x)``."""
    inside = np.zeros(np.broadcast_shapes(y.shape, x.shape), dtype=bool)
    n = len(points)
    for i in range(n):
        (y0, x0), (y1, x1) = points[i], points[(i + 1) % n]
        if y0 == y1:
            continue
        crosses = (y0 > y) != (y1 > y)
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def shape_mask(parts: list[tuple], height: int, width: int, supersample: int = 2) -> np.ndarray:
    """Rasterize a union of parts to an anti-aliased ``[height, width]`` float32 mask in [0, 1].

    Coordinates and sizes are in units of the shorter image side, ``(y, x)`` order. Parts:
    ``("ellipse", cy, cx, ry, rx, angle)``, ``("ring", cy, cx, r_out, r_in)``,
    ``("star", cy, cx, r_out, r_in, points, angle)``, ``("bar", (y0, x0), (y1, x1), width)``,
    ``("curve", [(y, x), ...], width)`` (a polyline of that width).
    """
    y, x, _ = _grid(height, width, supersample)
    inside = np.zeros((height * supersample, width * supersample), dtype=bool)
    for part in parts:
        kind = part[0]
        if kind == "ellipse":
            _, cy, cx, ry, rx, angle = part
            c, s = math.cos(angle), math.sin(angle)
            u = (x - cx) * c + (y - cy) * s
            v = -(x - cx) * s + (y - cy) * c
            inside |= (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
        elif kind == "ring":
            _, cy, cx, r_out, r_in = part
            r = np.hypot(y - cy, x - cx)
            inside |= (r <= r_out) & (r >= r_in)
        elif kind == "star":
            _, cy, cx, r_out, r_in, count, angle = part
            points = []
            for i in range(2 * count):
                r = r_out if i % 2 == 0 else r_in
                t = angle + math.pi * i / count
                points.append((cy + r * math.sin(t), cx + r * math.cos(t)))
            inside |= _inside_polygon(y, x, points)
        elif kind == "bar":
            _, a, b, w = part
            inside |= _segment_distance(y, x, a, b) <= w / 2
        elif kind == "curve":
            _, points, w = part
            for a, b in itertools.pairwise(points):
                inside |= _segment_distance(y, x, a, b) <= w / 2
        else:
            raise ValueError(f"unknown shape part {kind!r}")
    mask = inside.reshape(height, supersample, width, supersample).mean(axis=(1, 3))
    return mask.astype(np.float32)


def _wave(y0: float, x0: float, x1: float, amplitude: float, cycles: float, steps: int = 48) -> list:
    return [
        (y0 + amplitude * math.sin(2 * math.pi * cycles * i / steps), x0 + (x1 - x0) * i / steps)
        for i in range(steps + 1)
    ]


@dataclass(frozen=True)
class Scene:
    """One composite: ``background`` photo, object photo (``source``; ``"same"``: the background mirrored, so
    colours overlap as in a real scene), the object's parts (see :func:`shape_mask`) and its edge kind."""

    name: str
    background: str
    source: str
    parts: tuple
    soft: str = "sharp"  # "sharp", "blur" (Gaussian, a few pixels) or "feather" (a linear ramp)


def scenes(aspect: float) -> list[Scene]:
    """The composites, laid out for an image ``aspect = width / height`` (coordinates in shorter-side units)."""
    w = max(aspect, 1.0)  # extent of x in shorter-side units
    h = max(1.0 / aspect, 1.0)  # extent of y
    cy, cx = h / 2, w / 2
    return [
        Scene("star", "coffee", "astronaut", (("star", cy, cx, 0.36, 0.16, 5, 0.3),)),
        Scene(
            "lollipop (same photo)",
            "rocket",
            "same",
            (("ellipse", cy - 0.12, cx, 0.2, 0.26, 0.2), ("bar", (cy + 0.05, cx + 0.02), (h - 0.08, cx + 0.1), 0.014)),
        ),
        Scene(
            "bars",
            "motorcycle",
            "chelsea",
            (
                ("bar", (0.12, cx - 0.35), (h - 0.12, cx - 0.2), 0.05),
                ("bar", (0.1, cx - 0.02), (h - 0.1, cx + 0.08), 0.025),
                ("bar", (0.15, cx + 0.32), (h - 0.2, cx + 0.22), 0.012),
            ),
        ),
        Scene(
            "tail (same photo)",
            "coffee",
            "same",
            (
                ("ellipse", cy, cx - 0.15, 0.17, 0.22, -0.3),
                ("curve", _wave(cy + 0.05, cx + 0.05, cx + 0.45, 0.06, 1.5), 0.012),
            ),
        ),
        Scene(
            "ring",
            "astronaut",
            "immunohistochemistry",
            (("ring", cy, cx, 0.36, 0.24), ("ellipse", cy, cx, 0.1, 0.13, 0.0)),
        ),
        Scene(
            "stars (same photo)",
            "astronaut",
            "same",
            (("star", cy - 0.18, cx - 0.18, 0.2, 0.08, 6, 0.0), ("star", cy + 0.2, cx + 0.2, 0.18, 0.09, 5, 1.0)),
        ),
    ]


def soft_alpha(mask: np.ndarray, kind: str, scale: float) -> np.ndarray:
    """A soft-edged truth from a sharp one: ``"blur"`` (Gaussian, sigma 3 px × scale) or ``"feather"`` (a linear
    ramp 16 px × scale wide, centred on the edge)."""
    from scipy import ndimage

    if kind == "sharp":
        return mask
    if kind == "blur":
        return ndimage.gaussian_filter(mask, 3.0 * scale).astype(np.float32)
    if kind == "feather":
        hard = mask > 0.5
        signed = ndimage.distance_transform_edt(hard) - ndimage.distance_transform_edt(~hard)
        return np.clip(0.5 + signed / (16.0 * scale), 0.0, 1.0).astype(np.float32)
    raise ValueError(kind)


def composite(scene: Scene, height: int, width: int, soft: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(image [H, W, 3] uint8, truth [H, W] float32 in [0, 1])`` for one scene at one size."""
    background = cover(_photo(scene.background), height, width).astype(np.float32)
    if scene.source == "same":
        source = background[::-1, ::-1]
    else:
        source = cover(_photo(scene.source), height, width).astype(np.float32)
    truth = shape_mask(list(scene.parts), height, width)
    truth = soft_alpha(truth, soft or scene.soft, max(height, width) / 1024)
    image = truth[..., None] * source + (1.0 - truth[..., None]) * background
    return np.clip(np.round(image), 0, 255).astype(np.uint8), truth


# ------------------------------------------------------------------------------------ coarse masks
def coarse_mask(truth: torch.Tensor, contrast: float = 0.6, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """What CLIPSeg would give for a perfect detector, at the image's size.

    The truth ``[B, H, W]`` is area-averaged to CLIPSeg's 22×22 patch grid, its contrast lowered about 0.5
    (``p → 0.5 + contrast · (p − 0.5)``: CLIPSeg's probabilities rarely reach 0 or 1), turned into logits (plus
    optional Gaussian logit ``noise`` per patch, so the border wanders), upsampled bilinearly to 352×352 and then
    to H×W as the engine upsamples its logits, and passed through the sigmoid.
    """
    height, width = truth.shape[-2:]
    patches = F.adaptive_avg_pool2d(truth[:, None].float(), (GRID, GRID))
    p = (0.5 + contrast * (patches - 0.5)).clamp(1e-4, 1 - 1e-4)
    logits = torch.log(p / (1 - p))
    if noise > 0:
        generator = torch.Generator().manual_seed(seed)
        logits = logits + noise * torch.randn(logits.shape, generator=generator)
    logits = F.interpolate(logits, size=(MODEL_SIZE, MODEL_SIZE), mode="bilinear", align_corners=False)
    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return torch.sigmoid(logits)[:, 0]


# ----------------------------------------------------------------------------------------- metrics
def _boundary(binary: torch.Tensor) -> torch.Tensor:
    """Pixels of a ``[B, H, W]`` bool mask with a 4-neighbour outside it (the image frame is not an edge)."""
    x = binary.float()[:, None]
    eroded = -F.max_pool2d(-F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return binary & (eroded[:, 0] < 0.5)


def _dilate_disk(binary: torch.Tensor, radius: int) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius + 1e-6).float()[None, None]
    return F.conv2d(binary.float()[:, None], disk, padding=radius)[:, 0] > 0.5


def iou(pred: torch.Tensor, truth: torch.Tensor, level: float = 0.5) -> torch.Tensor:
    """IoU of ``pred > level`` and ``truth > level``, per image ``[B]`` (1 when both are empty)."""
    a, b = pred > level, truth > level
    inter = (a & b).sum(dim=(-2, -1)).float()
    union = (a | b).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def boundary_f(pred: torch.Tensor, truth: torch.Tensor, tolerance: int = 2, level: float = 0.5) -> torch.Tensor:
    """Boundary F-score per image ``[B]``: edges of ``pred > level`` and ``truth > level`` matched within
    ``tolerance`` pixels (a disk), as in the DAVIS benchmark's F measure."""
    pb, tb = _boundary(pred > level), _boundary(truth > level)
    precision_hits = (pb & _dilate_disk(tb, tolerance)).sum(dim=(-2, -1)).float()
    recall_hits = (tb & _dilate_disk(pb, tolerance)).sum(dim=(-2, -1)).float()
    np_, nt = pb.sum(dim=(-2, -1)).float(), tb.sum(dim=(-2, -1)).float()
    precision = torch.where(np_ > 0, precision_hits / np_.clamp(min=1), (nt == 0).float())
    recall = torch.where(nt > 0, recall_hits / nt.clamp(min=1), (np_ == 0).float())
    return torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)


def mean_abs(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean ``|pred − truth|`` over each image ``[B]``."""
    return (pred - truth).abs().mean(dim=(-2, -1))


def edge_band(truth: torch.Tensor, pixels: int) -> torch.Tensor:
    """``[B, H, W]`` bool: within ``pixels`` of the truth's transition (where it is neither 0 nor 1, or its edge)."""
    soft = (truth > 0.02) & (truth < 0.98)
    return _dilate_disk(soft | _boundary(truth > 0.5), pixels)


def band_abs(pred: torch.Tensor, truth: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """Mean ``|pred − truth|`` inside ``band``, per image ``[B]``."""
    weight = band.float()
    return ((pred - truth).abs() * weight).sum(dim=(-2, -1)) / weight.sum(dim=(-2, -1)).clamp(min=1)


# ------------------------------------------------------------------------------------------ methods
def guided_baseline(levels: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """kornia's plain (fast) guided filter of the coarse mask: radius half a patch, eps 1e-4 (the best of
    radius {0.5, 1, 2} patches × eps {1e-4, 1e-3, 1e-2} on these composites), subsample as close to refine's
    working resolution as an integer factor gets (4 at 1024²)."""
    import kornia

    height, width = levels.shape[-2:]
    ry, rx = max(1, round(height / GRID / 2)), max(1, round(width / GRID / 2))
    subsample = max(1, round(max(height, width) / (GRID * 12)))
    guide = levels.float() / 255.0
    out = kornia.filters.guided_blur(guide, coarse[:, None], (2 * ry + 1, 2 * rx + 1), 1e-4, subsample=subsample)
    return out[:, 0].clamp(0, 1)


def refined(levels: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    from textmask.edges import refine_levels

    return refine_levels(levels, coarse)


# ------------------------------------------------------------------------------------------ harness
SIZES = {"768×512": (512, 768), "1024²": (1024, 1024), "512×768 (portrait)": (768, 512)}  # name: (H, W)
METHODS = ("coarse", "guided filter", "refine")


@dataclass
class Case:
    """All composites of one size and edge kind: images ``[N, 3, H, W]`` uint8, truths and coarse ``[N, H, W]``."""

    size: str
    soft: bool
    names: list[str]
    levels: torch.Tensor
    truths: torch.Tensor
    coarse: torch.Tensor


def build_cases(sizes: dict[str, tuple[int, int]], noise: float = 0.0) -> list[Case]:
    cases = []
    for size, (height, width) in sizes.items():
        for soft in (False, True):
            images, truths, names = [], [], []
            for index, scene in enumerate(scenes(width / height)):
                kind = ("blur" if index % 2 == 0 else "feather") if soft else None
                image, truth = composite(scene, height, width, kind)
                images.append(image)
                truths.append(truth)
                names.append(scene.name + (f", {kind}" if kind else ""))
            levels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
            truth = torch.from_numpy(np.stack(truths))
            coarse = coarse_mask(truth, noise=noise, seed=height * 7 + width)
            cases.append(Case(size, soft, names, levels, truth, coarse))
    return cases


def evaluate(case: Case) -> dict[str, dict[str, list[float]]]:
    """Per method, per metric, one value per composite."""
    outputs = {"coarse": case.coarse, "guided filter": guided_baseline(case.levels, case.coarse)}
    outputs["refine"] = refined(case.levels, case.coarse)
    band = edge_band(case.truths, 3)
    results = {}
    for method, pred in outputs.items():
        results[method] = {
            "iou": iou(pred, case.truths).tolist(),
            "f": boundary_f(pred, case.truths).tolist(),
            "mad": mean_abs(pred, case.truths).tolist(),
            "edge_mad": band_abs(pred, case.truths, band).tolist(),
        }
    case.outputs = outputs  # type: ignore[attr-defined]  (kept for the pictures)
    return results


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def summarize(cases: list[Case], results: list[dict]) -> dict[str, Any]:
    """Means per size (over composites) and overall (the mean of the per-size means)."""
    table: dict[str, Any] = {"sharp": {}, "soft": {}}
    for case, result in zip(cases, results):
        kind = "soft" if case.soft else "sharp"
        table[kind][case.size] = {m: {k: _mean(v) for k, v in result[m].items()} for m in result}
    for kind in ("sharp", "soft"):
        sizes = [s for s in table[kind] if s != "mean"]
        table[kind]["mean"] = {
            m: {k: _mean([table[kind][s][m][k] for s in sizes]) for k in ("iou", "f", "mad", "edge_mad")}
            for m in METHODS
        }
    return table


def targets(table: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """``(what, value, goal, met)`` for each target, on the averages over sizes."""
    sharp, soft = table["sharp"]["mean"], table["soft"]["mean"]
    f_ref, f_coarse, f_guided = sharp["refine"]["f"], sharp["coarse"]["f"], sharp["guided filter"]["f"]
    return [
        ("boundary F: refine / coarse ≥ 1.5", f_ref / f_coarse, 1.5, f_ref >= 1.5 * f_coarse),
        ("boundary F: refine / guided filter ≥ 1.10", f_ref / f_guided, 1.10, f_ref >= 1.10 * f_guided),
        (
            "IoU: refine − coarse ≥ 0.04",
            sharp["refine"]["iou"] - sharp["coarse"]["iou"],
            0.04,
            sharp["refine"]["iou"] >= sharp["coarse"]["iou"] + 0.04,
        ),
        (
            "soft truths, mean |Δ|: refine / guided filter ≤ 1.1",
            soft["refine"]["mad"] / soft["guided filter"]["mad"],
            1.1,
            soft["refine"]["mad"] <= 1.1 * soft["guided filter"]["mad"],
        ),
        (
            "soft truths, |Δ| within 3 px of the edge: refine / guided filter ≤ 1.1",
            soft["refine"]["edge_mad"] / soft["guided filter"]["edge_mad"],
            1.1,
            soft["refine"]["edge_mad"] <= 1.1 * soft["guided filter"]["edge_mad"],
        ),
    ]


def print_table(table: dict[str, Any]) -> None:
    for kind in ("sharp", "soft"):
        print(f"\n{kind} truths   (IoU@0.5 ↑, boundary F@2px ↑, mean |Δ| ↓, |Δ| within 3 px of the edge ↓)")
        print(f"{'size':20s} {'mask':14s} {'IoU':>6s} {'F':>6s} {'|Δ|':>7s} {'edge |Δ|':>9s}")
        for size, row in table[kind].items():
            for method in METHODS:
                v = row[method]
                label = size if method == "coarse" else ""
                print(f"{label:20s} {method:14s} {v['iou']:6.3f} {v['f']:6.3f} {v['mad']:7.4f} {v['edge_mad']:9.4f}")


# ------------------------------------------------------------------------------------------ timing
def time_against_mask(levels: torch.Tensor, coarse: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds per image of refine (engine entry and public ``refine``) and of a float32 single-prompt
    ``session.mask`` on ``random-full``, same 1024² images, round-robin, best repeat kept."""
    import textmask
    from textmask.edges import refine, refine_levels

    session = textmask.load("random-full")
    images = levels.permute(0, 2, 3, 1).float() / 255.0  # ComfyUI's IMAGE layout, float in [0, 1]
    count = images.shape[0]
    rows = {
        "session.mask (float32, 1 prompt)": lambda: session.mask(images, "a cat"),
        "refine_levels (engine entry)": lambda: refine_levels(levels, coarse),
        "refine (public, float images)": lambda: refine(images, coarse),
    }
    return best_seconds(rows, repeats, count)


def best_seconds(rows: dict[str, Any], repeats: int, count: int) -> dict[str, float]:
    """Each row's best time per item over ``repeats`` rounds, the rows interleaved in every round (so that the
    machine's load falls on all of them alike) after one warm-up call each; ``count`` items per call."""
    for run in rows.values():  # warm-up
        run()
    best = dict.fromkeys(rows, float("inf"))
    for _ in range(repeats):
        for name, run in rows.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], (time.perf_counter() - start) / count)
    return best


_MEMORY_CHILD = r"""
import json, sys, threading, time, torch
sys.path.insert(0, sys.argv[1])
from textmask.edges import refine_levels
torch.set_num_threads(int(sys.argv[2]))
def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))
g = torch.Generator().manual_seed(0)
small = torch.randint(0, 256, (1, 3, 216, 384), dtype=torch.uint8, generator=g)
refine_levels(small, torch.rand(1, 216, 384, generator=g))  # warm-up: code paths, thread pools
levels = torch.randint(0, 256, (1, 3, 2160, 3840), dtype=torch.uint8, generator=g)
cells = torch.rand(1, 1, 22, 22, generator=g)
coarse = torch.nn.functional.interpolate(cells, size=(2160, 3840), mode="bilinear")[:, 0]
before = status("VmRSS")
try:  # reset the high-water mark to the current RSS (Linux: /proc/self/clear_refs)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    sampled = None
except OSError:  # no reset: sample the RSS on a thread instead
    sampled = [before]
    done = threading.Event()
    def sample():
        while not done.wait(0.002):
            sampled.append(status("VmRSS"))
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
start = time.perf_counter()
out = refine_levels(levels, coarse)
seconds = time.perf_counter() - start
if sampled is None:
    peak, how = status("VmHWM"), "VmHWM after clear_refs"
else:
    done.set()
    thread.join()
    peak, how = max(sampled + [status("VmRSS")]), "RSS sampled every 2 ms"
print(json.dumps({"before": before, "peak": peak, "seconds": seconds, "how": how,
                  "inputs": levels.numel() + coarse.numel() * 4, "output": out.numel() * 4}))
"""


def memory_4k() -> dict[str, float]:
    """Peak resident memory of refining one 3840×2160 image, in a fresh process (above the level with the
    inputs already in memory; the 33 MB output is included)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, src, str(torch.get_num_threads())],
        check=True,
        capture_output=True,
        text=True,
    )
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info["delta"] = max(0, info["peak"] - info["before"])
    return info


# ---------------------------------------------------------------------------------------- pictures
def _panel(values: np.ndarray, width: int) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(values)
    height = round(image.height * width / image.width)
    return np.asarray(image.resize((width, height), Image.LANCZOS))


def save_strip(path: str, case: Case, index: int, crop: tuple[int, int, int] | None, panel: int = 208) -> int:
    """photo | truth | coarse | guided filter | refine, with a zoomed row (a ``crop = (top, left, size)`` square
    at full resolution) under it; returns the file size in bytes."""
    import os

    from PIL import Image, ImageDraw

    photo = case.levels[index].permute(1, 2, 0).numpy()
    masks = [case.truths[index]] + [case.outputs[m][index] for m in METHODS]  # type: ignore[attr-defined]
    grey = [np.repeat((m.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)[..., None], 3, 2) for m in masks]
    columns = [photo, *grey]
    rows = [np.concatenate([_panel(c, panel) for c in columns], 1)]
    if crop is not None:
        top, left, size = crop
        rows.append(np.concatenate([_panel(c[top : top + size, left : left + size], panel) for c in columns], 1))
    strip = Image.fromarray(np.concatenate(rows, 0))
    draw = ImageDraw.Draw(strip)
    for k, label in enumerate(["photo", "truth", "coarse (CLIPSeg-like)", "guided filter", "textmask.refine"]):
        x = k * panel + 4
        draw.rectangle((x - 2, 2, x + 7 * len(label) + 2, 14), fill=(0, 0, 0))
        draw.text((x, 2), label, fill=(255, 255, 0))
    if crop is not None:
        top, left, size = crop
        scale = panel / photo.shape[1]
        box = (left * scale, top * scale, (left + size) * scale, (top + size) * scale)
        draw.rectangle(box, outline=(255, 255, 0))
    strip.save(path, optimize=True)
    return os.path.getsize(path)


PICTURES = [  # (file name, size, soft, composite index, crop (top, left, size) at full resolution)
    ("star.png", "1024²", False, 0, (150, 300, 160)),
    ("bars.png", "1024²", False, 2, (400, 700, 160)),
    ("tail-same-photo.png", "1024²", False, 3, (470, 640, 160)),
    ("stars-same-photo.png", "1024²", False, 5, (100, 130, 160)),
    ("lollipop-soft.png", "1024²", True, 1, (300, 170, 160)),
]


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import os
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if str(root / "src") not in sys.path:
        sys.path.insert(0, str(root / "src"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024² only, fewer timing repeats, no 4K memory run")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing against session.mask")
    parser.add_argument("--no-memory", action="store_true", help="skip the 4K peak-memory run")
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian logit noise per patch of the coarse mask")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--pictures", metavar="DIR", help="write before/after strips of a few composites there")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    sizes = {"1024²": SIZES["1024²"]} if args.quick else SIZES
    cases = build_cases(sizes, noise=args.noise)
    print(f"composites: {sum(len(c.names) for c in cases)} ({time.perf_counter() - started:.0f} s to build)")
    results = [evaluate(case) for case in cases]
    table = summarize(cases, results)
    print_table(table)
    sharp = [c for c in cases if not c.soft]
    print("\nboundary F per composite (sharp truths): coarse → guided filter → refine")
    for case, result in zip(cases, results):
        if case.soft:
            continue
        print(f"  {case.size}")
        for k, name in enumerate(case.names):
            values = " → ".join(f"{result[m]['f'][k]:.3f}" for m in METHODS)
            print(f"    {name:28s} {values}")

    print("\ntargets (averages over sizes and composites)")
    checks = targets(table)
    for what, value, _goal, met in checks:
        print(f"  {what:74s} {value:7.3f}  [{'met' if met else 'missed'}]")

    figures: dict[str, Any] = {"table": table, "targets": [list(t) for t in checks], "noise": args.noise}
    if not args.no_timing:
        case = next(c for c in sharp if c.size == "1024²")
        count = 4
        times = time_against_mask(case.levels[:count], case.coarse[:count], 2 if args.quick else args.repeats)
        mask_time = times["session.mask (float32, 1 prompt)"]
        load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
        print(
            f"\ntiming, 1024², batch of {count}, {torch.get_num_threads()} threads, load average {load} on "
            f"{os.cpu_count()} CPUs (seconds per image, best repeat)"
        )
        for name, seconds in times.items():
            print(f"  {name:36s} {seconds:7.3f} s   {seconds / mask_time:5.3f}× session.mask")
        ratio = times["refine_levels (engine entry)"] / mask_time
        print(f"  target refine ≤ 0.25× session.mask: {ratio:.3f}  [{'met' if ratio <= 0.25 else 'missed'}]")
        figures["timing"] = times
    if not (args.quick or args.no_memory):
        info = memory_4k()
        print(
            f"\n4K (3840×2160, batch of 1): peak {info['delta'] / 2**20:.0f} MiB above the inputs "
            f"({info['inputs'] / 2**20:.0f} MiB; the {info['output'] / 2**20:.0f} MiB output is included), "
            f"{info['seconds']:.2f} s ({info['how']})"
        )
        figures["memory_4k"] = info
    if args.pictures:
        folder = Path(args.pictures)
        folder.mkdir(parents=True, exist_ok=True)
        for name, size, soft, index, crop in PICTURES:
            case = next((c for c in cases if c.size == size and c.soft == soft), None)
            if case is not None:
                kb = save_strip(str(folder / name), case, index, crop) / 1024
                print(f"wrote {folder / name} ({kb:.0f} KB)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=float))
    print(f"\ndone in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
