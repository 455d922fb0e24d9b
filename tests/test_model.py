"""Model location, loading, caching and the errors users see when weights are missing or broken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import textmask
from textmask.errors import ModelLoadError, ModelNotFoundError
from textmask.model import PreprocessConfig, load_model, locate_model, resolve_device, resolve_dtype


def _copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_load_is_cached_per_source_device_dtype(tiny_model_dir: Path) -> None:
    first = load_model(str(tiny_model_dir))
    assert load_model(str(tiny_model_dir)) is first
    assert load_model(str(tiny_model_dir), dtype="bfloat16") is not first
    assert first.model.training is False and first.dtype == torch.float32


def test_missing_local_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as caught:
        textmask.load(str(missing))
    message = str(caught.value)
    assert str(missing) in message and "no such folder" in message
    assert "Repo id must be in the form" not in message
    assert "textmask download" in message  # says how to get the weights


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        locate_model(str(tmp_path))


def test_corrupt_safetensors_raise_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = _copy_model(tiny_model_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(broken))
    assert str(broken) in str(caught.value) and "corrupt or truncated" in str(caught.value)


def test_pickle_weights_are_refused_by_default(tiny_model_dir: Path, tmp_path: Path) -> None:
    pickled = _copy_model(tiny_model_dir, tmp_path / "pickled")
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelNotFoundError, match="allow_pickle"):
        load_model(str(pickled))


def test_offline_hub_id_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as caught:
        locate_model("CIDAS/clipseg-rd64-refined", cache_dir=tmp_path)
    message = str(caught.value)
    assert "CIDAS/clipseg-rd64-refined" in message and "HF_HUB_OFFLINE" in message and str(tmp_path) in message


def test_hf_cache_layout_is_found_offline(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """ComfyUI keeps CLIPSeg in models/clipseg as a Hugging Face cache (what from_pretrained(cache_dir=) writes)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--CIDAS--clipseg-rd64-refined"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    assert locate_model("CIDAS/clipseg-rd64-refined", cache_dir=tmp_path) == snapshot
    assert locate_model(str(repo)) == snapshot  # the models--ORG--NAME folder itself works too
    session = textmask.load("CIDAS/clipseg-rd64-refined", cache_dir=str(tmp_path))
    assert session.loaded.folder == snapshot


def test_not_a_repo_id() -> None:
    with pytest.raises(ModelNotFoundError, match="not a Hugging Face id"):
        locate_model("definitely not a model")


def test_preprocess_config_read_from_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert PreprocessConfig.from_folder(tiny_model_dir) == PreprocessConfig()
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "preprocessor_config.json").write_text(
        json.dumps({"size": 224, "resample": 3, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    )
    config = PreprocessConfig.from_folder(custom)
    assert config.size == (224, 224) and config.resample == "bicubic" and config.mean == (0.5, 0.5, 0.5)
    assert PreprocessConfig.from_folder(tmp_path) == PreprocessConfig()  # no file: rd64-refined defaults


def test_random_sources_build_offline() -> None:
    folder = locate_model("random-tiny")
    assert (folder / "config.json").is_file() and (folder / "vocab.json").is_file()
    assert locate_model("random-tiny") == folder  # built once


def test_device_and_dtype_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("fast", cpu) in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float64", cpu)
    with pytest.raises(ValueError, match="float16"):
        resolve_dtype("float16", cpu)
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
