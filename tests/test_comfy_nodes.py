"""The ComfyUI node pack without ComfyUI: contracts, seed equivalence, loaders, model folders, layouts, progress.

ComfyUI's modules are replaced by the stubs in tests/comfy_stubs.py where a test needs them; the real
ComfyUI is exercised by tests/test_comfy_integration.py.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from comfy_stubs import InterruptProcessingException, make_stubs
from seed_reference import seed_reference

from textmask.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, runtime
from textmask.comfy.nodes import (
    SaltCLIPSegLoader,
    SaltCLIPSegMasking,
    TextmaskCLIPSegExampleMasking,
    TextmaskCLIPSegLoader,
    TextmaskCLIPSegMasking,
)
from textmask.errors import InputError, ModelLoadError, ModelNotFoundError, PromptError
from textmask.postprocess import heatmap_overlay

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1 / 255 + 1e-6
DEFAULT = "CIDAS/clipseg-rd64-refined"


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def comfy(tmp_path, monkeypatch):
    """ComfyUI stand-ins in sys.modules (removed again after the test), models_dir in tmp_path."""
    stubs = make_stubs(tmp_path / "comfyui")
    for name, module in stubs.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    import huggingface_hub.constants

    # Nothing from the machine's own Hugging Face cache may leak in.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return stubs


def hf_cache_layout(root: Path, repo: str, model_dir: Path, revision: str = "0123456789abcdef") -> Path:
    """Place ``model_dir`` in a Hugging Face cache under ``root`` as ``repo`` (refs/main + snapshots/<hash>)."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    shutil.copytree(model_dir, snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    (repo_dir / "blobs").mkdir()
    return snapshot


@pytest.fixture(scope="module")
def soft_pair(tiny_model_dir):
    """A hand-made (CLIPSegProcessor, CLIPSegForImageSegmentation) pair, loaded by transformers itself.

    The random models are calibrated so their logits spread like a trained model's (std about 3), so the seed
    normalization yields many grey levels instead of a near-binary map."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    processor = CLIPSegProcessor.from_pretrained(str(tiny_model_dir))
    model = CLIPSegForImageSegmentation.from_pretrained(str(tiny_model_dir)).eval()
    return processor, model


def smooth_images(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``[count, height, width, 3]`` float32 in [0, 1]: smooth random pictures (a ComfyUI IMAGE)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((count, 3, 6, 8), generator=generator)
    full = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return full.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def assert_matches_seed(images, text, clipseg_model, node_model="same"):
    """Our node vs the reference loop: same shapes, every value within 1/255, and a non-trivial mask."""
    expected_masks, expected_images = seed_reference(images, text, clipseg_model)
    given = clipseg_model if node_model == "same" else node_model
    masks, mask_images = SaltCLIPSegMasking().CLIPSeg_image(images, text, clipseg_model=given)
    assert masks.shape == expected_masks.shape and masks.dtype == torch.float32
    assert mask_images.shape == expected_images.shape
    assert (masks - expected_masks).abs().max().item() <= TOLERANCE
    assert (mask_images - expected_images).abs().max().item() <= TOLERANCE
    assert masks.std().item() > 0.01, "the compared masks are flat: the test would prove nothing"
    return masks


# ------------------------------------------------------------------------------------ contracts
def test_mappings_list_every_node_with_a_display_name():
    from textmask.comfy import OWN_NODES

    assert set(NODE_CLASS_MAPPINGS) == {*OWN_NODES, "CLIPSeg", "CombineSegMasks", "CLIPSeg Masking",
                                        "CLIPSeg Batch Masking", "CLIPSeg Model Loader"}  # fmt: skip
    assert set(OWN_NODES) == {
        "SaltCLIPSegMasking",
        "SaltCLIPSegLoader",
        "TextmaskCLIPSegLoader",
        "TextmaskCLIPSegMasking",
        "TextmaskCLIPSegExampleMasking",
        "TextmaskRefineMask",
        "TextmaskMaskToInstances",
        "TextmaskTrackMasks",
    }
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert callable(getattr(cls(), cls.FUNCTION)), name
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)


def test_salt_masking_contract_is_the_seed_exactly():
    assert SaltCLIPSegMasking.INPUT_TYPES() == {
        "required": {
            "images": ("IMAGE",),
            "text": ("STRING", {"default": "", "multiline": False}),
        },
        "optional": {
            "clipseg_model": ("CLIPSEG_MODEL",),
        },
    }
    assert SaltCLIPSegMasking.RETURN_TYPES == ("MASK", "IMAGE")
    assert SaltCLIPSegMasking.RETURN_NAMES == ("masks", "mask_images")
    assert SaltCLIPSegMasking.FUNCTION == "CLIPSeg_image"
    assert SaltCLIPSegMasking.CATEGORY == "SALT/Masking"
    assert not getattr(SaltCLIPSegMasking, "OUTPUT_NODE", False)
    assert NODE_DISPLAY_NAME_MAPPINGS["SaltCLIPSegMasking"] == "Batch Image CLIPSeg Masking"
    assert NODE_CLASS_MAPPINGS["SaltCLIPSegMasking"] is SaltCLIPSegMasking


def test_salt_loader_contract_is_saltai_exactly():
    assert SaltCLIPSegLoader.INPUT_TYPES() == {
        "required": {
            "model": ("STRING", {"default": "CIDAS/clipseg-rd64-refined", "multiline": False}),
        },
    }
    assert SaltCLIPSegLoader.RETURN_TYPES == ("CLIPSEG_MODEL",)
    assert SaltCLIPSegLoader.RETURN_NAMES == ("clipseg_model",)
    assert SaltCLIPSegLoader.FUNCTION == "clipseg_model"
    assert SaltCLIPSegLoader.CATEGORY == "SALT/Loaders"
    assert not getattr(SaltCLIPSegLoader, "OUTPUT_NODE", False)
    assert NODE_DISPLAY_NAME_MAPPINGS["SaltCLIPSegLoader"] == "CLIPSeg Model Loader (Salt)"


def test_our_nodes_declare_the_promised_inputs_and_outputs():
    loader = TextmaskCLIPSegLoader.INPUT_TYPES()["required"]
    assert loader["model"][0][0] == DEFAULT  # outside ComfyUI: just the hub id
    assert loader["device"][0] == ["auto", "cpu"]
    assert loader["dtype"][0] == ["auto", "float32", "float16", "bfloat16", "int8"]  # int8: OpenVINO
    assert TextmaskCLIPSegLoader.INPUT_TYPES()["optional"]["backend"][0] == ["auto", "torch", "openvino"]
    assert TextmaskCLIPSegLoader.RETURN_TYPES == ("CLIPSEG_MODEL",)
    masking = TextmaskCLIPSegMasking.INPUT_TYPES()
    assert set(masking["required"]) == {
        "images", "prompts", "negative_prompts", "combine", "normalize", "threshold", "blur", "grow", "invert",
        "batch_size",
    }  # fmt: skip
    assert masking["required"]["prompts"][1]["multiline"] is True
    assert masking["optional"]["clipseg_model"] == ("CLIPSEG_MODEL",)
    # newer inputs come after the older optional widgets, so saved workflows keep their widget values
    assert list(masking["optional"]) == [
        "clipseg_model", "overlay_alpha", "example", "example_mask", "invert_example_mask", "example_mode",
        "example_weight", "detail", "temporal_smoothing", "refine", "stabilize",
    ]  # fmt: skip
    assert masking["optional"]["example"][0] == "IMAGE" and masking["optional"]["example_mask"][0] == "MASK"
    assert masking["optional"]["example_mode"][0] == ["separate", "blend"]
    assert masking["optional"]["invert_example_mask"][1]["default"] is False
    assert TextmaskCLIPSegMasking.RETURN_TYPES == ("MASK", "IMAGE", "IMAGE")
    assert TextmaskCLIPSegMasking.RETURN_NAMES == ("mask", "mask_image", "heatmap")


def test_example_node_declares_the_promised_inputs_and_outputs():
    declared = TextmaskCLIPSegExampleMasking.INPUT_TYPES()
    assert list(declared["required"]) == [
        "images", "example", "normalize", "threshold", "blur", "grow", "invert", "batch_size",
    ]  # fmt: skip
    assert declared["required"]["images"] == ("IMAGE",) and declared["required"]["example"][0] == "IMAGE"
    assert list(declared["optional"]) == [
        "example_mask", "invert_example_mask", "example_background", "example_blur", "example_crop", "clipseg_model",
        "overlay_alpha",
    ]  # fmt: skip
    assert declared["optional"]["example_mask"][0] == "MASK"
    assert declared["optional"]["invert_example_mask"][0] == "BOOLEAN"
    assert declared["optional"]["example_background"][1]["default"] == 0.1
    assert declared["optional"]["example_blur"][1]["default"] == 3.0
    assert declared["optional"]["example_crop"][1]["default"] is True
    # the shared widgets are the text node's, so both nodes behave and read alike
    text_node = TextmaskCLIPSegMasking.INPUT_TYPES()
    for name in ("normalize", "threshold", "blur", "grow", "invert", "batch_size"):
        assert declared["required"][name] == text_node["required"][name], name
    assert TextmaskCLIPSegExampleMasking.RETURN_TYPES == ("MASK", "IMAGE", "IMAGE")
    assert TextmaskCLIPSegExampleMasking.RETURN_NAMES == ("mask", "mask_image", "heatmap")
    assert TextmaskCLIPSegExampleMasking.CATEGORY == "textmask/masking"
    assert NODE_DISPLAY_NAME_MAPPINGS["TextmaskCLIPSegExampleMasking"] == "CLIPSeg Masking by Example (textmask)"


def test_pack_import_is_cheap_and_works_like_comfyui_loads_it():
    """ComfyUI execs the root __init__.py from its file; that must not import torch or transformers."""
    code = (
        "import importlib.util, sys\n"
        f"path = {str(ROOT / '__init__.py')!r}\n"
        "spec = importlib.util.spec_from_file_location('custom_nodes_x_textmask', path)\n"
        "module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert sorted(module.NODE_CLASS_MAPPINGS) == ['CLIPSeg', 'CLIPSeg Batch Masking', 'CLIPSeg Masking', "
        "'CLIPSeg Model Loader', 'CombineSegMasks', 'SaltCLIPSegLoader', 'SaltCLIPSegMasking', "
        "'TextmaskCLIPSegExampleMasking', 'TextmaskCLIPSegLoader', 'TextmaskCLIPSegMasking', "
        "'TextmaskMaskToInstances', 'TextmaskRefineMask', 'TextmaskTrackMasks'], "
        "module.NODE_CLASS_MAPPINGS\n"
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'PIL') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_requirements_pin_out_the_broken_transformers():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line]
    assert "transformers>=4.45,!=4.46.0" in requirements
    assert not [line for line in requirements if line.lower().startswith("torch")]  # ComfyUI's torch stays
    assert "!=4.46.0" in (ROOT / "pyproject.toml").read_text()


# ----------------------------------------------------------------------------- seed equivalence
@pytest.mark.parametrize(
    ("count", "height", "width"),
    [(3, 120, 160), (1, 352, 352), (2, 37, 500), (2, 500, 90)],
)
def test_salt_masking_equals_the_seed_for_batches_of_each_size(soft_pair, count, height, width):
    images = smooth_images(count, height, width, seed=height)
    masks = assert_matches_seed(images, "a red car", soft_pair)
    assert masks.shape == (count, height, width)


def test_salt_masking_equals_the_seed_for_images_of_different_sizes(soft_pair):
    """A list of differently sized images: every output at the first image's size, as the seed does."""
    images = [smooth_images(1, 90, 140, 1)[0], smooth_images(1, 200, 120, 2)[0], smooth_images(1, 352, 352, 3)[0]]
    masks = assert_matches_seed(images, "a dog", soft_pair)
    assert masks.shape == (3, 90, 140)


def test_salt_masking_equals_the_seed_with_empty_text(soft_pair):
    """The seed's default text is "": still the seed's output (textmask warns that it means little)."""
    with pytest.warns(UserWarning, match="empty prompt"):
        assert_matches_seed(smooth_images(2, 50, 70, seed=12), "", soft_pair)


def test_salt_masking_equals_the_seed_with_saturated_logits(soft_pair):
    """A model whose logits are in the hundreds (every sigmoid saturated): the seed's normalization still matches."""
    import copy

    processor, model = soft_pair
    loud = copy.deepcopy(model)
    last = loud.decoder.transposed_convolution[-1]
    with torch.no_grad():
        last.weight.mul_(150.0)
        last.bias.mul_(150.0)
    images = smooth_images(2, 64, 96, seed=5)
    expected, _ = seed_reference(images, "a cat", (processor, loud))
    masks, _ = SaltCLIPSegMasking().CLIPSeg_image(images, "a cat", clipseg_model=(processor, loud))
    assert (masks - expected).abs().max().item() <= TOLERANCE


def test_a_foreign_pair_is_never_changed(soft_pair, comfy):
    _processor, model = soft_pair
    before = {k: v.clone() for k, v in model.state_dict().items()}
    SaltCLIPSegMasking().CLIPSeg_image(smooth_images(1, 50, 60), "cat", clipseg_model=soft_pair)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert next(model.parameters()).device.type == "cpu" and next(model.parameters()).dtype == torch.float32
    assert comfy.load_calls == []  # a model another pack handed over is not put under ComfyUI's management


def test_bad_clipseg_model_gets_a_clear_error():
    with pytest.raises(ModelLoadError, match="clipseg_model"):
        SaltCLIPSegMasking().CLIPSeg_image(smooth_images(1, 20, 20), "cat", clipseg_model="not a model")
    with pytest.raises(ModelLoadError, match="CLIPSegProcessor"):
        SaltCLIPSegMasking().CLIPSeg_image(smooth_images(1, 20, 20), "cat", clipseg_model=(1, 2))


def test_broken_transformers_version_is_refused(monkeypatch, soft_pair):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.46.0")
    with pytest.raises(ModelLoadError, match=r"4\.46\.0"):
        SaltCLIPSegMasking().CLIPSeg_image(smooth_images(1, 20, 20), "cat", clipseg_model=soft_pair)


# -------------------------------------------------------------------------------------- loaders
def test_salt_loader_tuple_drives_the_seed_and_our_node_alike(tiny_model_dir, comfy):
    (pair,) = SaltCLIPSegLoader().clipseg_model(str(tiny_model_dir))
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    assert isinstance(pair, tuple) and len(pair) == 2
    processor, model = pair
    assert isinstance(processor, CLIPSegProcessor) and isinstance(model, CLIPSegForImageSegmentation)
    assert next(model.parameters()).device.type == "cpu" and next(model.parameters()).dtype == torch.float32
    images = smooth_images(2, 80, 100, seed=7)
    assert_matches_seed(images, "a cat", pair)  # the pair in the seed's own loop, and in ours
    (again,) = SaltCLIPSegLoader().clipseg_model(str(tiny_model_dir))
    assert again[1] is model and again[0] is processor  # loaded once per process


def test_our_loader_tuple_works_everywhere(tiny_model_dir, comfy):
    (pair,) = TextmaskCLIPSegLoader().load(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    _processor, model = pair
    assert next(model.parameters()).dtype == torch.float32  # plain CPU float32 for other packs
    images = smooth_images(2, 64, 64, seed=3)
    expected, _ = seed_reference(images, "a cat", pair)  # as SaltAI/WAS would use it
    masks, _ = SaltCLIPSegMasking().CLIPSeg_image(images, "a cat", clipseg_model=pair)
    # our node honours the bfloat16 choice, so only closeness is expected here
    assert masks.shape == expected.shape
    assert (masks - expected).abs().mean().item() < 0.05
    assert next(model.parameters()).dtype == torch.float32  # the pair was not converted in place
    (fp32,) = TextmaskCLIPSegLoader().load(str(tiny_model_dir), device="auto", dtype="float32")
    assert_matches_seed(images, "a cat", fp32)


def test_float16_on_cpu_falls_back_to_float32(tiny_model_dir, comfy):
    (pair,) = TextmaskCLIPSegLoader().load(str(tiny_model_dir), device="auto", dtype="float16")
    assert_matches_seed(smooth_images(1, 40, 40), "cat", pair)


def test_models_in_an_hf_cache_layout_are_found_offline(tiny_model_dir, comfy, reference):
    clipseg = comfy.models_dir / "clipseg"
    hf_cache_layout(clipseg, DEFAULT, tiny_model_dir)
    hf_cache_layout(clipseg, "someone/other-clipseg", tiny_model_dir)
    shutil.copytree(tiny_model_dir, clipseg / "my-clipseg")
    shutil.copytree(tiny_model_dir, clipseg / "nested" / "deeper")

    choices = TextmaskCLIPSegLoader.INPUT_TYPES()["required"]["model"][0]
    assert choices == [DEFAULT, "my-clipseg", "nested/deeper", "someone/other-clipseg"]

    images = smooth_images(2, 70, 90, seed=11)
    expected, _ = seed_reference(images, "a cat", reference)
    masks, _ = SaltCLIPSegMasking().CLIPSeg_image(images, "a cat")  # no clipseg_model: the default model
    assert (masks - expected).abs().max().item() <= TOLERANCE
    assert len(comfy.load_calls) == 1 and comfy.load_calls[0]["force_full_load"] is True

    (salt,) = SaltCLIPSegLoader().clipseg_model(DEFAULT)
    assert "models--CIDAS--clipseg-rd64-refined" in str(salt.folder)
    for choice in ("my-clipseg", "someone/other-clipseg"):  # a plain folder, a hub-cache layout
        (pair,) = TextmaskCLIPSegLoader().load(choice, device="auto", dtype="auto")
        masks, _ = SaltCLIPSegMasking().CLIPSeg_image(images, "a cat", clipseg_model=pair)
        assert (masks - expected).abs().max().item() <= TOLERANCE, choice


def test_missing_model_says_where_it_looked_and_what_to_do(comfy):
    with pytest.raises(ModelNotFoundError) as caught:
        SaltCLIPSegMasking().CLIPSeg_image(smooth_images(1, 20, 20), "cat")
    message = str(caught.value)
    assert str(comfy.models_dir / "clipseg") in message
    assert "huggingface-cli download CIDAS/clipseg-rd64-refined" in message
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        SaltCLIPSegLoader().clipseg_model("not a model")


def test_extra_model_paths_entry_is_kept_and_searched(tiny_model_dir, comfy, tmp_path):
    extra = tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, extra / "shared-clipseg")
    fp = comfy.modules["folder_paths"]
    fp.folder_names_and_paths["clipseg"] = ([str(extra)], set())  # as extra_model_paths.yaml would
    choices = TextmaskCLIPSegLoader.INPUT_TYPES()["required"]["model"][0]
    assert choices == [DEFAULT, "shared-clipseg"]
    assert fp.get_folder_paths("clipseg") == [str(comfy.models_dir / "clipseg"), str(extra)]
    (pair,) = TextmaskCLIPSegLoader().load("shared-clipseg")
    assert pair.folder == extra / "shared-clipseg"


# -------------------------------------------------------------------- ComfyUI model management
def test_owned_model_is_wrapped_for_comfy_model_management(tiny_model_dir, comfy):
    (pair,) = TextmaskCLIPSegLoader().load(str(tiny_model_dir), device="auto", dtype="auto")
    images = smooth_images(1, 30, 40)
    first, _ = SaltCLIPSegMasking().CLIPSeg_image(images, "cat", clipseg_model=pair)
    assert len(comfy.load_calls) == 1
    (patcher,) = comfy.load_calls[0]["models"]
    from textmask.model import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="float32").model  # what the loader loaded
    assert isinstance(patcher.model, torch.nn.Module) and patcher.model.hf is loaded  # CPU: same object, no copy
    assert patcher.model.device == torch.device("cpu")
    comfy.unload_all()  # ComfyUI frees memory (POST /free)
    second, _ = SaltCLIPSegMasking().CLIPSeg_image(images, "cat", clipseg_model=pair)
    assert len(comfy.load_calls) == 2 and comfy.load_calls[1]["models"][0] is patcher  # same patcher, reloaded
    assert torch.equal(first, second)


def test_our_nodes_never_build_the_pairs_transformers_objects(tiny_model_dir, tmp_path):
    """The loader's pair is built lazily for other packs' nodes; textmask's own nodes run without it."""
    import shutil

    folder = tmp_path / "fresh-clipseg"
    shutil.copytree(tiny_model_dir, folder)
    (pair,) = SaltCLIPSegLoader().clipseg_model(str(folder))
    masks, _ = SaltCLIPSegMasking().CLIPSeg_image(smooth_images(1, 30, 40), "cat", clipseg_model=pair)
    TextmaskCLIPSegMasking().mask(smooth_images(1, 30, 40), "cat", clipseg_model=pair)
    assert masks.shape == (1, 30, 40)
    assert pair[0]._value is None and pair[1]._value is None  # neither the processor nor the model was built
    from transformers import CLIPSegForImageSegmentation

    assert isinstance(pair[1], CLIPSegForImageSegmentation)  # another pack's first use builds it
    assert pair[1]._value is not None and next(pair[1].parameters()).dtype == torch.float32


def test_a_model_management_failure_only_costs_the_management(tiny_model_dir, comfy, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("changed API")

    monkeypatch.setattr(comfy.modules["comfy.model_management"], "load_models_gpu", broken)
    (pair,) = TextmaskCLIPSegLoader().load(str(tiny_model_dir), device="auto", dtype="float32")
    masks, _ = SaltCLIPSegMasking().CLIPSeg_image(smooth_images(1, 30, 40), "cat", clipseg_model=pair)
    assert masks.shape == (1, 30, 40)
    assert "model management failed" in caplog.text


def test_progress_advances_per_chunk_and_cancel_stops(soft_pair, comfy):
    node = TextmaskCLIPSegMasking()
    images = smooth_images(3, 24, 24)
    node.mask(images, "cat", batch_size=1, clipseg_model=soft_pair)
    assert comfy.progress == [(1, 3), (2, 3), (3, 3)]
    comfy.progress.clear()
    comfy.modules["comfy.model_management"].interrupt_current_processing(True)
    with pytest.raises(InterruptProcessingException):
        node.mask(images, "cat", batch_size=1, clipseg_model=soft_pair)
    assert comfy.progress == [(1, 3)]  # stopped after the first chunk


# ---------------------------------------------------------------------------------- layouts
def test_every_image_layout_gives_the_same_mask(soft_pair):
    node = SaltCLIPSegMasking()
    rgb = smooth_images(1, 48, 64, seed=9)
    (expected, _) = node.CLIPSeg_image(rgb, "cat", clipseg_model=soft_pair)
    assert expected.shape == (1, 48, 64)
    rgba = torch.cat([rgb, torch.rand(1, 48, 64, 1)], dim=-1)
    for variant in (rgb[0], rgba, [rgb[0]], [rgb]):
        masks, mask_images = node.CLIPSeg_image(variant, "cat", clipseg_model=soft_pair)
        assert torch.equal(masks, expected)
        assert mask_images.shape == (1, 48, 64, 3)
    grey = rgb[..., :1]
    expected_grey, _ = node.CLIPSeg_image(grey.expand(-1, -1, -1, 3), "cat", clipseg_model=soft_pair)
    for variant in (grey, grey[0], grey[..., 0], grey[0, ..., 0]):  # [B,H,W,1], [H,W,1], MASK [B,H,W], [H,W]
        masks, _ = node.CLIPSeg_image(variant, "cat", clipseg_model=soft_pair)
        assert torch.equal(masks, expected_grey), tuple(variant.shape)


def test_bad_images_get_a_clear_error(soft_pair):
    from textmask.errors import InputError

    with pytest.raises(InputError, match="images"):
        SaltCLIPSegMasking().CLIPSeg_image(torch.zeros(0, 8, 8, 3), "cat", clipseg_model=soft_pair)
    with pytest.raises(InputError, match="images"):
        SaltCLIPSegMasking().CLIPSeg_image(torch.zeros(1, 2, 8, 8, 3), "cat", clipseg_model=soft_pair)
    with pytest.raises(InputError, match=r"0, 1"):
        SaltCLIPSegMasking().CLIPSeg_image(torch.full((1, 8, 8, 3), 200.0), "cat", clipseg_model=soft_pair)


# ---------------------------------------------------------------------------- advanced masking
def test_advanced_node_is_the_engine_plus_previews(soft_pair):
    from textmask.engine import session_from_hf

    images = smooth_images(2, 60, 80, seed=4)
    node = TextmaskCLIPSegMasking()
    mask, mask_image, heatmap = node.mask(
        images, "a cat\n\n  a dog  \n", "grass", combine="union", normalize="minmax", threshold=0.0, blur=1.5,
        grow=2, invert=False, batch_size=1, clipseg_model=soft_pair, overlay_alpha=0.4,
    )  # fmt: skip
    session = session_from_hf(*soft_pair)
    expected = session.mask(
        images, ["a cat", "a dog"], negative_prompts=["grass"], normalize="minmax", blur=1.5, grow=2, batch_size=1
    )
    assert torch.allclose(mask, expected, atol=1e-5)  # prompt embeddings may come from another padded batch
    assert mask.shape == (2, 60, 80) and mask_image.shape == heatmap.shape == (2, 60, 80, 3)
    assert torch.equal(mask_image[..., 1], mask)
    assert torch.allclose(heatmap, heatmap_overlay(images, mask, 0.4))
    assert not torch.allclose(heatmap, images, atol=0.05)


def test_advanced_node_detail_and_temporal_smoothing_are_the_engine(soft_pair):
    from textmask.engine import session_from_hf

    frames = smooth_images(5, 48, 64, seed=6)
    node = TextmaskCLIPSegMasking()
    common = dict(negative_prompts="", combine="union", normalize="none", blur=0.0, grow=0, invert=False)
    session = session_from_hf(*soft_pair)
    detailed, _, _ = node.mask(frames, "a cat", threshold=0.0, batch_size=2, clipseg_model=soft_pair, detail="2x2",
                               **common)  # fmt: skip
    assert torch.equal(detailed, session.mask(frames, "a cat", detail=(2, 2), batch_size=2))
    smoothed, _, _ = node.mask(frames, "a cat", threshold=0.5, batch_size=2, clipseg_model=soft_pair,
                               temporal_smoothing=0.6, **common)  # fmt: skip
    stream = session.stream([["a cat"]], smoothing=0.6, threshold=0.5, batch_size=2)
    assert torch.equal(smoothed, stream(frames)[:, 0])
    plain, _, _ = node.mask(frames, "a cat", threshold=0.5, batch_size=2, clipseg_model=soft_pair, **common)
    assert not torch.equal(smoothed, plain)
    pytest.importorskip("cv2")
    steady, _, _ = node.mask(frames, "a cat", threshold=0.5, batch_size=2, clipseg_model=soft_pair, stabilize=0.7,
                             **common)  # fmt: skip
    stream = session.stream([["a cat"]], stabilize=0.7, threshold=0.5, batch_size=2)
    assert torch.equal(steady, stream(frames)[:, 0])
    assert TextmaskCLIPSegMasking.INPUT_TYPES()["optional"]["detail"][1]["default"] == "off"


def test_advanced_node_threshold_invert_and_intersection(soft_pair):
    images = smooth_images(1, 40, 40, seed=8)
    node = TextmaskCLIPSegMasking()
    common = dict(negative_prompts="", blur=0.0, grow=0, batch_size=8, clipseg_model=soft_pair)
    soft, _, _ = node.mask(images, "cat\ndog", combine="intersection", normalize="none", threshold=0.0, **common)
    binary, _, _ = node.mask(images, "cat\ndog", combine="intersection", normalize="none", threshold=0.5, **common)
    inverted, _, _ = node.mask(
        images, "cat\ndog", combine="intersection", normalize="none", threshold=0.5, invert=True, **common
    )
    assert set(binary.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(binary, (soft > 0.5).float())
    assert torch.equal(inverted, 1.0 - binary)
    union, _, _ = node.mask(images, "cat\ndog", combine="union", normalize="none", threshold=0.0, **common)
    assert bool((union >= soft).all())


def test_advanced_node_needs_a_prompt(soft_pair):
    with pytest.raises(PromptError, match="prompts"):
        TextmaskCLIPSegMasking().mask(smooth_images(1, 16, 16), " \n ", clipseg_model=soft_pair)


def test_runtime_conversions():
    assert runtime.as_masks(torch.zeros(5, 7)).shape == (1, 5, 7)
    assert runtime.as_masks(torch.zeros(2, 1, 5, 7)).shape == (2, 5, 7)
    assert runtime.mask_to_image(torch.rand(2, 5, 7)).shape == (2, 5, 7, 3)
    assert runtime.prompt_lines("a\n\n b \n", "p", required=True) == ["a", "b"]
    pair = runtime.ClipsegModel(("processor", "model"), folder=Path("x"), device="cpu", dtype="float32")
    processor, model = pair  # other packs unpack it
    assert (processor, model) == ("processor", "model") and pair[1] == "model" and isinstance(pair, tuple)
    clone = copy.deepcopy(pair)
    assert clone == pair and clone.folder == Path("x") and clone.dtype == "float32"


# ------------------------------------------------------------------------------ visual prompts
def cutout(height: int, width: int, seed: int = 21) -> tuple[torch.Tensor, torch.Tensor]:
    """An example IMAGE ``[1, H, W, 3]`` and its object's shape ``[H, W]`` (1 = object), an off-centre blob."""
    image = smooth_images(1, height, width, seed=seed)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    shape = (((ys - height * 0.4) / (height * 0.25)) ** 2 + ((xs - width * 0.6) / (width * 0.2)) ** 2 <= 1).float()
    return image, shape


def test_example_node_is_the_engine_with_an_image_prompt(soft_pair):
    from textmask.engine import session_from_hf
    from textmask.prompts import ImagePrompt

    images = smooth_images(3, 50, 70, seed=14)
    example, shape = cutout(60, 80)
    load_image_mask = (1.0 - shape)[None]  # Load Image's MASK: 1 - alpha, the cut-out's outside is 1
    node = TextmaskCLIPSegExampleMasking()
    mask, mask_image, heatmap = node.mask(
        images, example, normalize="minmax", threshold=0.0, blur=1.0, grow=1, invert=False, batch_size=2,
        example_mask=load_image_mask, invert_example_mask=True, example_background=0.2, example_blur=2.0,
        example_crop=True, clipseg_model=soft_pair, overlay_alpha=0.3,
    )  # fmt: skip
    session = session_from_hf(*soft_pair)
    prompt = ImagePrompt(example[0], mask=shape, background=0.2, blur=2.0, crop=True)
    expected = session.mask(images, prompt, normalize="minmax", blur=1.0, grow=1, batch_size=2)
    assert mask.shape == (3, 50, 70) and mask_image.shape == heatmap.shape == (3, 50, 70, 3)
    assert torch.allclose(mask, expected, atol=1e-5)
    assert mask.std().item() > 0.01, "a flat mask would prove nothing"
    assert torch.equal(mask_image[..., 0], mask)
    assert torch.allclose(heatmap, heatmap_overlay(images, mask, 0.3))

    # The mask and its settings matter: unmasked, or the Load Image mask used as is, gives other masks.
    plain, _, _ = node.mask(images, example, clipseg_model=soft_pair)
    assert torch.allclose(plain, session.mask(images, ImagePrompt(example[0]), normalize="minmax"), atol=1e-5)
    assert (plain - mask).abs().max().item() > 0.01
    outside, _, _ = node.mask(images, example, example_mask=load_image_mask, clipseg_model=soft_pair)
    assert (outside - mask).abs().max().item() > 0.01


def test_example_node_averages_a_batch_of_examples_and_thresholds(soft_pair):
    from textmask.engine import session_from_hf
    from textmask.prompts import Blend, ImagePrompt

    images = smooth_images(2, 40, 40, seed=15)
    examples = smooth_images(2, 32, 48, seed=16)
    node = TextmaskCLIPSegExampleMasking()
    mask, _, _ = node.mask(images, examples, normalize="none", threshold=0.5, clipseg_model=soft_pair)
    session = session_from_hf(*soft_pair)
    soft = session.mask(images, Blend([ImagePrompt(examples[0]), ImagePrompt(examples[1])]), normalize="none")
    assert torch.equal(mask, (soft > 0.5).float())
    assert 0.0 < mask.mean().item() < 1.0


def test_advanced_node_takes_text_and_example_together(soft_pair):
    from textmask.engine import session_from_hf
    from textmask.prompts import Blend, ImagePrompt

    images = smooth_images(2, 44, 60, seed=17)
    example, shape = cutout(40, 40, seed=18)
    session = session_from_hf(*soft_pair)
    node = TextmaskCLIPSegMasking()
    common = dict(negative_prompts="grass", normalize="none", clipseg_model=soft_pair)
    visual = ImagePrompt(example[0], mask=shape)

    separate, _, _ = node.mask(images, "a cat", example=example, example_mask=shape[None], **common)
    expected = session.mask(images, ["a cat", visual], negative_prompts=["grass"], normalize="none")
    assert torch.allclose(separate, expected, atol=1e-5)

    blended, _, _ = node.mask(
        images, "a cat\na dog", example=example, example_mask=shape[None], example_mode="blend", example_weight=3.0,
        combine="intersection", **common,
    )  # fmt: skip
    prompts = [Blend(["a cat", visual], weights=[1, 3]), Blend(["a dog", visual], weights=[1, 3])]
    expected = session.mask(images, prompts, negative_prompts=["grass"], normalize="none", combine="intersection")
    assert torch.allclose(blended, expected, atol=1e-5)
    assert (blended - separate).abs().max().item() > 1e-3

    alone, _, _ = node.mask(images, "  ", example=example, **common)  # no text: the example alone
    expected = session.mask(images, ImagePrompt(example[0]), negative_prompts=["grass"], normalize="none")
    assert torch.allclose(alone, expected, atol=1e-5)
    with pytest.raises(PromptError, match="mix"):
        node.mask(images, "a cat", example=example, example_mode="sum", **common)


def test_example_masks_from_load_image_get_clear_errors(soft_pair):
    images = smooth_images(1, 30, 30)
    example, shape = cutout(50, 50)
    node = TextmaskCLIPSegExampleMasking()
    with pytest.raises(PromptError, match="Load Image outputs for an image without transparency"):
        node.mask(images, example, example_mask=torch.zeros(1, 64, 64), clipseg_model=soft_pair)
    with pytest.raises(PromptError, match=r"empty.*invert_example_mask off"):  # 1 - alpha of a transparent image
        node.mask(
            images, example, example_mask=torch.ones(1, 50, 50), invert_example_mask=True, clipseg_model=soft_pair
        )
    with pytest.raises(PromptError, match="must match"):
        node.mask(images, example, example_mask=shape[None, :40], clipseg_model=soft_pair)
    with pytest.raises(PromptError, match="2 example images but 3 masks"):
        node.mask(images, example.expand(2, -1, -1, -1), example_mask=shape.expand(3, -1, -1), clipseg_model=soft_pair)
    with pytest.raises(PromptError, match="example"):
        node.mask(images, None, clipseg_model=soft_pair)


# ------------------------------------------------------------------------------ refine and instances
def test_refine_mask_node_is_textmask_refine(soft_pair):
    import textmask
    from textmask.comfy.nodes import TextmaskRefineMask

    images = smooth_images(2, 60, 80, seed=12)
    coarse = torch.zeros(2, 60, 80)
    coarse[:, 15:45, 20:60] = 0.8
    (refined,) = TextmaskRefineMask().refine(images, coarse)
    assert refined.shape == (2, 60, 80) and torch.equal(refined, textmask.refine(images, coarse))
    (small,) = TextmaskRefineMask().refine(images, coarse[:1, ::2, ::2], softness=0.5, coarseness=30)  # resized
    assert small.shape == (2, 60, 80)
    expected = textmask.refine(images, torch.nn.functional.interpolate(coarse[:1, None, ::2, ::2], size=(60, 80),
                               mode="bilinear")[:, 0].expand(2, -1, -1), softness=0.5, grid=30)  # fmt: skip
    assert torch.equal(small, expected)
    with pytest.raises(InputError, match="masks"):
        TextmaskRefineMask().refine(images, torch.zeros(3, 60, 80))

    node = TextmaskCLIPSegMasking()
    common = dict(negative_prompts="", combine="union", normalize="none", blur=0.0, grow=0, invert=False)
    mask, _, _ = node.mask(images, "a cat", threshold=0.5, batch_size=8, clipseg_model=soft_pair, refine=True,
                           **common)  # fmt: skip
    from textmask.engine import session_from_hf

    assert torch.equal(mask, session_from_hf(*soft_pair).mask(images, "a cat", refine=True, threshold=0.5))


def test_mask_to_instances_node_finds_the_blobs_with_exact_boxes():
    from textmask.comfy.nodes import TextmaskMaskToInstances

    masks = torch.zeros(2, 50, 70)
    masks[0, 5:15, 10:30] = 0.9  # 200 px
    masks[0, 30:40, 50:55] = 0.7  # 50 px
    masks[0, 45:46, 0:3] = 0.8  # a 3 px speck
    masks[1, 20:30, 20:40] = 1.0
    outputs = TextmaskMaskToInstances().split(masks, 0.5, 10, 0, "cat")
    instance_masks, boxes, bboxes, segs, count, segs_per_frame, instance_bboxes = outputs
    assert count == 3 and instance_masks.shape == (3, 50, 70)
    assert boxes == [
        [{"x": 10, "y": 5, "width": 20, "height": 10, "score": pytest.approx(0.9), "label": "cat"},
         {"x": 50, "y": 30, "width": 5, "height": 10, "score": pytest.approx(0.7), "label": "cat"}],
        [{"x": 20, "y": 20, "width": 20, "height": 10, "score": pytest.approx(1.0), "label": "cat"}],
    ]  # fmt: skip
    assert bboxes == [(10, 5, 20, 10), (20, 20, 20, 10)]  # one per frame: its largest object
    assert instance_bboxes == [(10, 5, 20, 10), (50, 30, 5, 10), (20, 20, 20, 10)]  # one per object
    (size, seg_list) = segs
    assert size == (50, 70) and [seg.bbox for seg in seg_list] == [(10, 5, 30, 15), (50, 30, 55, 40), (20, 20, 40, 30)]
    assert [[seg.bbox for seg in frame[1]] for frame in segs_per_frame] == [
        [(10, 5, 30, 15), (50, 30, 55, 40)],
        [(20, 20, 40, 30)],
    ]
    assert torch.equal(instance_masks[0] > 0, masks[0] * (masks[0] > 0.85) > 0)  # the largest first, its own values
    empty = TextmaskMaskToInstances().split(torch.zeros(1, 8, 8), 0.5, 0, 0)
    empty_masks, no_boxes, no_bboxes, (_, no_segs), none, no_frame_segs, no_instance_bboxes = empty
    assert none == 0 and empty_masks.shape == (1, 8, 8) and no_boxes == [[]] and no_bboxes == [(0, 0, 0, 0)]
    assert no_segs == [] and no_frame_segs == [((8, 8), [])] and no_instance_bboxes == []
    only_one, _, _, _, one, _, _ = TextmaskMaskToInstances().split(masks[:1], 0.5, 10, 1)
    assert one == 1 and only_one.shape == (1, 50, 70)


# ------------------------------------------------------------------------------- boxes and frames
def _three_frames() -> torch.Tensor:
    """[objects, empty, objects]: frame 0 holds a large and a small object, frame 1 none, frame 2 one."""
    masks = torch.zeros(3, 40, 60)
    masks[0, 4:14, 6:26] = 0.9
    masks[0, 25:33, 40:46] = 0.8
    masks[2, 20:36, 30:50] = 0.95
    return masks


def test_kjnodes_bboxes_pair_with_their_frames_and_empty_frames_draw_nothing():
    from peer_consumers import kj_bbox_to_int, kj_bbox_visualize

    from textmask.comfy.nodes import TextmaskMaskToInstances

    masks = _three_frames()
    frames = torch.full((3, 40, 60, 3), 0.5)
    for max_instances in (0, 1):
        _, _, bboxes, _, count, _, _ = TextmaskMaskToInstances().split(masks, 0.5, 0, max_instances)
        assert count == (3 if max_instances == 0 else 2)
        assert bboxes == [(6, 4, 20, 10), (0, 0, 0, 0), (30, 20, 20, 16)]
        drawn = kj_bbox_visualize(frames, bboxes)
        assert drawn.shape == frames.shape  # one drawn frame per input frame
        red = (drawn[..., 0] == 1) & (drawn[..., 1] == 0)
        for index, (x, y, w, h) in enumerate(bboxes):
            expected = torch.zeros(40, 60, dtype=torch.bool)
            if w:
                expected[y, x : x + w] = expected[y + h, x : x + w] = True
                expected[y : y + h, x] = expected[y : y + h, x + w] = True
            assert torch.equal(red[index], expected), index  # frame i shows frame i's box, the empty frame none
            assert kj_bbox_to_int(bboxes, index)[:4] == (x, y, w, h)
    _, _, _, _, _, _, instance_bboxes = TextmaskMaskToInstances().split(masks[:1], 0.5, 0, 0)
    repeated = kj_bbox_visualize(frames[:1].expand(2, -1, -1, -1), instance_bboxes)  # one frame per object
    assert repeated.shape[0] == 2 and instance_bboxes == [(6, 4, 20, 10), (40, 25, 6, 8)]


def test_core_boxes_are_per_frame_lists_with_an_empty_list_for_an_empty_frame():
    from textmask.comfy.nodes import TextmaskMaskToInstances

    _, boxes, _, _, _, _, _ = TextmaskMaskToInstances().split(_three_frames(), 0.5, 0, 0, "cat")
    assert [[(b["x"], b["y"], b["width"], b["height"]) for b in frame] for frame in boxes] == [
        [(6, 4, 20, 10), (40, 25, 6, 8)], [], [(30, 20, 20, 16)],
    ]  # fmt: skip
    assert {b["label"] for frame in boxes for b in frame} == {"cat"}


def test_impact_segs_per_frame_and_for_the_batch():
    from peer_consumers import impact_combined_mask, impact_mask_list

    from textmask.comfy.nodes import TextmaskMaskToInstances

    masks = _three_frames()
    instance_masks, _, _, segs, count, segs_per_frame, _ = TextmaskMaskToInstances().split(masks, 0.5, 0, 0)
    assert TextmaskMaskToInstances.OUTPUT_IS_LIST == (False, False, False, False, False, True, False)
    assert len(segs_per_frame) == 3 and [len(frame[1]) for frame in segs_per_frame] == [2, 0, 1]
    for frame, frame_segs in zip(masks, segs_per_frame):  # each frame's SEGS is that frame's mask
        assert (impact_combined_mask(frame_segs)[0] - frame).abs().max() <= TOLERANCE
    assert impact_combined_mask(segs_per_frame[1]).shape == (1, 40, 60)  # an empty frame: an empty mask
    assert [m.shape for m in impact_mask_list(segs_per_frame[1])] == [(1, 40, 60)]
    listed = torch.cat(impact_mask_list(segs))  # the batch SEGS: every instance, in instance_masks' order
    assert count == 3 and (listed - instance_masks).abs().max() <= TOLERANCE
    union = impact_combined_mask(segs)[0]  # Impact ORs the bytes: where frames overlap the values mix
    assert torch.equal(union > 0, masks.amax(0) > 0.5)


def test_min_area_is_the_only_floor():
    from textmask.comfy.nodes import TextmaskMaskToInstances

    masks = torch.zeros(1, 480, 640)
    masks[0, 100:105, 200:205] = 0.9  # 25 px: under 0.01 % of 640×480 (31 px)
    masks[0, 300, 300] = 0.9  # a single pixel
    assert TextmaskMaskToInstances().split(masks, 0.5, 0, 0)[4] == 2
    assert TextmaskMaskToInstances().split(masks, 0.5, 25, 0)[4] == 1
    assert TextmaskMaskToInstances().split(masks, 0.5, 26, 0)[4] == 0
    tooltip = TextmaskMaskToInstances.INPUT_TYPES()["required"]["min_area"][1]["tooltip"]
    assert "0 keeps every object" in tooltip


def test_every_output_has_a_tooltip():
    for name, cls in NODE_CLASS_MAPPINGS.items():
        tooltips = getattr(cls, "OUTPUT_TOOLTIPS", None)
        assert tooltips is not None and len(tooltips) == len(cls.RETURN_TYPES), name
        assert all(isinstance(text, str) and len(text) > 10 for text in tooltips), name


# ---------------------------------------------------------------------------------------------- video tracking
def _crossing_discs(frames: int = 20, height: int = 60, width: int = 96) -> torch.Tensor:
    """Two discs crossing (one blob while they overlap): ``[T, H, W]``."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    masks = torch.zeros(frames, height, width)
    for t in range(frames):
        left = ((yy - 26) ** 2 + (xx - (10 + 4 * t)) ** 2 <= 100).float()
        right = ((yy - 34) ** 2 + (xx - (86 - 4 * t)) ** 2 <= 100).float()
        masks[t] = torch.maximum(left, right) * 0.9
    return masks


def test_track_masks_node_gives_one_batch_per_track_with_ids():
    from textmask.comfy.nodes import TextmaskTrackMasks

    masks = _crossing_discs()
    images = torch.rand(masks.shape[0], *masks.shape[1:], 3, generator=torch.Generator().manual_seed(0))
    tracks, boxes, bboxes, described, count = TextmaskTrackMasks().track(images, masks, 0.5, 10, 30, "ball")
    assert count == 2 and len(tracks) == 2 and TextmaskTrackMasks.OUTPUT_IS_LIST[0] is True
    assert all(t.shape == masks.shape for t in tracks)
    # id 1 starts on the left and ends on the right: it kept its id through the crossing
    first, last = tracks[0][0], tracks[0][-1]
    assert torch.nonzero(first)[:, 1].float().mean() < 20 and torch.nonzero(last)[:, 1].float().mean() > 76
    assert [[b["label"] for b in frame] for frame in boxes] == [["ball #1", "ball #2"]] * masks.shape[0]
    assert len(bboxes) == masks.shape[0]  # one KJNodes box per frame (its largest object), pairing with the frames
    parsed = json.loads(described)
    assert parsed["ids"] == [1, 2] and len(parsed["frames"]) == masks.shape[0]
    with pytest.raises(InputError, match="images"):
        TextmaskTrackMasks().track(images[:3], masks, 0.5, 10, 30)


def test_mask_to_instances_track_gives_a_stable_count_and_order():
    from textmask.comfy.nodes import TextmaskMaskToInstances

    masks = _crossing_discs()
    masks[12:, :, :] *= (torch.arange(96) < 60).float()  # the disc going right leaves at x = 60
    outputs = TextmaskMaskToInstances().split(masks, 0.5, 10, 0, "ball", track=True)
    stacked, boxes, frame_bboxes, _, count, segs_per_frame, instance_bboxes = outputs
    assert count == 2 and stacked.shape == (masks.shape[0] * 2, *masks.shape[1:])
    # Every box output pairs as without tracking: one KJNodes box and one SEGS per frame, one box per instance mask.
    assert len(frame_bboxes) == len(segs_per_frame) == masks.shape[0] and len(instance_bboxes) == stacked.shape[0]
    assert instance_bboxes[-2] == (0, 0, 0, 0) and instance_bboxes[-1] != (0, 0, 0, 0)  # id 1 absent at the end
    per_frame = stacked.reshape(masks.shape[0], 2, *masks.shape[1:])
    assert per_frame[0, 0].sum() > 0 and per_frame[-1, 0].sum() == 0  # id 1 gone at the end: an empty mask
    assert per_frame[-1, 1].sum() > 0
    assert [b["label"] for b in boxes[-1]] == ["ball #2"]
    plain = TextmaskMaskToInstances().split(masks, 0.5, 10, 0, "ball")
    assert plain[4] != count  # without tracking: every frame's objects, one after another
