"""textmask.postprocess.heatmap_overlay / heatmap_colors: the preview colouring."""

from __future__ import annotations

import pytest
import torch

from textmask.postprocess import heatmap_colors, heatmap_overlay


def test_colours_run_from_blue_through_green_to_red():
    colours = heatmap_colors(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(colours, torch.tensor([[0.0, 0.0, 0.5], [0.5, 1.0, 0.5], [0.5, 0.0, 0.0]]))
    assert heatmap_colors(torch.rand(2, 4, 5)).shape == (2, 4, 5, 3)


def test_overlay_blends_and_broadcasts():
    images = torch.rand(3, 8, 10, 3)
    masks = torch.rand(3, 8, 10)
    assert torch.equal(heatmap_overlay(images, masks, 0.0), images)
    assert torch.allclose(heatmap_overlay(images, masks, 1.0), heatmap_colors(masks))
    half = heatmap_overlay(images, masks, 0.5)
    assert torch.allclose(half, 0.5 * images + 0.5 * heatmap_colors(masks))
    one_mask = heatmap_overlay(images, masks[0], 0.5)  # [H, W] mask over a batch
    assert torch.allclose(one_mask[2], 0.5 * images[2] + 0.5 * heatmap_colors(masks[0]))
    assert heatmap_overlay(images[:1], masks, 0.5).shape == (3, 8, 10, 3)  # one image, three masks


def test_overlay_resizes_masks_and_reads_grey_and_rgba():
    images = torch.rand(2, 16, 20, 4)
    out = heatmap_overlay(images, torch.ones(2, 4, 5), 0.5)
    assert torch.allclose(out, 0.5 * images[..., :3] + 0.5 * heatmap_colors(torch.ones(2, 16, 20)))
    grey = heatmap_overlay(images[..., :1], torch.zeros(2, 16, 20), 0.0)
    assert torch.equal(grey, images[..., :1].expand(-1, -1, -1, 3))


def test_overlay_rejects_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        heatmap_overlay(torch.rand(1, 4, 4, 3), torch.rand(1, 4, 4), 1.5)
    with pytest.raises(ValueError, match="batch"):
        heatmap_overlay(torch.rand(2, 4, 4, 3), torch.rand(3, 4, 4), 0.5)
    with pytest.raises(ValueError, match="images"):
        heatmap_overlay(torch.rand(4, 4, 3), torch.rand(4, 4), 0.5)
