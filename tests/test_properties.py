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
