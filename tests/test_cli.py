"""The ``textmask`` command line, through the real entry point (``python -m textmask``) on the tiny model.

Slow paths (a subprocess pays ~3 s of torch import) are kept to the ones that must be real: a folder of
mixed images with a corrupt file, resume and --overwrite, exit codes, Ctrl-C, the README quick start. The
rest runs in-process through click's CliRunner (same code, the model stays loaded).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import GATED, ROOT, SRC, files_in, invoke, mask_levels, run_cli
from PIL import Image

from textmask.batch import CollisionError, atomic_path, discover_inputs, make_targets, prompt_slug


# ---------------------------------------------------------------------------------------------- data
@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Nested images of mixed modes and sizes, a corrupt PNG, a text file and a hidden file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "top.png")
    Image.fromarray(rng.integers(0, 256, (23, 17), dtype=np.uint8)).save(root / "grey.png")
    Image.fromarray(rng.integers(0, 256, (21, 33, 3), dtype=np.uint8)).save(root / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (24, 24, 4), dtype=np.uint8), "RGBA").save(root / "sub" / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (20, 31, 3), dtype=np.uint8)).convert("P").save(
        root / "sub" / "deeper" / "palette.png"
    )
    Image.fromarray(rng.integers(0, 65536, (26, 20), dtype=np.uint16)).save(root / "sub" / "deeper" / "deep16.png")
    good = (root / "top.png").read_bytes()
    (root / "sub" / "broken.png").write_bytes(good[: len(good) // 3])  # truncated PNG
    (root / "notes.txt").write_text("not an image, and not picked up without --glob")
    Image.new("RGB", (8, 8)).save(root / ".hidden.png")
    return root


EXPECTED = {  # output (relative to OUTDIR) → input size (W, H)
    "top.a-cat.png": (40, 30),
    "grey.a-cat.png": (17, 23),
    "photo.a-cat.png": (33, 21),
    "sub/alpha.a-cat.png": (24, 24),
    "sub/deeper/palette.a-cat.png": (31, 20),
    "sub/deeper/deep16.a-cat.png": (20, 26),
}


@pytest.fixture
def example_files(tmp_path: Path) -> dict[str, Path]:
    """A picture to mask, an example image, a mask of the object in it, and an RGBA cut-out of that object."""
    rng = np.random.default_rng(5)
    root = tmp_path / "visual"
    root.mkdir()
    picture = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 6), size=(36, 48), mode="bilinear")
    Image.fromarray((picture[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(root / "in.png")
    example = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(example).save(root / "Red Mug.png")
    shape = np.zeros((40, 30), np.uint8)
    shape[8:30, 6:20] = 255
    Image.fromarray(shape).save(root / "mug-mask.png")
    Image.fromarray(np.dstack([example, shape]), "RGBA").save(root / "cutout.png")
    return {"image": root / "in.png", "example": root / "Red Mug.png", "mask": root / "mug-mask.png",
            "cutout": root / "cutout.png"}  # fmt: skip


def levels_of(masks: torch.Tensor) -> np.ndarray:
    """What the CLI writes for an engine mask in [0, 1]: 8-bit levels."""
    return torch.round(masks * 255).to(torch.uint8).numpy()


# ----------------------------------------------------------------------------- real entry point runs
def test_folder_corrupt_file_resume_and_overwrite(mixed_folder: Path, tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["mask", str(mixed_folder), "-p", "a cat", "--model", str(tiny_model_dir), "-o", str(out), "--json"]

    first = run_cli(*args, "--batch-size", "4")
    assert first.returncode == 1, first.stderr  # one input failed, the others were written
    summary = json.loads(first.stdout)
    assert summary["inputs"] == 7 and summary["processed"] == 6 and summary["failed"] == 1
    assert summary["ignored"] == 1 and summary["skipped"] == 0 and summary["exit_code"] == 1
    assert summary["written"] == 6 and sorted(summary["outputs"]) == sorted(str(out / name) for name in EXPECTED)
    (failure,) = summary["failures"]
    assert failure["input"].endswith("broken.png") and "truncated or corrupt" in failure["error"]
    assert "broken.png" in first.stderr  # reported as it happens, too
    assert "Traceback" not in first.stderr
    assert files_in(out) == set(EXPECTED)  # nothing for the broken file, no temporary files left
    for name, size in EXPECTED.items():
        with Image.open(out / name) as image:
            assert image.mode == "L" and image.size == size

    stamps = {name: (out / name).stat().st_mtime_ns for name in EXPECTED}
    second = run_cli(*args)
    assert second.returncode == 1  # the broken file is tried again and still fails
    summary = json.loads(second.stdout)
    assert summary["written"] == 0 and summary["skipped"] == 6 and summary["processed"] == 0
    assert {name: (out / name).stat().st_mtime_ns for name in EXPECTED} == stamps

    for name in EXPECTED:  # make rewrites visible even on coarse file-system clocks
        os.utime(out / name, ns=(1, 1))
    third = invoke(*args, "--overwrite")  # in-process: same code, spares a third interpreter start
    summary = json.loads(third.stdout)
    assert third.exit_code == 1 and summary["written"] == 6 and summary["skipped"] == 0
    assert all((out / name).stat().st_mtime_ns != 1 for name in EXPECTED)


def test_usage_errors_exit_2(tmp_path: Path):
    no_prompt = run_cli("mask", str(tmp_path), "-o", str(tmp_path / "out"))
    assert no_prompt.returncode == 2 and "prompt" in no_prompt.stderr
    nothing_found = run_cli("mask", str(tmp_path), "-p", "cat", "-o", str(tmp_path / "out"))
    assert nothing_found.returncode == 2 and "no images or videos found" in nothing_found.stderr
    assert invoke("mask", "x.png", "-p", "cat").exit_code == 2  # no -o
    assert invoke("mask", "x.png", "-p", "cat", "-o", str(tmp_path), "--threshold", "2").exit_code == 2
    assert invoke("mask", "x.png", "-p", "  ", "-o", str(tmp_path)).exit_code == 2
    assert invoke("frobnicate").exit_code == 2


def test_quick_start_example_offline(tmp_path: Path):
    """The README's first command, verbatim apart from the output folder."""
    out = tmp_path / "out"
    result = run_cli("mask", "examples/images/cat-on-lawn.png", "-p", "a cat", "--model", "random-tiny", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "meaningless" in result.stderr  # random weights are said to be random
    assert "1 masked" in result.stdout
    with Image.open(out / "cat-on-lawn.a-cat.png") as image:
        assert image.mode == "L" and image.size == (512, 384)


def test_image_prompt_through_the_entry_point_equals_the_engine_and_resumes(
    example_files: dict[str, Path], tiny_model_dir: Path, tiny_session, tmp_path: Path
):
    from textmask import ImagePrompt

    out = tmp_path / "out"
    image, example = example_files["image"], example_files["example"]
    args = ["mask", str(image), "-p", f"image:{example}", "--model", str(tiny_model_dir), "-o", str(out), "--json"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert files_in(out) == {"in.example-red-mug.png"}  # named after the example's file stem
    written = mask_levels(out / "in.example-red-mug.png")
    np.testing.assert_array_equal(written, levels_of(tiny_session.mask(str(image), ImagePrompt(example))))
    as_text = levels_of(tiny_session.mask(str(image), f"image:{example}"))
    assert np.abs(written.astype(int) - as_text).max() > 2  # the example was used, not read as a text

    again = run_cli(*args)  # the same name again: skipped, nothing rewritten, the model not even loaded
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["skipped"] == 1 and summary["written"] == 0 and "device" not in summary


def test_ctrl_c_stops_after_the_current_batch(tmp_path: Path, tiny_model_dir: Path):
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for index in range(80):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    args = ["mask", str(folder), "-p", "cat", "--model", str(tiny_model_dir), "-o", str(out), "-b", "1", "--json"]
    gate = tmp_path / "gate"
    gate.touch()  # the engine's third call waits until the test has pressed Ctrl-C: no race on a fast machine
    process = subprocess.Popen(
        [sys.executable, str(GATED), str(gate), "2", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out.is_dir() and sum(p.suffix == ".png" for p in out.iterdir()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)  # the handler runs while the third image is held; it must only ask the run to stop
    assert process.poll() is None, "one Ctrl-C killed the run instead of stopping it after the batch"
    gate.unlink()  # the batch in hand completes
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()
    summary = json.loads(stdout)
    assert summary["interrupted"] is True and summary["exit_code"] == 130
    written = files_in(out)
    assert len(written) == 3, written  # stopped after the batch in hand (the third image)...
    assert written == {Path(p).relative_to(out).as_posix() for p in summary["outputs"]}  # ...with nothing partial
    for name in written:
        assert mask_levels(out / name).shape == (16, 16)
    # A rerun resumes: only the rest is written.
    rerun = run_cli(*args, "-b", "16")
    assert rerun.returncode == 0
    assert json.loads(rerun.stdout)["written"] == 80 - len(written)
    assert len(files_in(out)) == 80


# ------------------------------------------------------------------------------------------ in-process
def test_masks_equal_the_engine(mixed_folder: Path, tiny_model_dir: Path, tiny_session, tmp_path: Path):
    out = tmp_path / "out"
    args = ["mask", str(mixed_folder / "sub"), "-p", "a cat", "--model", str(tiny_model_dir), "-o", str(out)]
    result = invoke(*args, "--batch-size", "1")  # same chunks as the engine call below: bit-identical
    assert result.exit_code == 1  # sub/broken.png
    for name in ("alpha", "deeper/palette", "deeper/deep16"):
        source = next((mixed_folder / "sub").glob(f"{name}.*"))
        expected = torch.round(tiny_session.mask(str(source), "a cat") * 255).to(torch.uint8).numpy()
        np.testing.assert_array_equal(mask_levels(out / f"{name}.a-cat.png"), expected)


def test_options_combine_threshold_invert_bits(tiny_model_dir: Path, tiny_session, tmp_path: Path):
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (36, 28, 3), dtype=np.uint8)).save(image)
    model = ["--model", str(tiny_model_dir)]
    union = tmp_path / "union"
    result = invoke("mask", str(image), "-p", "a cat", "-p", "a dog", "--combine", "union", *model, "-o", str(union))
    assert result.exit_code == 0 and files_in(union) == {"in.a-cat+a-dog.png"}
    expected = tiny_session.mask(str(image), ["a cat", "a dog"])
    np.testing.assert_array_equal(
        mask_levels(union / "in.a-cat+a-dog.png"), torch.round(expected * 255).to(torch.uint8).numpy()
    )

    each = tmp_path / "each"
    args = ["mask", str(image), "-p", "a cat", "-p", "a dog", "-n", "grass", *model, "-o", str(each)]
    result = invoke(*args, "-t", "0.5", "--invert", "--bits", "16", "--grow", "2")
    assert result.exit_code == 0 and files_in(each) == {"in.a-cat.png", "in.a-dog.png"}
    for prompt, name in (("a cat", "in.a-cat.png"), ("a dog", "in.a-dog.png")):
        expected = tiny_session.mask(str(image), prompt, negative_prompts=["grass"], threshold=0.5, invert=True, grow=2)
        levels = mask_levels(each / name)
        assert levels.dtype == np.uint16 and set(np.unique(levels)) <= {0, 65535}
        np.testing.assert_array_equal(levels, (expected.numpy() * 65535).astype(np.uint16))


def test_overlay_and_cutout_outputs(tiny_model_dir: Path, tiny_session, tmp_path: Path):
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:5, :, 3] = 0  # a transparent band stays transparent in the cut-out
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in.png")
    out = tmp_path / "out"
    args = ["mask", str(tmp_path / "in.png"), "-p", "a cat", "-k", "overlay", "-k", "cutout", "-k", "mask"]
    # minmax: the mask spans 0..255 whatever the random model predicts, so both ends are there to check
    result = invoke(*args, "--normalize", "minmax", "--model", str(tiny_model_dir), "-o", str(out))
    assert result.exit_code == 0
    assert files_in(out) == {"in.a-cat.png", "in.a-cat.overlay.png", "in.a-cat.cutout.png"}
    mask = mask_levels(out / "in.a-cat.png")
    with Image.open(out / "in.a-cat.cutout.png") as cut:
        assert cut.mode == "RGBA"
        cut = np.asarray(cut)
    np.testing.assert_array_equal(cut[..., :3], rgba[..., :3])
    np.testing.assert_array_equal(cut[5:, :, 3], mask[5:])
    assert not cut[:5, :, 3].any()
    with Image.open(out / "in.a-cat.overlay.png") as over:
        assert over.mode == "RGB" and over.size == (30, 20)
        over = np.asarray(over).astype(int)
    tinted = np.abs(over - rgba[..., :3]).sum(-1)
    assert tinted[mask < 3].max() <= 6 and tinted[mask > 200].mean() > 20  # tinted only where masked


def test_examples_with_masks_blends_and_escapes(
    example_files: dict[str, Path], tiny_model_dir: Path, tiny_session, tmp_path: Path
):
    from textmask import Blend, ImagePrompt

    image, example, mask, cutout = (example_files[k] for k in ("image", "example", "mask", "cutout"))
    model = ["--model", str(tiny_model_dir)]

    out = tmp_path / "masked"  # --example with a mask file, and a cut-out with its alpha: one mask per example
    args = ["mask", str(image), "--example", str(example), "--example", str(cutout), "--example-mask", str(mask)]
    result = invoke(*args, "--example-mask", "alpha", "--example-background", "0.3", *model, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert files_in(out) == {"in.example-red-mug-mask-mug-mask.png", "in.example-cutout-alpha.png"}
    masked = tiny_session.mask(str(image), ImagePrompt(example, mask=mask, background=0.3))
    np.testing.assert_array_equal(mask_levels(out / "in.example-red-mug-mask-mug-mask.png"), levels_of(masked))
    alpha = tiny_session.mask(str(image), ImagePrompt(cutout, mask="alpha", background=0.3))
    np.testing.assert_array_equal(mask_levels(out / "in.example-cutout-alpha.png"), levels_of(alpha))
    np.testing.assert_array_equal(levels_of(alpha), levels_of(masked))  # same pixels and shape: same prompt

    out = tmp_path / "blend"  # text and example averaged into one prompt, 1 : 2, minus a negative example
    args = ["mask", str(image), "-p", "a red mug", "-p", f"image:{example}", "--blend", "--example-weight", "2"]
    result = invoke(*args, "-n", f"image:{cutout}", *model, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert files_in(out) == {"in.a-red-mug~example-red-mug.png"}
    blend = Blend(["a red mug", ImagePrompt(example)], weights=[1, 2])
    expected = tiny_session.mask(str(image), blend, negative_prompts=[ImagePrompt(cutout)])
    np.testing.assert_array_equal(mask_levels(out / "in.a-red-mug~example-red-mug.png"), levels_of(expected))

    out = tmp_path / "escaped"  # text: keeps a text that starts with image: a text
    result = invoke("mask", str(image), "-p", "text:image: a mug", "--combine", "union", *model, "-o", str(out))
    assert result.exit_code == 0 and files_in(out) == {"in.image-a-mug.png"}
    np.testing.assert_array_equal(
        mask_levels(out / "in.image-a-mug.png"), levels_of(tiny_session.mask(str(image), "image: a mug"))
    )


def test_bad_examples_are_usage_errors(example_files: dict[str, Path], tiny_model_dir: Path, tmp_path: Path):
    image, example, mask = example_files["image"], example_files["example"], example_files["mask"]
    base = ["mask", str(image), "--model", str(tiny_model_dir), "-o", str(tmp_path / "out")]
    missing = invoke(*base, "-p", f"image:{tmp_path / 'nope.png'}")
    assert missing.exit_code == 2 and "nope.png" in missing.stderr and "file not found" in missing.stderr
    empty = tmp_path / "empty.png"
    Image.new("L", (30, 40)).save(empty)
    result = invoke(*base, "--example", str(example), "--example-mask", str(empty))
    assert result.exit_code == 2 and "mask is empty" in result.stderr
    result = invoke(
        *base, "--example", str(example), "--example-mask", str(mask), "--example-mask", str(mask), "-p", "x"
    )
    assert result.exit_code == 2 and "2 example masks for 1 example images" in result.stderr
    result = invoke(*base, "--example", str(example), "--example-mask", "alpha")
    assert result.exit_code == 2 and "no alpha channel" in result.stderr
    result = invoke(*base, "--example", str(example), "--example-weight", "2")
    assert result.exit_code == 2 and "--blend" in result.stderr
    result = invoke(*base, "-p", "text:")
    assert result.exit_code == 2 and "empty" in result.stderr
    assert not (tmp_path / "out").exists()


def test_stdin_and_files_from(tiny_model_dir: Path, tmp_path: Path):
    image = tmp_path / "a.png"
    Image.fromarray(np.full((12, 14, 3), 90, np.uint8)).save(image)
    out = tmp_path / "out"
    result = invoke("mask", "-", "-p", "cat", "--model", str(tiny_model_dir), "-o", str(out), input=image.read_bytes())
    assert result.exit_code == 0 and mask_levels(out / "stdin.cat.png").shape == (12, 14)
    garbage = invoke("mask", "-", "-p", "cat", "--model", str(tiny_model_dir), "-o", str(out), input=b"not an image")
    assert garbage.exit_code == 1 and "stdin" in garbage.stderr and "not an image" in garbage.stderr

    listing = tmp_path / "list.txt"
    listing.write_text(f"{image}\n\n{tmp_path / 'missing.png'}\n")
    result = invoke("mask", "--files-from", str(listing), "-p", "cat", "--model", str(tiny_model_dir), "-o", str(out))
    assert result.exit_code == 1 and "missing.png: file not found" in result.stderr
    assert (out / "a.cat.png").is_file()


def test_unwritable_output_and_missing_model_exit_3(tiny_model_dir: Path, tmp_path: Path):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    result = invoke("mask", str(image), "-p", "cat", "--model", str(tiny_model_dir), "-o", str(blocker / "out"))
    assert result.exit_code == 3 and "cannot write to output folder" in result.stderr
    result = invoke("mask", str(image), "-p", "cat", "--model", str(tmp_path / "no-model"), "-o", str(tmp_path / "o"))
    assert result.exit_code == 3 and "no such folder" in result.stderr


def test_disk_full_stops_the_run_and_keeps_what_was_written(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import errno

    import textmask.batch.store

    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (8, 8), (index * 50, 0, 0)).save(folder / f"{index}.png")
    real_save = textmask.batch.store.save_bytes
    calls = []

    def save_until_full(path, array):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(path, array)

    monkeypatch.setattr(textmask.batch.store, "save_bytes", save_until_full)
    out = tmp_path / "out"
    result = invoke("mask", str(folder), "-p", "cat", "--model", str(tiny_model_dir), "-o", str(out), "-b", "1")
    assert result.exit_code == 3 and "No space left" in result.stderr
    assert files_in(out) == {"0.cat.png"}


def test_name_collisions_and_output_inside_input(tiny_model_dir: Path, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (8, 8)).save(data / "x.png")
    Image.new("RGB", (8, 8)).save(data / "x.jpg")
    out = data / "masks"  # inside the input folder: never read back as input
    args = ["mask", str(data), "-p", "cat", "--model", str(tiny_model_dir), "-o", str(out), "--json"]
    result = invoke(*args)
    assert result.exit_code == 0
    assert files_in(out) == {"x.png.cat.png", "x.jpg.cat.png"}
    again = json.loads(invoke(*args).stdout)
    assert again["inputs"] == 2 and again["skipped"] == 2

    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "x.png")
    clash = invoke("mask", str(data / "x.png"), str(other / "x.png"), "-p", "cat", "-o", str(tmp_path / "o"))
    assert clash.exit_code == 2 and "same output names" in clash.stderr


def test_info_and_download(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf"
    snapshot = cache / "models--acme--tiny-clipseg" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (cache / "models--acme--tiny-clipseg" / "refs").mkdir()
    (cache / "models--acme--tiny-clipseg" / "refs" / "main").write_text("0" * 40)

    info = json.loads(invoke("info", "--json", "--dir", str(cache)).stdout)
    assert info["textmask"] and info["torch"] == torch.__version__ and info["devices"][0]["name"] == "cpu"
    assert info["threads"]["intra_op"] >= 1 and "float32" in info["devices"][0]["dtypes"]
    assert info["model_search"]["offline"] is True
    assert "acme/tiny-clipseg" in {m["source"] for m in info["models"]}
    assert "models present" in invoke("info", "--dir", str(cache)).stdout

    present = invoke("download", "acme/tiny-clipseg", "--dir", str(cache))
    assert present.exit_code == 0 and "verified" in present.stdout

    missing = invoke("download", "acme/other", "--dir", str(cache))
    assert missing.exit_code == 3 and "HF_HUB_OFFLINE" in missing.stderr

    weights = snapshot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    broken = invoke("download", "acme/tiny-clipseg", "--dir", str(cache))
    assert broken.exit_code == 3 and "could not be loaded" in broken.stderr


def test_info_lists_the_random_models_that_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`textmask info` finds random-tiny where `textmask.load("random-tiny")` builds it (it once looked in -v1)."""
    monkeypatch.setenv("TEXTMASK_CACHE", str(tmp_path / "cache"))
    before = json.loads(invoke("info", "--json").stdout)
    assert not [m for m in before["models"] if m["random"]]
    from textmask.model import locate_model

    built = locate_model("random-tiny")
    listed = json.loads(invoke("info", "--json").stdout)["models"]
    assert [(m["source"], m["path"], m["random"]) for m in listed if m["random"]] == [("random-tiny", str(built), True)]
    assert "random-tiny" in invoke("info").stdout.split("models present:", 1)[1]


# ----------------------------------------------------------------------------------------- naming
def test_prompt_slugs():
    assert prompt_slug("A red Car!") == "a-red-car"
    assert prompt_slug("café au lait") == "cafe-au-lait"
    assert prompt_slug("🐱").startswith("prompt-") and prompt_slug("🐱") != prompt_slug("🐶")
    long_a, long_b = "a " * 40 + "cat", "a " * 40 + "dog"
    assert len(prompt_slug(long_a)) <= 57 and prompt_slug(long_a) != prompt_slug(long_b)
    each = make_targets(["a cat", "A cat!", "dog"])
    assert len({t.slug for t in each}) == 3 and each[2].slug == "dog"
    assert make_targets(["cat", "dog"], "intersection")[0].slug == "cat_and_dog"
    assert make_targets(["cat", "dog"], "union")[0].prompts == ("cat", "dog")


def test_example_slugs_are_stable_and_say_which(tmp_path: Path):
    from textmask import Blend, ImagePrompt

    assert prompt_slug(ImagePrompt(Path("shots/Red Mug 2.png"))) == "example-red-mug-2"
    assert prompt_slug(ImagePrompt("mug.png", mask="alpha")) == "example-mug-alpha"
    assert prompt_slug(ImagePrompt("mug.png", mask=Path("masks/handle.png"))) == "example-mug-mask-handle"
    tensor = torch.rand(8, 8, 3)
    in_memory = prompt_slug(ImagePrompt(tensor))
    assert in_memory.startswith("example-") and in_memory == prompt_slug(ImagePrompt(tensor.clone()))
    assert in_memory != prompt_slug(ImagePrompt(torch.rand(8, 8, 3)))
    assert prompt_slug(ImagePrompt(tensor, mask=torch.ones(8, 8))).endswith("-masked")
    assert prompt_slug(Blend(["a red mug", ImagePrompt("mug.png")])) == "a-red-mug~example-mug"
    # the same example twice is one target; a text that reads like an example keeps apart, stably
    same = make_targets([ImagePrompt("mug.png"), ImagePrompt("mug.png"), "example mug"])
    assert len(same) == 2 and same[0].slug != same[1].slug and same[0].slug.startswith("example-mug-")
    assert [t.slug for t in make_targets([ImagePrompt("mug.png"), "example mug"])] == [t.slug for t in same]
    long = ImagePrompt("a-very-long-example-file-name-that-goes-on-and-on-forever.png")
    assert len(prompt_slug(long)) <= 57 and prompt_slug(long) == prompt_slug(ImagePrompt(long.image))


def test_build_prompts_pairs_masks_with_examples(example_files: dict[str, Path]):
    from textmask import Blend, ImagePrompt
    from textmask.errors import PromptError
    from textmask.prompts import build_prompts

    example, mask, cutout = example_files["example"], example_files["mask"], example_files["cutout"]
    specs = ["a mug", f"image:{cutout}", "text:image:x", "a mug"]
    prompts = build_prompts(specs, [example, cutout], ["alpha", str(mask), "alpha"], blur=1.5)
    assert [type(p).__name__ for p in prompts] == ["str", "ImagePrompt", "str", "ImagePrompt"]  # repeats dropped
    assert prompts[0] == "a mug" and prompts[2] == "image:x"
    assert prompts[1].mask == "alpha" and prompts[1].blur == 1.5 and prompts[3].mask == mask
    one_for_all = build_prompts([], [example, cutout], ["none"])
    assert [p.mask for p in one_for_all] == [None, None] and all(isinstance(p, ImagePrompt) for p in one_for_all)
    (blend,) = build_prompts(["a mug"], [example], blend=True, example_weight=3)
    assert isinstance(blend, Blend) and blend.item_weights() == [1.0, 3.0]
    assert build_prompts([f"image:{example}"], blend=True)[0].image == example  # one prompt: no blend needed
    with pytest.raises(PromptError, match="2 example masks for 3 example images"):
        build_prompts([f"image:{cutout}"], [example, cutout], ["none", "none"])


def test_discovery_keys_globs_and_collisions(tmp_path: Path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/one.png", "a/b/two.JPG", "a/b/three.webp", "a/b/clip.mp4", "a/readme.md"):
        (tmp_path / name).write_bytes(b"")
    found = discover_inputs([tmp_path / "a"])
    assert [(i.key, i.kind) for i in found.items] == [  # a folder's files, then its sub-folders, sorted
        ("one", "image"),
        ("b/clip", "video"),
        ("b/three", "image"),
        ("b/two", "image"),
    ]
    assert found.ignored == 1
    assert [i.key for i in discover_inputs([tmp_path / "a"], globs=["*.jpg"]).items] == ["b/two"]
    assert [i.key for i in discover_inputs([tmp_path / "a"], globs=["b/*.webp"]).items] == ["b/three"]
    twice = discover_inputs([tmp_path / "a" / "one.png", tmp_path / "a" / "one.png"])
    assert len(twice.items) == 1
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "one.png").write_bytes(b"")
    with pytest.raises(CollisionError):
        discover_inputs([tmp_path / "a" / "one.png", tmp_path / "c" / "one.png"])


def test_atomic_path_leaves_nothing_on_error(tmp_path: Path):
    target = tmp_path / "sub" / "mask.png"
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list((tmp_path / "sub").iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as temporary:
        temporary.write_bytes(b"new, unfinished")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and [p.name for p in target.parent.iterdir()] == ["mask.png"]
    with atomic_path(target) as temporary:
        temporary.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_out_of_memory_stops_with_a_clear_error(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from textmask.engine import Segmenter

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Segmenter, "mask", no_memory)
    result = invoke(
        "mask", str(tmp_path / "a.png"), "-p", "cat", "--model", str(tiny_model_dir), "-o", str(tmp_path / "o")
    )
    assert result.exit_code == 3 and "out of memory" in result.stderr and "Traceback" not in result.stderr
    assert files_in(tmp_path / "o") == set()


def test_quiet_prints_nothing_on_success(tiny_model_dir: Path, tmp_path: Path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = invoke(
        "mask", str(tmp_path / "a.png"), "-p", "cat", "--model", str(tiny_model_dir), "-o", str(tmp_path / "o"), "-q"
    )
    assert result.exit_code == 0 and result.stdout == ""
    assert (tmp_path / "o" / "a.cat.png").is_file()


# ------------------------------------------------------------------------- refine, detail, instances
def test_refine_detail_and_instances_equal_the_engine(tiny_model_dir: Path, tiny_session, tmp_path: Path):
    import textmask

    rng = np.random.default_rng(11)
    image = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    out = tmp_path / "out"
    common = ["-p", "a cat", "--model", str(tiny_model_dir), "-o", str(out)]
    result = invoke(
        "mask", str(tmp_path / "in.png"), *common, "--refine", "--detail", "2x2", "-t", "0.5", "--instances"
    )
    assert result.exit_code == 0, result.output
    expected = tiny_session.mask(image, "a cat", refine=True, detail=(2, 2), threshold=0.5)
    np.testing.assert_array_equal(
        mask_levels(out / "in.a-cat.png"), torch.round(expected * 255).to(torch.uint8).numpy()
    )

    listed = json.loads((out / "in.a-cat.instances.json").read_text())
    found = textmask.instances(expected, threshold=0.5)
    assert [entry["box"] for entry in listed["instances"]] == found.boxes.tolist()
    assert listed["width"] == 64 and listed["height"] == 48 and listed["prompts"] == ["a cat"]
    for entry, instance in zip(listed["instances"], found.masks):
        np.testing.assert_array_equal(
            mask_levels(out / entry["mask"]), torch.round(instance * 255).to(torch.uint8).numpy()
        )
    pngs = sorted(p.name for p in out.glob("in.a-cat.instance-*.png"))
    assert pngs == [entry["mask"] for entry in listed["instances"]] and len(pngs) == len(found)

    again = invoke("mask", str(tmp_path / "in.png"), *common, "--refine", "--detail", "2x2", "-t", "0.5", "--instances")
    assert again.exit_code == 0 and "1 skipped" in again.output  # resume: the JSON marks the instances done
    bad = invoke("mask", str(tmp_path / "in.png"), *common, "--detail", "huge")
    assert bad.exit_code == 2 and "detail" in bad.output


def test_matte_cutout_and_background(tiny_model_dir: Path, tiny_session, tmp_path: Path):
    """--matte: the mask is textmask.matte's alpha, the cut-out takes the estimated foreground (the image's
    colours where alpha is 1); --background composites onto a colour as RGB; a bad colour is a usage error."""
    import textmask

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    out = tmp_path / "out"
    common = ["mask", str(tmp_path / "in.png"), "-p", "a cat", "--normalize", "minmax", "--model", str(tiny_model_dir)]
    result = invoke(*common, "--matte", "-k", "cutout", "-k", "mask", "-o", str(out))
    assert result.exit_code == 0, result.output
    mask = mask_levels(out / "in.a-cat.png")
    with Image.open(out / "in.a-cat.cutout.png") as cut:
        assert cut.mode == "RGBA"
        cut = np.asarray(cut)
    np.testing.assert_array_equal(cut[..., 3], mask)
    # The CLI estimates from the unrounded alpha; from the 8-bit one the colours agree within a few levels.
    expected = textmask.foreground(image, torch.from_numpy(mask.copy()).float() / 255).numpy()
    assert np.abs(cut[..., :3].astype(float) - np.round(expected * 255)).mean() <= 1.0
    full = mask == 255
    if full.any():
        np.testing.assert_array_equal(cut[full][:, :3], image[full])

    painted = tmp_path / "painted"
    result = invoke(*common, "--matte", "-k", "cutout", "--background", "#ffffff", "-o", str(painted))
    assert result.exit_code == 0, result.output
    with Image.open(painted / "in.a-cat.cutout.png") as rgb:
        assert rgb.mode == "RGB"
        rgb = np.asarray(rgb).astype(float)
    alpha = mask[..., None] / 255.0
    composite = alpha * np.round(expected * 255) + (1 - alpha) * 255
    assert np.abs(rgb - composite).mean() <= 1.0  # 8-bit rounding of alpha and colours

    result = invoke(*common, "-k", "cutout", "--background", "not-a-colour", "-o", str(tmp_path / "bad"))
    assert result.exit_code == 2 and "--background" in result.output
