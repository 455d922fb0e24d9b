"""``python tests/gated_serve.py GATE serve ...``: ``textmask serve`` whose engine calls wait while the file GATE
exists. The SIGTERM test holds requests inside the engine with it, so that "three requests in flight" does not
depend on how fast this machine answers them."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any


def main() -> None:
    gate = Path(sys.argv.pop(1))
    from textmask.engine import Segmenter

    real = Segmenter.mask_requests

    def gated(self: Any, requests: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + 300
        while gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return real(self, requests, *args, **kwargs)

    Segmenter.mask_requests = gated  # type: ignore[method-assign]
    from textmask.cli import run

    run()


if __name__ == "__main__":
    main()
