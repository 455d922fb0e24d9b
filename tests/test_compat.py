"""The drop-ins for biegert's and WAS Node Suite's CLIPSeg nodes against those packs' algorithms
(tests/clipseg_packs_reference.py) on the same weights: same contracts, outputs within 1/255."""

from __future__ import annotations

import logging
import sys
from types import ModuleType

import pytest
import torch
from clipseg_packs_reference import biegert_combine, biegert_segment, was_batch_masks, was_masks
from comfy_stubs import make_stubs
from test_comfy_nodes import DEFAULT, hf_cache_layout, smooth_images

from textmask.comfy import dropins

TOLERANCE = 1 / 255 + 1e-6
pytest.importorskip("cv2")
pytest.importorskip("matplotlib")


@pytest.fixture
def comfy(tmp_path, monkeypatch, tiny_model_dir):
    """ComfyUI stand-ins with the tiny model as the default model in models/clipseg."""
    stubs = make_stubs(tmp_path / "comfyui")
    for name, module in stubs.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_cache_layout(stubs.models_dir / "clipseg", DEFAULT, tiny_model_dir)
    return stubs


def _apart(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_contracts_are_the_packs():
    clipseg = dropins.BiegertCLIPSeg
    assert clipseg.INPUT_TYPES() == {
        "required": {"image": ("IMAGE",), "text": ("STRING", {"multiline": False})},
        "optional": {
            "blur": ("FLOAT", {"min": 0, "max": 15, "step": 0.1, "default": 7}),
            "threshold": ("FLOAT", {"min": 0, "max": 1, "step": 0.05, "default": 0.4}),
            "dilation_factor": ("INT", {"min": 0, "max": 10, "step": 1, "default": 4}),
        },
    }
    assert (clipseg.RETURN_TYPES, clipseg.RETURN_NAMES) == (
        ("MASK", "IMAGE", "IMAGE"),
        ("Mask", "Heatmap Mask", "BW Mask"),
    )
    assert (clipseg.FUNCTION, clipseg.CATEGORY) == ("segment_image", "image")
    combine = dropins.BiegertCombineSegMasks
    assert list(combine.INPUT_TYPES()["required"]) == ["input_image", "mask_1", "mask_2"]
    assert combine.INPUT_TYPES()["optional"] == {"mask_3": ("MASK",)}
    assert combine.RETURN_NAMES == ("Combined Mask", "Heatmap Mask", "BW Mask") and combine.FUNCTION == "combine_masks"
    masking = dropins.WasCLIPSegMasking
    assert masking.INPUT_TYPES() == {
        "required": {"image": ("IMAGE",), "text": ("STRING", {"default": "", "multiline": False})},
        "optional": {"clipseg_model": ("CLIPSEG_MODEL",)},
    }
    assert (masking.RETURN_TYPES, masking.RETURN_NAMES) == (("MASK", "IMAGE"), ("MASK", "MASK_IMAGE"))
    assert (masking.FUNCTION, masking.CATEGORY) == ("CLIPSeg_image", "WAS Suite/Image/Masking")
    batch = dropins.WasCLIPSegBatchMasking.INPUT_TYPES()
    assert list(batch["required"]) == ["image_a", "image_b", "text_a", "text_b"]
    assert list(batch["optional"]) == [
        "image_c",
        "image_d",
        "image_e",
        "image_f",
        "text_c",
        "text_d",
        "text_e",
        "text_f",
    ]
    assert dropins.WasCLIPSegBatchMasking.RETURN_NAMES == ("IMAGES_BATCH", "MASKS_BATCH", "MASK_IMAGES_BATCH")
    loader = dropins.WasCLIPSegModelLoader
    assert loader.INPUT_TYPES() == {"required": {"model": ("STRING", {"default": DEFAULT, "multiline": False})}}
    assert (loader.RETURN_TYPES, loader.FUNCTION, loader.CATEGORY) == (
        ("CLIPSEG_MODEL",),
        "clipseg_model",
        "WAS Suite/Loaders",
    )
    for cls in (*dropins.BIEGERT.values(), *dropins.WAS.values()):
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)


@pytest.mark.parametrize(("blur", "threshold", "dilation"), [(7.0, 0.4, 4), (0.0, 0.0, 0), (2.5, 0.55, 1)])
def test_biegert_clipseg_matches_its_algorithm(comfy, reference, blur, threshold, dilation):
    image = smooth_images(1, 90, 130, seed=5)
    threshold = float(torch.sigmoid(torch.tensor(0.0)).item()) * 0 + threshold
    expected = biegert_segment(image, "a cat", blur, threshold, dilation, reference)
    given = dropins.BiegertCLIPSeg().segment_image(image, "a cat", blur, threshold, dilation)
    assert given[0].shape == (90, 130) and given[1].shape == given[2].shape == (1, 90, 130, 3)
    for ours, theirs in zip(given, expected):
        assert _apart(ours, theirs) <= TOLERANCE
    assert expected[0].std() > 0.05, "a flat mask would prove nothing"


def test_biegert_clipseg_with_nothing_above_the_threshold_is_black_like_the_pack(comfy, reference):
    image = smooth_images(1, 40, 50, seed=2)
    expected = biegert_segment(image, "a dog", 3.0, 1.0, 2, reference)  # 0/0: NaN, drawn black
    given = dropins.BiegertCLIPSeg().segment_image(image, "a dog", 3.0, 1.0, 2)
    assert float(expected[0].max()) == 0.0
    for ours, theirs in zip(given, expected):
        assert _apart(ours, theirs) <= TOLERANCE


def test_biegert_combine_matches_its_algorithm(comfy, reference):
    image = smooth_images(1, 60, 80, seed=9)
    first = dropins.BiegertCLIPSeg().segment_image(image, "a cat", 2.0, 0.3, 1)[0]
    second = dropins.BiegertCLIPSeg().segment_image(image, "sky", 2.0, 0.3, 1)[0]
    for masks in ([first, second], [first, second, first * 0.25]):
        expected = biegert_combine(image, masks)
        given = dropins.BiegertCombineSegMasks().combine_masks(image, *masks)
        assert torch.equal(given[0], expected[0]) and float(given[0].max()) > 1.0  # the plain sum, not clipped
        for ours, theirs in zip(given[1:], expected[1:]):
            assert _apart(ours, theirs) <= TOLERANCE


def test_was_masking_matches_its_algorithm_for_one_image_and_a_batch(comfy, reference):
    one = smooth_images(1, 70, 100, seed=4)
    expected = was_masks(one, "a cat", reference)
    given = dropins.WasCLIPSegMasking().CLIPSeg_image(one, "a cat")
    assert given[0].shape == (70, 100) and given[1].shape == (1, 70, 100, 3)
    assert _apart(given[0], expected[0]) <= TOLERANCE and _apart(given[1], expected[1]) <= TOLERANCE
    assert expected[0].std() > 0.05
    (pair,) = dropins.WasCLIPSegModelLoader().clipseg_model(DEFAULT)
    with_loader = dropins.WasCLIPSegMasking().CLIPSeg_image(one, "a cat", clipseg_model=pair)
    assert _apart(with_loader[0], expected[0]) <= TOLERANCE
    batch = smooth_images(3, 50, 60, seed=6)
    expected = was_masks(batch, "a cat", reference)
    given = dropins.WasCLIPSegMasking().CLIPSeg_image(batch, "a cat")
    assert given[0].shape == (3, 50, 60, 1) and given[1].shape == (3, 50, 60, 3)  # WAS's own batch shapes
    assert _apart(given[0], expected[0]) <= TOLERANCE and _apart(given[1], expected[1]) <= TOLERANCE


def test_was_batch_masking_matches_its_algorithm(comfy, reference):
    images = [smooth_images(1, 64, 48, seed=seed) for seed in (1, 2, 3)]
    texts = ["a cat", "a dog", "sky"]
    expected = was_batch_masks(images, texts, reference)
    given = dropins.WasCLIPSegBatchMasking().CLIPSeg_images(*images[:2], *texts[:2], image_c=images[2], text_c=texts[2])
    assert given[1].shape == (3, 1, 64, 48) and given[2].shape == (3, 64, 48, 3)
    for ours, theirs in zip(given, expected):
        assert _apart(ours, theirs) <= TOLERANCE
    with pytest.raises(Exception, match=r"text_a\.\.text_f: 2 non-empty texts for 3 images"):
        dropins.WasCLIPSegBatchMasking().CLIPSeg_images(*images[:2], *texts[:2], image_c=images[2])


def test_drop_ins_never_shadow_an_installed_pack(tmp_path, monkeypatch, caplog):
    custom = tmp_path / "custom_nodes"
    custom.mkdir()
    folder_paths = ModuleType("folder_paths")
    folder_paths.get_folder_paths = lambda name: [str(custom)]
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    monkeypatch.delitem(sys.modules, "nodes", raising=False)
    with caplog.at_level(logging.INFO, logger="textmask"):
        mappings, names = dropins.available()
    assert set(mappings) == {*dropins.BIEGERT, *dropins.WAS} and names["CLIPSeg"] == "CLIPSeg"
    assert "registered drop-ins for biegert's ComfyUI-CLIPSeg: CLIPSeg, CombineSegMasks" in caplog.text

    (custom / "clipseg.py").write_text('NODE_CLASS_MAPPINGS = {"CLIPSeg": CLIPSeg, "CombineSegMasks": CombineMasks}')
    (custom / "was-node-suite-comfyui").mkdir()
    (custom / "was-node-suite-comfyui" / "WAS_Node_Suite.py").write_text("")
    assert dropins.available()[0] == {}  # installed, not yet loaded: it loads its own nodes
    (custom / "was-node-suite-comfyui").rename(custom / "was-node-suite-comfyui.disabled")
    assert set(dropins.available()[0]) == set(dropins.WAS)
    (custom / "clipseg.py").unlink()
    nodes = ModuleType("nodes")
    nodes.NODE_CLASS_MAPPINGS = {"CLIPSeg": object}  # loaded before textmask
    monkeypatch.setitem(sys.modules, "nodes", nodes)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="textmask"):
        assert set(dropins.available()[0]) == set(dropins.WAS)
    assert "biegert's ComfyUI-CLIPSeg is installed; its CLIPSeg nodes stay its own" in caplog.text
