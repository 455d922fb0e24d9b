"""The engine against the reference transformers forward, on the tiny random model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from textmask.images import to_levels

PROMPTS = ["a cat", "the sky", "person's hair"]


def _image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array, mode)


def _reference_logits(reference, image: Image.Image, prompts: list[str]) -> torch.Tensor:
    """transformers' own pipeline: the processor's tokenizer and image processor, full model forward
    (one text per image, as transformers' CLIPSeg wants)."""
    processor, model = reference
    text = processor.tokenizer(prompts, padding=True, return_tensors="pt")
    images = [image.convert("RGB")] * len(prompts)
    pixels = processor.image_processor(images, return_tensors="pt", input_data_format="channels_last")
    with torch.no_grad():
        logits = model(pixel_values=pixels["pixel_values"], **text).logits
    return logits.reshape(len(prompts), *logits.shape[-2:])


@pytest.mark.parametrize(
    ("size", "mode"),
    [
        ((352, 352), "RGB"),
        ((480, 640), "RGB"),
        ((640, 480), "RGB"),
        ((7, 5), "RGB"),
        ((300, 200), "L"),
        ((256, 320), "RGBA"),
        ((1, 1), "RGB"),
    ],
)
def test_logits_match_transformers(tiny_session, reference, size: tuple[int, int], mode: str) -> None:
    image = _image(*size, mode=mode, seed=size[0])
    expected = _reference_logits(reference, image, PROMPTS)
    features = tiny_session.encode_images([image])
    got = tiny_session.decode(features, tiny_session.encode_prompts(PROMPTS))[0]
    assert got.shape == expected.shape == (3, 352, 352)
    assert (got - expected).abs().max().item() <= 1e-4


def test_pixel_values_match_the_processor(tiny_session, reference) -> None:
    processor, _ = reference
    images = [_image(480, 640, seed=1), _image(7, 5, seed=2), _image(1000, 300, seed=3)]
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    got = tiny_session.preprocess([to_levels(image) for image in images])
    assert (got - expected).abs().max().item() <= 1e-6


def test_multi_prompt_equals_per_prompt_runs(tiny_session, reference) -> None:
    images = [_image(120, 160, seed=4), _image(90, 90, seed=5)]
    logits = tiny_session.decode(tiny_session.encode_images(images), tiny_session.encode_prompts(PROMPTS))
    together = tiny_session.predict(images, PROMPTS)
    for index, prompt in enumerate(PROMPTS):
        alone = tiny_session.predict(images, prompt)
        for image_index, image in enumerate(images):
            expected = _reference_logits(reference, image, [prompt])[0]
            assert (logits[image_index, index] - expected).abs().max().item() <= 1e-4
            torch.testing.assert_close(together[image_index][index], alone[image_index], atol=1e-4, rtol=0)


def test_truncated_vision_tower_is_exact(tiny_session, reference) -> None:
    """Only layers up to max(extract_layers) run, and the activations equal the full tower's."""
    _, model = reference
    vision_layers = len(model.clip.vision_model.encoder.layers)
    assert len(tiny_session._vision_layers) == max(tiny_session.extract_layers) + 1 < vision_layers
    pixel_values = tiny_session.preprocess([to_levels(_image(200, 300, seed=6))])
    with torch.no_grad():
        hidden = model.clip.vision_model(pixel_values, output_hidden_states=True).hidden_states
    features = tiny_session.encode_pixels(pixel_values, [(200, 300)])
    decoder = model.decoder
    for reduced, layer_index, reduce in zip(
        features.reduced, tiny_session.extract_layers[::-1], decoder.reduces, strict=True
    ):
        assert torch.equal(reduced, reduce(hidden[layer_index + 1]))


def test_output_shapes_follow_the_input_form(tiny_session) -> None:
    batch = torch.rand(3, 40, 56, 3)
    assert tiny_session.mask(batch, "cat").shape == (3, 40, 56)
    assert tiny_session.predict(batch, ["cat", "dog"]).shape == (3, 2, 40, 56)
    assert tiny_session.predict(batch, "cat").shape == (3, 40, 56)
    assert tiny_session.mask(batch[0], "cat").shape == (40, 56)  # one image: no batch axis
    listed = tiny_session.mask([_image(30, 20), _image(25, 35)], ["cat", "dog"])
    assert [tuple(m.shape) for m in listed] == [(30, 20), (25, 35)]
    sized = tiny_session.mask([_image(30, 20), _image(25, 35)], "cat", output_size=(64, 48))
    assert sized.shape == (2, 64, 48)
    for masks in (tiny_session.mask(batch, "cat"), sized):
        assert masks.dtype == torch.float32 and 0.0 <= masks.min() and masks.max() <= 1.0


def test_probabilities_are_sigmoid_of_bilinear_logits(tiny_session) -> None:
    image = _image(100, 130, seed=7)
    logits = tiny_session.decode(tiny_session.encode_images([image]), tiny_session.encode_prompts(["cat"]))
    expected = torch.sigmoid(torch.nn.functional.interpolate(logits, size=(100, 130), mode="bilinear"))[0, 0]
    torch.testing.assert_close(tiny_session.predict(image, "cat"), expected)


def test_seed_normalization_reproduces_the_seed_path(tiny_session) -> None:
    """sigmoid at 352 → (p-min)/max → 8-bit truncation → Pillow bicubic resize → /255."""
    image = _image(90, 120, seed=8)
    logits = tiny_session.decode(tiny_session.encode_images([image]), tiny_session.encode_prompts(["cat"]))[0, 0]
    probs = torch.sigmoid(logits)
    normalized = ((probs - probs.min()) / probs.max()).numpy()
    levels = np.clip(255.0 * normalized, 0, 255).astype(np.uint8)
    expected = np.asarray(Image.fromarray(levels).resize((120, 90), Image.Resampling.BICUBIC)) / 255.0
    got = tiny_session.predict(image, "cat", normalize="seed")
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_chunking_does_not_change_results(tiny_session) -> None:
    batch = torch.rand(5, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    whole = tiny_session.mask(batch, ["cat", "dog"], batch_size=8)
    calls: list[tuple[int, int]] = []
    chunked = tiny_session.mask(batch, ["cat", "dog"], batch_size=2, progress=lambda d, n: calls.append((d, n)))
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_progress_callback_can_stop_the_run(tiny_session) -> None:
    class Stop(Exception):
        pass

    def stop_after_first(done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        tiny_session.mask(torch.rand(4, 32, 32, 3), "cat", batch_size=1, progress=stop_after_first)


def test_prompt_embeddings_are_cached(tiny_session, monkeypatch) -> None:
    calls: list[int] = []
    original = tiny_session.model.get_conditional_embeddings

    def counting(*args, **kwargs):
        calls.append(kwargs["batch_size"])
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_session.model, "get_conditional_embeddings", counting)
    tiny_session.encode_prompts(["a unique prompt 1", "a unique prompt 2", "a unique prompt 1"])
    first = tiny_session.encode_prompts(["a unique prompt 2"])
    tiny_session.mask(torch.rand(2, 16, 16, 3), ["a unique prompt 1", "a unique prompt 2"])
    assert calls == [1, 1]  # two unique prompts, each encoded once (alone, so its bits never depend on others)
    assert torch.equal(first[0], tiny_session.encode_prompts("a unique prompt 2")[0])


def test_long_and_empty_prompts_warn(tiny_session) -> None:
    with pytest.warns(UserWarning, match="at most 77"):
        long = tiny_session.encode_prompts(" ".join(["cat"] * 100))
    assert long.shape[0] == 1
    with pytest.warns(UserWarning, match="empty prompt"):
        tiny_session.encode_prompts("")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_session.encode_prompts("ein Kätzchen 🐱 猫")  # non-ASCII is fine


def test_bfloat16_session_agrees_with_float32(tiny_model_dir, tiny_session) -> None:
    import textmask

    fast = textmask.load(str(tiny_model_dir), dtype="bfloat16")
    assert fast is not tiny_session and fast.dtype == torch.bfloat16
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    reference = tiny_session.predict(images, "cat", normalize="minmax")
    got = fast.predict(images, "cat", normalize="minmax")
    assert got.dtype == torch.float32
    assert (got - reference).abs().mean().item() < 0.05


def test_session_is_cached_per_source_device_dtype(tiny_model_dir, tiny_session) -> None:
    import textmask

    assert textmask.load(str(tiny_model_dir)) is tiny_session
    assert textmask.load(str(tiny_model_dir), device="cpu", dtype="float32") is tiny_session


def test_empty_batch_gives_empty_result(tiny_session) -> None:
    assert tiny_session.mask(torch.rand(0, 8, 8, 3), "cat").shape == (0, 8, 8)
    assert tiny_session.mask([], "cat") == []


@pytest.mark.parametrize("combine", ["union", "intersection"])
def test_prompt_groups_fold_to_the_same_masks(tiny_session, monkeypatch, combine: str) -> None:
    """Many prompts are decoded in bounded groups; folding the groups gives what one pass gives."""
    import textmask.engine as engine

    images = torch.rand(3, 40, 40, 3, generator=torch.Generator().manual_seed(2))
    prompts = [f"thing {i}" for i in range(5)]
    negatives = ["background", "floor"]
    kwargs = {"negative_prompts": negatives, "combine": combine, "normalize": "minmax"}
    one_pass = tiny_session.mask(images, prompts, **kwargs)
    maps = tiny_session.predict(images, prompts + negatives, normalize="minmax")
    monkeypatch.setattr(engine, "_MAX_PAIRS_PER_PASS", 2)
    grouped = tiny_session.mask(images, prompts, **kwargs)
    torch.testing.assert_close(grouped, one_pass, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiny_session.predict(images, prompts + negatives, normalize="minmax"), maps)
    positive = maps[:, :5].amax(1) if combine == "union" else maps[:, :5].amin(1)
    expected = (positive - maps[:, 5:].amax(1)).clamp(0, 1)
    torch.testing.assert_close(one_pass, expected, atol=1e-5, rtol=0)


def test_results_do_not_depend_on_batching_or_history(tiny_model_dir) -> None:
    """Same image, same prompts → the same bits, whatever shared its chunk and whatever was asked before
    (the CLI, resumed runs and Ray actors batch differently)."""
    import textmask
    from textmask.engine import Segmenter
    from textmask.model import load_model

    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(4)]
    fresh = Segmenter(load_model(str(tiny_model_dir), reuse=False))
    fresh.encode_prompts(["something much longer than the prompts below, to pad them", "x"])  # history
    kwargs = {"negative_prompts": "grass", "blur": 1.0, "grow": 1, "normalize": "minmax"}
    alone = [fresh.mask(image, ["a cat", "the sky"], **kwargs) for image in images]
    other = textmask.load(str(tiny_model_dir))
    for batch_size in (1, 3, 4):
        together = other.mask(images, ["a cat", "the sky"], batch_size=batch_size, **kwargs)
        for one, many in zip(alone, together, strict=True):
            assert torch.equal(one, many), batch_size


# ------------------------------------------------------------------------------ targets, streams, requests
def test_targets_equal_one_mask_call_each(tiny_session) -> None:
    """mask(targets=[...]) → [B, T, H, W]: each target exactly what mask() gives for its prompts alone."""
    from textmask.postprocess import Target

    images = torch.stack([to_levels(_image(40, 52, seed=s)).permute(1, 2, 0) for s in range(3)])
    targets = [["a cat", "the sky"], Target(("the sky", "fur"), "intersection"), "a dog"]
    options = dict(negative_prompts=["grass"], threshold=0.4, threshold_softness=0.2, blur=1.5, grow=1)
    masks = tiny_session.mask(images, targets=targets, **options)
    assert masks.shape == (3, 3, 40, 52)
    assert torch.equal(masks[:, 0], tiny_session.mask(images, ["a cat", "the sky"], **options))
    assert torch.equal(masks[:, 1], tiny_session.mask(images, ["the sky", "fur"], combine="intersection", **options))
    assert torch.equal(masks[:, 2], tiny_session.mask(images, "a dog", **options))
    single = tiny_session.mask(images[0], targets=targets, **options)  # one image: [T, H, W]
    assert torch.equal(single, masks[0])
    listed = tiny_session.mask(list(images), targets=targets, **options)  # a list: a list of [T, H, W]
    assert all(torch.equal(a, b) for a, b in zip(listed, masks))
    with pytest.raises(TypeError, match="prompts or targets"):
        tiny_session.mask(images, "a cat", targets=targets)
    from textmask.errors import PromptError

    with pytest.raises(PromptError, match=r"targets\[1\]"):
        tiny_session.mask(images, targets=[["a cat"], []])


def test_stream_smooths_across_calls_like_one_piece(tiny_session) -> None:
    from textmask.postprocess import MaskOptions, Target, TargetPlan, finish_targets, smooth_temporal

    frames = torch.stack([to_levels(_image(24, 32, seed=s)).permute(1, 2, 0) for s in range(7)])
    stream = tiny_session.stream([["a cat"], ["the sky"]], smoothing=0.6, threshold=0.5, batch_size=3)
    chunked = torch.cat([stream(frames[:3]), stream(frames[3:5]), stream(frames[5:])])
    plan = TargetPlan.build([Target(("a cat",)), Target(("the sky",))])
    probs = tiny_session.predict(frames, list(plan.prompts))
    whole = finish_targets(smooth_temporal(probs, 0.6)[0], plan, MaskOptions(threshold=0.5))
    assert chunked.shape == (7, 2, 24, 32) and torch.equal(chunked, whole)
    with pytest.raises(ValueError, match="smoothing"):
        tiny_session.stream([["a cat"]], smoothing=1.0)


def test_mask_requests_share_the_vision_pass_and_equal_single_calls(tiny_session, vision_passes) -> None:
    """Mixed sizes, prompts and options in one call: one vision pass per chunk, same masks as one call each."""
    from textmask.engine import MaskRequest
    from textmask.postprocess import MaskOptions

    images = [_image(30, 40, seed=1), _image(52, 36, seed=2), _image(30, 40, seed=3)]
    requests = [
        MaskRequest(images[0], "a cat"),
        MaskRequest(images[1], targets=[["a dog", "fur"], "the sky"], negative_prompts=["grass"]),
        MaskRequest(images[2], ["a cat", "a dog"], options=MaskOptions(threshold=0.5, invert=True)),
    ]
    results = tiny_session.mask_requests(requests, batch_size=8)
    assert vision_passes == [3]  # every image in one vision pass
    assert [tuple(r.shape) for r in results] == [(1, 30, 40), (2, 52, 36), (1, 30, 40)]
    assert torch.equal(results[0][0], tiny_session.mask(images[0], "a cat"))
    alone = tiny_session.mask(images[1], targets=[["a dog", "fur"], "the sky"], negative_prompts=["grass"])
    assert torch.equal(results[1], alone)
    assert torch.equal(results[2][0], tiny_session.mask(images[2], ["a cat", "a dog"], threshold=0.5, invert=True))
    from textmask.errors import PromptError

    with pytest.raises(PromptError, match=r"requests\[1\]: prompts"):
        tiny_session.mask_requests([requests[0], MaskRequest(images[1], [])])
