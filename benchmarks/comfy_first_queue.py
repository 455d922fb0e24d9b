"""ComfyUI's first queue of the drop-in node, before and after: a fresh ComfyUI per run, one saved workflow.

Each run starts a real ComfyUI (``main.py --cpu``) with one version of the pack in its ``custom_nodes`` and the
``random-full`` model (the full rd64-refined architecture, random weights) in ``models/clipseg`` as
``CIDAS/clipseg-rd64-refined``, then queues ``examples/workflows/salt_clipseg_masking_api.json`` (Load Image →
CLIPSeg Model Loader (Salt) → Batch Image CLIPSeg Masking → Save Image) and times the queue from the POST to the
finished history entry: the pack's imports, the model load and one mask. Packs alternate run by run, so a noisy
machine slows both alike; the medians and their ratio are what count.

    python benchmarks/comfy_first_queue.py --comfyui /path/to/ComfyUI --python /path/to/comfyui-venv/bin/python \\
        --pack before=/path/to/old/checkout --pack after=. --repeats 3

ComfyUI needs its own environment (torch with a matching torchvision; see the README). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
WORKFLOW = ROOT / "examples" / "workflows" / "salt_clipseg_masking_api.json"


def _request(url: str, body: Any = None, timeout: float = 30) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_queue(comfyui: Path, python: str, pack: Path, model: Path, image: Path) -> tuple[float, float]:
    """``(seconds until ComfyUI listed the node, seconds of the first queue)`` for one fresh ComfyUI."""
    base = Path(tempfile.mkdtemp(prefix="textmask-comfy-bench-"))
    try:
        (base / "custom_nodes").mkdir()
        (base / "input").mkdir()
        (base / "custom_nodes" / "textmask").symlink_to(pack.resolve(), target_is_directory=True)
        repo = base / "models" / "clipseg" / "models--CIDAS--clipseg-rd64-refined"
        shutil.copytree(model, repo / "snapshots" / "0123456789abcdef", symlinks=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0123456789abcdef")
        shutil.copy(image, base / "input" / "example.png")
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        command = [
            python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
            "--base-directory", str(base), "--database-url", f"sqlite:///{base / 'comfyui.db'}",
        ]  # fmt: skip
        log = open(base / "comfyui.log", "w")
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=comfyui, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ComfyUI did not start:\n{(base / 'comfyui.log').read_text()[-3000:]}")
                try:
                    if _request(f"{url}/object_info/SaltCLIPSegMasking", timeout=5):
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                time.sleep(0.2)
            ready = time.perf_counter() - started
            graph = {
                k: {n: v for n, v in node.items() if n != "_meta"}
                for k, node in json.loads(WORKFLOW.read_text()).items()
            }
            queued = time.perf_counter()
            prompt_id = _request(f"{url}/prompt", {"prompt": graph, "client_id": "bench"})["prompt_id"]
            while True:
                history = _request(f"{url}/history/{prompt_id}")
                if history and prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                    status = history[prompt_id]["status"]["status_str"]
                    if status != "success":
                        raise RuntimeError(f"the workflow failed:\n{(base / 'comfyui.log').read_text()[-3000:]}")
                    return ready, time.perf_counter() - queued
                if time.monotonic() > deadline + 300:
                    raise RuntimeError("the workflow did not finish")
                time.sleep(0.05)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout (main.py)")
    parser.add_argument("--python", default=sys.executable, help="ComfyUI's Python")
    parser.add_argument("--pack", action="append", required=True, metavar="NAME=PATH", help="a version of the pack")
    parser.add_argument("--model", default="random-full", help="model folder or random-full (default)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from textmask.model import locate_model

    model = locate_model(args.model)
    packs = dict(item.split("=", 1) for item in args.pack)
    image = ROOT / "examples" / "images" / "cat-on-lawn.png"
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in packs}
    for repeat in range(args.repeats):
        for name, path in packs.items():
            ready, queue = first_queue(args.comfyui, args.python, Path(path), model, image)
            results[name].append((ready, queue))
            print(f"run {repeat + 1} {name}: ComfyUI ready {ready:.2f} s, first queue {queue:.2f} s", flush=True)
    print(f"\nfirst queue of the drop-in node (median of {args.repeats}; model {args.model}, image 512×384):")
    print(f"  {'pack':<12} {'ComfyUI ready':>14} {'first queue':>12}")
    medians = {}
    for name, runs in results.items():
        medians[name] = statistics.median(q for _, q in runs)
        print(f"  {name:<12} {statistics.median(r for r, _ in runs):>12.2f} s {medians[name]:>10.2f} s")
    names = list(medians)
    for other in names[1:]:
        print(f"  {other} / {names[0]}: {medians[other] / medians[names[0]]:.2f}×")


if __name__ == "__main__":
    main()
