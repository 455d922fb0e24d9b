"""textmask on Ray Data (``textmask.ray_data``, ``textmask mask --engine ray``) against the single-process path.

One local Ray for the module (2 CPUs; actors take half a CPU each so two fit). Every Dataset run starts its
own actors (a few seconds each on 2 cores), so the tests are few and each checks several things.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import files_in, invoke, run_cli
from PIL import Image

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'textmask[ray]'")
pytest.importorskip("ray.data")

from textmask import ray_data  # noqa: E402 - only once Ray is known to be importable
from textmask.batch import MaskJob, ModelSpec, discover_inputs, make_targets  # noqa: E402
from textmask.batch.local import run_job  # noqa: E402
from textmask.images import read_image  # noqa: E402
from textmask.postprocess import MaskOptions  # noqa: E402

pytestmark = pytest.mark.ray

ACTORS = {"actors": 2, "cpus_per_actor": 0.5}  # two actors on the 2-CPU local Ray


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for this module: 2 CPUs, a small object store, no dashboard; shut down afterwards."""
    if ray.is_initialized():  # pragma: no cover - someone else's session
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=96 * 1024 * 1024,
        logging_level=logging.WARNING,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nested images of many modes (RGB, grey, RGBA, palette, 16-bit, an EXIF-rotated JPEG) and a corrupt PNG."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("ray-data") / "photos"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "top.png")
    Image.fromarray(rng.integers(0, 256, (23, 17), dtype=np.uint8)).save(root / "grey.png")
    Image.fromarray(rng.integers(0, 256, (24, 24, 4), dtype=np.uint8), "RGBA").save(root / "sub" / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (20, 31, 3), dtype=np.uint8)).convert("P").save(root / "sub" / "palette.png")
    Image.fromarray(rng.integers(0, 65536, (26, 20), dtype=np.uint16)).save(root / "sub" / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    Image.fromarray(rng.integers(0, 256, (18, 34, 3), dtype=np.uint8)).save(root / "rotated.jpg", exif=exif)
    good = (root / "top.png").read_bytes()
    (root / "sub" / "broken.png").write_bytes(good[: len(good) // 3])
    return root


GOOD = ["grey.png", "rotated.jpg", "top.png", "sub/alpha.png", "sub/deep16.png", "sub/palette.png"]
PROMPTS = ["a cat", "the sky"]


def engine_masks(session, path: Path, options: MaskOptions, negative=("grass",)) -> torch.Tensor:
    """The single-process reference: ``[T, H, W]`` for one file, read and masked alone by the engine."""
    targets = [list(target.prompts) for target in make_targets(PROMPTS)]
    levels = read_image(str(path)).levels
    return session.mask([levels], targets=targets, negative_prompts=list(negative), options=options, batch_size=1)[0]


# ------------------------------------------------------------------------------------- float masks
def test_actor_masks_are_bit_identical_to_the_engine(local_ray, images: Path, tiny_model_dir: Path, tiny_session):
    """Rows read by the actors (a path) or decoded from bytes Ray read (``read_binary_files``' columns) give
    exactly the engine's float32 masks; a corrupt file is a failed row, not a failed run."""
    options = MaskOptions(blur=1.0, grow=1)
    paths = [str(images / name) for name in [*GOOD, "sub/broken.png"]]
    rows = [{"path": p, "bytes": Path(p).read_bytes() if i % 2 else None} for i, p in enumerate(paths)]
    results = ray_data.mask_dataset(
        ray.data.from_items(rows),
        PROMPTS,
        negative_prompts=["grass"],
        options=options,
        model=str(tiny_model_dir),
        device="cpu",
        batch_size=3,
        **ACTORS,
    ).take_all()

    by_path = {row["path"]: row for row in results}
    assert sorted(by_path) == sorted(paths)
    for name in GOOD:
        row = by_path[str(images / name)]
        assert row["status"] == "masked" and row["error"] == "", (name, row["error"])
        expected = engine_masks(tiny_session, images / name, options)
        got = torch.from_numpy(np.array(row["masks"]))
        assert got.dtype == torch.float32 and got.shape == expected.shape, name
        assert torch.equal(got, expected), f"{name}: max difference {(got - expected).abs().max()}"
    with Image.open(images / "rotated.jpg") as stored:  # EXIF applied by textmask's reader: height ↔ width
        assert by_path[str(images / "rotated.jpg")]["masks"].shape[1:] == (stored.width, stored.height)
    broken = by_path[str(images / "sub/broken.png")]
    assert broken["status"] == "failed" and broken["error"].startswith("broken.png: ")
    assert "truncated or corrupt" in broken["error"]


def mask_actor(model: str, outdir: Path | None = None, **job) -> ray_data.MaskActor:
    """The actor as Ray Data builds it, called here in-process."""
    job = MaskJob(outdir=outdir or Path("."), targets=make_targets(PROMPTS), negative_prompts=("grass",), **job)
    return ray_data.MaskActor(ModelSpec(model), "cpu", job, write=outdir is not None, masks=True)


def test_read_images_batches_are_accepted(local_ray, images: Path, tiny_model_dir: Path, tiny_session):
    """A batch exactly as ``ray.data.read_images(..., include_paths=True)`` hands it to ``map_batches``."""
    files = [str(images / "top.png"), str(images / "grey.png")]
    batch = ray.data.read_images(files, include_paths=True, mode="RGB").take_batch(batch_format="numpy")
    result = mask_actor(str(tiny_model_dir))(batch)
    assert result["status"] == ["masked", "masked"]
    for path, masks in zip(result["path"], result["masks"]):
        (name,) = [Path(f).name for f in files if f.endswith(Path(path).name)]
        assert torch.equal(torch.from_numpy(masks), engine_masks(tiny_session, images / name, MaskOptions())), name


def test_a_model_that_does_not_load_gives_fatal_rows_not_a_crash(tmp_path: Path, images: Path):
    """The actor must not die in its constructor (Ray would restart it forever): it answers every row 'fatal'."""
    actor = mask_actor(str(tmp_path / "no-model"), tmp_path / "out")
    result = actor({"path": np.array([str(images / "top.png"), str(images / "grey.png")])})
    assert result["status"] == ["fatal", "fatal"]
    assert "cannot load model" in result["error"][0] and "no-model" in result["error"][0]
    assert not (tmp_path / "out").exists()


def test_out_of_memory_and_a_full_disk_give_fatal_rows(tmp_path: Path, images: Path, tiny_model_dir: Path, monkeypatch):
    """What stops the run reaches the driver as ``fatal`` rows (the actor itself, called in-process)."""
    import errno

    from textmask.engine import OutOfMemoryError

    rows = {"path": np.array([str(images / "top.png"), str(images / "grey.png")])}
    actor = mask_actor(str(tiny_model_dir), tmp_path / "out")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ray_data, "write_image_outputs", full)
    result = actor(rows)
    assert result["status"] == ["fatal", "fatal"] and "No space left on device; stopping" in result["error"][0]

    def no_memory(*args, **kwargs):
        raise OutOfMemoryError("out of memory", "cpu", "CPU allocator: 9 GiB")

    monkeypatch.setattr(actor.session, "mask", no_memory)
    result = actor(rows)
    assert result["status"] == ["fatal", "fatal"] and "out of memory on cpu even one image" in result["error"][0]
    assert not any((tmp_path / "out").rglob("*.png"))


# ------------------------------------------------------------------------------------------- files
def small_clip(folder: Path, frames: int = 6) -> Path | None:
    """A tiny H.264/MPEG-4 clip (a bar sweeping over a gradient), or None without PyAV or an encoder."""
    try:
        import av
    except ImportError:
        return None
    path = folder / "clip.mp4"
    for codec in ("libx264", "mpeg4"):
        try:
            with av.open(str(path), "w") as container:
                stream = container.add_stream(codec, rate=12)
                stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
                for index in range(frames):
                    frame = np.zeros((24, 32, 3), np.uint8)
                    frame[..., 2] = np.linspace(0, 255, 32, dtype=np.uint8)
                    frame[:, index * 4 : index * 4 + 6] = 255
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                container.mux(stream.encode(None))
            return path
        except Exception:
            continue
    return None


def test_cli_engine_ray_writes_the_same_files_as_the_local_engine(
    local_ray, images: Path, tiny_model_dir: Path, tmp_path: Path
):
    clip = small_clip(tmp_path)  # a video too, when PyAV can write one: masked whole in one actor call
    inputs = [str(images)] + ([str(clip)] if clip else [])
    common = ["-p", "a cat", "-p", "the sky", "-n", "grass", "-k", "mask", "-k", "cutout", "--threshold", "0.5"]
    common += ["--softness", "0.2", "--video-output", "frames"]
    common += ["--model", str(tiny_model_dir), "--device", "cpu", "--json"]
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    local = invoke("mask", *inputs, "-o", str(local_out), *common)
    assert local.exit_code == 1, local.output
    done = len(GOOD) + (clip is not None)

    # The real entry point, joining the module's Ray through --ray-address (so the textmask package is shipped
    # to the workers with the job, as on a real cluster).
    ray_args = ["--engine", "ray", "--ray-address", local_ray, "--actors", "2", "--cpus-per-actor", "0.5"]
    first = run_cli("mask", *inputs, "-o", str(ray_out), *common, *ray_args, "--batch-size", "2")
    assert first.returncode == 1, first.stderr  # the corrupt file failed, the others were written
    summary = json.loads(first.stdout)  # nothing but the JSON on stdout, whatever Ray logs
    assert summary["engine"] == "ray" and summary["ray"]["actors"] == 2 and summary["device"] == "cpu"
    assert summary["processed"] == done and summary["failed"] == 1 and summary["skipped"] == 0
    assert summary["frames"] == (6 if clip else 0)
    (failure,) = summary["failures"]
    assert failure["input"].endswith("broken.png") and "truncated or corrupt" in failure["error"]
    assert "broken.png" in first.stderr  # reported as it happens, too

    names = files_in(local_out)
    assert names == files_in(ray_out)  # same names, and no temporary files either
    assert len(names) == 2 * 2 * len(GOOD) + (2 * 2 * 6 if clip else 0)
    for name in names:  # PNG bytes equal, so pixels equal
        assert (ray_out / name).read_bytes() == (local_out / name).read_bytes(), name
    outputs = {str(ray_out / name) for name in names if clip is None or not name.startswith("clip.")}
    outputs |= {str(ray_out / f"clip.{slug}") for slug in ("a-cat", "a-cat.cutout", "the-sky", "the-sky.cutout")}
    assert set(summary["outputs"]) == (outputs if clip else {str(ray_out / name) for name in names})

    # Resume: with every output there, nothing is scheduled (the cluster is not even contacted: the address is
    # unreachable) and nothing is rewritten. (The corrupt file is left out: it would be tried again.)
    stamps = {name: (ray_out / name).stat().st_mtime_ns for name in names}
    only_good = [arg for name in GOOD for arg in ("-g", name)]
    again = run_cli(
        "mask", *inputs, "-o", str(ray_out), *only_good, *common, "--engine", "ray", "--ray-address", "127.0.0.1:9"
    )
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["skipped"] == done and summary["processed"] == 0 and summary["written"] == 0
    assert {name: (ray_out / name).stat().st_mtime_ns for name in names} == stamps


def test_resume_skips_existing_outputs_and_writes_through_pyarrow(
    local_ray, images: Path, tiny_model_dir: Path, tiny_session, tmp_path: Path
):
    pafs = pytest.importorskip("pyarrow.fs")
    discovery = discover_inputs([images])
    job = dict(targets=make_targets(PROMPTS, "union"), kinds=("mask", "overlay"), bits=16, batch_size=4)
    reference = tmp_path / "reference"
    run_job(tiny_session, discovery.items, MaskJob(outdir=reference, **job))

    out = tmp_path / "out"
    done_before = "top.a-cat+the-sky.png"
    out.mkdir()
    (out / done_before).write_bytes(b"finished by an earlier run")
    calls: list[tuple[int, int]] = []
    # A pyarrow filesystem: the path other filesystems (HDFS, S3...) take, with no local renames.
    report = ray_data.RayExecutor(ModelSpec(str(tiny_model_dir), device="cpu"), **ACTORS).run(
        discovery.items,
        MaskJob(outdir=Path(out.as_posix()), filesystem=pafs.LocalFileSystem(), **job),
        progress=lambda done, total: calls.append((done, total)),
    )
    # top.png still needed its overlay, so it was scheduled; its finished mask was not rewritten.
    assert report.processed == len(GOOD) and report.skipped == 0 and report.failed == 1 and report.fatal is None
    assert (out / done_before).read_bytes() == b"finished by an earlier run"
    assert calls[-1] == (len(GOOD) + 1, len(GOOD) + 1)
    names = files_in(reference)
    assert files_in(out) == names  # nothing hidden left behind by the temporary-name-then-move writes
    for name in names - {done_before}:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert sorted(report.written) == sorted((out / name).as_posix() for name in names - {done_before})

    # A second run finds every output (one listing of the folder) and schedules nothing: not even Ray is used.
    readable = [item for item in discovery.items if "broken" not in item.source]  # the broken file is retried
    again = ray_data.RayExecutor(ModelSpec("no-such/model")).run(  # never loaded: there is nothing to do
        readable, MaskJob(outdir=Path(out.as_posix()), filesystem=pafs.LocalFileSystem(), **job)
    )
    assert again.skipped == len(GOOD) and again.processed == 0 and again.written == [] and again.failed == 0
    assert again.cluster == {}


def test_usage_errors(local_ray, images: Path, tiny_model_dir: Path, tmp_path: Path):
    base = ["mask", str(images), "-p", "a cat", "--model", str(tiny_model_dir)]
    knob = invoke(*base, "-o", str(tmp_path / "a"), "--actors", "2")  # Ray knobs without --engine ray
    assert knob.exit_code == 2 and "--actors only apply with --engine ray" in knob.output
    uri = invoke(*base, "-o", "s3://bucket/masks")  # the local engine writes to folders only
    assert uri.exit_code == 2 and "URIs need --engine ray" in uri.output
    gpus = invoke(*base, "-o", str(tmp_path / "b"), "--engine", "ray", "--gpus-per-actor", "1")
    assert gpus.exit_code == 2 and "no GPUs" in gpus.output  # refused before anything is scheduled
    assert not any((tmp_path / "b").iterdir())
    openvino = invoke(*base, "-o", str(tmp_path / "c"), "--engine", "ray", "--dtype", "int8", "--device", "cuda")
    assert openvino.exit_code == 2 and "runs on the CPU: no GPU actors" in openvino.output
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_openvino_models_ask_for_cpu_actors_only(tmp_path: Path) -> None:
    assert ModelSpec(backend="openvino").cpu_only and ModelSpec(dtype="int8").cpu_only
    assert not ModelSpec().cpu_only and not ModelSpec(dtype="fast").cpu_only
    executor = ray_data.RayExecutor(ModelSpec(backend="openvino"), gpus_per_actor=1)
    with pytest.raises(ValueError, match="no GPU actors"):
        executor.mapper(MaskJob(outdir=tmp_path, targets=make_targets(["a cat"])))  # refused before Ray starts
