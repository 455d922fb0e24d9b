"""The speed work: the fast mode's agreement with float32 is pinned, and the float32 speed-ups stay exact.

* ``dtype="fast"`` (int8 vision linears on CPU, rearranged layers) agrees with the float32 path within the
  bar of issue 5: mean |Δp| ≤ 0.01 and IoU at 0.5 ≥ 0.97.
* The fast layers without quantization equal the original layers up to float32 rounding (the folding of
  quick-GELU's factor and the fused QKV are exact in real arithmetic).
* The float32 path's in-place layers, cached position table and Pillow plane resize are bit-identical to
  transformers and Pillow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import textmask
from textmask.engine import _decoder_layer, _encoder_layer
from textmask.fast import FastVisionLayer, Int8DynamicLinear, cpu_has_vnni
from textmask.model import fast_precision, int8_available, resolve_dtype


def _call_layer(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The layer module's own forward (the readable one), which the engine's in-place version must equal."""
    return layer(hidden)


PROMPTS = ["a cat", "a dog", "the sky"]


def _images(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``[count, H, W, 3]`` float in [0, 1]: smooth random blobs, so masks have real structure."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 8, 8, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return smooth.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


@pytest.fixture(scope="module")
def fast_session(tiny_model_dir: Path):
    # torch's fast mode (with OpenVINO installed, dtype="fast" alone may run OpenVINO: tests/test_openvino.py)
    return textmask.load(str(tiny_model_dir), dtype="fast", backend="torch")


# ------------------------------------------------------------------------------------- fast mode


def test_fast_mode_agrees_with_float32(tiny_session, fast_session) -> None:
    images = _images(4, 200, 300)
    reference = tiny_session.predict(images, PROMPTS)
    fast = fast_session.predict(images, PROMPTS)
    assert fast.shape == reference.shape == (4, 3, 200, 300)
    mean_dp = (fast - reference).abs().mean().item()
    positive_ref, positive_fast = reference > 0.5, fast > 0.5
    iou = ((positive_ref & positive_fast).sum() / (positive_ref | positive_fast).sum()).item()
    assert 0.1 < positive_ref.float().mean().item() < 0.9  # the masks are not trivially empty or full
    assert mean_dp <= 0.01
    assert iou >= 0.97
    assert mean_dp > 0  # the fast path really is a different computation


def test_fast_mode_masks_agree_with_float32(tiny_session, fast_session) -> None:
    images = _images(3, 128, 96, seed=1)
    reference = tiny_session.mask(images, PROMPTS[:2], threshold=0.5)
    fast = fast_session.mask(images, PROMPTS[:2], threshold=0.5)
    assert fast.shape == reference.shape == (3, 128, 96)
    agree = (fast == reference).float().mean().item()
    assert agree >= 0.97


def test_fast_mode_is_a_separate_cached_session(tiny_model_dir, tiny_session, fast_session, reference) -> None:
    assert fast_session is not tiny_session
    assert fast_session is textmask.load(str(tiny_model_dir), dtype="fast", backend="torch")
    assert fast_session.loaded.fast and not tiny_session.loaded.fast
    assert "fast" in repr(fast_session)
    dtype = str(fast_session.dtype).removeprefix("torch.")
    expected = f"fast-{fast_session.loaded.quantize or dtype}"  # "fast-int8" where torch has an int8 engine
    assert fast_session.precision_name == expected and tiny_session.precision_name == "float32"
    # The model object itself is left untouched: its own forward still equals the reference.
    processor, model = reference
    inputs = processor(text=["a cat"], images=[Image.new("RGB", (64, 48), (200, 30, 90))], return_tensors="pt")
    with torch.inference_mode():
        ours = fast_session.model(**inputs).logits
        theirs = model(**inputs).logits
    assert torch.equal(ours, theirs)


def test_fast_precision_on_cpu() -> None:
    cpu = torch.device("cpu")
    dtype, quantize = fast_precision(cpu)
    assert resolve_dtype("fast", cpu) == dtype
    if int8_available():
        assert (dtype, quantize) == (torch.float32, "int8")
    else:
        assert quantize is None and dtype in (torch.float32, torch.bfloat16)


def test_fast_layer_equals_original_layer_in_float32(tiny_session) -> None:
    """Without quantization the rearrangement is exact up to float32 rounding."""
    torch.manual_seed(0)
    width = tiny_session.model.config.vision_config.hidden_size
    hidden = torch.randn(2, 485, width)
    with torch.inference_mode():
        for layer in tiny_session._vision_layers:
            fast = FastVisionLayer.from_layer(layer, torch.float32, torch.device("cpu"))
            expected = _encoder_layer(layer, hidden)
            torch.testing.assert_close(fast(hidden), expected, rtol=1e-5, atol=1e-5)
            hidden = expected


@pytest.mark.skipif(not int8_available(), reason="no quantized CPU engine in this torch")
def test_int8_layer_is_quantized_and_close(tiny_session) -> None:
    layer = tiny_session._vision_layers[0]
    fast = FastVisionLayer.from_layer(layer, torch.float32, torch.device("cpu"), quantize="int8")
    assert isinstance(fast.fc1, Int8DynamicLinear) and isinstance(fast.qkv, Int8DynamicLinear)
    hidden = torch.randn(1, 485, tiny_session.model.config.vision_config.hidden_size)
    with torch.inference_mode():
        expected = _encoder_layer(layer, hidden)
        relative = (fast(hidden) - expected).norm() / expected.norm()
    assert relative < 0.05
    with pytest.raises(ValueError, match="int8"):
        FastVisionLayer.from_layer(layer, torch.bfloat16, torch.device("cpu"), quantize="int8")


@pytest.mark.skipif(not (int8_available() and cpu_has_vnni()), reason="needs a CPU with VNNI and a quantized engine")
def test_int8_linear_uses_all_8_bits_with_vnni() -> None:
    """With VNNI the activations use 8 bits, not torch.ao's 7: about half the error, and no saturation."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 64)
    inputs = F.gelu(torch.randn(4, 97, 256) * 2)  # skewed, like an MLP's second layer input
    with torch.inference_mode():
        expected = linear(inputs)
        full, reduced = Int8DynamicLinear(linear), Int8DynamicLinear(linear, reduce_range=True)
        assert full.reduce_range is False
        error_full = ((full(inputs) - expected).norm() / expected.norm()).item()
        error_reduced = ((reduced(inputs) - expected).norm() / expected.norm()).item()
    assert full(inputs).shape == (4, 97, 64)
    assert error_full < 0.7 * error_reduced
    assert error_full < 0.02


# ------------------------------------------------------------------- float32 speed-ups stay exact


def test_inplace_layers_are_bit_identical(tiny_session) -> None:
    if tiny_session._run_layer is not _encoder_layer:
        pytest.skip("this transformers runs CLIPSeg with eager attention; the engine uses transformers' own layers")
    torch.manual_seed(1)
    with torch.inference_mode():
        hidden = torch.randn(3, 485, tiny_session.model.config.vision_config.hidden_size)
        for layer in tiny_session._vision_layers:
            assert torch.equal(_encoder_layer(layer, hidden), _call_layer(layer, hidden))
        reduced = torch.randn(3, 485, tiny_session.model.config.reduce_dim)
        for layer in tiny_session.model.decoder.layers:
            assert torch.equal(_decoder_layer(layer, reduced), _call_layer(layer, reduced))


@pytest.mark.parametrize("size", [(480, 640), (352, 352), (1000, 90), (17, 23)])
def test_features_and_logits_equal_transformers_at_batch_1(tiny_session, reference, size) -> None:
    """Cached position table + in-place layers: the same bits as transformers' own forward."""
    processor, model = reference
    rng = np.random.default_rng(size[0])
    array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    inputs = processor(text=["a red car"], images=[Image.fromarray(array)], padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs, output_hidden_states=True)
        pixels = tiny_session.preprocess([torch.from_numpy(array).permute(2, 0, 1)])
        assert torch.equal(pixels, inputs["pixel_values"])
        features = tiny_session.encode_pixels(pixels, [size])
        hidden = out.vision_model_output.hidden_states
        layers = tiny_session.extract_layers[::-1]
        for reduce, index, ours in zip(model.decoder.reduces, layers, features.reduced):
            assert torch.equal(ours, reduce(hidden[index + 1]))
        logits = tiny_session.decode(features, tiny_session.encode_prompts(["a red car"]))
    assert torch.equal(logits[0, 0], out.logits[0])


def test_preprocess_mixed_sizes_matches_processor(tiny_session, reference) -> None:
    processor, _ = reference
    rng = np.random.default_rng(5)
    arrays = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(300, 200, 3), (352, 352, 3), (300, 200, 3)]]
    pixels = tiny_session.preprocess([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])
    expected = processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels, expected)
