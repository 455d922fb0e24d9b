"""Start-up benchmark: a fresh process masking one image with textmask's CLI vs the seed node's code path.

Run from the repository root (see docs/benchmarks.md)::

    python benchmarks/startup.py              # 5 repeats each, about 1-2 minutes on 2 CPU cores
    python benchmarks/startup.py --repeats 3

Both rows start a new Python process and mask the same 512×512 PNG with one prompt, in float32 on the CPU,
from the same local model folder (``random-full``: the full rd64-refined architecture with random weights,
built once; ``--model`` takes another folder):

* **textmask CLI**: ``python -m textmask mask one.png -p "a cat" --model random-full -o out/`` (textmask's own
  CLIPSeg modules: no transformers import).
* **seed path**: what the seed node does for one image: ``import transformers``,
  ``CLIPSegProcessor.from_pretrained`` + ``CLIPSegForImageSegmentation.from_pretrained`` from the folder, one
  forward and the seed's post-processing (``tests/seed_reference.py``, the one copy of the seed algorithm).

The rows alternate (textmask, seed, textmask, seed, ...) after one untimed warm-up of each, so a noisy
machine slows both alike; the median of each is reported, and the ratio textmask / seed (target ≤ 0.4).
It also times, in fresh processes, ``import textmask.engine`` alone and the model load in-process
(``textmask.load``, after the imports). Results go to ``benchmarks/results/startup-<time>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.4


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    return env


def model_folder(model: str) -> Path:
    """The model's local folder (building ``random-full`` first if needed, untimed)."""
    code = f"import textmask; print(textmask.locate_model({model!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment(), check=True)
    return Path(done.stdout.strip().splitlines()[-1])


def write_image(path: Path) -> None:
    """A 512×512 RGB PNG with smooth structure (not flat noise)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:512, 0:512] / 512.0
    rgb = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y - x), np.sin(3 * (x + y))], axis=-1)
    Image.fromarray(((rgb + 1) * 127.5).astype(np.uint8)).save(path)


def run(command: list[str], what: str) -> float:
    """Wall seconds of one fresh process (raises with its stderr if it fails)."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment(), cwd=str(ROOT), timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds


def in_process_times(model: str) -> dict[str, float]:
    """``import textmask.engine`` and ``textmask.load(model)`` in a fresh process (float32, CPU)."""
    code = f"""
import json, sys, time
t0 = time.perf_counter()
import textmask.engine
t1 = time.perf_counter()
session = textmask.engine.load({model!r}, device="cpu", dtype="float32")
t2 = time.perf_counter()
imported = "transformers" in sys.modules
print(json.dumps({{"import_engine_s": t1 - t0, "load_s": t2 - t1, "transformers_imported": imported}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment(), check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each row (default 5)")
    parser.add_argument("--model", default="random-full", help="model source (default: random-full)")
    args = parser.parse_args(argv)

    folder = model_folder(args.model)
    work = Path(tempfile.mkdtemp(prefix="textmask-startup-"))
    image = work / "one.png"
    write_image(image)
    textmask_cli = [sys.executable, "-m", "textmask", "mask", str(image), "-p", "a cat", "--model", str(folder)]
    textmask_cli += ["--device", "cpu", "--dtype", "float32", "-q"]
    seed = [sys.executable, str(ROOT / "tests" / "seed_reference.py"), str(folder), str(image), "a cat"]

    def textmask_row(index: int) -> float:
        return run([*textmask_cli, "-o", str(work / f"out-{index}")], "textmask CLI")

    def seed_row(index: int) -> float:
        return run([*seed, str(work / f"seed-{index}.npy")], "seed path")

    print(f"model folder: {folder}\nload average before: {load_average()}")
    textmask_row(-1), seed_row(-1)  # warm-up: file caches, .pyc files
    times: dict[str, list[float]] = {"textmask CLI": [], "seed path": []}
    for index in range(args.repeats):
        times["textmask CLI"].append(textmask_row(index))
        times["seed path"].append(seed_row(index))
        print(f"  repeat {index + 1}: textmask {times['textmask CLI'][-1]:.2f} s, seed {times['seed path'][-1]:.2f} s")
    inside = [in_process_times(str(folder)) for _ in range(3)]

    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["textmask CLI"] / medians["seed path"]
    report: dict[str, Any] = {
        "time": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()},
        "model": str(folder),
        "repeats": args.repeats,
        "seconds": times,
        "median_s": medians,
        "ratio_textmask_to_seed": ratio,
        "target_ratio": TARGET_RATIO,
        "met": ratio <= TARGET_RATIO,
        "in_process": {
            "import_engine_s": statistics.median(x["import_engine_s"] for x in inside),
            "load_s": statistics.median(x["load_s"] for x in inside),
            "transformers_imported": any(x["transformers_imported"] for x in inside),
        },
        "load_average_after": load_average(),
    }
    print(f"\nfresh process, one 512² PNG, one prompt, float32 CPU (median of {args.repeats}):")
    print(f"  textmask CLI  {medians['textmask CLI']:6.2f} s")
    print(f"  seed path     {medians['seed path']:6.2f} s")
    print(f"  ratio         {ratio:6.2f}  (target ≤ {TARGET_RATIO}: {'met' if report['met'] else 'NOT met'})")
    print(f"in-process: import textmask.engine {report['in_process']['import_engine_s']:.2f} s (torch included), ")
    print(
        f"            textmask.load {report['in_process']['load_s']:.2f} s; transformers imported: "
        f"{report['in_process']['transformers_imported']}"
    )
    print(f"load average after: {report['load_average_after']} (the machine may be shared)")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"startup-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
