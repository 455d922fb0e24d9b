"""Memory soak: 10,000 small images through the engine in one process (skipped unless TEXTMASK_SOAK=1).

Run it with:  TEXTMASK_SOAK=1 .venv/bin/python -m pytest -q -s tests/test_soak.py
"""

from __future__ import annotations

import gc
import os
import resource

import pytest
import torch

IMAGES = int(os.environ.get("TEXTMASK_SOAK_IMAGES", "10000"))


def rss_mib() -> float:
    """Current resident memory of this process in MiB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("TEXTMASK_SOAK") != "1", reason="soak test: set TEXTMASK_SOAK=1 to run")
def test_memory_stays_flat_over_many_images(tiny_session) -> None:
    generator = torch.Generator().manual_seed(0)
    prompts = ["a cat", "the sky"]
    batch, warmup = 50, 200
    for _ in range(warmup // batch):  # allocator pools and caches settle first
        tiny_session.mask(torch.rand(batch, 48, 64, 3, generator=generator), prompts, threshold=0.5)
    gc.collect()
    start = rss_mib()
    done = 0
    while done < IMAGES:
        images = torch.rand(batch, 48, 64, 3, generator=generator)
        masks = tiny_session.mask(images, prompts, negative_prompts="floor", threshold=0.5, blur=1.0)
        assert masks.shape == (batch, 48, 64)
        done += batch
    gc.collect()
    end = rss_mib()
    growth = end - start
    print(f"\nsoak: {done} images, RSS {start:.0f} MiB → {end:.0f} MiB, growth {growth:+.1f} MiB")
    assert growth < 64, f"memory grew by {growth:.1f} MiB over {done} images"
