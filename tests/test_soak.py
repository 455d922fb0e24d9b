"""Memory soak: 10,000 small images through the engine in one process (skipped unless TEXTMASK_SOAK=1).

Run it with:  TEXTMASK_SOAK=1 .venv/bin/python -m pytest -q -s tests/test_soak.py

Half the chunks are stacked float batches ``[B, H, W, 3]``, half are lists of uint8 images of several sizes
(the per-size grouping path); prompts rotate through a small set (cache hits, as in a real pipeline). The
resident memory is printed every 2,000 images, and its growth from the end of the warm-up to the end is
asserted to stay small. docs/reliability.md records a measured run.
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
    prompt_sets = [["a cat", "the sky"], ["a dog"], ["a cat", "a tree", "grass"]]
    sizes = [(48, 64), (40, 40), (64, 36), (1, 1)]
    batch, warmup = 50, 200

    def chunk(index: int) -> torch.Tensor | list[torch.Tensor]:
        if index % 2 == 0:
            return torch.rand(batch, 48, 64, 3, generator=generator)
        return [
            torch.randint(0, 256, (*sizes[i % len(sizes)], 3), dtype=torch.uint8, generator=generator)
            for i in range(batch)
        ]

    def run(index: int) -> None:
        images = chunk(index)
        prompts = prompt_sets[index % len(prompt_sets)]
        masks = tiny_session.mask(images, prompts, negative_prompts="floor", threshold=0.5, blur=1.0)
        assert len(masks) == batch

    before_warmup = rss_mib()
    for index in range(warmup // batch):  # allocator pools and caches settle first
        run(index)
    gc.collect()
    start = rss_mib()
    done, samples = 0, []
    while done < IMAGES:
        run(done // batch)
        done += batch
        if done % 2000 == 0:
            gc.collect()
            samples.append((done, rss_mib()))
    gc.collect()
    end = rss_mib()
    growth = end - start
    trace = ", ".join(f"{count}: {value:.0f}" for count, value in samples)
    print(
        f"\nsoak: {done} images; RSS {before_warmup:.0f} MiB before warm-up, {start:.0f} MiB after, "
        f"{end:.0f} MiB at the end; growth {growth:+.1f} MiB ({growth * 1024 / done:+.2f} KiB/image)"
        f"\nsoak: RSS (MiB) by images done: {trace}"
    )
    assert growth < 64, f"memory grew by {growth:.1f} MiB over {done} images"
