"""Outputs pinned to the bit: the CLI (masks, overlays, cut-outs, 16-bit masks, video files and frames), the Ray
path and the ComfyUI nodes give exactly what they gave before the code was reorganized (issue 14).

The expected SHA-256 digests live in ``tests/golden/outputs.json``. They were recorded with the random ``tiny``
model (seeded weights, :func:`textmask.testmodels.build_random_model`) on the development machine; regenerate
them only for a deliberate change of output, with ``TEXTMASK_UPDATE_GOLDEN=1 pytest tests/test_golden_outputs.py``,
and say why in the commit.

PNG files are compared as the bytes on disk and ComfyUI outputs as the bytes of their float32 tensors. Video
files are lossy and x264 is not bit-deterministic under threading, so a video is pinned by its frame count and
each decoded frame's mean level (within 0.3); the same masks' PNG frames, written beside them, are exact.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import files_in, invoke
from PIL import Image

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
UPDATE = os.environ.get("TEXTMASK_UPDATE_GOLDEN") == "1"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    return sha(tensor.detach().cpu().contiguous().float().numpy().tobytes()) + f":{list(tensor.shape)}"


def video_frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fmt = "rgba" if path.suffix == ".webm" else ("gray" if path.name.count(".") == 2 else "rgb24")
        return [frame.to_ndarray(format=fmt) for frame in container.decode(stream)]


def video_digest(path: Path) -> list[float]:
    """A lossy video's per-frame mean level (compared within 0.3 of a level: see :func:`check`)."""
    return [round(float(frame.mean()), 2) for frame in video_frames(path)]


def folder_digests(folder: Path) -> dict[str, str | list[float]]:
    out = {}
    for name in sorted(files_in(folder)):
        path = folder / name
        if name.startswith(".") or "/." in name:
            continue
        out[name] = video_digest(path) if path.suffix in (".mp4", ".webm") else sha(path.read_bytes())
    return out


def check(name: str, digests: dict[str, str | list[float]]) -> None:
    """Compare with (or, when updating, record) the golden digests of one case."""
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if UPDATE:
        golden[name] = digests
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    assert name in golden, f"no golden digests for {name!r}; record them with TEXTMASK_UPDATE_GOLDEN=1"
    expected = golden[name]
    assert sorted(digests) == sorted(expected), f"{name}: other files than before"
    changed = [key for key in expected if not _same(digests[key], expected[key])]
    assert not changed, f"{name}: outputs differ from the recorded ones: {changed}"


def _same(found: str | list[float], expected: str | list[float]) -> bool:
    if isinstance(expected, list):  # a video's frame means
        return (
            isinstance(found, list)
            and len(found) == len(expected)
            and all(abs(a - b) <= 0.3 for a, b in zip(found, expected))
        )
    return found == expected


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
    check(case, folder_digests(out))


def test_cli_example_prompt_outputs_are_unchanged(inputs: Path, tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["-p", f"image:{inputs / 'example.png'}", "-p", "a cat", "--blend", "--example-weight", "2"]
    result = invoke("mask", str(inputs / "photos"), *args, "--model", str(tiny_model_dir), "-o", str(out))
    assert result.exit_code == 0, result.output
    check("cli-example-blend", folder_digests(out))


def test_cli_video_outputs_are_unchanged(clip: Path, tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["-p", "a bar", "-k", "mask", "-k", "overlay", "-k", "cutout", "--video-output", "both", "--smooth", "0.5"]
    result = invoke("mask", str(clip), *args, "-b", "4", "--model", str(tiny_model_dir), "-o", str(out))
    assert result.exit_code == 0, result.output
    check("cli-video", folder_digests(out))


@pytest.mark.ray
def test_ray_outputs_equal_the_cli_golden(inputs: Path, tiny_model_dir: Path, tmp_path: Path):
    pytest.importorskip("ray.data")
    if UPDATE:
        pytest.skip("the Ray case compares with the CLI's digests")
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 * 2**20, logging_level="WARNING")
    try:
        out = tmp_path / "out"
        args = [*CLI_CASES["cli-each-all-kinds"], "--engine", "ray", "--actors", "2", "--cpus-per-actor", "0.5"]
        result = invoke("mask", str(inputs / "photos"), *args, "--model", str(tiny_model_dir), "-o", str(out))
        assert result.exit_code == 0, result.output
        check("cli-each-all-kinds", folder_digests(out))
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

    digests: dict[str, str] = {}
    masks, mask_images = SaltCLIPSegMasking().CLIPSeg_image(images, "a cat", model)
    digests["salt.masks"], digests["salt.mask_images"] = tensor_digest(masks), tensor_digest(mask_images)
    masks, mask_images, preview = TextmaskCLIPSegMasking().mask(
        images, "a cat\nthe sky", "grass", "union", "minmax", 0.3, 1.0, 2, False, 4, clipseg_model=model
    )
    digests["advanced.masks"], digests["advanced.mask_images"] = tensor_digest(masks), tensor_digest(mask_images)
    digests["advanced.preview"] = tensor_digest(preview)
    masks, _, preview = TextmaskCLIPSegExampleMasking().mask(
        images, example, "minmax", 0.0, 0.0, 0, True, 8, clipseg_model=model
    )
    digests["example.masks"], digests["example.preview"] = tensor_digest(masks), tensor_digest(preview)
    check("comfyui-nodes", digests)
