"""Property-based tests: any shape, dtype and value the types allow gives masks of the right shape in [0, 1],
or a clear InputError / ValueError — never a crash from inside torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from textmask import postprocess as pp
from textmask.errors import InputError
from textmask.images import as_image_batch

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

dtypes = st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.float16, np.bool_, np.int32, np.int8])
shapes = hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=6)


@SETTINGS
@given(data=st.data(), dtype=dtypes, shape=shapes)
def test_conversion_gives_levels_or_input_error(data, dtype, shape) -> None:
    elements = None
    if np.dtype(dtype).kind == "f":
        width = np.dtype(dtype).itemsize * 8
        elements = st.floats(-3, 300, width=width) | st.sampled_from([float("nan"), float("inf"), 0.5])
    array = data.draw(hnp.arrays(dtype, shape, elements=elements))
    as_tensor = data.draw(st.booleans())
    value = torch.from_numpy(array.copy()) if as_tensor and dtype not in (np.uint16,) else array
    try:
        batch = as_image_batch(value)
        levels = batch.levels(0, len(batch))
    except InputError as error:
        assert str(error)  # a message, naming the input
        return
    for image in levels:
        assert image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3
        assert image.shape[1] > 0 and image.shape[2] > 0


mask_arrays = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=9),
    elements=st.floats(0, 1, width=32),
)


@SETTINGS
@given(
    values=mask_arrays,
    threshold=st.none() | st.floats(0, 1),
    softness=st.floats(0, 1),
    grow=st.integers(-4, 4),
    blur=st.floats(0, 5),
    feather=st.floats(0, 5),
    invert=st.booleans(),
    combine=st.sampled_from(pp.COMBINE_MODES),
)
def test_post_processing_keeps_shape_and_range(values, threshold, softness, grow, blur, feather, invert, combine):
    maps = torch.from_numpy(values)
    while maps.dim() < 4:
        maps = maps[None]
    options = pp.MaskOptions(
        threshold=threshold,
        threshold_softness=softness,
        grow=grow,
        blur=blur,
        feather=feather,
        invert=invert,
        combine=combine,
    )
    out = pp.finish_masks(maps, maps[:, :1] * 0.5, options)
    assert out.shape == (maps.shape[0], *maps.shape[-2:])
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    for normalized in (pp.normalize_minmax(maps), pp.normalize_seed(maps)):
        assert normalized.shape == maps.shape and normalized.min() >= 0 and normalized.max() <= 1


@pytest.mark.parametrize("normalize", ["none", "minmax", "seed"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    height=st.integers(1, 40), width=st.integers(1, 40), batch=st.integers(0, 3), channels=st.sampled_from([1, 3, 4])
)
def test_engine_masks_any_valid_batch(tiny_session, normalize, height, width, batch, channels) -> None:
    images = torch.rand(batch, height, width, channels)
    masks = tiny_session.mask(images, "a thing", normalize=normalize)
    assert masks.shape == (batch, height, width)
    if batch:
        assert masks.min() >= 0 and masks.max() <= 1


# ------------------------------------------------------------------------------ more input forms
PIL_MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"]
PIL_MODES += ["I;16", "I;16B", "I", "F"]


@SETTINGS
@given(mode=st.sampled_from(PIL_MODES), width=st.integers(0, 7), height=st.integers(0, 7), seed=st.integers(0, 99))
def test_any_pil_image_gives_levels_or_input_error(mode, width, height, seed) -> None:
    from PIL import Image

    from textmask.images import to_levels

    rng = np.random.default_rng(seed)
    image = Image.new(mode, (width, height))
    if width and height:  # random content, whatever the mode's depth
        noise = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
        image = Image.merge(mode, [noise.convert(band_mode) for band_mode in _band_modes(image)])
    try:
        levels = to_levels(image)
    except InputError as error:
        assert width == 0 or height == 0, str(error)
        assert "zero size" in str(error)
        return
    assert levels.shape == (3, height, width) and levels.dtype == torch.uint8


def _band_modes(image) -> list[str]:
    """The mode of each band of ``image`` (what Image.merge wants)."""
    return [band.mode for band in image.split()]


comfy_values = st.one_of(
    hnp.arrays(
        np.float32, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5), elements=st.floats(0, 1, width=32)
    ),
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4),
        elements=st.floats(-2, 3, width=32) | st.just(float("nan")),
    ),
)


@SETTINGS
@given(data=st.data(), as_list=st.booleans())
def test_comfy_layout_converter_gives_batches_or_input_error(data, as_list) -> None:
    """Whatever tensor (or list of tensors) reaches a ComfyUI IMAGE input: a channels-last batch, or InputError."""
    from textmask.comfy import runtime

    arrays = data.draw(st.lists(comfy_values, min_size=0, max_size=3)) if as_list else [data.draw(comfy_values)]
    value = [torch.from_numpy(a.copy()) for a in arrays] if as_list else torch.from_numpy(arrays[0].copy())
    try:
        images = runtime.as_images(value)
        batch = as_image_batch(images)
        levels = batch.levels(0, len(batch))
    except InputError as error:
        assert str(error).startswith("images")  # names the input (images, images[1], ...)
        return
    assert len(levels) >= 1
    if isinstance(images, torch.Tensor):
        assert images.dim() == 4 and min(images.shape[:3]) > 0
    else:
        assert all(image.dim() == 3 and min(image.shape[:2]) > 0 for image in images)
    for image in levels:
        assert image.dtype == torch.uint8 and image.shape[0] == 3


SLUG = r"(prompt-[0-9a-f]{8}|[a-z0-9]+(-[a-z0-9]+)*)"


@settings(max_examples=200, deadline=None)
@given(prompt=st.text(max_size=200))
def test_prompt_slugs_are_short_safe_and_stable(prompt) -> None:
    import re

    from textmask.batch import prompt_slug

    slug = prompt_slug(prompt)
    assert re.fullmatch(SLUG, slug), slug
    assert len(slug) <= 48 + 9 and slug == prompt_slug(prompt)


@settings(max_examples=150, deadline=None)
@given(
    prompts=st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=12), key=st.text(min_size=1, max_size=20)
)
def test_output_names_are_unique_and_writable(tmp_path_factory, prompts, key) -> None:
    import re

    from textmask.batch import InputItem, make_targets, plan_outputs

    each = make_targets(prompts, "each")
    assert len(each) == len(dict.fromkeys(prompts))
    assert len({target.slug for target in each}) == len(each)  # one file per prompt, never two on one name
    for combine in ("union", "intersection"):
        (target,) = make_targets(prompts, combine)
        assert re.fullmatch(r"[a-z0-9+_-]+", target.slug) and len(target.slug) <= 2 * 48 + 9
    safe_key = re.sub(r"[^A-Za-z0-9_-]", "_", key)  # keys come from real file names; here: any safe stem
    folder = tmp_path_factory.mktemp("names")
    item = InputItem(source="x.png", key=safe_key, kind="image")
    outputs = plan_outputs(item, each, folder, kinds=("mask", "overlay", "cutout"))
    assert len({output.path for output in outputs}) == 3 * len(each)
    for output in outputs:
        assert output.path.parent == folder and output.path.name.isascii()
        output.path.write_bytes(b"")  # the file system takes every name
    assert len(list(folder.iterdir())) == len(outputs)


@settings(max_examples=100, deadline=None)
@given(
    blur=st.floats(allow_nan=True, allow_infinity=True),
    grow=st.one_of(st.integers(-(10**12), 10**12), st.floats(allow_nan=True, allow_infinity=True)),
    threshold=st.none() | st.floats(allow_nan=True, allow_infinity=True),
)
def test_any_option_values_give_masks_or_value_error(blur, grow, threshold) -> None:
    try:
        options = pp.MaskOptions(blur=blur, grow=grow, threshold=threshold)
    except ValueError as error:
        assert str(error).split(":")[0] in ("blur", "grow", "threshold")
        return
    maps = torch.rand(2, 1, 9, 7, generator=torch.Generator().manual_seed(0))
    out = pp.finish_masks(maps, None, options)
    assert out.shape == (2, 9, 7) and torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    forms=st.lists(
        st.tuples(
            st.sampled_from(["pil", "uint8", "uint16", "float", "grey", "bool"]), st.integers(1, 30), st.integers(1, 30)
        ),
        min_size=1,
        max_size=4,
    )
)
def test_engine_masks_any_list_of_mixed_images(tiny_session, forms) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for form, height, width in forms:
        if form == "pil":
            images.append(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
        elif form == "uint8":
            images.append(torch.from_numpy(rng.integers(0, 256, (height, width, 4), dtype=np.uint8)))
        elif form == "uint16":
            images.append(rng.integers(0, 65536, (height, width, 3), dtype=np.uint16))
        elif form == "float":
            images.append(torch.rand(height, width, 3, dtype=torch.float64))
        elif form == "grey":
            images.append(rng.random((height, width), dtype=np.float32))
        else:
            images.append(rng.random((height, width, 1)) > 0.5)
    masks = tiny_session.mask(images, ["a thing", "another"], threshold=0.4, grow=2)
    assert [tuple(mask.shape) for mask in masks] == [(height, width) for _, height, width in forms]
    assert all(mask.min() >= 0 and mask.max() <= 1 for mask in masks)
