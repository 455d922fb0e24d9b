"""textmask.session_from_hf: a Segmenter over a (processor, model) pair loaded by someone else."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import textmask
from textmask.engine import session_from_hf
from textmask.errors import ModelLoadError
from textmask.model import PreprocessConfig


def _images(count: int = 2, height: int = 72, width: int = 96) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    coarse = torch.rand((count, 3, 5, 7), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear").permute(0, 2, 3, 1)


def test_same_results_as_loading_the_folder(reference, tiny_session):
    processor, model = reference
    session = session_from_hf(processor, model)
    assert session.model is model  # already on the CPU in float32: used as is
    if session.preprocess_config.backend != "pil":
        pytest.skip("this transformers resizes with torchvision; the folder session uses Pillow")
    images = _images()
    prompts = ["a striped cat on a sofa", "a small brown dog"]  # used nowhere else: both encode the same batch
    assert torch.equal(session.predict(images, prompts), tiny_session.predict(images, prompts))


def _image_processor_class(name: str):
    import transformers

    try:
        return getattr(transformers, name)
    except (AttributeError, ImportError):  # e.g. a torchvision processor without torchvision
        return None


@pytest.mark.parametrize("name", ["ViTImageProcessor", "ViTImageProcessorPil", "ViTImageProcessorFast"])
def test_pixels_are_bit_identical_to_the_processors_own(name, reference, tiny_model_dir):
    """Whichever backend the processor uses (Pillow or torchvision), the model gets the very same pixels."""
    cls = _image_processor_class(name)
    if cls is None:
        pytest.skip(f"transformers has no usable {name} here")
    from transformers import CLIPSegProcessor

    tokenizer, model = reference[0].tokenizer, reference[1]
    try:
        image_processor = cls.from_pretrained(str(tiny_model_dir))
        processor = CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)
    except Exception as exc:  # e.g. torchvision missing
        pytest.skip(f"{name} unusable here: {exc}")
    session = session_from_hf(processor, model)
    for height, width in [(72, 96), (500, 90), (352, 352), (31, 700)]:
        image = (_images(1, height, width)[0] * 255).to(torch.uint8)
        expected = processor.image_processor(images=image.numpy(), return_tensors="pt")["pixel_values"]
        ours = session.preprocess([image.permute(2, 0, 1)])
        assert torch.equal(ours, expected), (name, session.preprocess_config.backend, height, width)


def test_settings_come_from_the_image_processor(reference, tiny_model_dir):
    processor, _ = reference
    config = PreprocessConfig.from_image_processor(processor.image_processor)
    bases = {c.__name__ for c in type(processor.image_processor).__mro__}
    torchvision = bool(bases & {"TorchvisionBackend", "BaseImageProcessorFast"})
    assert config.backend == ("torchvision" if torchvision else "pil")
    assert replace(config, backend="pil") == PreprocessConfig.from_folder(tiny_model_dir)
    assert config.size == (352, 352) and config.resample == "bilinear"
    assert PreprocessConfig.from_mapping({"size": {"shortest_edge": 224}, "resample": 3}).size == (224, 224)
    assert PreprocessConfig.from_mapping({"resample": 3}).resample == "bicubic"


def test_logits_match_the_transformers_forward_whatever_its_shape(reference):
    """transformers returns [352, 352] or [1, 352, 352] for one image depending on the version."""
    processor, model = reference
    session = session_from_hf(processor, model)
    image = (_images(1)[0] * 255).to(torch.uint8).numpy()
    with torch.no_grad():
        logits = model(**processor(text="a cat", images=image, padding=True, return_tensors="pt")).logits
    assert tuple(logits.shape) in ((352, 352), (1, 352, 352))
    ours = session.decode(session.encode_images(image[None]), session.encode_prompts("a cat"))
    assert torch.allclose(ours[0, 0], logits.reshape(352, 352), rtol=1e-4, atol=1e-4)


def test_cached_per_model_device_and_dtype_and_never_changes_the_callers_model(reference):
    processor, model = reference
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = session_from_hf(processor, model)
    assert session_from_hf(processor, model) is first
    half = session_from_hf(processor, model, device="cpu", dtype="bfloat16")
    assert half is not first and half.model is not model
    assert half.dtype == torch.bfloat16 and next(half.model.parameters()).dtype == torch.bfloat16
    assert session_from_hf(processor, model, device="cpu", dtype="bfloat16") is half
    masks = half.mask(_images(1), "a cat")
    assert masks.shape == (1, 72, 96)
    after = model.state_dict()
    assert next(model.parameters()).dtype == torch.float32
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_public_export():
    assert textmask.session_from_hf is session_from_hf


@pytest.mark.parametrize("pair", [("processor", "model"), (None, torch.nn.Linear(2, 2))])
def test_not_a_clipseg_pair_is_a_clear_error(pair, reference):
    with pytest.raises(ModelLoadError, match=r"CLIPSegProcessor, CLIPSegForImageSegmentation"):
        session_from_hf(*pair)
    processor, model = reference
    with pytest.raises(ModelLoadError):
        session_from_hf(model, processor)  # swapped
