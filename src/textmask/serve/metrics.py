"""Prometheus metrics in the text exposition format (version 0.0.4), with no dependency: counters, gauges and
histograms, thread-safe (the engine thread and the event loop both record), rendered by :meth:`Metrics.render`.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, lock: threading.Lock) -> None:
        self.name, self.help, self._lock = name, help, lock

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str, lock: threading.Lock) -> None:
        super().__init__(name, help, lock)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(tuple(sorted(labels.items())), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(key)} {_number(value)}" for key, value in items]


class Gauge(_Metric):
    """A value that goes up and down, or one read from a callback when rendered."""

    kind = "gauge"

    def __init__(self, name: str, help: str, lock: threading.Lock, read: Callable[[], float] | None = None) -> None:
        super().__init__(name, help, lock)
        self._value = 0.0
        self._read = read

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def lines(self) -> list[str]:
        value = self._read() if self._read is not None else self._value
        return [f"{self.name} {_number(value)}"]


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, lock: threading.Lock, buckets: Sequence[float]) -> None:
        super().__init__(name, help, lock)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        value = float(value)
        index = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        with self._lock:
            self._counts[index] += 1
            self._sum += value
            self._count += 1

    @property
    def sum(self) -> float:
        return self._sum

    @property
    def count(self) -> int:
        return self._count

    def lines(self) -> list[str]:
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        out, running = [], 0
        for bound, n in zip((*self.buckets, math.inf), counts):
            running += n
            out.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
        out.append(f"{self.name}_sum {_number(total)}")
        out.append(f"{self.name}_count {count}")
        return out


def resident_memory_bytes() -> float:
    """This process's resident set size in bytes (Linux ``/proc``; elsewhere the peak from ``getrusage``)."""
    try:
        with open("/proc/self/statm") as statm:
            return float(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError, AttributeError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(peak if sys.platform == "darwin" else peak * 1024)


class Metrics:
    """Every metric the service exports (names in docs/serve.md)."""

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0.0) -> None:
        lock = threading.Lock()
        self.requests = Counter("textmask_http_requests_total", "HTTP requests by route and status code.", lock)
        self.latency = Histogram(
            "textmask_request_duration_seconds", "Time to answer POST /v1/mask, in seconds.", lock, LATENCY_BUCKETS
        )
        self.batch_size = Histogram(
            "textmask_batch_size", "Requests per engine call (one shared vision pass).", lock, BATCH_BUCKETS
        )
        self.batch_seconds = Histogram(
            "textmask_batch_duration_seconds", "Time of one engine call, in seconds.", lock, LATENCY_BUCKETS
        )
        self.dropped = Counter("textmask_dropped_total", "Requests dropped before reaching the model, by reason.", lock)
        self.queue_depth = Gauge(
            "textmask_queue_depth", "Requests admitted and waiting for the engine.", lock, queue_depth
        )
        self.in_progress = Gauge("textmask_requests_in_progress", "POST /v1/mask requests being answered.", lock)
        self.ready = Gauge("textmask_model_ready", "1 once the model is loaded and warm, else 0.", lock)
        self.rss = Gauge(
            "process_resident_memory_bytes", "Resident memory of the server process.", lock, resident_memory_bytes
        )
        self.info: dict[str, str] = {}
        self._lock = lock
        self._in_progress = 0

    def enter(self) -> None:
        with self._lock:
            self._in_progress += 1
            self.in_progress._value = float(self._in_progress)

    def leave(self) -> None:
        with self._lock:
            self._in_progress -= 1
            self.in_progress._value = float(self._in_progress)

    def _all(self) -> Iterable[Counter | Gauge | Histogram]:
        return (
            self.requests,
            self.latency,
            self.batch_size,
            self.batch_seconds,
            self.dropped,
            self.queue_depth,
            self.in_progress,
            self.ready,
            self.rss,
        )

    def render(self) -> str:
        """All metrics in the Prometheus text format."""
        lines: list[str] = []
        if self.info:
            lines += ["# HELP textmask_build_info The server's version, model, device and dtype.",
                      "# TYPE textmask_build_info gauge",
                      f"textmask_build_info{_labels(tuple(sorted(self.info.items())))} 1"]  # fmt: skip
        for metric in self._all():
            lines += metric.header() + metric.lines()
        return "\n".join(lines) + "\n"
