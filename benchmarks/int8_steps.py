"""Each step of torch's int8 mode measured on the plain random model and its stand-ins for trained weights.

    python benchmarks/int8_steps.py --models random-tiny random-tiny-outliers
    python benchmarks/int8_steps.py             # random-full and its stand-ins (a few minutes on 2 cores)
    python benchmarks/int8_steps.py --speed --models random-full   # the tower's time, before against now

Relative logit RMS and IoU at logit 0 against float32 (textmask.precision) on the held-out calibration scenes,
for: per-tensor int8 (textmask before issue 22), + per-channel weights, + SmoothQuant smoothing, + centring each
channel (Outlier Suppression+'s shift), + the linear maps int8 cannot carry kept in float (textmask's fast mode
now), and torch bfloat16.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

import textmask  # noqa: E402
from textmask import precision  # noqa: E402
from textmask.fast import calibrate_int8, fast_vision_layers  # noqa: E402

STEPS = {
    "int8 per-tensor (before)": None,
    "+ per-channel weights": {"smooth": False, "per_channel": True, "keep_float_error": None},
    "+ smoothing (SmoothQuant)": {"smooth": True, "shift": False, "per_channel": True, "keep_float_error": None},
    "+ centring (OS+ shift)": {"smooth": True, "per_channel": True, "keep_float_error": None},
    "+ keep in float (now)": {"smooth": True, "per_channel": True},
    "now, but per-tensor weights": {"smooth": True, "per_channel": False},
}


def speed(model: str, images: int, repeats: int) -> None:
    """The vision tower (layers 0–9) of torch's int8 mode before issue 22 (per-tensor, no smoothing) and now (the
    model's cached plan), interleaved in one process, best of ``repeats``; the ratio is what counts."""
    reference = textmask.load(model, check_precision=False)
    session = textmask.load(model, dtype="fast", backend="torch", check_precision=False)
    cpu = torch.device("cpu")
    variants = {
        "before (per-tensor)": fast_vision_layers(reference._vision_layers, torch.float32, cpu, "int8", None),
        "now": session._vision_layers,
    }
    kept = sum(len(plan.keep_float) for plan in precision.int8_plans(reference))
    hidden = torch.randn(images, 485, reference.clipseg.config.vision_config.hidden_size)
    best = dict.fromkeys(variants, float("inf"))
    with torch.inference_mode():
        for _ in range(repeats):
            for name, layers in variants.items():
                started = time.perf_counter()
                out = hidden
                for layer in layers:
                    out = layer(out)
                best[name] = min(best[name], time.perf_counter() - started)
    for name, seconds in best.items():
        ratio = seconds / best["before (per-tensor)"]
        print(f"{model} vision tower, {name}: {seconds / images:.3f} s/image, {ratio:.3f}× before's time")
    print(f"(linear maps kept in float now: {kept})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--models", nargs="+", default=["random-full", "random-full-outliers", "random-full-int8-breaker"]
    )
    parser.add_argument("--speed", action="store_true", help="time before against now instead (first model)")
    parser.add_argument("--images", type=int, default=4, help="--speed: images per pass")
    parser.add_argument("--repeats", type=int, default=6, help="--speed: interleaved repeats, best kept")
    args = parser.parse_args()
    if args.speed:
        speed(args.models[0], args.images, args.repeats)
        return
    levels = precision.scenes(precision.CHECK_SCENES)
    prompts = precision.CHECK_PROMPTS
    rows: dict[str, dict[str, str]] = {}
    for model in args.models:
        reference = textmask.load(model, check_precision=False)
        expected = precision.scene_logits(reference, levels, prompts)
        session = textmask.load(model, dtype="fast", backend="torch", check_precision=False)
        original = reference._vision_layers
        hidden = precision.calibration_hidden(reference)
        for step, options in STEPS.items():
            started = time.perf_counter()
            plans = None if options is None else calibrate_int8(original, hidden, **options)
            session._vision_layers = fast_vision_layers(original, torch.float32, torch.device("cpu"), "int8", plans)
            agreement = precision.logit_agreement(expected, precision.scene_logits(session, levels, prompts))
            kept = 0 if plans is None else sum(len(p.keep_float) for p in plans)
            rows.setdefault(step, {})[model] = f"{agreement.relative_rms:.4f} (IoU {agreement.iou:.4f})" + (
                f", {kept} float" if kept else ""
            )
            seconds = time.perf_counter() - started
            print(f"{model:28} {step:32} {agreement}  kept float {kept}  ({seconds:.1f} s)", flush=True)
        bf16 = textmask.load(model, dtype="bfloat16", backend="torch", check_precision=False)
        agreement = precision.logit_agreement(expected, precision.scene_logits(bf16, levels, prompts))
        rows.setdefault("torch bfloat16", {})[model] = f"{agreement.relative_rms:.4f} (IoU {agreement.iou:.4f})"
        print(f"{model:28} {'torch bfloat16':32} {agreement}", flush=True)
        del reference, session, bf16
    print()
    print("| step | " + " | ".join(args.models) + " |")
    print("| --- | " + " | ".join("---:" for _ in args.models) + " |")
    for step, by_model in rows.items():
        print(f"| {step} | " + " | ".join(by_model.get(m, "") for m in args.models) + " |")


if __name__ == "__main__":
    main()
