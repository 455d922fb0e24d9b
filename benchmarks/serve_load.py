"""Load test of ``textmask serve``: throughput, latency and batching with 1, 4 and 16 concurrent clients.

Run from the repository root (see docs/serve.md, "Load")::

    python benchmarks/serve_load.py                        # 48 requests per level, 512² images, random-full
    python benchmarks/serve_load.py --requests 24          # a short run
    python benchmarks/serve_load.py --memory-run 2000      # plus 2,000 requests of 256² at 16 clients: RSS stays flat
    python benchmarks/serve_load.py --device cuda --max-batch 32

It starts ``python -m textmask serve`` on the full-size model with random weights (``random-full``: the real
architecture's speed; meaningless masks) on a free loopback port, waits until it is ready, warms it up, then for each
concurrency level sends a fixed number of ``POST /v1/mask`` requests from that many clients (threads with their
own keep-alive connection; each client sends its next request when its answer is in). It reports throughput,
p50/p95 latency, the mean engine batch (from the server's ``/metrics``), errors (non-200 answers) and lost responses
(no answer: a timeout or a dropped connection), and the server's resident memory at start, after warm-up and at the
end. Everything is bounded: requests per level, seconds per level (``--max-seconds``), per-request timeout.
Loopback only. ``--rounds N`` runs the levels round-robin N times and keeps each level's best round (errors and
lost responses of every round count), so that a machine shared with other work slows every level alike. Results also
go to a JSON file (``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a cat", "the sky", "the grass", "a tree", "the sun"]
MIB = 2**20


# ------------------------------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_images(size: int, count: int) -> list[bytes]:
    """``count`` different PNGs of ``size``²: the example image, resized and lightly perturbed (no two alike)."""
    import numpy as np
    from PIL import Image

    with Image.open(ROOT / "examples" / "images" / "cat-on-lawn.png") as example:
        base = np.asarray(example.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        noisy = np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def scrape(client: Any) -> dict[str, float]:
    """The server's /metrics as ``{name{labels}: value}``."""
    values = {}
    for line in client.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


class ServerProcess:
    """``python -m textmask serve`` on a free loopback port, its log in a file."""

    def __init__(self, args: argparse.Namespace, log: Path) -> None:
        self.port = args.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable, "-m", "textmask", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--model", args.model, "--device", args.device, "--dtype", args.dtype,
            "--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms),
            "--queue", str(max(64, 2 * max(args.concurrency))), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        env = dict(os.environ)
        if (ROOT / "src" / "textmask").is_dir():
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        self.log_path = log
        self._log = open(log, "wb")  # closed in stop()
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> float:
        import httpx

        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited ({self.process.returncode}):\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server was not ready after {timeout:.0f} s")

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.terminate()  # graceful: what is in flight finishes
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode


# --------------------------------------------------------------------------------------------- load
def run_level(url: str, images: list[bytes], concurrency: int, requests: int, max_seconds: float,
              timeout: float) -> dict[str, Any]:  # fmt: skip
    """``requests`` requests from ``concurrency`` clients; what came back, how fast, how the engine batched."""
    import httpx

    with httpx.Client(base_url=url, timeout=30) as probe:
        before = scrape(probe)
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lost: list[str] = []
    deadline = time.perf_counter() + max_seconds

    def client(index: int) -> None:
        nonlocal issued
        with httpx.Client(base_url=url, timeout=timeout) as http:
            while True:
                with lock:
                    if issued >= requests or time.perf_counter() > deadline:
                        return
                    number = issued
                    issued += 1
                image = images[number % len(images)]
                prompts = [PROMPTS[number % len(PROMPTS)]]
                started = time.perf_counter()
                try:
                    response = http.post(
                        "/v1/mask", files={"image": (f"{number}.png", image, "image/png")}, data={"prompt": prompts}
                    )
                except httpx.HTTPError as exc:
                    with lock:
                        lost.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code == 200 and response.content.startswith(b"\x89PNG"):
                        latencies.append(elapsed)
                    else:
                        key = str(response.status_code)
                        errors[key] = errors.get(key, 0) + 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max_seconds + timeout + 30)
    wall = time.perf_counter() - started
    with httpx.Client(base_url=url, timeout=30) as probe:
        after = scrape(probe)
    batches = after["textmask_batch_size_count"] - before["textmask_batch_size_count"]
    batched = after["textmask_batch_size_sum"] - before["textmask_batch_size_sum"]
    return {
        "concurrency": concurrency,
        "requests": issued,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "errors_by_status": errors,
        "lost": len(lost),
        "lost_detail": lost[:5],
        "seconds": round(wall, 3),
        "throughput": round(len(latencies) / wall, 3) if wall else None,
        "p50": round(percentile(latencies, 0.50), 3),
        "p95": round(percentile(latencies, 0.95), 3),
        "mean_batch": round(batched / batches, 2) if batches else None,
        "engine_calls": int(batches),
        "stopped_by_time": issued < requests,
    }


def rss_mib(url: str) -> float:
    import httpx

    with httpx.Client(base_url=url, timeout=30) as probe:
        return round(scrape(probe)["process_resident_memory_bytes"] / MIB, 1)


def table(levels: list[dict[str, Any]]) -> str:
    head = "| clients | requests | ok | errors | lost | req/s | p50 s | p95 s | mean batch | engine calls |"
    lines = [head, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for level in levels:
        lines.append(
            f"| {level['concurrency']} | {level['requests']} | {level['ok']} | {level['errors']} | {level['lost']} "
            f"| {level['throughput']:.2f} | {level['p50']:.2f} | {level['p95']:.2f} | {level['mean_batch'] or '-'} "
            f"| {level['engine_calls']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random-full", help="model source (default: random-full)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    parser.add_argument("--dtype", default="float32", help="float32 (default), fast, float16, bfloat16")
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level (default 48)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="client counts (1 4 16)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the levels round-robin this many times, keep each one's best (1)"
    )
    parser.add_argument("--size", type=int, default=512, help="square image side (default 512)")
    parser.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch (default 8)")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="the server's --batch-wait-ms (10)")
    parser.add_argument("--warmup", type=int, default=0, help="warm-up requests (default: 2 × max batch)")
    parser.add_argument("--memory-run", type=int, default=0, metavar="N", help="then N requests for the memory check")
    parser.add_argument("--memory-size", type=int, default=256, help="image side of the memory run (default 256)")
    parser.add_argument("--memory-concurrency", type=int, default=16, help="clients of the memory run (default 16)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="time bound per level (default 900)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, seconds (default 300)")
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for the model (900)")
    parser.add_argument("--port", type=int, default=0, help="loopback port (default: a free one)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for the JSON")
    args = parser.parse_args()
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise SystemExit("needs httpx (pip install -e '.[serve,dev]')") from None

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(args, args.out / f"serve-load-{stamp}.log")
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    result: dict[str, Any] = {
        "date": stamp,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "settings": settings,
    }
    try:
        print(f"starting the server ({args.model} on {args.device}, max batch {args.max_batch}) ...", flush=True)
        result["ready_seconds"] = round(server.wait_ready(args.ready_timeout), 1)
        memory = {"start": rss_mib(server.url)}
        images = make_images(args.size, 16)
        warmup = args.warmup or 2 * args.max_batch
        clients = min(args.max_batch, max(args.concurrency))
        run_level(server.url, images, clients, warmup, args.max_seconds, args.timeout)
        memory["after_warmup"] = rss_mib(server.url)
        best: dict[int, dict[str, Any]] = {}
        for round_number in range(1, args.rounds + 1):  # round-robin: background load slows every level alike
            for concurrency in args.concurrency:
                print(f"round {round_number}: {concurrency} client(s), {args.requests} requests of {args.size}² ...",
                      flush=True)  # fmt: skip
                level = run_level(server.url, images, concurrency, args.requests, args.max_seconds, args.timeout)
                level["rounds"] = round_number
                kept = best.get(concurrency)
                problems = level["errors"] + level["lost"] + (kept["problems"] if kept else 0)
                if kept is None or (level["throughput"] or 0) > (kept["throughput"] or 0):
                    best[concurrency] = level
                best[concurrency]["problems"] = problems  # errors and lost answers of every round count
        levels = [best[concurrency] for concurrency in args.concurrency]
        memory["after_levels"] = rss_mib(server.url)
        result["levels"] = levels
        if args.memory_run:
            print(f"memory run: {args.memory_run} requests of {args.memory_size}², "
                  f"{args.memory_concurrency} clients ...", flush=True)  # fmt: skip
            small = make_images(args.memory_size, 16)
            run_level(server.url, small, args.memory_concurrency, 2 * args.memory_concurrency, 300, args.timeout)
            memory["memory_run_start"] = rss_mib(server.url)
            result["memory_run"] = run_level(server.url, small, args.memory_concurrency, args.memory_run,
                                             args.max_seconds * 4, args.timeout)  # fmt: skip
            memory["memory_run_end"] = rss_mib(server.url)
        memory["end"] = rss_mib(server.url)
        result["rss_mib"] = memory
    finally:
        result["server_exit"] = server.stop()

    print()
    print(
        f"textmask serve load, {args.model} on {args.device} ({args.dtype}), {args.size}² images, 1 prompt each, "
        f"server --max-batch {args.max_batch} --batch-wait-ms {args.batch_wait_ms:g}; {os.cpu_count()} CPUs"
    )
    print(table(result["levels"]))
    if "memory_run" in result:
        run = result["memory_run"]
        print()
        print(f"memory run: {run['ok']}/{run['requests']} ok, {run['errors']} errors, {run['lost']} lost, "
              f"{run['throughput']:.2f} req/s, mean batch {run['mean_batch']}")  # fmt: skip
    rss = result["rss_mib"]
    print("server RSS, MiB: " + ", ".join(f"{name.replace('_', ' ')} {value:.0f}" for name, value in rss.items()))
    base = next(level for level in result["levels"] if level["concurrency"] == min(args.concurrency))
    checks = {
        "no errors, no lost responses": all(lv["problems"] == 0 for lv in result["levels"]),
        "batched under concurrency (mean batch > 2)": all(
            (lv["mean_batch"] or 0) > 2 for lv in result["levels"] if lv["concurrency"] >= 4
        ),
        "throughput not below 1 client's": all(
            lv["throughput"] >= base["throughput"] for lv in result["levels"] if lv["concurrency"] > 1
        ),
    }
    if "memory_run" in result:
        run = result["memory_run"]
        growth = rss["memory_run_end"] - rss["memory_run_start"]
        checks[f"memory flat over the memory run (+{growth:.0f} MiB)"] = growth < 0.1 * rss["memory_run_start"]
        checks["memory run: no errors, no lost responses"] = run["errors"] == 0 and run["lost"] == 0
    result["checks"] = checks
    for name, passed in checks.items():
        print(f"  {'ok  ' if passed else 'FAIL'} {name}")
    path = args.out / f"serve-load-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
