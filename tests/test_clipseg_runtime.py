"""textmask's own CLIPSeg modules (issue 16): parity with transformers for every supported config, loading,
the lazily completed vision tower, config parsing, interop, and a run with transformers unimportable.

transformers is the numerical reference (the ``dev`` extra). Where it runs CLIPSeg with SDPA attention
(transformers 5) the float32 logits must be bit-identical at batch 1; transformers 4 runs eager attention,
where the bound is the hard one, 1e-4 (the observed difference is about 1e-5).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import textmask
from textmask.clipseg import CLIPSeg, CLIPSegConfig, TextConfig, VisionConfig, load_clipseg
from textmask.clipseg.hf import from_transformers
from textmask.engine import ImageFeatures
from textmask.errors import ModelLoadError
from textmask.model import load_model
from textmask.testmodels import build_random_model, random_config

BOUND = 1e-4  # the hard bound on |Δ logit| against transformers
PROMPTS = ["a red car", "the sky", "person's hair"]

TINY_TOWERS = {
    "text_config": TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    "projection_dim": 16,
}
# Small stand-ins for the CIDAS checkpoints without the refined upsampler: rd16 (reduce_dim 16) and rd64
# (reduce_dim 64), with the CIDAS configs' old eos_token_id=2 (pooling at the highest token id).
CONFIGS = {
    "rd16-like": CLIPSegConfig(
        **TINY_TOWERS,
        vision_config=VisionConfig(
            hidden_size=48, intermediate_size=96, num_hidden_layers=6, num_attention_heads=3, patch_size=16
        ),
        extract_layers=(1, 3, 4),
        reduce_dim=16,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=64,
        use_complex_transposed_convolution=False,
    ),
    "rd64-like": CLIPSegConfig(
        **TINY_TOWERS,
        vision_config=VisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=2, patch_size=16
        ),
        extract_layers=(0, 2, 3),
        reduce_dim=64,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=128,
        conditional_layer=1,
        use_complex_transposed_convolution=False,
    ),
}
for _name in CONFIGS:  # the CIDAS files' old end-token id
    CONFIGS[_name] = replace(CONFIGS[_name], text_config=replace(CONFIGS[_name].text_config, eos_token_id=2))


def _picture(seed: int, height: int, width: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _transformers_pair(folder: Path):
    transformers = pytest.importorskip("transformers")
    processor = transformers.CLIPSegProcessor.from_pretrained(str(folder))
    model = transformers.CLIPSegForImageSegmentation.from_pretrained(str(folder)).eval()
    return processor, model


def _runs_sdpa(model) -> bool:
    return getattr(model.config, "_attn_implementation", None) == "sdpa"


@pytest.fixture(scope="module", params=["random-tiny", *CONFIGS])
def folder(request, tiny_model_dir: Path, tmp_path_factory) -> Path:
    if request.param == "random-tiny":
        return tiny_model_dir
    return build_random_model(CONFIGS[request.param], tmp_path_factory.mktemp("configs") / request.param)


# ---------------------------------------------------------------------------------- parity
def test_forward_matches_transformers_at_batch_1(folder: Path) -> None:
    processor, reference = _transformers_pair(folder)
    ours = load_model(str(folder), reuse=False).model
    inputs = processor(text=["a red car"], images=[_picture(1, 300, 400)], padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = reference(**inputs).logits
        got = ours(**inputs).logits
    assert got.shape == expected.shape == (1, 352, 352)
    assert (got - expected).abs().max().item() <= BOUND
    if _runs_sdpa(reference):
        assert torch.equal(got, expected)


def test_engine_matches_transformers_batched_and_the_decoder_is_batch_invariant(folder: Path) -> None:
    """The engine over 3 images × 3 prompts against transformers' one-prompt-per-image forward (padded texts,
    batched); and each image's logits are the same bits when its features are decoded alone."""
    processor, reference = _transformers_pair(folder)
    session = textmask.Segmenter(load_model(str(folder), reuse=False))
    images = [_picture(2, 200, 300), _picture(3, 352, 352), _picture(4, 90, 500)]
    features = session.encode_images(images)
    embeddings = session.encode_prompts(PROMPTS)
    logits = session.decode(features, embeddings)  # [3, 3, S, S]
    text = processor.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    for index, image in enumerate(images):
        pixels = processor.image_processor([image] * len(PROMPTS), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            expected = reference(pixel_values=pixels, **text).logits
        assert (logits[index] - expected).abs().max().item() <= BOUND
        alone = ImageFeatures(reduced=tuple(r[index : index + 1] for r in features.reduced), sizes=[(1, 1)])
        assert torch.equal(session.decode(alone, embeddings)[0], logits[index])


def test_text_and_example_embeddings_match_transformers(folder: Path) -> None:
    processor, reference = _transformers_pair(folder)
    session = textmask.Segmenter(load_model(str(folder), reuse=False))
    exact = _runs_sdpa(reference)
    for text in ["a cat", "", "ein Kätzchen 🐱 猫", " ".join(["long"] * 90)]:
        tokens = processor.tokenizer([text], truncation=True, max_length=77, return_tensors="pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the empty and the over-long prompt warn
            got = session.encode_prompts(text)
        with torch.inference_mode():
            expected = reference.get_conditional_embeddings(batch_size=1, **tokens)
        assert (got - expected).abs().max().item() <= BOUND
        assert torch.equal(got, expected) or not exact
    pixels = processor(visual_prompt=[_picture(5, 120, 80)], return_tensors="pt")["conditional_pixel_values"]
    with torch.inference_mode():
        got = session.clipseg.get_conditional_embeddings(batch_size=1, conditional_pixel_values=pixels)
        expected = reference.get_conditional_embeddings(batch_size=1, conditional_pixel_values=pixels)
    assert (got - expected).abs().max().item() <= BOUND
    assert torch.equal(got, expected) or not exact


def test_random_full_matches_transformers_batch_1_and_batched() -> None:
    """The full rd64-refined architecture (ViT-B/16 at 352 px, refined upsampler): one image and one prompt
    against transformers, and the same image decoded in a batch of two (whose last bits may differ: the
    decoder's matrix products see another row count, as they did with transformers' layers)."""
    folder = textmask.locate_model("random-full")
    processor, reference = _transformers_pair(folder)
    session = textmask.load("random-full")
    image, other = _picture(6, 480, 640), _picture(8, 300, 200)
    inputs = processor(text=["a cat"], images=[image], padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = reference(**inputs).logits
    pixels = session.preprocess([torch.from_numpy(np.array(image)).permute(2, 0, 1)])
    assert torch.equal(pixels, inputs["pixel_values"])
    embedding = session.encode_prompts("a cat")
    got = session.decode(session.encode_pixels(pixels, [(480, 640)]), embedding)[0]
    assert (got - expected).abs().max().item() <= BOUND
    if _runs_sdpa(reference):
        assert torch.equal(got, expected)
    together = session.decode(session.encode_images([other, image]), embedding)[1, 0]
    assert (together - expected).abs().max().item() <= BOUND


# ---------------------------------------------------------------------------------- loading
def test_only_the_layers_masks_read_are_loaded_until_an_example_needs_the_rest(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir), reuse=False)
    model, config = loaded.model, loaded.model.config
    layers = model.clip.vision_model.encoder.layers
    assert len(layers) == max(config.extract_layers) + 1 < config.vision_config.num_hidden_layers
    assert not any(p.is_meta or p.requires_grad for p in model.parameters())
    session = textmask.Segmenter(loaded)
    session.mask(np.zeros((20, 30, 3), np.uint8), "a cat")
    assert len(layers) == max(config.extract_layers) + 1  # text prompts never need the rest
    session.encode_prompts(textmask.ImagePrompt(np.full((20, 20, 3), 128, np.uint8)))
    assert len(layers) == config.vision_config.num_hidden_layers
    from safetensors import safe_open

    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as weights:
        last = config.vision_config.num_hidden_layers - 1
        stored = weights.get_tensor(f"clip.vision_model.encoder.layers.{last}.mlp.fc1.weight")
    assert torch.equal(layers[last].mlp.fc1.weight, stored)


def test_example_prompts_after_the_weights_went_away_are_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "moved"
    shutil.copytree(tiny_model_dir, folder)
    session = textmask.Segmenter(load_model(str(folder), reuse=False))
    (folder / "model.safetensors").unlink()  # the loaded layers stay mapped; the others cannot be read now
    assert session.mask(np.zeros((8, 8, 3), np.uint8), "a cat").shape == (8, 8)
    with pytest.raises(ModelLoadError, match="example-image prompts need"):
        session.encode_prompts(textmask.ImagePrompt(np.zeros((8, 8, 3), np.uint8)))


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (Linux), or None."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        low, high = (int(value, 16) for value in parts[0].split("-"))
        if low <= address < high:
            return parts[5] if len(parts) > 5 else None
    return None


def test_parameters_are_the_mmapped_file_and_dtypes_convert(tiny_model_dir: Path) -> None:
    config = CLIPSegConfig.from_file(tiny_model_dir / "config.json")
    model = load_clipseg(tiny_model_dir, config)
    weight = model.decoder.film_mul.weight
    if Path("/proc/self/maps").is_file():  # a float32 CPU model is the file's pages, not a copy
        assert _mapped_file(weight.data_ptr()) == str(tiny_model_dir / "model.safetensors")
    half = load_clipseg(tiny_model_dir, config, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert torch.equal(half.decoder.film_mul.weight, weight.to(torch.bfloat16))


def test_missing_or_misshapen_weights_are_clear_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    for damage in ("missing", "misshapen"):
        folder = tmp_path / damage
        shutil.copytree(tiny_model_dir, folder)
        changed = dict(weights)
        if damage == "missing":
            del changed["decoder.film_add.bias"]
        else:
            changed["decoder.film_add.bias"] = torch.zeros(3)
        save_file(changed, str(folder / "model.safetensors"))
        with pytest.raises(ModelLoadError, match=r"decoder\.film_add\.bias") as caught:
            load_model(str(folder), reuse=False)
        assert str(folder) in str(caught.value)


def test_pickled_weights_load_only_when_allowed(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(textmask.ModelNotFoundError, match="allow_pickle"):
        load_model(str(folder), reuse=False)
    pickled = textmask.Segmenter(load_model(str(folder), reuse=False, allow_pickle=True))
    assert pickled.clipseg.has_full_vision_tower  # read whole (torch.load), so nothing is left for later
    reference = textmask.Segmenter(load_model(str(tiny_model_dir), reuse=False))
    image = np.full((30, 40, 3), 77, np.uint8)
    # The same weights at another memory alignment: torch.load's tensors are 64-byte aligned, mmapped safetensors'
    # are not (the header's length decides), and MKL's kernels take other paths for them, so the last bits differ
    # (4e-7 in probability here). Same computation, so float rounding is the only allowed difference.
    torch.testing.assert_close(pickled.predict(image, "a cat"), reference.predict(image, "a cat"), rtol=0, atol=1e-5)


def test_a_folder_without_tokenizer_files_uses_the_shipped_clip_tokenizer(tiny_model_dir: Path, tmp_path) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    bare = textmask.Segmenter(load_model(str(folder), reuse=False))
    full = textmask.Segmenter(load_model(str(tiny_model_dir), reuse=False))
    assert bare.tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert torch.equal(bare.encode_prompts("a cat"), full.encode_prompts("a cat"))


# ----------------------------------------------------------------------------------- configs
CIDAS_RD64_REFINED = {  # CIDAS/clipseg-rd64-refined's config.json as transformers writes it today
    "_name_or_path": "CIDAS/clipseg-rd64-refined",
    "architectures": ["CLIPSegForImageSegmentation"],
    "conditional_layer": 0,
    "decoder_attention_dropout": 0.0,
    "decoder_hidden_act": "quick_gelu",
    "decoder_intermediate_size": 2048,
    "decoder_num_attention_heads": 4,
    "extract_layers": [3, 6, 9],
    "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592,
    "model_type": "clipseg",
    "projection_dim": 512,
    "reduce_dim": 64,
    "text_config": {"bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "model_type": "clipseg_text_model"},
    "use_complex_transposed_convolution": True,
    "vision_config": {"dropout": 0.0, "model_type": "clipseg_vision_model", "patch_size": 16},
}


def _cidas(name: str) -> dict:
    raw = json.loads(json.dumps(CIDAS_RD64_REFINED))
    raw["_name_or_path"] = f"CIDAS/{name}"
    raw["reduce_dim"] = 16 if name == "clipseg-rd16" else 64
    raw["use_complex_transposed_convolution"] = name == "clipseg-rd64-refined"
    return raw


ARCHITECTURE = {
    "text_config": [f.name for f in TextConfig.__dataclass_fields__.values()],
    "vision_config": [f.name for f in VisionConfig.__dataclass_fields__.values()],
    "top": [
        "projection_dim",
        "extract_layers",
        "reduce_dim",
        "decoder_num_attention_heads",
        "decoder_intermediate_size",
        "conditional_layer",
        "use_complex_transposed_convolution",
    ],
}


def _assert_same_architecture(ours: CLIPSegConfig, theirs) -> None:
    for name in ARCHITECTURE["top"]:
        value = getattr(theirs, name)
        assert getattr(ours, name) == (tuple(value) if isinstance(value, list) else value), name
    for tower in ("text_config", "vision_config"):
        for name in ARCHITECTURE[tower]:
            assert getattr(getattr(ours, tower), name) == getattr(getattr(theirs, tower), name), (tower, name)


@pytest.mark.parametrize("name", ["clipseg-rd64-refined", "clipseg-rd64", "clipseg-rd16"])
def test_cidas_configs_read_like_transformers(name: str) -> None:
    raw = _cidas(name)
    ours = CLIPSegConfig.from_dict(raw).check_supported()
    assert ours.vision_config.hidden_size == 768 and ours.vision_config.patch_size == 16
    assert ours.text_config.hidden_size == 512 and ours.text_config.eos_token_id == 2
    assert ours.reduce_dim == raw["reduce_dim"] and ours.extract_layers == (3, 6, 9)
    assert ours.use_complex_transposed_convolution is raw["use_complex_transposed_convolution"]
    transformers = pytest.importorskip("transformers")
    _assert_same_architecture(ours, transformers.CLIPSegConfig.from_dict(raw))
    written = ours.to_dict()  # what textmask writes, read back by transformers
    _assert_same_architecture(ours, transformers.CLIPSegConfig.from_dict(written))
    assert CLIPSegConfig.from_dict(written) == replace(ours, name_or_path="")


def test_legacy_config_dicts_win_as_in_transformers() -> None:
    raw = _cidas("clipseg-rd64")
    raw["text_config"] = {"hidden_size": 64, "num_attention_heads": 4, "eos_token_id": 2}
    raw["text_config_dict"] = {"hidden_size": 128, "num_attention_heads": 4}
    raw["vision_config_dict"] = {"patch_size": 16, "num_hidden_layers": 10}
    ours = CLIPSegConfig.from_dict(raw)
    assert ours.text_config.hidden_size == 128 and ours.text_config.eos_token_id == 49407  # defaults win too
    assert ours.vision_config.num_hidden_layers == 10
    transformers = pytest.importorskip("transformers")
    _assert_same_architecture(ours, transformers.CLIPSegConfig.from_dict(raw))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"text_config": {"hidden_act": "gelu"}}, "text_config.hidden_act='gelu'"),
        ({"vision_config": {"patch_size": 16, "hidden_act": "relu"}}, "vision_config.hidden_act='relu'"),
        ({"extract_layers": [3, 6, 12]}, "extract_layers=[3, 6, 12]"),
        ({"vision_config": {"patch_size": 15}}, "vision_config.image_size=224"),
        ({"reduce_dim": 66}, "decoder_num_attention_heads=4"),
        ({"model_type": "clip"}, "model_type 'clip' is not CLIPSeg"),
    ],
)
def test_unsupported_settings_are_refused_by_name(change: dict, named: str, tmp_path: Path) -> None:
    raw = {**_cidas("clipseg-rd64-refined"), **change}
    with pytest.raises(ModelLoadError) as caught:
        CLIPSegConfig.from_dict(raw).check_supported()
    assert named in str(caught.value)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(str(tmp_path), reuse=False)


# ----------------------------------------------------------------------------------- interop
def test_transformers_state_dict_loads_by_name_and_models_share_parameters(tiny_model_dir: Path) -> None:
    _, reference = _transformers_pair(tiny_model_dir)
    with torch.device("meta"):
        ours = CLIPSeg(CLIPSegConfig.from_object(reference.config))
    result = ours.load_state_dict(reference.state_dict(), strict=False, assign=True)
    assert result.missing_keys == []
    assert set(result.unexpected_keys) <= {"clip.logit_scale"}
    shared = from_transformers(reference)
    assert shared.decoder.film_mul.weight is reference.decoder.film_mul.weight  # no copy
    copied = from_transformers(reference, dtype=torch.bfloat16)
    assert copied.decoder.film_mul.weight.dtype == torch.bfloat16
    assert next(reference.parameters()).dtype == torch.float32  # the caller's model is unchanged


def test_the_loader_pair_is_transformers_over_textmasks_parameters(tiny_model_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from textmask.clipseg.hf import to_transformers

    processor, reference = _transformers_pair(tiny_model_dir)
    ours = load_model(str(tiny_model_dir), reuse=False).model
    converted = to_transformers(ours)
    assert isinstance(converted, transformers.CLIPSegForImageSegmentation)
    assert converted.decoder.film_mul.weight is ours.decoder.film_mul.weight
    inputs = processor(text=["a cat"], images=[_picture(7, 64, 64)], padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(converted(**inputs).logits, reference(**inputs).logits)


# ------------------------------------------------------------------------- no transformers at all
def test_masks_without_transformers_installed(tmp_path: Path) -> None:
    """A fresh process in which ``import transformers`` fails: building random-tiny, loading it, masking with
    a text and with an example-image prompt all work, and transformers never gets imported."""
    script = textwrap.dedent(
        """
        import importlib.abc
        import sys

        class NoTransformers(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "transformers" or name.startswith("transformers."):
                    raise ImportError("transformers is not installed here")
                return None

        sys.meta_path.insert(0, NoTransformers())
        import numpy as np

        import textmask

        session = textmask.load("random-tiny")
        mask = session.mask(np.zeros((24, 32, 3), np.uint8), "a cat")
        assert tuple(mask.shape) == (24, 32), mask.shape
        session.mask(np.zeros((24, 32, 3), np.uint8), textmask.ImagePrompt(np.full((16, 16, 3), 99, np.uint8)))
        assert "transformers" not in sys.modules, "transformers was imported"
        print("ok")
        """
    )
    src = Path(textmask.__file__).resolve().parents[1]
    cache = tmp_path / "cache"  # empty: the subprocess builds random-tiny too, without transformers
    env = {**os.environ, "PYTHONPATH": str(src), "TEXTMASK_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_random_config_is_supported() -> None:
    for kind in ("tiny", "full"):
        random_config(kind).check_supported()
