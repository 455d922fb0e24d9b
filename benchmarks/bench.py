"""textmask speed benchmark: the seed node's algorithm, plain transformers, and textmask, in one run.

Run from the repository root (see docs/benchmarks.md)::

    python benchmarks/bench.py            # full run, under 10 minutes on 2 CPU cores
    python benchmarks/bench.py --quick    # smoke run, under 2 minutes
    python benchmarks/bench.py --device cuda

It builds the full-size CLIPSeg rd64-refined architecture with random weights once (``random-full``: the
speed is that of the real model; the masks are meaningless), then times, on the same inputs and in one
process, for each case (image size × number of prompts):

1. the seed node's algorithm as written: a loop over images with PIL round trips, the processor and
   model reloaded from a local folder for every image (and every prompt: the seed takes one prompt);
2. the same loop with the model passed in;
3. one batched transformers forward: processor + ``model(**inputs)`` for all images × prompts, then
   bilinear upsampling, sigmoid and the union over prompts;
4. textmask at its defaults (float32): ``textmask.load(model).mask(images, prompts)``;
5. textmask's torch fast mode: ``textmask.load(model, dtype="fast", backend="torch")`` (int8 vision linears on
   CPU, float16 on GPU); and, as a tried alternative, textmask in bfloat16;
6. on a CPU with OpenVINO installed, the OpenVINO backend: ``backend="openvino"`` in bfloat16 (where the CPU has
   it: what ``dtype="fast"`` runs there) and int8 (NNCF, quantized once and cached; needs nncf the first time).

Rows are timed round-robin (every row once per repeat, best repeat kept) so that a noisy machine slows
all rows alike; ratios within one run are what count. Results go to ``benchmarks/results/*.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "textmask").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # seed_reference: the seed node's algorithm, shared with the tests

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from seed_reference import seed_reference  # noqa: E402

PROMPTS = ["a cat", "the sky", "a red car", "a person on the left", "the wooden table"]
GIB = 2**30

# ------------------------------------------------------------------------------------------ helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class PeakMemory:
    """Samples RSS on a thread every few ms (tracemalloc does not see torch's allocations); on CUDA it
    also reads ``torch.cuda.max_memory_allocated``. ``delta`` is the peak above the level at entry."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.start = self.peak = 0
        self.cuda_peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.cuda_start = torch.cuda.memory_allocated(self.device)
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        if self.device.type == "cuda":
            self.cuda_peak = torch.cuda.max_memory_allocated(self.device) - self.cuda_start

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.start) + self.cuda_peak


def make_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """``[count, size, size, 3]`` float32 in [0, 1], ComfyUI's IMAGE layout: smooth random blobs + noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 12, 12, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    noise = torch.rand(count, 3, size, size, generator=generator) * 0.08
    return (smooth + noise).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def vision_flops(config: Any, layers: int, image_size: int = 352) -> float:
    """Multiply-add FLOPs (×2) of the CLIP vision tower up to ``layers`` layers for one image."""
    vision = config.vision_config
    patches = (image_size // vision.patch_size) ** 2
    tokens, width, inner = patches + 1, vision.hidden_size, vision.intermediate_size
    embed = 2 * patches * width * 3 * vision.patch_size**2
    per_layer = 2 * tokens * (4 * width * width + 2 * width * inner) + 2 * 2 * tokens * tokens * width
    return float(embed + layers * per_layer)


def gemm_peaks(device: torch.device, quick: bool) -> dict[str, float]:
    """Best GFLOP/s of one ``[M, K] @ [K, N]`` matmul with the vision tower's shapes, per dtype."""
    m, k, n = 8 * 485, 768, 3072
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if device.type == "cuda":
        dtypes["float16"] = torch.float16
        m *= 4
    peaks = {}
    for name, dtype in dtypes.items():
        a = torch.randn(m, k, dtype=dtype, device=device)
        b = torch.randn(k, n, dtype=dtype, device=device)
        best = float("inf")
        for _ in range(3 if quick else 6):
            sync(device)
            start = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - start)
        peaks[name] = 2 * m * k * n / best / 1e9
    if device.type == "cpu":
        try:  # int8 dynamic quantized linear (VNNI), the fast mode's kernel, for reference
            from textmask.fast import Int8DynamicLinear

            layer = Int8DynamicLinear(torch.nn.Linear(k, n))
            x = torch.randn(m, k)
            best = float("inf")
            with torch.inference_mode():
                for _ in range(3 if quick else 6):
                    start = time.perf_counter()
                    layer(x)
                    best = min(best, time.perf_counter() - start)
            peaks["int8_dynamic"] = 2 * m * k * n / best / 1e9
        except Exception:  # pragma: no cover - no quantized engine
            pass
    return peaks


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), cpu)
        flags = sorted(
            {f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in cpuinfo}
        )
    except OSError:
        flags = []
    info = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_flags": flags,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    from importlib import metadata

    for package in ("openvino", "nncf"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --------------------------------------------------------------------------- the seed's algorithm


def seed_masks(images: torch.Tensor, text: str, folder: Path, device: torch.device, model: Any = None) -> torch.Tensor:
    """``SaltCLIPSegMasking.CLIPSeg_image`` as written (only the model folder and device are ours): the loop in
    ``tests/seed_reference.py``, reloading the processor and model for every image unless ``model`` is given."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    def reload() -> tuple[Any, Any]:
        return (
            CLIPSegProcessor.from_pretrained(folder),
            CLIPSegForImageSegmentation.from_pretrained(folder).to(device),
        )

    return seed_reference(images, text, model, reload=reload, device=device)[0]


def seed_multi(images: torch.Tensor, prompts: list[str], folder: Path, device: torch.device, model: Any = None):
    """The seed takes one prompt: P prompts are P node runs, combined by the union (max)."""
    return torch.stack([seed_masks(images, p, folder, device, model) for p in prompts]).amax(0)


# --------------------------------------------------------------------------------- transformers


def transformers_batched(images: torch.Tensor, prompts: list[str], processor: Any, model: Any, device: torch.device):
    """One batched forward for all images × prompts, then the same finish as textmask's default mask:
    bilinear upsampling of the logits to the image size, sigmoid, union (max) over prompts.

    Returns ``(masks [B, H, W], logits [B, P, 352, 352])``.
    """
    from PIL import Image

    levels = (images * 255).clamp(0, 255).to(torch.uint8).numpy()
    pils = [Image.fromarray(level) for level in levels]
    texts = [p for _ in pils for p in prompts]
    repeated = [image for image in pils for _ in prompts]
    inputs = processor(text=texts, images=repeated, padding=True, return_tensors="pt").to(device)
    with torch.inference_mode():
        logits = model(**inputs).logits.float()
        logits = logits.view(len(pils), len(prompts), *logits.shape[-2:])
        probs = torch.sigmoid(F.interpolate(logits, size=images.shape[1:3], mode="bilinear", align_corners=False))
        masks = probs.amax(1).cpu()
    return masks, logits.cpu()


def transformers_per_image_logits(images: torch.Tensor, prompts: list[str], processor: Any, model: Any, device):
    """The reference: transformers' forward for one image and one prompt at a time ``[B, P, 352, 352]``."""
    from PIL import Image

    out = []
    with torch.inference_mode():
        for level in (images * 255).clamp(0, 255).to(torch.uint8).numpy():
            image = Image.fromarray(level)
            row = []
            for prompt in prompts:
                inputs = processor(text=[prompt], images=[image], padding=True, return_tensors="pt").to(device)
                logits = model(**inputs).logits.float()
                row.append(logits.reshape(-1, *logits.shape[-2:])[0])
            out.append(torch.stack(row))
    return torch.stack(out).cpu()


# ------------------------------------------------------------------------------------- timing


def time_rows(rows: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, dict]:
    """Run every row ``repeats`` times round-robin; keep each row's best time, peak memory and last output."""
    results: dict[str, dict] = {name: {"times": [], "peak_delta": 0, "output": None} for name in rows}
    for _ in range(repeats):
        for name, run in rows.items():
            gc.collect()
            with PeakMemory(device) as memory:
                sync(device)
                start = time.perf_counter()
                output = run()
                sync(device)
                elapsed = time.perf_counter() - start
            entry = results[name]
            entry["times"].append(elapsed)
            entry["peak_delta"] = max(entry["peak_delta"], memory.delta)
            entry["output"] = output
    return results


def agreement(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Mask agreement: mean and max |Δp|, and IoU of the masks thresholded at 0.5."""
    a, b = reference.float(), other.float()
    inter = ((a > 0.5) & (b > 0.5)).sum().item()
    union = ((a > 0.5) | (b > 0.5)).sum().item()
    return {
        "mean_abs_dp": (a - b).abs().mean().item(),
        "max_abs_dp": (a - b).abs().max().item(),
        "iou_at_0.5": inter / union if union else 1.0,
    }


def cold_start(model: str, dtype: str, device: str, backend: str = "auto", cache: Path | None = None) -> dict[str, Any]:
    """A fresh interpreter: ``import textmask`` (and whether torch got imported), load, first mask of one image.

    With ``backend="openvino"`` also the vision graph's own steps (``tower``: build, quantize, save or read,
    compile, in seconds) and whether it was built or read from the cache. ``cache``: the textmask cache to use
    (an empty folder measures the first load on a machine).
    """
    code = f"""
import json, sys, time
t0 = time.perf_counter()
import textmask
t1 = time.perf_counter()
lazy = "torch" not in sys.modules
session = textmask.load({model!r}, device={device!r}, dtype={dtype!r}, backend={backend!r})
t2 = time.perf_counter()
import torch
image = torch.rand(512, 512, 3)
session.mask(image, "a cat")
t3 = time.perf_counter()
tower = getattr(session, "_openvino", None)
print(json.dumps({{"import_s": t1 - t0, "torch_not_imported": lazy, "load_s": t2 - t1, "first_mask_s": t3 - t2,
                  "total_s": t3 - t0, "precision": session.precision_name,
                  "tower": tower.timings if tower is not None else None,
                  "built": tower.built if tower is not None else None}}))
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if cache is not None:
        env["TEXTMASK_CACHE"] = str(cache)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def openvino_cold_starts(model: str, folder: Path, quick: bool) -> dict[str, dict[str, Any]]:
    """Cold starts of the OpenVINO backend, each in a fresh interpreter: bfloat16 on an empty cache (build the
    graph, save the IR, compile), then on that cache (read the IR, compile); int8 from textmask's cache (the
    benchmark's own session quantized it already) and, unless ``quick``, on an empty cache (quantization
    included). The empty caches load the model from its folder, so only the OpenVINO steps are new."""
    import shutil
    import tempfile

    from textmask import openvino_backend

    out: dict[str, dict[str, Any]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="textmask-bench-ov-"))
    try:
        precision = "bfloat16" if openvino_backend.cpu_supports_bf16() else "float32"
        out[f"openvino {precision}, empty cache"] = cold_start(str(folder), precision, "cpu", "openvino", scratch)
        out[f"openvino {precision}, cached IR"] = cold_start(str(folder), precision, "cpu", "openvino", scratch)
        if openvino_backend.nncf_installed():
            out["openvino int8, cached IR"] = cold_start(model, "int8", "cpu", "openvino")
            if not quick:
                out["openvino int8, empty cache"] = cold_start(str(folder), "int8", "cpu", "openvino", scratch / "q")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def memory_soak(model: str, device: str, count: int, size: int, dtype: str) -> dict[str, Any]:
    """Mask ``count`` images of ``size``² (uint8 input) in a fresh process; peak RSS above the level
    before the call, against the output size + 1.5 GiB."""
    code = f"""
import json, os, threading, time
import numpy as np, torch, textmask
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
session = textmask.load({model!r}, device={device!r}, dtype={dtype!r})
session.mask(np.zeros((2, 64, 64, 3), np.uint8), "a cat")
images = np.random.default_rng(0).integers(0, 256, ({count}, {size}, {size}, 3), dtype=np.uint8)
before = rss(); peak = [before]; stop = threading.Event()
def sample():
    while not stop.wait(0.01):
        peak[0] = max(peak[0], rss())
thread = threading.Thread(target=sample, daemon=True); thread.start()
start = time.perf_counter()
masks = session.mask(images, "a cat")
elapsed = time.perf_counter() - start
stop.set(); thread.join(); peak[0] = max(peak[0], rss())
print(json.dumps({{"images": {count}, "size": {size}, "dtype": {dtype!r}, "seconds": elapsed,
                  "output_bytes": masks.numel() * masks.element_size(), "peak_above_start_bytes": peak[0] - before}}))
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["budget_bytes"] = result["output_bytes"] + int(1.5 * GIB)
    result["within_budget"] = result["peak_above_start_bytes"] <= result["budget_bytes"]
    return result


# -------------------------------------------------------------------------------------------- run


def textmask_logits(session: Any, images: torch.Tensor, prompts: list[str], chunk: int) -> torch.Tensor:
    """The logits ``[B, P, 352, 352]`` that ``session.mask`` computes, chunk by chunk as it does."""
    embeddings = session.encode_prompts(prompts)
    parts = []
    for start in range(0, len(images), chunk):
        features = session.encode_images(images[start : start + chunk], batch_size=chunk)
        parts.append(session.decode(features, embeddings).cpu())
    return torch.cat(parts)


def run_case(ctx: dict[str, Any], size: int, prompt_count: int) -> dict[str, Any]:
    args, device = ctx["args"], ctx["device"]
    prompts = PROMPTS[:prompt_count]
    images = make_images(args.images, size, seed=size + prompt_count)
    seed_count = min(args.seed_images, len(images))
    hf_count = len(images) if prompt_count == 1 else min(len(images), args.hf_images_multi)
    folder, processor, model = ctx["folder"], ctx["processor"], ctx["model"]
    sessions = ctx["sessions"]
    rows: dict[str, tuple[int, Callable[[], Any]]] = {
        "seed as written": (seed_count, lambda: seed_multi(images[:seed_count], prompts, folder, device)),
        "seed, model passed in": (
            seed_count,
            lambda: seed_multi(images[:seed_count], prompts, folder, device, (processor, model)),
        ),
        "transformers batched": (
            hf_count,
            lambda: transformers_batched(images[:hf_count], prompts, processor, model, device),
        ),
    }
    for label, session in sessions.items():
        rows[label] = (len(images), lambda session=session: session.mask(images, prompts))
    # Warm-up: lazy initialisation (prompt cache, thread pools, kernels) outside the timings.
    transformers_batched(images[:1], prompts[:1], processor, model, device)
    seed_masks(images[:1], prompts[0], folder, device, (processor, model))
    for session in sessions.values():
        session.mask(images[:2], prompts)
    timed = time_rows({name: run for name, (_, run) in rows.items()}, args.repeats, device)

    table = {}
    for name, (count, _) in rows.items():
        entry = timed[name]
        table[name] = {
            "images_timed": count,
            "seconds_per_image": min(entry["times"]) / count,
            "all_seconds": entry["times"],
            "peak_memory_delta_bytes": entry["peak_delta"],
        }
    for entry in table.values():
        for label in sessions:
            entry[f"speedup_of_{label}"] = entry["seconds_per_image"] / table[label]["seconds_per_image"]

    # Agreement. float32 logits against transformers: the batched forward's logits (same images), and the
    # per-image reference forward (first images); textmask at batch 1 as well (bit-exact there).
    default = ctx["default_label"]
    hf_masks, hf_logits = timed["transformers batched"]["output"]
    tm_logits = textmask_logits(sessions[default], images[:hf_count], prompts, ctx["chunk"])
    ref_count = min(args.reference_images, len(images))
    ref_logits = transformers_per_image_logits(images[:ref_count], prompts, processor, model, device)
    tm_logits_1 = textmask_logits(sessions[default], images[:ref_count], prompts, 1)
    scale = ref_logits.abs().max().item()
    agree: dict[str, Any] = {
        "logit_scale_max_abs": scale,
        "max_abs_dlogit_vs_transformers_batched": (tm_logits - hf_logits).abs().max().item(),
        "max_abs_dlogit_vs_transformers_per_image": (tm_logits[:ref_count] - ref_logits).abs().max().item(),
        "max_abs_dlogit_vs_transformers_per_image_at_batch_1": (tm_logits_1 - ref_logits).abs().max().item(),
        # transformers against itself (batched vs one at a time): the float32 rounding floor of batching.
        "transformers_batched_vs_per_image_max_abs_dlogit": (hf_logits[:ref_count] - ref_logits).abs().max().item(),
        "float32_masks_vs_transformers_batched": agreement(hf_masks, timed[default]["output"][:hf_count]),
    }
    agree["relative_dlogit_vs_transformers_per_image"] = agree["max_abs_dlogit_vs_transformers_per_image"] / scale
    for label in sessions:
        if label != default:
            agree[f"{label}_vs_float32_masks"] = agreement(timed[default]["output"], timed[label]["output"])
    return {
        "size": size,
        "prompts": prompt_count,
        "images": len(images),
        "rows": table,
        "agreement": agree,
    }


def tower_throughput(ctx: dict[str, Any]) -> dict[str, Any]:
    """Time the vision tower alone (encode_pixels on preprocessed pixels) per session: GFLOP/s and the
    fraction of the measured GEMM peak it reaches."""
    device, args = ctx["device"], ctx["args"]
    out = {}
    for label, session in ctx["sessions"].items():
        levels = (make_images(ctx["chunk"], 352, seed=7) * 255).to(torch.uint8).permute(0, 3, 1, 2)
        pixels = session.preprocess(list(levels))
        sizes = [(352, 352)] * len(levels)
        session.encode_pixels(pixels, sizes)
        best = float("inf")
        for _ in range(max(2, args.repeats)):
            sync(device)
            start = time.perf_counter()
            session.encode_pixels(pixels, sizes)
            sync(device)
            best = min(best, time.perf_counter() - start)
        flops = vision_flops(session.model.config, max(session.extract_layers) + 1) * len(levels)
        gflops = flops / best / 1e9
        entry = {"seconds_per_image": best / len(levels), "gflops": gflops}
        for peak_name, peak in ctx["peaks"].items():
            entry[f"fraction_of_{peak_name}_peak"] = gflops / peak
        out[label] = entry
    return out


def fmt_bytes(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def print_report(report: dict[str, Any]) -> None:
    info = report["machine"]
    print(
        f"\ntextmask benchmark — {info['date']} — {info['cpu']} ({info['cpu_count']} cores, "
        f"{info['torch_threads']} torch threads){' — ' + info['gpu'] if 'gpu' in info else ''}"
    )
    print(
        f"torch {info['torch']}, transformers {info.get('transformers')}, model {report['model']}, "
        f"device {info['device']}, CPU flags: {', '.join(info['cpu_flags']) or 'none'}"
    )
    print("command: " + report["command"])
    peaks = ", ".join(f"{k} {v:,.0f}" for k, v in report["gemm_peak_gflops"].items())
    print(f"GEMM peak (GFLOP/s, [{8 * 485}×768]@[768×3072]): {peaks}")
    labels = list(report["sessions"])
    for case in report["cases"]:
        print(f"\n{case['size']}×{case['size']}, {case['prompts']} prompt(s), batch of {case['images']}")
        width = max(22, *(len(label) + 5 for label in labels))  # "vs " + label, and a space before it
        head = f"  {'row':<30}{'s/image':>9}{'images':>8}" + "".join(f"{'vs ' + label:>{width}}" for label in labels)
        print(head + f"{'peak mem Δ':>13}")
        for name, row in case["rows"].items():
            ratios = "".join(f"{row['speedup_of_' + label]:>{width - 1}.2f}×" for label in labels)
            print(
                f"  {name:<30}{row['seconds_per_image']:>9.3f}{row['images_timed']:>8}{ratios}"
                f"{fmt_bytes(row['peak_memory_delta_bytes']):>13}"
            )
        a = case["agreement"]
        print(
            f"  float32 max|Δlogit| vs transformers: batched {a['max_abs_dlogit_vs_transformers_batched']:.3g}, "
            f"per image {a['max_abs_dlogit_vs_transformers_per_image']:.3g} "
            f"(relative {a['relative_dlogit_vs_transformers_per_image']:.2g} of max|logit| "
            f"{a['logit_scale_max_abs']:.4g}), "
            f"at batch 1 {a['max_abs_dlogit_vs_transformers_per_image_at_batch_1']:.3g}; transformers batched vs "
            f"per image {a.get('transformers_batched_vs_per_image_max_abs_dlogit', float('nan')):.3g}"
        )
        for key, value in a.items():
            if key.endswith("_masks") or key.startswith("float32_masks"):
                print(
                    f"  {key}: mean|Δp| {value['mean_abs_dp']:.4f}, max|Δp| {value['max_abs_dp']:.3f}, "
                    f"IoU@0.5 {value['iou_at_0.5']:.4f}"
                )
    print("\nvision tower alone (layers 0–9, 485 tokens):")
    for label, entry in report["tower"].items():
        fractions = ", ".join(f"{k[12:-5]} {v:.0%}" for k, v in entry.items() if k.startswith("fraction_of_"))
        print(
            f"  {label:<26}{entry['seconds_per_image']:.3f} s/image, {entry['gflops']:,.0f} GFLOP/s "
            f"= fraction of peak: {fractions}"
        )
    for label, cold in report["cold_start"].items():
        if "error" in cold:
            print(f"cold start ({label}): failed: {cold['error']}")
            continue
        print(
            f"cold start ({label}): import textmask {cold['import_s']:.3f} s (torch not imported: "
            f"{cold['torch_not_imported']}), load {cold['load_s']:.2f} s{tower_steps(cold)}, first mask of one "
            f"512² image {cold['first_mask_s']:.2f} s, total {cold['total_s']:.2f} s"
        )
    for label, load in report.get("openvino_loads", {}).items():
        if "error" not in load:
            steps = ", ".join(f"{k} {v:.2f} s" for k, v in load["steps"].items())
            print(
                f"benchmark's own {label} load: {load['seconds']:.2f} s "
                f"({'built' if load['built'] else 'cached'}: {steps})"
            )
    table = openvino_table(report)
    if table:
        print("\nOpenVINO beside torch (s/image, batch as above; agreement with float32 masks):")
        print("\n".join(table))
    table = agreement_table(report)
    if table:
        print()
        print("\n".join(table))
    soak = report.get("memory_soak")
    if soak:
        if "error" in soak:
            print(f"memory soak failed: {soak['error']}")
        else:
            print(
                f"memory: {soak['images']} images of {soak['size']}² ({soak['dtype']}) in {soak['seconds']:.0f} s: "
                f"peak {fmt_bytes(soak['peak_above_start_bytes'])} above start; budget output "
                f"{fmt_bytes(soak['output_bytes'])} + 1.5 GiB = {fmt_bytes(soak['budget_bytes'])}: "
                f"{'within' if soak['within_budget'] else 'OVER'}"
            )
    print("\ntargets:")
    for target in report["targets"]:
        print(f"  [{'met' if target['met'] else 'NOT met'}] {target['name']}: {target['value']}")


def tower_steps(cold: dict[str, Any]) -> str:
    """`` (built: build 0.66 s, save 0.50 s, compile 0.61 s)`` for an OpenVINO cold start, else ``""``."""
    steps = cold.get("tower")
    if not steps:
        return ""
    text = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in steps.items())
    return f" ({'built' if cold.get('built') else 'from the cached IR'}: {text})"


def openvino_table(report: dict[str, Any]) -> list[str]:
    """Markdown: float32, the torch fast mode and the OpenVINO rows side by side, per case, with agreement."""
    labels = [label for label in report["sessions"] if label.startswith("openvino")]
    if not labels:
        return []
    default, fast = report["default_label"], report["fast_label"]
    shown = [default, fast, *labels]
    head = "| case | " + " | ".join(shown) + " |"
    lines = [head, "| --- | " + " | ".join("---:" for _ in shown) + " |"]
    for case in report["cases"]:
        rows, agree = case["rows"], case["agreement"]
        cells = []
        for label in shown:
            seconds = rows[label]["seconds_per_image"]
            cell = f"{seconds:.3f}"
            if label != default:
                vs_fast = rows[fast]["seconds_per_image"] / seconds
                a = agree[f"{label}_vs_float32_masks"]
                cell += f" ({vs_fast:.2f}× fast; Δp {a['mean_abs_dp']:.4f}, IoU {a['iou_at_0.5']:.4f})"
            cells.append(cell)
        lines.append(f"| {case['size']}², {case['prompts']} prompt(s) | " + " | ".join(cells) + " |")
    tower = report.get("tower", {})
    if tower:
        lines.append(
            "| vision tower alone | "
            + " | ".join(f"{tower[label]['seconds_per_image']:.3f}" for label in shown if label in tower)
            + " |"
        )
    return lines


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_report(report: dict[str, Any]) -> str:
    """The results as Markdown tables (for the README / docs)."""
    info = report["machine"]
    labels = list(report["sessions"])
    lines = [
        f"Machine: {info['cpu']}, {info['cpu_count']} cores ({info['torch_threads']} torch threads"
        f"{', ' + info['gpu'] if 'gpu' in info else ''}), CPU flags {', '.join(info['cpu_flags']) or 'none'}; "
        f"torch {info['torch']}, transformers {info.get('transformers')}; {info['date'][:10]}; "
        f"model {report['model']} (random weights, full-size architecture); command `{report['command']}`.",
        "",
    ]
    for case in report["cases"]:
        lines.append(f"**{case['size']}×{case['size']}, {case['prompts']} prompt(s), batch of {case['images']}**")
        lines.append("")
        lines.append(
            "| row | s/image | images timed | " + " | ".join(f"{label} is × faster" for label in labels) + " |"
        )
        lines.append("| --- | ---: | ---: | " + " | ".join("---:" for _ in labels) + " |")
        for name, row in case["rows"].items():
            ratios = " | ".join(f"{row['speedup_of_' + label]:.2f}×" for label in labels)
            lines.append(f"| {name} | {row['seconds_per_image']:.3f} | {row['images_timed']} | {ratios} |")
        a = case["agreement"]
        lines.append("")
        lines.append(
            f"float32 max abs Δlogit vs transformers: batched {a['max_abs_dlogit_vs_transformers_batched']:.3g}, "
            f"per image {a['max_abs_dlogit_vs_transformers_per_image']:.3g} (logits up to "
            f"{a['logit_scale_max_abs']:.4g}: relative {a['relative_dlogit_vs_transformers_per_image']:.2g}), "
            f"textmask at batch 1 {a['max_abs_dlogit_vs_transformers_per_image_at_batch_1']:.3g}; transformers "
            f"batched vs per image {a.get('transformers_batched_vs_per_image_max_abs_dlogit', float('nan')):.3g}. "
            + "; ".join(
                f"{key.replace('_vs_float32_masks', '')} vs float32: mean abs Δp {v['mean_abs_dp']:.4f}, "
                f"IoU@0.5 {v['iou_at_0.5']:.4f}"
                for key, v in a.items()
                if key.endswith("_vs_float32_masks")
            )
            + "."
        )
        lines.append("")
    peaks = ", ".join(f"{k} {v:,.0f}" for k, v in report["gemm_peak_gflops"].items())
    lines.append(f"GEMM peak in the same run (GFLOP/s): {peaks}. Vision tower alone (layers 0–9, 485 tokens):")
    lines.append("")
    for label, entry in report["tower"].items():
        fractions = ", ".join(f"{k[12:-5]} {v:.0%}" for k, v in entry.items() if k.startswith("fraction_of_"))
        lines.append(
            f"- {label}: {entry['seconds_per_image']:.3f} s/image, {entry['gflops']:,.0f} GFLOP/s "
            f"(fraction of peak: {fractions})"
        )
    for label, cold in report["cold_start"].items():
        if "import_s" in cold:
            lines.append(
                f"- cold start ({label}): import {cold['import_s']:.3f} s, load {cold['load_s']:.2f} s"
                f"{tower_steps(cold)}, first mask {cold['first_mask_s']:.2f} s"
            )
    table = openvino_table(report)
    if table:
        lines += ["", *table]
    table = agreement_table(report)
    if table:
        lines += ["", *table, ""]
    soak = report.get("memory_soak")
    if soak and "within_budget" in soak:
        lines.append(
            f"- memory: {soak['images']} images of {soak['size']}² ({soak['dtype']}): peak "
            f"{fmt_bytes(soak['peak_above_start_bytes'])} above start, budget {fmt_bytes(soak['budget_bytes'])}"
        )
    lines.append("")
    lines.append("| target | result | met |")
    lines.append("| --- | --- | --- |")
    for target in report["targets"]:
        lines.append(f"| {_md(target['name'])} | {_md(target['value'])} | {'yes' if target['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    default, fast = report["default_label"], report["fast_label"]
    targets = []

    def add(name: str, met: bool, value: str) -> None:
        targets.append({"name": name, "met": bool(met), "value": value})

    for case in report["cases"]:
        rows, a = case["rows"], case["agreement"]
        where = f"{case['size']}², {case['prompts']} prompt(s)"
        vs_hf = rows["transformers batched"][f"speedup_of_{default}"]
        if case["prompts"] == 1:
            vs_seed = rows["seed as written"][f"speedup_of_{default}"]
            add(f"{where}: float32 ≥ 1.15× transformers batched", vs_hf >= 1.15, f"{vs_hf:.2f}×")
            add(f"{where}: float32 ≥ 1.8× seed as written", vs_seed >= 1.8, f"{vs_seed:.2f}×")
            dlogit = a["max_abs_dlogit_vs_transformers_per_image"]
            add(
                f"{where}: max|Δlogit| ≤ 1e-4 vs transformers (per image)",
                dlogit <= 1e-4,
                f"{dlogit:.3g} (relative {a['relative_dlogit_vs_transformers_per_image']:.2g}; "
                f"at batch 1: {a['max_abs_dlogit_vs_transformers_per_image_at_batch_1']:.3g})",
            )
            fast_hf = rows["transformers batched"][f"speedup_of_{fast}"]
            agree = a[f"{fast}_vs_float32_masks"]
            add(f"{where}: fast ≥ 3× transformers float32 batched", fast_hf >= 3, f"{fast_hf:.2f}×")
            add(
                f"{where}: fast mean|Δp| ≤ 0.01 and IoU@0.5 ≥ 0.97 vs float32",
                agree["mean_abs_dp"] <= 0.01 and agree["iou_at_0.5"] >= 0.97,
                f"mean|Δp| {agree['mean_abs_dp']:.4f}, IoU {agree['iou_at_0.5']:.4f}",
            )
        else:
            add(f"{where}: float32 ≥ 3.5× transformers batched", vs_hf >= 3.5, f"{vs_hf:.2f}×")
    ov_labels = [label for label in report["sessions"] if label.startswith("openvino")]
    for case in report["cases"]:
        if case["prompts"] != 1:
            continue
        rows, a = case["rows"], case["agreement"]
        where = f"{case['size']}², {case['prompts']} prompt(s)"
        fast_seconds = rows[fast]["seconds_per_image"]
        fast_agree = a[f"{fast}_vs_float32_masks"]
        for label in ov_labels:
            seconds, agree = rows[label]["seconds_per_image"], a[f"{label}_vs_float32_masks"]
            if label.endswith("int8"):
                add(
                    f"{where}: {label} ≥ 1.5× the torch fast mode",
                    fast_seconds / seconds >= 1.5,
                    f"{fast_seconds / seconds:.2f}×",
                )
            else:
                add(
                    f"{where}: {label} at least as fast as the torch fast mode",
                    seconds <= fast_seconds,
                    f"{seconds:.3f} vs {fast_seconds:.3f} s/image ({fast_seconds / seconds:.2f}×)",
                )
                add(
                    f"{where}: {label} agrees better with float32 than the torch fast mode",
                    agree["mean_abs_dp"] < fast_agree["mean_abs_dp"]
                    and agree["iou_at_0.5"] >= fast_agree["iou_at_0.5"],
                    f"mean|Δp| {agree['mean_abs_dp']:.4f} vs {fast_agree['mean_abs_dp']:.4f}, "
                    f"IoU {agree['iou_at_0.5']:.4f} vs {fast_agree['iou_at_0.5']:.4f}",
                )
    for label, cold in report["cold_start"].items():
        if "import_s" in cold:
            add(
                f"import textmask < 0.5 s ({label} run)",
                cold["import_s"] < 0.5 and cold["torch_not_imported"],
                f"{cold['import_s']:.3f} s, torch not imported: {cold['torch_not_imported']}",
            )
    soak = report.get("memory_soak")
    if soak and "within_budget" in soak:
        add(
            f"{soak['images']} images of {soak['size']}²: peak ≤ output + 1.5 GiB",
            soak["within_budget"],
            f"{fmt_bytes(soak['peak_above_start_bytes'])} ≤ {fmt_bytes(soak['budget_bytes'])}",
        )
    agreement = report.get("precision_agreement")
    if agreement and len(agreement["models"]) > 1:
        plain_name, stand_in_name = agreement["models"][:2]
        for label, by_model in agreement["rows"].items():
            plain, stand_in = by_model.get(plain_name, {}), by_model.get(stand_in_name, {})
            if "relative_logit_rms" not in plain or "relative_logit_rms" not in stand_in:
                continue
            ratio = stand_in["relative_logit_rms"] / plain["relative_logit_rms"]
            add(
                f"{label} on {stand_in_name}: relative logit RMS ≤ 1.5× {plain_name}'s, IoU at logit 0 ≥ 0.985",
                ratio <= 1.5 and stand_in["iou_at_logit_0"] >= 0.985,
                f"{stand_in['relative_logit_rms']:.4f} vs {plain['relative_logit_rms']:.4f} ({ratio:.2f}×), "
                f"IoU {stand_in['iou_at_logit_0']:.4f}",
            )
    return targets


def load_openvino_sessions(model: str, sessions: dict[str, Any]) -> dict[str, Any]:
    """Add the OpenVINO rows to ``sessions`` (bfloat16 where the CPU has it, else float32; int8 when it is cached
    or NNCF can quantize) and return what each load cost (the graph's build, quantize, save, read, compile)."""
    import textmask
    from textmask import openvino_backend
    from textmask.errors import TextmaskError

    loads: dict[str, Any] = {}
    if not openvino_backend.openvino_installed():
        print("OpenVINO is not installed: no OpenVINO rows (pip install 'textmask[openvino-quantize]')", flush=True)
        return loads
    precisions = ["bfloat16" if openvino_backend.cpu_supports_bf16() else "float32", "int8"]
    for precision in precisions:
        label = f"openvino {precision}"
        print(f"loading {label} (converted, quantized for int8, once; then cached) ...", flush=True)
        started = time.perf_counter()
        try:
            session = textmask.load(model, device="cpu", dtype=precision, backend="openvino")
        except TextmaskError as exc:
            print(f"  skipped: {exc}", flush=True)
            loads[label] = {"error": str(exc)}
            continue
        tower = session._openvino
        loads[label] = {"seconds": time.perf_counter() - started, "built": tower.built, "steps": tower.timings}
        sessions[label] = session
    return loads


def precision_agreement(model: str, device: str, with_openvino: bool) -> dict[str, Any]:
    """Every reduced precision's agreement with float32 (:func:`textmask.precision.measure`: relative logit RMS and
    IoU at logit 0 on the held-out calibration scenes), on the model and, for a random model, on its stand-in for
    trained weights (``<model>-outliers``), side by side; and what ``dtype="fast"`` runs on each after its check."""
    import textmask
    from textmask import openvino_backend as ovb
    from textmask import precision
    from textmask.engine import Segmenter
    from textmask.errors import TextmaskError
    from textmask.model import load_model

    models = [model, *([f"{model}-outliers"] if model in ("random-tiny", "random-full") else [])]
    candidates = {"torch fast (int8)": ("fast", "torch"), "torch bfloat16": ("bfloat16", "torch")}
    if with_openvino and ovb.openvino_installed():
        if ovb.cpu_supports_bf16():
            candidates["openvino bfloat16"] = ("bfloat16", "openvino")
        candidates["openvino int8"] = ("int8", "openvino")
    rows: dict[str, dict[str, Any]] = {}
    fast: dict[str, str] = {}
    for name in models:
        print(f"agreement with float32 on the calibration scenes: {name} ...", flush=True)
        reuse = name == model  # the stand-in's sessions are freed after use

        def session_of(dtype: str, backend: str, name: str = name, reuse: bool = reuse) -> Any:
            if reuse:
                return textmask.load(name, device=device, dtype=dtype, backend=backend, check_precision=False)
            return Segmenter(load_model(name, device=device, dtype=dtype, backend=backend, reuse=False))

        reference = session_of("float32", "torch")
        for label, (dtype, backend) in candidates.items():
            try:
                agreement = precision.measure(session_of(dtype, backend), reference)
            except (TextmaskError, ValueError) as exc:
                rows.setdefault(label, {})[name] = {"error": str(exc)}
                continue
            rows.setdefault(label, {})[name] = {
                "relative_logit_rms": agreement.relative_rms,
                "iou_at_logit_0": agreement.iou,
                "holds": agreement.holds(),
            }
            print(f"  {label}: {agreement}", flush=True)
        chosen = textmask.load(name, device=device, dtype="fast") if reuse else None
        fast[name] = chosen.precision_name if chosen is not None else "-"
        del reference
    return {"models": models, "rows": rows, "fast_runs": fast, "bound": precision.RELATIVE_RMS_BOUND}


def agreement_table(report: dict[str, Any]) -> list[str]:
    """The agreement of every reduced precision, plain model and stand-in side by side, as Markdown."""
    entry = report.get("precision_agreement")
    if not entry:
        return []
    models = entry["models"]
    head = " | ".join(models) + (" | stand-in / plain" if len(models) > 1 else "")
    lines = [
        "Agreement with float32 on the calibration scenes (relative logit RMS, IoU at logit 0; textmask.precision):",
        "",
        f"| precision | {head} |",
        "| --- | " + " | ".join("---:" for _ in range(len(models) + (len(models) > 1))) + " |",
    ]
    for label, by_model in entry["rows"].items():
        cells = []
        for name in models:
            value = by_model.get(name, {})
            cells.append(
                f"{value['relative_logit_rms']:.4f} (IoU {value['iou_at_logit_0']:.4f})"
                if "relative_logit_rms" in value
                else "error"
            )
        if len(models) > 1:
            plain, stand_in = (by_model.get(name, {}).get("relative_logit_rms") for name in models[:2])
            cells.append(f"{stand_in / plain:.2f}×" if plain and stand_in is not None else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    fast = ", ".join(f"{name}: {runs}" for name, runs in entry["fast_runs"].items() if runs != "-")
    lines += ["", f'`dtype="fast"` runs (after its check): {fast}.']
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer images and cases (< 2 minutes)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--model", default="random-full", help="model source (default: random-full)")
    parser.add_argument("--images", type=int, help="images per case (default 16, quick 4)")
    parser.add_argument("--sizes", type=int, nargs="+", help="square image sizes (default 512 1024)")
    parser.add_argument("--prompt-counts", type=int, nargs="+", help="prompts per case (default 1 5)")
    parser.add_argument("--repeats", type=int, help="timed repeats per row, best kept (default 2, quick 1)")
    parser.add_argument("--seed-images", type=int, help="images the seed rows are timed on (default 2)")
    parser.add_argument("--hf-images-multi", type=int, help="images the transformers row is timed on for >1 prompt")
    parser.add_argument("--reference-images", type=int, default=2, help="images for the per-image reference")
    parser.add_argument("--soak-images", type=int, help="images of 1024² in the memory run (default 256; 0: skip)")
    parser.add_argument("--soak-dtype", default="float32", help="dtype of the memory run (default float32)")
    parser.add_argument("--no-bfloat16", action="store_true", help="skip the bfloat16 row (tried alternative)")
    parser.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO rows (CPU, openvino installed)")
    parser.add_argument(
        "--no-agreement",
        action="store_true",
        help="skip the agreement table (plain model and stand-in, every precision)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for the JSON")
    parser.add_argument("--render", type=Path, help="print a saved results JSON as text and Markdown, then exit")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        print_report(saved)
        print()
        print(markdown_report(saved))
        return 0
    quick = args.quick
    args.images = args.images or (4 if quick else 16)
    args.sizes = args.sizes or ([512] if quick else [512, 1024])
    args.prompt_counts = args.prompt_counts or [1, 5]
    args.repeats = args.repeats or (1 if quick else 2)
    args.seed_images = args.seed_images or (1 if quick else 2)
    args.hf_images_multi = args.hf_images_multi or (2 if quick else 4)
    if args.soak_images is None:
        args.soak_images = 0 if quick else 256
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

    import transformers
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    import textmask
    from textmask.engine import DEFAULT_BATCH_SIZE
    from textmask.model import locate_model

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = torch.device(args.device)
    started = time.perf_counter()
    print(f"building / locating {args.model} ...", flush=True)
    folder = locate_model(args.model)
    processor = CLIPSegProcessor.from_pretrained(folder)
    model = CLIPSegForImageSegmentation.from_pretrained(folder).to(device).eval()
    default_label, fast_label = "textmask float32", "textmask fast (torch)"
    sessions = {default_label: textmask.load(args.model, device=args.device, backend="torch")}
    fast_session = textmask.load(args.model, device=args.device, dtype="fast", backend="torch")
    sessions[fast_label] = fast_session
    if not args.no_bfloat16 and not quick:
        sessions["textmask bfloat16 (tried)"] = textmask.load(
            args.model, device=args.device, dtype="bfloat16", backend="torch"
        )
    openvino_loads: dict[str, Any] = {}
    if device.type == "cpu" and not args.no_openvino:
        openvino_loads = load_openvino_sessions(args.model, sessions)
    ctx = {
        "args": args,
        "device": device,
        "folder": folder,
        "processor": processor,
        "model": model,
        "sessions": sessions,
        "default_label": default_label,
        "fast_label": fast_label,
        "chunk": DEFAULT_BATCH_SIZE,
    }
    report: dict[str, Any] = {
        "openvino_loads": openvino_loads,
        "command": " ".join(["python", "benchmarks/bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model,
        "machine": machine_info(device),
        "sessions": {label: repr(session) for label, session in sessions.items()},
        "default_label": default_label,
        "fast_label": fast_label,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    print("measuring GEMM peaks ...", flush=True)
    ctx["peaks"] = report["gemm_peak_gflops"] = gemm_peaks(device, quick)
    report["cases"] = []
    for size in args.sizes:
        for prompt_count in args.prompt_counts:
            print(f"case {size}×{size}, {prompt_count} prompt(s) ...", flush=True)
            report["cases"].append(run_case(ctx, size, prompt_count))
    print("vision tower throughput ...", flush=True)
    report["tower"] = tower_throughput(ctx)
    print("cold starts (fresh interpreters) ...", flush=True)
    report["cold_start"] = {
        "float32": cold_start(args.model, "float32", args.device, "torch"),
        "fast (torch)": cold_start(args.model, "fast", args.device, "torch"),
        **(openvino_cold_starts(args.model, folder, quick) if openvino_loads else {}),
    }
    if args.soak_images:
        print(f"memory: {args.soak_images} images of 1024² in a fresh process ...", flush=True)
        report["memory_soak"] = memory_soak(args.model, args.device, args.soak_images, 1024, args.soak_dtype)
    if not args.no_agreement:
        report["precision_agreement"] = precision_agreement(
            args.model, args.device, device.type == "cpu" and not args.no_openvino
        )
    report["targets"] = evaluate_targets(report)
    report["wall_seconds"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = args.out / f"bench-{args.device}-{'quick-' if quick else ''}{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    path.with_suffix(".md").write_text(markdown_report(report))
    print(f"\nwhole run {report['wall_seconds']:.0f} s; results: {path} (and .md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
