"""``python tests/gated_textmask.py GATE FREE ARGS...``: the ``textmask`` command whose engine calls, after the first
FREE of them, wait while the file GATE exists.

Tests that signal a running process (SIGTERM to a server with requests in flight, SIGINT or SIGKILL to a folder
run) hold it inside the engine with this, so that the signal never races the work: on a fast machine the work would
otherwise be over before the signal came.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any


def main() -> None:
    gate, free = Path(sys.argv.pop(1)), int(sys.argv.pop(1))
    from textmask.engine import Segmenter

    calls = 0
    lock = threading.Lock()

    def held(method: Any) -> Any:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            with lock:
                calls += 1
                number = calls
            deadline = time.monotonic() + 300
            while number > free and gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            return method(self, *args, **kwargs)

        return call

    Segmenter.mask = held(Segmenter.mask)  # type: ignore[method-assign]  # folder runs
    Segmenter.mask_requests = held(Segmenter.mask_requests)  # type: ignore[method-assign]  # the server
    from textmask.cli import run

    run()


if __name__ == "__main__":
    main()
