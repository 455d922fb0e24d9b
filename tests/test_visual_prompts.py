"""Visual prompts (issue 8): example images as prompts, masked examples, and weighted blends.

References are transformers' own CLIPSeg paths on the tiny random model: the processor's ``visual_prompt``
preprocessing, ``get_conditional_embeddings(conditional_pixel_values=...)`` and the model forward with
``conditional_pixel_values`` / ``conditional_embeddings``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from textmask.errors import PromptError
from textmask.prompts import (
    Blend,
    ImagePrompt,
    TextPrompt,
    average,
    blank_background,
    combine_prompts,
    examples,
    parse_prompt,
    prepare_example,
)


def _picture(seed: int, height: int, width: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode)


def _assert_logits_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    # The random tiny model's logits reach |x| ≈ 500, where float32 summation order alone moves them by
    # ~1e-4 (our decoder and transformers' differ by that much for text prompts too): 1e-4 + 2e-6 · scale.
    tolerance = 1e-4 + 2e-6 * float(ref.abs().max())
    diff = float((ours - ref).abs().max())
    assert diff <= tolerance, f"max |diff| {diff} > {tolerance}"


class TowerCounter:
    """Counts the example images that go through CLIP's image tower (rows into visual_projection)."""

    def __init__(self, session) -> None:
        self.rows = 0
        self.calls = 0
        self._handle = session.model.clip.visual_projection.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.calls += 1
        self.rows += inputs[0].shape[0]

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture
def tower(tiny_session):
    counter = TowerCounter(tiny_session)
    yield counter
    counter.close()


# ------------------------------------------------------------------------------- parity
def test_unmasked_example_matches_transformers_visual_prompt_path(tiny_session, reference):
    processor, model = reference
    example = _picture(1, 97, 131)
    targets = [_picture(2, 120, 90), _picture(3, 64, 200)]
    inputs = processor(images=targets, visual_prompt=[example, example], return_tensors="pt")
    with torch.no_grad():
        ref_logits = model(
            pixel_values=inputs["pixel_values"], conditional_pixel_values=inputs["conditional_pixel_values"]
        ).logits
        ref_embedding = model.get_conditional_embeddings(
            batch_size=1, conditional_pixel_values=inputs["conditional_pixel_values"][:1]
        )

    embedding = tiny_session.encode_prompts(ImagePrompt(example))
    assert embedding.shape == ref_embedding.shape
    assert torch.equal(embedding, ref_embedding)  # same pixels, same tower: bit-identical

    logits = tiny_session.decode(tiny_session.encode_images(targets), embedding)
    assert logits.shape == (2, 1, 352, 352)
    _assert_logits_close(logits[:, 0], ref_logits)

    # predict() takes the example transparently and returns probabilities at each image's size.
    probs = tiny_session.predict(targets, ImagePrompt(example))
    for index, target in enumerate(targets):
        expected = tiny_session.probabilities(ref_logits[index][None, None], (target.height, target.width))[0, 0]
        assert probs[index].shape == (target.height, target.width)
        assert float((probs[index] - expected).abs().max()) < 1e-4


def test_example_image_forms_give_the_same_embedding(tiny_session, tmp_path):
    example = _picture(4, 50, 70)
    path = tmp_path / "example.png"
    example.save(path)
    array = np.asarray(example)
    forms = [
        ImagePrompt(example),
        ImagePrompt(path),
        ImagePrompt(str(path)),
        ImagePrompt(array),
        ImagePrompt(torch.from_numpy(array.copy())),
        ImagePrompt(torch.from_numpy(array.copy())[None]),  # a ComfyUI-style [1, H, W, C] batch
        ImagePrompt(torch.from_numpy(array.astype(np.float32)) / 255.0 + 0.5 / 255.0),  # floats, floor(255 x)
        example,  # bare PIL image
        path,  # bare pathlib.Path (a str is always text)
    ]
    embeddings = tiny_session.encode_prompts(forms)
    assert embeddings.shape[0] == len(forms)
    for row in embeddings[1:]:
        assert torch.equal(row, embeddings[0])


# ------------------------------------------------------------------------------ caching
def test_image_tower_runs_once_per_example_whatever_the_number_of_images(tiny_session, tower):
    example = _picture(5, 40, 60)
    targets = torch.rand(5, 48, 40, 3)
    first = tiny_session.mask(targets, ImagePrompt(example), batch_size=2)
    assert first.shape == (5, 48, 40)
    assert tower.rows == 1

    # A new ImagePrompt of the same content (another form, another call, more images) is a cache hit.
    again = tiny_session.mask(torch.rand(7, 32, 32, 3), ImagePrompt(np.asarray(example)), batch_size=3)
    assert again.shape == (7, 32, 32)
    tiny_session.predict(list(targets), [ImagePrompt(example), "a cat", Blend([example, "a dog"])])
    assert tower.rows == 1

    # Other content or other masking settings are other examples: one tower run each.
    mask = np.zeros((40, 60), np.float32)
    mask[10:30, 20:50] = 1.0
    tiny_session.encode_prompts(
        [ImagePrompt(example, mask=mask), ImagePrompt(example, mask=mask, blur=0.0), _picture(6, 40, 60)]
    )
    assert tower.rows == 4
    assert tower.calls == 4
    tiny_session.encode_prompts([ImagePrompt(example, mask=mask.copy()), ImagePrompt(example, mask=mask, blur=0)])
    assert tower.rows == 4


# ------------------------------------------------------------------------------ blending
def test_text_and_example_average_equals_conditional_embeddings(tiny_session, reference):
    processor, model = reference
    example = _picture(7, 80, 60)
    targets = [_picture(8, 100, 100), _picture(9, 70, 90)]
    text = "a photo of a red car"
    with torch.no_grad():
        tokens = processor(text=[text], return_tensors="pt", padding=True)
        text_embedding = model.get_conditional_embeddings(
            batch_size=1, input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        visual = processor(visual_prompt=[example], return_tensors="pt")["conditional_pixel_values"]
        image_embedding = model.get_conditional_embeddings(batch_size=1, conditional_pixel_values=visual)
        averaged = (1.0 * text_embedding + 3.0 * image_embedding) / 4.0
        pixel_values = processor(images=targets, return_tensors="pt")["pixel_values"]
        ref_logits = model(pixel_values=pixel_values, conditional_embeddings=averaged.repeat(2, 1)).logits

    variants = [
        Blend([text, ImagePrompt(example)], weights=[1, 3]),
        average([text, example], weights=[0.25, 0.75]),
        Blend([TextPrompt(text, weight=2.0), ImagePrompt(example, weight=6.0)]),
    ]
    embeddings = tiny_session.encode_prompts(variants)
    for row in embeddings:
        torch.testing.assert_close(row, averaged[0], rtol=0, atol=1e-6)
    features = tiny_session.encode_images(targets)
    _assert_logits_close(tiny_session.decode(features, embeddings[:1])[:, 0], ref_logits)

    # Equal weights by default; blends nest; a weight-0 item does not count.
    plain = tiny_session.encode_prompts([text, example, _picture(10, 30, 30)])
    mean = tiny_session.encode_prompts(Blend([text, example]))[0]
    torch.testing.assert_close(mean, (plain[0] + plain[1]) / 2, rtol=0, atol=1e-6)
    nested = tiny_session.encode_prompts(Blend([Blend([text, example]), _picture(10, 30, 30)], weights=[2, 1]))[0]
    torch.testing.assert_close(nested, (plain[0] + plain[1] + plain[2]) / 3, rtol=0, atol=1e-6)
    ignored = tiny_session.encode_prompts(Blend([text, example], weights=[1, 0]))[0]
    torch.testing.assert_close(ignored, plain[0], rtol=0, atol=0)


def test_examples_helper_averages_a_batch_and_combine_prompts(tiny_session):
    batch = torch.rand(3, 40, 40, 3)
    single = tiny_session.encode_prompts([ImagePrompt(image) for image in batch])
    blended = tiny_session.encode_prompts(examples(batch))[0]
    torch.testing.assert_close(blended, single.mean(0), rtol=0, atol=1e-6)
    assert isinstance(examples(batch[:1]), ImagePrompt)
    assert len(examples(batch, blend=False)) == 3

    masks = torch.zeros(1, 40, 40)
    masks[0, 5:30, 10:35] = 1.0  # one ComfyUI MASK for every example
    assert all(p.mask is not None for p in examples(batch, masks, blend=False))
    with pytest.raises(PromptError, match="3 example images but 2 masks"):
        examples(batch, torch.ones(2, 40, 40))

    text_embedding = tiny_session.encode_prompts("a dog")[0]
    separate = combine_prompts(["a dog"], examples(batch))
    assert len(separate) == 2
    mixed = combine_prompts(["a dog", "a cat"], examples(batch), mix="blend", example_weight=3.0)
    assert len(mixed) == 2
    torch.testing.assert_close(
        tiny_session.encode_prompts(mixed)[0], (text_embedding + 3.0 * blended) / 4.0, rtol=0, atol=1e-6
    )
    assert combine_prompts([], examples(batch[:1]), mix="blend")[0].mask is None
    with pytest.raises(PromptError, match="mix"):
        combine_prompts(["a"], batch[0], mix="sum")


# -------------------------------------------------------------------------- masked examples
def test_crop_and_pad_follow_the_mask(tiny_session):
    image = torch.randint(0, 256, (100, 120, 3), dtype=torch.uint8)
    mask = torch.zeros(100, 120)
    mask[20:40, 30:70] = 1.0  # 20 × 40 object; 10 % context → 24 × 48, padded to 48 × 48
    fill = tiny_session._example_fill
    prepared = prepare_example(ImagePrompt(image, mask=mask), "prompts[0]", fill)
    assert prepared.levels.shape == (3, 48, 48)
    assert torch.equal(prepared.levels[:, 12:36, :], image[18:42, 26:74].permute(2, 0, 1))
    assert torch.equal(prepared.levels[:, :12, :], fill.view(3, 1, 1).expand(3, 12, 48))
    assert torch.equal(prepared.mask[14:34, 4:44], torch.ones(20, 40))
    assert float(prepared.mask.sum()) == 20 * 40
    # The pad colour is the model's mean colour: its normalized pixel value is ~0.
    assert float(tiny_session._pixel_table[torch.arange(3), fill.long()].abs().max()) < 0.01

    uncropped = prepare_example(ImagePrompt(image, mask=mask, crop=False), "prompts[0]", fill)
    assert uncropped.levels.shape == (3, 100, 120)


def test_blank_background_formula():
    pixels = torch.randn(3, 352, 352)
    mask = torch.zeros(352, 352)
    mask[100:200, 50:300] = 1.0
    kept = blank_background(pixels, mask, background=0.0, blur=0.0)
    assert torch.equal(kept[:, 100:200, 50:300], pixels[:, 100:200, 50:300])
    assert float(kept[:, :100].abs().max()) == 0.0  # background → normalized 0, the mean colour
    halved = blank_background(pixels, mask, background=0.5, blur=0.0)
    torch.testing.assert_close(halved[:, :100], 0.5 * pixels[:, :100])
    constant = torch.full((3, 352, 352), 0.7)
    blurred = blank_background(constant, mask, background=1.0, blur=3.0)
    torch.testing.assert_close(blurred, constant)  # a blur of a constant is that constant (replicated edges)
    # A mask of another size is resized to the pixels' size.
    small = blank_background(pixels, torch.ones(10, 10), background=0.0, blur=3.0)
    torch.testing.assert_close(small, pixels)


def test_masked_example_matches_transformers_on_the_engineered_pixels(tiny_session, reference):
    processor, model = reference
    example = _picture(11, 90, 110)
    mask = np.zeros((90, 110), np.float32)
    mask[30:60, 40:100] = 1.0  # 30 × 60 → with 10 % context rows 27:63, cols 34:106 → 36 × 72, pad to 72²
    crop = np.asarray(example)[27:63, 34:106]
    fill = tiny_session._example_fill.numpy()
    square = np.empty((72, 72, 3), np.uint8)
    square[:] = fill
    square[18:54] = crop
    square_mask = torch.zeros(72, 72)
    square_mask[18:54] = torch.from_numpy(mask[27:63, 34:106])
    with torch.no_grad():
        pixels = processor(visual_prompt=[Image.fromarray(square)], return_tensors="pt")["conditional_pixel_values"]
        pixels = blank_background(pixels[0], square_mask, background=0.1, blur=3.0)[None]
        expected = model.get_conditional_embeddings(batch_size=1, conditional_pixel_values=pixels)
    ours = tiny_session.encode_prompts(ImagePrompt(example, mask=mask))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_masked_background_changes_the_embedding_and_is_deterministic(tiny_session):
    example = _picture(12, 96, 96)
    mask = np.zeros((96, 96), np.float32)
    mask[20:70, 25:75] = 1.0
    plain, masked, soft, sharp = tiny_session.encode_prompts(
        [
            ImagePrompt(example),
            ImagePrompt(example, mask=mask),
            ImagePrompt(example, mask=mask, background=0.5),
            ImagePrompt(example, mask=mask, blur=0.0),
        ]
    )
    assert float((masked - plain).abs().max()) > 1e-3
    assert float((soft - masked).abs().max()) > 1e-4
    assert float((sharp - masked).abs().max()) > 1e-4

    # Deterministic: recomputed from scratch (cache emptied), the embedding is bit-identical.
    tiny_session._example_cache.clear()
    assert torch.equal(tiny_session.encode_prompts(ImagePrompt(example, mask=mask.copy()))[0], masked)

    # Nothing to blank (the whole square image is the object, background kept): same as no mask.
    full = ImagePrompt(example, mask=np.ones((96, 96), np.float32), background=1.0, blur=0.0)
    assert torch.equal(tiny_session.encode_prompts(full)[0], plain)


def test_alpha_mask_from_a_cutout(tiny_session, tmp_path):
    rgba = _picture(13, 60, 80, "RGBA")
    alpha = np.asarray(rgba)[..., 3]
    path = tmp_path / "cutout.png"
    rgba.save(path)
    rgb = rgba.convert("RGB")
    from_alpha, from_file, explicit = tiny_session.encode_prompts(
        [
            ImagePrompt(rgba, mask="alpha"),
            ImagePrompt(path, mask="alpha"),
            ImagePrompt(rgb, mask=alpha),
        ]
    )
    assert torch.equal(from_alpha, explicit)
    assert torch.equal(from_file, explicit)
    with pytest.raises(PromptError, match="no alpha channel"):
        tiny_session.encode_prompts(ImagePrompt(rgb, mask="alpha"))


# ------------------------------------------------------------------------- predict / mask
def test_mask_and_predict_accept_visual_prompts_everywhere(tiny_session):
    images = torch.rand(2, 40, 50, 3)
    example = _picture(14, 30, 30)
    both = tiny_session.predict(images, ["a cat", ImagePrompt(example)])
    assert both.shape == (2, 2, 40, 50)
    one = tiny_session.predict(images, ImagePrompt(example))
    assert one.shape == (2, 40, 50)
    # (the decoder's batched matmuls differ in the last bits between P = 1 and P = 2)
    torch.testing.assert_close(one, both[:, 1], rtol=0, atol=1e-4)

    negative = tiny_session.mask(images, "a cat", negative_prompts=ImagePrompt(example))
    torch.testing.assert_close(negative, (both[:, 0] - both[:, 1]).clamp(0, 1), rtol=0, atol=1e-4)
    union = tiny_session.mask(images, ["a cat", example], combine="union")
    torch.testing.assert_close(union, both.amax(dim=1), rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------ errors
def test_bad_prompts_raise_prompt_errors(tiny_session, tmp_path):
    image = torch.rand(32, 32, 3)
    encode = tiny_session.encode_prompts
    with pytest.raises(PromptError, match=r"prompts\[1\]: unsupported prompt type int"):
        encode(["a cat", 42])
    with pytest.raises(PromptError, match="at least one prompt"):
        encode([])
    with pytest.raises(PromptError, match=r"prompts\[0\].*file not found"):
        encode(ImagePrompt(tmp_path / "missing.png"))
    with pytest.raises(PromptError, match=r"negative_prompts\[0\].*file not found"):
        tiny_session.mask(image, "a cat", negative_prompts=[ImagePrompt(tmp_path / "missing.png")])
    with pytest.raises(PromptError, match=r"prompts\[0\].prompts\[1\]: unsupported prompt type NoneType"):
        encode(Blend(["a", None]))
    with pytest.raises(PromptError, match="batch of 3 example images"):
        encode(torch.rand(3, 32, 32, 3))
    with pytest.raises(PromptError, match="must match"):
        encode(ImagePrompt(image, mask=torch.ones(16, 32)))
    with pytest.raises(PromptError, match="mask is empty"):
        encode(ImagePrompt(image, mask=torch.zeros(32, 32)))
    with pytest.raises(PromptError, match="divide by 255"):
        encode(ImagePrompt(image, mask=torch.full((32, 32), 200.0)))
    with pytest.raises(PromptError, match=r"expected a mask \[H, W\]"):
        encode(ImagePrompt(image, mask=torch.ones(32, 32, 3)))
    with pytest.raises(PromptError, match="example image: float images must hold values in"):
        encode(ImagePrompt(image * 255))
    with pytest.raises(PromptError, match="sum to 0"):
        encode(Blend(["a", "b"], weights=[0, 0]))

    # Construction-time checks.
    with pytest.raises(PromptError, match="background must be"):
        ImagePrompt(image, background=2.0)
    with pytest.raises(PromptError, match="blur must be"):
        ImagePrompt(image, blur=-1)
    with pytest.raises(PromptError, match="weight must be"):
        ImagePrompt(image, weight=float("nan"))
    with pytest.raises(PromptError, match="image is None"):
        ImagePrompt(None)
    with pytest.raises(PromptError, match=r"example mask: file not found"):
        encode(ImagePrompt(image, mask=str(tmp_path / "mask.png")))
    with pytest.raises(PromptError, match="at least one prompt"):
        Blend([])
    with pytest.raises(PromptError, match="2 prompts but 1 weights"):
        Blend(["a", "b"], weights=[1])
    with pytest.raises(PromptError, match="weight must be"):
        TextPrompt("a", weight=-1)
    assert issubclass(PromptError, ValueError)


def test_parse_prompt():
    assert parse_prompt("a red car") == "a red car"
    assert parse_prompt("text:image: not a file") == "image: not a file"
    prompt = parse_prompt("image:examples/car.png", mask="examples/car-mask.png", background=0.2)
    assert isinstance(prompt, ImagePrompt)
    assert prompt.image == Path("examples/car.png")
    assert prompt.mask == "examples/car-mask.png"
    assert prompt.background == 0.2
    assert parse_prompt("image:cut.png", mask="alpha").mask == "alpha"
    with pytest.raises(PromptError, match="give a file after"):
        parse_prompt("image:")


def test_prompt_types_are_exported_and_text_collections_still_work(tiny_session):
    import textmask

    assert textmask.ImagePrompt is ImagePrompt
    assert textmask.Blend is Blend
    assert textmask.TextPrompt is TextPrompt
    assert textmask.average is average
    as_list = tiny_session.encode_prompts(["a cat", "a dog"])
    for other in (("a cat", "a dog"), np.array(["a cat", "a dog"]), iter(["a cat", "a dog"])):
        assert torch.equal(tiny_session.encode_prompts(other), as_list)
    assert torch.equal(tiny_session.encode_prompts(TextPrompt("a dog")), as_list[1:])
