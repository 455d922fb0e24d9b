"""textmask.postprocess.heatmap_overlay / heat_colours / overlay: the one preview colouring of every face."""

from __future__ import annotations

import pytest
import torch

from textmask.postprocess import HEAT_STOPS, heat_colours, heatmap_overlay, overlay


def test_colours_run_along_the_heat_ramp():
    colours = heat_colours(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(colours, torch.tensor([HEAT_STOPS[0], HEAT_STOPS[2], HEAT_STOPS[4]], dtype=torch.float32))
    between = heat_colours(torch.tensor([0.125]))  # halfway between the first two stops
    expected = (torch.tensor(HEAT_STOPS[0]) + torch.tensor(HEAT_STOPS[1])).float() / 2
    assert torch.allclose(between[0], expected)
    assert heat_colours(torch.rand(2, 4, 5)).shape == (2, 4, 5, 3)


def test_overlay_tints_where_the_mask_is_and_broadcasts():
    images = torch.rand(3, 8, 10, 3)
    masks = torch.rand(3, 8, 10)
    assert torch.allclose(heatmap_overlay(images, masks, 0.0), images)
    assert torch.allclose(heatmap_overlay(images, torch.zeros(3, 8, 10), 0.7), images)  # no mask: untouched
    full = heatmap_overlay(images, torch.ones(3, 8, 10), 1.0)
    assert torch.allclose(full, heat_colours(torch.ones(3, 8, 10)) / 255.0)
    weight = (0.5 * masks)[..., None]
    assert torch.allclose(
        heatmap_overlay(images, masks, 0.5), images * (1 - weight) + heat_colours(masks) / 255.0 * weight, atol=1e-6
    )
    one_mask = heatmap_overlay(images, masks[0], 0.5)  # [H, W] mask over a batch
    assert torch.allclose(one_mask[2], heatmap_overlay(images[2:], masks[:1], 0.5)[0])
    assert heatmap_overlay(images[:1], masks, 0.5).shape == (3, 8, 10, 3)  # one image, three masks


def test_the_cli_and_comfyui_overlays_are_the_same_picture():
    levels = torch.randint(0, 256, (2, 6, 7, 3), dtype=torch.uint8)
    masks = torch.rand(2, 6, 7)
    as_file = overlay(levels, masks, 0.6)  # what the CLI writes (uint8)
    as_preview = heatmap_overlay(levels.float() / 255.0, masks, 0.6)  # what the ComfyUI node shows (float)
    assert as_file.dtype == torch.uint8
    assert (as_file.float() - as_preview * 255.0).abs().max() <= 0.5 + 1e-3


def test_overlay_resizes_masks_and_reads_grey_and_rgba():
    images = torch.rand(2, 16, 20, 4)
    out = heatmap_overlay(images, torch.ones(2, 4, 5), 0.5)
    assert torch.allclose(out, heatmap_overlay(images[..., :3], torch.ones(2, 16, 20), 0.5))
    grey = heatmap_overlay(images[..., :1], torch.zeros(2, 16, 20), 0.0)
    assert torch.equal(grey, images[..., :1].expand(-1, -1, -1, 3))


def test_overlay_rejects_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        heatmap_overlay(torch.rand(1, 4, 4, 3), torch.rand(1, 4, 4), 1.5)
    with pytest.raises(ValueError, match="batch"):
        heatmap_overlay(torch.rand(2, 4, 4, 3), torch.rand(3, 4, 4), 0.5)
    with pytest.raises(ValueError, match="images"):
        heatmap_overlay(torch.rand(4, 4, 3), torch.rand(4, 4), 0.5)
