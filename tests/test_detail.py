"""Detail mode: tiles that cover the image, blend without seams, are gated by the global pass, cost one vision
pass each, and change nothing when off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textmask.detail import blend_tiles, gate, tile_boxes, tile_grid
from textmask.engine import Segmenter
from textmask.postprocess import MaskOptions


def _images(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((count, 3, 5, 7), generator=generator)
    full = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic").clamp(0, 1)
    return full.permute(0, 2, 3, 1).contiguous()


@pytest.mark.parametrize(("height", "width"), [(512, 768), (1024, 1024), (1152, 768), (97, 61)])
@pytest.mark.parametrize("grid", [(2, 2), (3, 2), (1, 4), (4, 4)])
def test_tiles_cover_the_image_and_overlap(height: int, width: int, grid: tuple[int, int]) -> None:
    boxes = tile_boxes(height, width, grid)
    assert len(boxes) == grid[0] * grid[1]
    covered = np.zeros((height, width), dtype=int)
    for top, bottom, left, right in boxes:
        assert 0 <= top < bottom <= height and 0 <= left < right <= width
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1  # every pixel is in a tile
    assert boxes[-1][1] == height and boxes[-1][3] == width  # the last tiles end at the border
    if grid[1] > 1:  # neighbours overlap
        assert boxes[1][2] < boxes[0][3]


def test_auto_grid_follows_the_image_size() -> None:
    assert tile_grid(512, 768, "auto") == (2, 2)
    assert tile_grid(1024, 1024, "auto") == (2, 2)
    assert tile_grid(1152, 768, "auto") == (3, 2)
    assert tile_grid(2160, 3840, "auto") == (4, 4)
    assert tile_grid(300, 300, (3, 2)) == (3, 2)


def test_detail_settings_are_parsed_and_checked() -> None:
    assert MaskOptions().detail == "off"
    assert MaskOptions(detail=True).detail == "auto" and MaskOptions(detail="auto").detail == "auto"
    assert MaskOptions(detail=3).detail == (3, 3) and MaskOptions(detail="3x2").detail == (3, 2)
    assert MaskOptions(detail=(2, 4)).detail == (2, 4) and MaskOptions(detail="off").detail == "off"
    for bad in ("big", 9, (0, 3), "1x1", -2):
        with pytest.raises(ValueError, match="detail"):
            MaskOptions(detail=bad)
    with pytest.raises(ValueError, match="seed"):
        MaskOptions(detail="auto", normalize="seed")


def test_blending_agreeing_tiles_has_no_seam() -> None:
    boxes = tile_boxes(90, 130, (3, 4))
    maps = [torch.full((2, b - t, r - lf), 0.37) for t, b, lf, r in boxes]
    blended = blend_tiles(maps, boxes, (90, 130))
    assert blended.shape == (2, 90, 130)
    assert (blended - 0.37).abs().max() < 1e-6


def test_gate_keeps_tiles_only_where_the_global_pass_sees_the_object() -> None:
    tiled = torch.full((1, 88, 88), 0.9)
    global_map = torch.zeros(1, 88, 88)
    global_map[:, 40:48, 40:48] = 0.8
    out = gate(tiled, global_map)
    assert out[0, 44, 44] == pytest.approx(0.9)  # the object: kept in full
    assert out[0, 0, 0] == 0 and out[0, 87, 87] == 0  # where the whole image has nothing: nothing


def test_constant_logits_give_a_constant_map(tiny_session, monkeypatch) -> None:
    """A stubbed decoder that gives the same logits everywhere: the detail map is that constant, no seams."""

    def constant(self, features, embeddings):
        return torch.full((len(features), embeddings.shape[0], 352, 352), 0.8)

    monkeypatch.setattr(Segmenter, "decode", constant)
    maps = tiny_session.predict(_images(2, 200, 300), ["a cat", "a dog"], detail=(3, 3))
    assert maps.shape == (2, 2, 200, 300)
    expected = torch.sigmoid(torch.tensor(0.8))
    assert (maps - expected).abs().max() < 1e-6


def test_a_tile_cannot_invent_what_the_global_pass_lacks(tiny_session, monkeypatch) -> None:
    """Global logits say "nothing here"; the tiles say "everything": the result is nothing."""

    def by_batch(self, features, embeddings):
        value = 8.0 if len(features) > 1 else -8.0  # the tiles come in batches of 4, the global pass alone
        return torch.full((len(features), embeddings.shape[0], 352, 352), value)

    monkeypatch.setattr(Segmenter, "decode", by_batch)
    maps = tiny_session.predict(_images(1, 128, 128), "a cat", detail=(2, 2))
    assert maps.max() < 1e-3


def test_detail_costs_one_vision_pass_per_tile_batched(tiny_session, vision_passes) -> None:
    passes = vision_passes
    images = _images(3, 96, 128)
    masks = tiny_session.mask(images, "a cat", detail=(2, 3), batch_size=4)
    assert masks.shape == (3, 96, 128)
    assert sum(passes) == 3 * (1 + 6)  # the global pass and six tiles per image
    assert passes == [3, 3, 3, 3, 3, 3, 3]  # in batches of the chunk's size (memory bounded by batch_size)


def test_detail_changes_the_map_and_off_changes_nothing(tiny_session) -> None:
    images = _images(2, 120, 160, seed=4)
    plain = tiny_session.mask(images, ["a cat", "the sky"], threshold=0.5)
    assert torch.equal(tiny_session.mask(images, ["a cat", "the sky"], threshold=0.5, detail="off"), plain)
    detailed = tiny_session.predict(images, "a cat", detail="auto")
    assert detailed.shape == (2, 120, 160) and 0 <= float(detailed.min()) and float(detailed.max()) <= 1
    assert not torch.equal(detailed, tiny_session.predict(images, "a cat"))
    chunked = torch.stack([tiny_session.predict(images[i], "a cat", detail="auto") for i in range(2)])
    assert torch.equal(chunked, detailed)  # batch-invariant, like the plain path
    minmax = tiny_session.predict(images, "a cat", detail="auto", normalize="minmax")
    assert float(minmax.amin()) == 0 and float(minmax.amax()) == 1
