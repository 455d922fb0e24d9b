"""Detail mode's cost: a mask with tiles against the plain mask, side by side in one run.

Detail mode adds one vision pass (and one decoder pass per prompt) per tile, batched with the other tiles of the
chunk, so a mask with ``n`` tiles should cost at most ``1 + n`` plain masks. This script times, round-robin on the
same images (the full-size rd64-refined architecture, random weights), the plain mask and detail mode with a
fixed 2×2 grid and with ``auto``, and prints each ratio beside its ``1 + tiles`` bound::

    python benchmarks/detail.py            # 4 images of 1024², 1 prompt, 2 repeats (best kept)
    python benchmarks/detail.py --size 2048 --images 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

import textmask  # noqa: E402
from textmask.detail import tile_boxes, tile_grid  # noqa: E402
from textmask.postprocess import parse_detail  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random-full")
    parser.add_argument("--size", type=int, default=1024, help="square image side (default 1024)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=["2x2", "auto"], help="detail settings to time")
    args = parser.parse_args()

    session = textmask.load(args.model)
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand((args.images, 3, 6, 8), generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(args.size, args.size), mode="bicubic").clamp(0, 1)
    images = images.permute(0, 2, 3, 1).contiguous()
    rows = {"off": "off", **{setting: setting for setting in args.settings}}
    session.mask(images[:1], "a cat")  # warm-up: weights paged in, kernels chosen
    best = dict.fromkeys(rows, float("inf"))
    for _ in range(args.repeats):
        for name, setting in rows.items():
            started = time.perf_counter()
            session.mask(images, "a cat", detail=setting, batch_size=args.images)
            best[name] = min(best[name], time.perf_counter() - started)
    plain = best["off"]
    print(
        f"detail mode, {args.images} images of {args.size}², 1 prompt, {args.model}, {torch.get_num_threads()} threads"
    )
    print(f"  {'setting':<8} {'tiles':>5} {'s/image':>8} {'× plain':>8} {'bound 1 + tiles':>16}")
    for name, seconds in best.items():
        detail = parse_detail(rows[name])
        tiles = 0 if detail == "off" else len(tile_boxes(args.size, args.size, tile_grid(args.size, args.size, detail)))
        ratio = seconds / plain
        verdict = "" if name == "off" else ("  [met]" if ratio <= 1 + tiles else "  [missed]")
        print(f"  {name:<8} {tiles:>5} {seconds / args.images:>8.3f} {ratio:>7.2f}× {1 + tiles:>15}×{verdict}")


if __name__ == "__main__":
    main()
