"""Outputs pinned against recorded arrays: the CLI (masks, overlays, cut-outs, 16-bit masks, video files and frames),
the Ray path and the ComfyUI nodes give what they gave before the code was reorganized (issue 14), on any CPU
(issue 20).

The expected outputs live in ``tests/golden/outputs.npz``: each PNG as its decoded levels, each ComfyUI output as its
float32 tensor, each lossy video as its frames' mean levels. They were recorded with the random ``tiny`` model
(seeded weights, :func:`textmask.testmodels.build_random_model`); regenerate them only for a deliberate change of
output, with ``TEXTMASK_UPDATE_GOLDEN=1 pytest tests/test_golden_outputs.py``, and say why in the commit.

Why tolerances and not digests: CPU kernels differ between machines (AMX, AVX-512, AVX2; MKL and oneDNN choose
paths by CPU and by memory alignment), and so do the last bits of float results: logits move by about 1e-5 from one
kernel path to another, probabilities by a few 1e-6. The rules (:func:`compare_levels`, :func:`compare_floats`):

* decoded levels (8-bit, or 16-bit in 8-bit units): a pixel that sits within rounding of a level boundary moves by
  one level, so at most ``CHANGED_SHARE`` (2 %) of the values may differ at all. A pixel whose probability sits
  within rounding of a hard threshold flips (0 ↔ 255), so at most ``max(2, 0.1 %)`` values may differ by more than
  one level. A real change of the pipeline moves far more: one level everywhere changes most values
  (``test_a_one_level_change_fails_the_golden_check``);
* ComfyUI's float tensors: the same two shares, with one level = 1/255 and "differs" meaning by more than 1e-4;
* lossy videos: each decoded frame's mean level within 0.3 (x264 is not bit-deterministic under threading).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import files_in, invoke
from PIL import Image

GOLDEN = Path(__file__).parent / "golden" / "outputs.npz"
UPDATE = os.environ.get("TEXTMASK_UPDATE_GOLDEN") == "1"
CHANGED_SHARE = 0.02  # values that may differ at all (one-level rounding moves)
FLIPPED_SHARE, FLIPPED_MIN = 0.001, 2  # values that may differ by more than one level (threshold flips)
FLOAT_CHANGED = 1e-4  # a float output "differs" beyond this (kernel paths move probabilities by a few 1e-6)
VIDEO_MEAN_LEVELS = 0.3


def compare_levels(found: np.ndarray, expected: np.ndarray, level: float = 1.0, changed: float = 0.0) -> str | None:
    """None when ``found`` is ``expected`` up to CPU rounding (see the module's rules), else what differs.

    ``level`` is one output level in the arrays' units (257 for 16-bit PNGs read as such, 1/255 for floats in
    [0, 1]); values differing by more than ``changed`` count as changed."""
    if found.shape != expected.shape:
        return f"shape {found.shape} instead of {expected.shape}"
    difference = np.abs(found.astype(np.float64) - expected.astype(np.float64)) / level
    count = difference.size
    moved = int((difference > changed / level).sum())
    flipped = int((difference > 1.0 + 1e-6).sum())
    if moved > CHANGED_SHARE * count:
        return f"{moved} of {count} values changed (at most {CHANGED_SHARE:.0%}); largest change {difference.max():.3g}"
    if flipped > max(FLIPPED_MIN, FLIPPED_SHARE * count):
        return f"{flipped} of {count} values moved by more than one level; largest {difference.max():.3g} levels"
    return None


def compare_floats(found: np.ndarray, expected: np.ndarray) -> str | None:
    """Float tensors in [0, 1] (ComfyUI's MASK and IMAGE): one level is 1/255, "changed" is beyond 1e-4."""
    return compare_levels(found, expected, level=1 / 255, changed=FLOAT_CHANGED)


def png_levels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def video_frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fmt = "rgba" if path.suffix == ".webm" else ("gray" if path.name.count(".") == 2 else "rgb24")
        return [frame.to_ndarray(format=fmt) for frame in container.decode(stream)]


def folder_outputs(folder: Path) -> dict[str, np.ndarray]:
    """Each output file under ``folder``: a PNG's levels, a video's per-frame mean levels (float64)."""
    out = {}
    for name in sorted(files_in(folder)):
        path = folder / name
        if name.startswith(".") or "/." in name:
            continue
        if path.suffix in (".mp4", ".webm"):
            out[name] = np.array([frame.mean() for frame in video_frames(path)], np.float64)
        else:
            out[name] = png_levels(path.read_bytes())
    return out


def tensor_output(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().contiguous().float().numpy()


def compare(name: str, found: np.ndarray, expected: np.ndarray) -> str | None:
    if name.endswith((".mp4", ".webm")):  # per-frame mean levels
        if found.shape != expected.shape:
            return f"{found.size} frames instead of {expected.size}"
        worst = float(np.abs(found - expected).max(initial=0.0))
        return None if worst <= VIDEO_MEAN_LEVELS else f"a frame's mean level moved by {worst:.2f}"
    if found.dtype == np.float32:
        return compare_floats(found, expected)
    return compare_levels(found, expected, level=257.0 if expected.dtype == np.uint16 else 1.0)


def recorded() -> dict[str, np.ndarray]:
    if not GOLDEN.is_file():
        return {}
    with np.load(GOLDEN) as stored:
        return {key: stored[key] for key in stored.files}


def check(case: str, outputs: dict[str, np.ndarray]) -> None:
    """Compare with (or, when updating, record) the golden outputs of one case."""
    golden = recorded()
    if UPDATE:
        golden = {key: value for key, value in golden.items() if not key.startswith(f"{case}::")}
        golden.update({f"{case}::{name}": value for name, value in outputs.items()})
        GOLDEN.parent.mkdir(exist_ok=True)
        np.savez_compressed(GOLDEN, **dict(sorted(golden.items())))
        return
    expected = {key.split("::", 1)[1]: value for key, value in golden.items() if key.startswith(f"{case}::")}
    assert expected, f"no golden outputs for {case!r}; record them with TEXTMASK_UPDATE_GOLDEN=1"
    assert sorted(outputs) == sorted(expected), f"{case}: other files than before"
    differing = {name: why for name in expected if (why := compare(name, outputs[name], expected[name]))}
    assert not differing, f"{case}: outputs differ from the recorded ones: {differing}"


# ------------------------------------------------------------------------------------------ inputs
@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed folder: RGB, grey, RGBA (its alpha goes into cut-outs) and a palette image of different sizes,
    an example image, and a lossless 6-frame video (decoded frames are exactly these arrays)."""
    rng = np.random.default_rng(2024)
    root = tmp_path_factory.mktemp("golden")
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)

    def smooth(height: int, width: int, channels: int) -> np.ndarray:
        coarse = rng.random((channels, 5, 7)).astype(np.float32)
        full = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], size=(height, width), mode="bicubic")
        return (full[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)

    Image.fromarray(smooth(40, 56, 3)).save(photos / "rgb.png")
    Image.fromarray(smooth(33, 29, 1)[..., 0]).save(photos / "grey.png")
    Image.fromarray(smooth(36, 36, 4), "RGBA").save(photos / "sub" / "alpha.png")
    Image.fromarray(smooth(30, 44, 3)).convert("P").save(photos / "sub" / "palette.png")
    Image.fromarray(smooth(48, 48, 3)).save(root / "example.png")
    return root


@pytest.fixture(scope="module")
def clip(inputs: Path) -> Path:
    av = pytest.importorskip("av")
    path = inputs / "clip.mov"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=8)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "rgb24"
        for index in range(6):
            frame = np.zeros((32, 48, 3), np.uint8)
            frame[..., 1] = np.linspace(0, 255, 48, dtype=np.uint8)
            frame[:, index * 6 : index * 6 + 8] = 230
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


CLI_CASES = {
    "cli-each-all-kinds": ["-p", "a cat", "-p", "the sky", "-k", "mask", "-k", "overlay", "-k", "cutout"],
    "cli-union-negative-options": [
        "-p", "a cat", "-p", "a dog", "--combine", "union", "-n", "grass",
        "-t", "0.4", "--softness", "0.2", "--grow", "2", "--blur", "1.5", "--feather", "2",
    ],
    "cli-intersection-invert-16bit-minmax": [
        "-p", "a cat", "-p", "fur", "--combine", "intersection", "--invert", "--bits", "16", "--normalize", "minmax",
        "--shrink", "1",
    ],
    "cli-seed-normalize": ["-p", "a cat", "--normalize", "seed"],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_outputs_are_unchanged(case: str, inputs: Path, tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = invoke("mask", str(inputs / "photos"), *CLI_CASES[case], "--model", str(tiny_model_dir), "-o", str(out))
    assert result.exit_code == 0, result.output
    check(case, folder_outputs(out))


def test_cli_example_prompt_outputs_are_unchanged(inputs: Path, tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["-p", f"image:{inputs / 'example.png'}", "-p", "a cat", "--blend", "--example-weight", "2"]
    result = invoke("mask", str(inputs / "photos"), *args, "--model", str(tiny_model_dir), "-o", str(out))
    assert result.exit_code == 0, result.output
    check("cli-example-blend", folder_outputs(out))


def test_cli_video_outputs_are_unchanged(clip: Path, tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["-p", "a bar", "-k", "mask", "-k", "overlay", "-k", "cutout", "--video-output", "both", "--smooth", "0.5"]
    result = invoke("mask", str(clip), *args, "-b", "4", "--model", str(tiny_model_dir), "-o", str(out))
    assert result.exit_code == 0, result.output
    check("cli-video", folder_outputs(out))


@pytest.mark.ray
def test_ray_outputs_equal_the_cli_golden(inputs: Path, tiny_model_dir: Path, tmp_path: Path):
    pytest.importorskip("ray.data")
    if UPDATE:
        pytest.skip("the Ray case compares with the CLI's recorded outputs")
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 * 2**20, logging_level="WARNING")
    try:
        out = tmp_path / "out"
        args = [*CLI_CASES["cli-each-all-kinds"], "--engine", "ray", "--actors", "2", "--cpus-per-actor", "0.5"]
        result = invoke("mask", str(inputs / "photos"), *args, "--model", str(tiny_model_dir), "-o", str(out))
        assert result.exit_code == 0, result.output
        check("cli-each-all-kinds", folder_outputs(out))
    finally:
        if started:
            ray.shutdown()


def test_comfyui_node_outputs_are_unchanged(inputs: Path, tiny_model_dir: Path):
    from textmask.comfy.nodes import (
        SaltCLIPSegLoader,
        SaltCLIPSegMasking,
        TextmaskCLIPSegExampleMasking,
        TextmaskCLIPSegMasking,
    )

    (model,) = SaltCLIPSegLoader().clipseg_model(str(tiny_model_dir))
    generator = torch.Generator().manual_seed(5)
    coarse = torch.rand((3, 3, 5, 6), generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(40, 52), mode="bicubic").clamp(0, 1).permute(0, 2, 3, 1)
    example = images[:1, 4:36, 6:40].contiguous()

    outputs: dict[str, np.ndarray] = {}
    masks, mask_images = SaltCLIPSegMasking().CLIPSeg_image(images, "a cat", model)
    outputs["salt.masks"], outputs["salt.mask_images"] = tensor_output(masks), tensor_output(mask_images)
    masks, mask_images, preview = TextmaskCLIPSegMasking().mask(
        images, "a cat\nthe sky", "grass", "union", "minmax", 0.3, 1.0, 2, False, 4, clipseg_model=model
    )
    outputs["advanced.masks"], outputs["advanced.mask_images"] = tensor_output(masks), tensor_output(mask_images)
    outputs["advanced.preview"] = tensor_output(preview)
    masks, _, preview = TextmaskCLIPSegExampleMasking().mask(
        images, example, "minmax", 0.0, 0.0, 0, True, 8, clipseg_model=model
    )
    outputs["example.masks"], outputs["example.preview"] = tensor_output(masks), tensor_output(preview)
    check("comfyui-nodes", outputs)


def test_a_one_level_change_fails_the_golden_check(
    inputs: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tolerances still catch a real change: masks one level brighter (1/255 added before they are written)
    fail the check, though every value moved by one level only."""
    if UPDATE:
        pytest.skip("nothing to compare while recording")
    from textmask import postprocess

    real = postprocess.render
    monkeypatch.setattr(
        postprocess,
        "render",
        lambda kind, images, masks, *rest, **options: real(kind, images, masks + 1 / 255, *rest, **options),
    )
    out = tmp_path / "out"
    case = "cli-union-negative-options"
    result = invoke("mask", str(inputs / "photos"), *CLI_CASES[case], "--model", str(tiny_model_dir), "-o", str(out))
    assert result.exit_code == 0, result.output
    with pytest.raises(AssertionError, match="values changed"):
        check(case, folder_outputs(out))


def test_the_rules_accept_rounding_and_catch_changes() -> None:
    """:func:`compare_levels` on made-up arrays: a few one-level moves and two threshold flips pass; a one-level
    shift everywhere, many flips, another shape, and a float tensor one level off everywhere do not."""
    rng = np.random.default_rng(0)
    expected = rng.integers(1, 254, (40, 56), dtype=np.uint8)
    rounding = expected.copy()
    rounding.flat[rng.choice(expected.size, 30, replace=False)] += 1
    rounding.flat[:2] = 255
    assert compare_levels(rounding, expected) is None
    assert "values changed" in compare_levels(expected + 1, expected)
    flips = expected.copy()
    flips.flat[:10] = 255
    assert "more than one level" in compare_levels(flips, expected)
    assert "shape" in compare_levels(expected[:-1], expected)
    floats = rng.random((3, 40, 56), dtype=np.float32)
    assert compare_floats(floats + 3e-6, floats) is None
    assert "values changed" in compare_floats(np.clip(floats + 1 / 255, 0, 1), floats)
