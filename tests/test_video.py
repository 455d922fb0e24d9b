"""Video through the command line and textmask.batch.video: same frame count, size and rate; streaming; smoothing."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

av = pytest.importorskip("av")

from cli_helpers import files_in, invoke, run_cli  # noqa: E402

from textmask.batch import MaskJob, discover_inputs, make_targets  # noqa: E402
from textmask.batch.local import run_job  # noqa: E402
from textmask.batch.video import probe, read_frames  # noqa: E402
from textmask.postprocess import MaskOptions, Target, TargetPlan, finish_targets, smooth_temporal  # noqa: E402

FRAMES, WIDTH, HEIGHT, RATE = 24, 64, 48, 12


def encoder() -> str:
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    pytest.skip("this PyAV build encodes neither H.264 nor MPEG-4")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-frame 64×48 clip at 12 fps: a bright bar sweeping over a gradient."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder(), rate=RATE)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for index in range(FRAMES):
            frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            frame[..., 2] = np.linspace(0, 255, WIDTH, dtype=np.uint8)
            frame[:, (index * 2) % WIDTH : (index * 2) % WIDTH + 10] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def decode(path: Path, fmt: str = "gray") -> tuple[list[np.ndarray], list[int], SimpleNamespace]:
    """All frames (as ``fmt`` arrays), their timestamps, and the stream's ``average_rate`` (read while the container
    is open: PyAV 18 refuses to read a closed container's streams)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, stamps = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format=fmt))
            stamps.append(frame.pts * frame.time_base)
        return frames, stamps, SimpleNamespace(average_rate=stream.average_rate)


def test_mask_video_keeps_count_size_rate(clip: Path, tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["mask", str(clip), "-p", "a cat", "--model", str(tiny_model_dir), "-o", str(out), "--json"]
    result = run_cli(*args, "--video-output", "both", "-k", "mask", "-k", "cutout", "--batch-size", "5")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["videos"] == 1 and summary["frames"] == FRAMES and summary["written"] == 4

    _, source_stamps, _ = decode(clip)
    masks, stamps, stream = decode(out / "clip.a-cat.mp4")
    assert len(masks) == FRAMES and masks[0].shape == (HEIGHT, WIDTH)
    assert stream.average_rate == RATE and stamps == source_stamps  # same timing, frame by frame
    pngs = sorted((out / "clip.a-cat").iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(FRAMES)]
    for video_frame, png in zip(masks, pngs):
        levels = np.asarray(Image.open(png))
        assert levels.shape == (HEIGHT, WIDTH)
        assert np.abs(video_frame.astype(int) - levels).mean() < 4  # the video holds the same masks, lossy

    cut_frames, cut_stamps, cut_stream = decode(out / "clip.a-cat.cutout.webm", "rgb24")
    assert len(cut_frames) == FRAMES and cut_frames[0].shape == (HEIGHT, WIDTH, 3)
    assert cut_stream.average_rate == RATE  # WebM keeps time in milliseconds:
    assert all(abs(a - b) <= Fraction(1, 1000) for a, b in zip(cut_stamps, source_stamps))
    with Image.open(out / "clip.a-cat.cutout" / "000003.png") as cut:
        assert cut.mode == "RGBA" and cut.size == (WIDTH, HEIGHT)

    again = invoke(*args, "--video-output", "both", "-k", "mask", "-k", "cutout")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == 1
    assert json.loads(again.stdout)["written"] == 0


def test_frames_equal_the_engine_and_smoothing_is_chunk_invariant(
    clip: Path, tiny_model_dir: Path, tiny_session, tmp_path
):
    info = probe(clip)
    assert (info.frames, info.width, info.height, info.rate) == (FRAMES, WIDTH, HEIGHT, Fraction(RATE))
    frames = torch.cat([chunk for chunk, _ in read_frames(clip, info, 7)])
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)

    plain, smooth = tmp_path / "plain", tmp_path / "smooth"
    common = ["-p", "a cat", "--model", str(tiny_model_dir), "--video-output", "frames", "-b", "5"]
    assert invoke("mask", str(clip), *common, "-o", str(plain)).exit_code == 0
    assert invoke("mask", str(clip), *common, "-o", str(smooth), "--smooth", "0.6", "-t", "0.5").exit_code == 0

    expected = torch.round(tiny_session.mask(frames, "a cat", batch_size=5) * 255).to(torch.uint8).numpy()
    got = np.stack([np.asarray(Image.open(p)) for p in sorted((plain / "clip.a-cat").iterdir())])
    np.testing.assert_array_equal(got, expected)

    # Smoothing runs per chunk of 5 frames with its state carried over: same as smoothing all 24 at once.
    table = TargetPlan.build([Target(("a cat",))])
    probs = tiny_session.predict(frames, list(table.prompts), batch_size=5)
    smoothed, _ = smooth_temporal(probs, 0.6)
    whole = finish_targets(smoothed, table, MaskOptions(threshold=0.5))[:, 0]
    got = np.stack([np.asarray(Image.open(p)) for p in sorted((smooth / "clip.a-cat").iterdir())])
    np.testing.assert_array_equal(got, (whole * 255).to(torch.uint8).numpy())


def test_smooth_temporal():
    torch.manual_seed(0)
    maps = torch.rand(10, 2, 6, 5)
    assert smooth_temporal(maps, 0.0)[0] is maps
    whole, last = smooth_temporal(maps, 0.7)
    first, state = smooth_temporal(maps[:4], 0.7)
    second, last_chunked = smooth_temporal(maps[4:], 0.7, state)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=0, atol=0)
    torch.testing.assert_close(last, last_chunked, rtol=0, atol=0)
    torch.testing.assert_close(whole[0], maps[0])
    assert whole.min() >= 0 and whole.max() <= 1
    flicker = torch.tensor([0.0, 1.0] * 10)[:, None, None]
    assert smooth_temporal(flicker, 0.8)[0][5:].std() < 0.25 * flicker[5:].std()
    constant = torch.full((5, 3, 3), 0.4)
    torch.testing.assert_close(smooth_temporal(constant, 0.9)[0], constant)
    with pytest.raises(ValueError, match="strength"):
        smooth_temporal(maps, 1.0)


def test_gif_with_odd_size(tiny_model_dir: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (25, 33, 3), dtype=np.uint8)) for _ in range(5)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(tmp_path / "still.gif")
    out = tmp_path / "out"
    result = invoke("mask", str(tmp_path), "-p", "cat", "--model", str(tiny_model_dir), "-o", str(out), "--json")
    assert result.exit_code == 0
    assert files_in(out) == {"anim.cat.mp4", "still.cat.png"}  # an animated GIF is a video, a still one an image
    masks, _, stream = decode(out / "anim.cat.mp4")
    assert len(masks) == 5 and masks[0].shape == (25, 33) and stream.average_rate == 10


def test_corrupt_video_is_reported_and_skipped(clip: Path, tiny_model_dir: Path, tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.mp4").write_bytes(clip.read_bytes())
    (folder / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    data = clip.read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])  # truncated: may decode partly, never half-written
    out = tmp_path / "out"
    result = invoke("mask", str(folder), "-p", "cat", "--model", str(tiny_model_dir), "-o", str(out), "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 1 and "bad.mp4" in {Path(f["input"]).name for f in summary["failures"]}
    assert "good.cat.mp4" in files_in(out)
    assert not [name for name in files_in(out) if name.startswith(".") or name.endswith(".part")]
    assert files_in(out) == {Path(p).name for p in summary["outputs"]}


def test_interrupted_video_leaves_nothing(clip: Path, tiny_session, tmp_path: Path):
    job = MaskJob(outdir=tmp_path / "out", targets=make_targets(["cat"]), video_forms=("video", "frames"), batch_size=4)
    answers = iter([False])  # go on at the start, stop after the first chunk of 4 frames
    seen: list[int] = []
    report = run_job(
        tiny_session,
        discover_inputs([clip]).items,
        job,
        progress=lambda done, total: seen.append(done),
        should_stop=lambda: next(answers, True),
    )
    assert seen == [4]  # one chunk was masked (and encoded into the temporary files), then it stopped
    assert report.interrupted and report.written == [] and report.processed == 0 and report.frames == 0
    assert list((tmp_path / "out").iterdir()) == []


def test_instances_track_a_video_and_stabilize_equals_the_engine(
    clip: Path, tiny_model_dir: Path, tiny_session, tmp_path: Path
):
    """--instances on a video: a tracks JSON (ids, boxes, scores, areas, RLE) and a PNG folder per track id,
    equal to textmask.track over the engine's stabilized masks; --stabilize for the plain masks too."""
    pytest.importorskip("cv2")
    pytest.importorskip("pycocotools")
    import pycocotools.mask as coco

    import textmask

    info = probe(clip)
    frames = torch.cat([chunk for chunk, _ in read_frames(clip, info, 7)])
    masks = tiny_session.stream([["a cat"]], stabilize=0.7, batch_size=5, blur=4.0)(frames)[:, 0]
    level = round(float(masks.flatten().quantile(0.6)), 4)  # random weights: blurred, cut where there are blobs
    found = textmask.track(masks, frames, threshold=level, min_area=40)
    ids = sorted({i for item in found for i in item.ids.tolist()})
    assert 0 < len(ids) <= 30, f"the tiny model's masks at this level have {len(ids)} objects"

    out = tmp_path / "out"
    common = ["-p", "a cat", "--model", str(tiny_model_dir), "--video-output", "frames", "-b", "5", "-o", str(out)]
    common += ["--blur", "4"]
    result = invoke("mask", str(clip), *common, "--stabilize", "0.7", "--instances", "--rle",
                    "--instance-threshold", str(level), "--min-area", "40")  # fmt: skip
    assert result.exit_code == 0, result.output
    got = np.stack([np.asarray(Image.open(p)) for p in sorted((out / "clip.a-cat").iterdir())])
    assert np.abs(got.astype(int) - np.round(masks.numpy() * 255).astype(int)).max() <= 1

    tracks = json.loads((out / "clip.a-cat.tracks.json").read_text())
    assert [int(i) for i in tracks["tracks"]] == ids and len(tracks["frames"]) == FRAMES
    for t, (entry, item) in enumerate(zip(tracks["frames"], found)):
        assert entry["frame"] == t
        assert [o["id"] for o in entry["objects"]] == item.ids.tolist()
        assert [o["box"] for o in entry["objects"]] == item.boxes.tolist()
        assert [o["area"] for o in entry["objects"]] == item.areas.tolist()
        for k, obj in enumerate(entry["objects"] if t < 4 else []):
            decoded = coco.decode({"size": obj["rle"]["size"], "counts": obj["rle"]["counts"].encode()})
            np.testing.assert_array_equal(decoded.astype(bool), (item.labels == k + 1).numpy())
    for track_id in ids:
        folder = out / f"clip.a-cat.track-{track_id:02d}"
        assert tracks["tracks"][str(track_id)]["masks"] == {"frames": folder.name}
        pngs = sorted(folder.iterdir())
        assert len(pngs) == FRAMES  # black before the object appears and after it leaves
        for t, png in enumerate(pngs):
            expected = torch.zeros(HEIGHT, WIDTH)
            hit = (found[t].ids == track_id).nonzero().flatten()
            if len(hit):
                expected = found[t].masks[int(hit[0])]
            assert np.abs(np.asarray(Image.open(png)).astype(int) - np.round(expected.numpy() * 255)).max() <= 1

    again = invoke("mask", str(clip), *common, "--stabilize", "0.7", "--instances", "--instance-threshold", str(level))
    assert again.exit_code == 0 and "1 skipped" in again.output  # resume: the JSON marks the tracks done
    both = invoke("mask", str(clip), *common, "--stabilize", "0.7", "--smooth", "0.5")
    assert both.exit_code != 0 and "not both" in both.output
