"""The micro-batcher: concurrent requests from the event loop become one engine call on a worker thread.

Requests are admitted against a bounded queue (:meth:`MicroBatcher.reserve`), then handed over with
:meth:`MicroBatcher.submit`. The worker thread takes what is queued, up to ``max_batch``, when one of these holds:

* ``max_batch`` requests wait;
* the engine was idle: the first request has waited ``wait_s`` for company;
* the engine has just finished a batch: as many requests wait as were running and waiting then (clients that send
  their next request when an answer comes back are expected back), or a short refill time has passed (a tenth of
  the last engine call, at least ``wait_s``, at most :data:`MAX_REFILL_S`).

The last rule keeps closed-loop clients in one batch instead of letting them settle into alternating half-batches;
it costs a lone client nothing (one request running, one expected). A request whose client has gone is dropped
before it reaches the model. The event loop never runs model code, so it stays responsive while a batch runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("textmask.serve")

MAX_REFILL_S = 0.25
RunBatch = Callable[[list[Any]], list[Any]]
"""``run(requests) → results``, one per request, each a value or the exception that request failed with."""


class QueueFull(Exception):
    """The queue holds as many requests as it may; try again in ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


@dataclass(eq=False)
class _Job:
    request: Any
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float
    gone: bool = False


@dataclass
class BatchStats:
    """What the worker reports after each engine call (for metrics)."""

    size: int
    seconds: float
    dropped: int = 0


@dataclass
class MicroBatcher:
    """Runs ``run`` on batches of queued requests, on one worker thread.

    Attributes:
        run: the engine call (see :data:`RunBatch`); it must not raise.
        max_batch: most requests per call.
        wait_s: how long an idle engine waits for a batch to fill.
        capacity: most requests admitted and not yet taken by the worker.
        on_batch: called on the worker thread after each call with its :class:`BatchStats`.
    """

    run: RunBatch
    max_batch: int = 8
    wait_s: float = 0.01
    capacity: int = 64
    on_batch: Callable[[BatchStats], None] | None = None
    _queue: deque[_Job] = field(default_factory=deque, init=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False)
    _reserved: int = field(default=0, init=False)
    _stopping: bool = field(default=False, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _seconds_per_request: float = field(default=0.5, init=False)
    _free_at: float = field(default=-math.inf, init=False)  # when the last engine call ended
    _expected: int = field(default=1, init=False)  # requests running and waiting when it ended
    _refill_s: float = field(default=0.0, init=False)

    # ------------------------------------------------------------------------------ event-loop side
    @property
    def depth(self) -> int:
        """Requests admitted and not yet taken into a batch."""
        return self._reserved

    @property
    def full(self) -> bool:
        return self._reserved >= self.capacity

    def retry_after(self) -> int:
        """Seconds after which the queue has probably room again (at least 1)."""
        batches = self._reserved / max(1, self.max_batch)
        return max(1, min(60, math.ceil(batches * self._seconds_per_request * self.max_batch)))

    def reserve(self, count: int = 1) -> None:
        """Admit ``count`` requests (a request may need several engine requests), or raise :class:`QueueFull`."""
        with self._cond:
            if self._reserved + count > self.capacity and self._reserved > 0:
                raise QueueFull(self.retry_after())
            self._reserved += count

    def release(self, count: int = 1) -> None:
        """Give back admissions that will not be submitted (the upload could not be decoded...)."""
        with self._cond:
            self._reserved = max(0, self._reserved - count)

    async def submit(self, requests: Sequence[Any], receive: Callable[[], Any] | None = None) -> list[Any]:
        """Queue ``requests`` (already reserved) and wait for their results, in order.

        Args:
            receive: the connection's ASGI ``receive``, whose ``http.disconnect`` means the client is gone: the
                requests are then dropped (if not yet running) and :class:`ClientGone` is raised.

        Raises:
            ClientGone, or the exception a request failed with.
        """
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        jobs = [_Job(request, loop.create_future(), loop, now) for request in requests]
        with self._cond:
            self._queue.extend(jobs)
            self._cond.notify()
        gathered = asyncio.gather(*(job.future for job in jobs))
        watcher = asyncio.ensure_future(_until_disconnect(receive)) if receive is not None else None
        try:
            waiting = {gathered} if watcher is None else {gathered, watcher}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._abandon(jobs, gathered)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if gathered in done:
            return list(gathered.result())
        self._abandon(jobs, gathered)
        raise ClientGone

    @staticmethod
    def _abandon(jobs: list[_Job], gathered: asyncio.Future) -> None:
        for job in jobs:
            job.gone = True
            job.future.cancel()
        gathered.cancel()

    # ---------------------------------------------------------------------------------- worker side
    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="textmask-engine", daemon=True)
            self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            first = self._queue[0].arrived
            if first - self._free_at < self._refill_s:  # the engine has just been busy: refill to what it had
                target = min(self.max_batch, self._expected)
                deadline = max(first, self._free_at) + self._refill_s
            else:  # the engine was idle: the first request waits a little for company
                target = self.max_batch
                deadline = first + self.wait_s
            while len(self._queue) < target and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self._reserved = max(0, self._reserved - len(batch))
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [job for job in batch if not job.gone]
            started = time.perf_counter()
            results: list[Any] = []
            if live:
                try:
                    results = self.run([job.request for job in live])
                except BaseException as exc:  # run() should not raise; if it does, every request gets the error
                    log.exception("engine call failed")
                    results = [exc] * len(live)
            seconds = time.perf_counter() - started
            if live:
                per_request = seconds / len(live)
                self._seconds_per_request = 0.8 * self._seconds_per_request + 0.2 * per_request
                with self._cond:
                    self._free_at = time.monotonic()
                    self._expected = max(1, len(live) + len(self._queue))
                    self._refill_s = min(MAX_REFILL_S, max(self.wait_s, 0.1 * seconds))
            for job, result in zip(live, results):
                job.loop.call_soon_threadsafe(_resolve, job, result)
            if self.on_batch is not None:
                try:
                    self.on_batch(BatchStats(size=len(live), seconds=seconds, dropped=len(batch) - len(live)))
                except Exception:  # metrics must never stop the worker
                    log.exception("on_batch failed")


def _resolve(job: _Job, result: Any) -> None:
    if job.future.done():
        return
    if isinstance(result, BaseException):
        job.future.set_exception(result)
    else:
        job.future.set_result(result)


async def _until_disconnect(receive: Callable[[], Any]) -> None:
    """Return once the client has disconnected (the request body has already been read)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return
