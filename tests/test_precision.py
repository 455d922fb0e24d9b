"""Reduced precision that holds on trained-like weights (issue 22).

* The stand-ins (``random-tiny-outliers``) compute the plain random model's function (float32 logits within float
  rounding) with trained-ViT-like activation statistics (post-LayerNorm channel ranges 20–60× apart).
* The agreement metric: relative logit RMS and IoU at logit 0, checked on constructed logits.
* torch's int8 (smoothing, centring, per-channel weights, float-kept layers) and bfloat16 hold on the stand-in: each
  error ≤ 1.5× the plain model's (plus 5e-4 for kernel noise) and IoU at logit 0 ≥ 0.985; the plain per-tensor int8
  of before does not, which is what makes the stand-in a stand-in.
* The check: a precision that fails it (``random-tiny-int8-breaker``) falls back to the next one with one warning
  naming both and the error; the result and the int8 calibration are cached; it can be turned off; the faces show it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

import textmask
from textmask import precision
from textmask.engine import Segmenter
from textmask.fast import fast_vision_layers
from textmask.model import int8_available, load_model
from textmask.precision import PrecisionFallbackWarning, logit_agreement

needs_int8 = pytest.mark.skipif(not int8_available(), reason="no quantized CPU engine in this torch")
PLAIN, STAND_IN, BREAKER = "random-tiny", "random-tiny-outliers", "random-tiny-int8-breaker"


def _logits(session: Segmenter) -> torch.Tensor:
    return precision.scene_logits(session, precision.scenes(precision.CHECK_SCENES), precision.CHECK_PROMPTS)


@pytest.fixture(scope="module")
def float32_logits() -> dict[str, torch.Tensor]:
    return {name: _logits(textmask.load(name, check_precision=False)) for name in (PLAIN, STAND_IN)}


def _agreement(name: str, dtype: str, reference: torch.Tensor) -> precision.Agreement:
    session = textmask.load(name, dtype=dtype, backend="torch", check_precision=False)
    return logit_agreement(reference, _logits(session))


# ------------------------------------------------------------------------------------------ stand-ins
def test_the_stand_in_computes_the_plain_function(float32_logits: dict[str, torch.Tensor]) -> None:
    plain, stand_in = float32_logits[PLAIN], float32_logits[STAND_IN]
    assert plain.std() > 1  # logits with a trained model's spread, not saturated
    # Factors up to 60 and offsets of a few times that are rounding-level changes in float32: 1e-4 is 30× the
    # largest difference measured (8e-6) and far below anything a mask would notice.
    torch.testing.assert_close(stand_in, plain, rtol=0, atol=1e-4)


def test_the_stand_in_has_outlier_channels() -> None:
    """Post-LayerNorm channel ranges: within a few × of each other on the plain model, 20–60× apart on the stand-in
    (the same few dimensions in every layer)."""
    spreads = {}
    for name in (PLAIN, STAND_IN):
        session = textmask.load(name, check_precision=False)
        hidden = precision.calibration_hidden(session)
        layer = session._vision_layers[0]
        with torch.inference_mode():
            ranges = layer.layer_norm1(hidden).abs().amax(dim=(0, 1))
        spreads[name] = float(ranges.max() / ranges.median())
        norms = [
            float(layer.layer_norm2.weight.abs().max()) for layer in session.clipseg.clip.vision_model.encoder.layers
        ]
        assert min(norms) >= (20 if name == STAND_IN else 1)
    assert spreads[PLAIN] < 5 and spreads[STAND_IN] > 15, spreads


# -------------------------------------------------------------------------------------------- metric
def test_logit_agreement_is_relative_to_the_logits_spread() -> None:
    reference = torch.tensor([[-3.0, -1.0], [1.0, 3.0]]).expand(2, 3, 2, 2)
    shifted = reference + 0.5  # every logit off by 0.5: RMS 0.5; one pixel of four changes sign per map
    agreement = logit_agreement(reference, shifted)
    assert agreement.relative_rms == pytest.approx(0.5 / float(reference.double().std()))
    assert agreement.max_abs == pytest.approx(0.5) and agreement.pairs == 6
    flipped = reference.clone()
    flipped[..., 0, 1] = 0.5  # -1 → 0.5: the positive set grows from 2 to 3 pixels
    assert logit_agreement(reference, flipped).iou == pytest.approx(2 / 3)
    assert logit_agreement(reference * 1000, shifted * 1000).relative_rms == pytest.approx(agreement.relative_rms)
    assert agreement.holds(rms_bound=1.0, iou_bound=0.5) and not agreement.holds(rms_bound=0.01)
    with pytest.raises(ValueError, match="shapes"):
        logit_agreement(reference, reference[:1])


# --------------------------------------------------------------------------------- what holds, measured
@needs_int8
def test_torch_int8_holds_on_the_stand_in(float32_logits: dict[str, torch.Tensor]) -> None:
    plain = _agreement(PLAIN, "fast", float32_logits[PLAIN])
    stand_in = _agreement(STAND_IN, "fast", float32_logits[STAND_IN])
    assert 0 < plain.relative_rms < 0.01
    assert stand_in.relative_rms <= 1.5 * plain.relative_rms + 5e-4, (plain, stand_in)
    assert stand_in.iou >= 0.985
    # The int8 of before (per-tensor weights, no smoothing) on the same stand-in: several times the plain error.
    session = textmask.load(STAND_IN, dtype="fast", backend="torch", check_precision=False)
    reference = textmask.load(STAND_IN, check_precision=False)
    improved = session._vision_layers
    try:
        session._vision_layers = fast_vision_layers(
            reference._vision_layers, torch.float32, torch.device("cpu"), "int8", None
        )
        before = logit_agreement(float32_logits[STAND_IN], _logits(session))
    finally:
        session._vision_layers = improved
    assert before.relative_rms > 3 * plain.relative_rms, (plain, before)


def test_torch_bfloat16_holds_on_the_stand_in(float32_logits: dict[str, torch.Tensor]) -> None:
    plain = _agreement(PLAIN, "bfloat16", float32_logits[PLAIN])
    stand_in = _agreement(STAND_IN, "bfloat16", float32_logits[STAND_IN])
    assert 0 < plain.relative_rms < 0.03
    assert stand_in.relative_rms <= 1.5 * plain.relative_rms + 5e-4 and stand_in.iou >= 0.985, (plain, stand_in)


# ------------------------------------------------------------------------------------------------ check
@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty textmask cache: random models are built again there, and nothing has been checked yet."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("TEXTMASK_CACHE", str(folder))
    monkeypatch.delenv(precision.ENV_SWITCH, raising=False)
    return folder


@needs_int8
def test_a_precision_that_does_not_hold_falls_back_with_one_warning(cache: Path) -> None:
    with pytest.warns(PrecisionFallbackWarning) as caught:
        session = textmask.load(BREAKER, dtype="fast", backend="torch")
    # The next precision: bfloat16 where the CPU multiplies it natively (it holds on this model), else float32.
    fallback = "bfloat16" if ("bfloat16", "torch") in precision.fallback_chain(session_fast(BREAKER)) else "float32"
    assert session.precision_name == fallback
    result = session.precision_check
    assert result.tried and result.tried[0][0] == "fast-int8"
    failed = result.tried[0][1]
    assert failed is not None and not failed.holds() and failed.relative_rms > precision.RELATIVE_RMS_BOUND
    (warning,) = [w for w in caught if issubclass(w.category, PrecisionFallbackWarning)]
    text = str(warning.message)
    assert f"{BREAKER}: fast-int8 (relative logit RMS {failed.relative_rms:.4f}" in text
    assert f"running {fallback} instead" in text
    # The masks are that precision's masks: a session of it loaded afresh gives the same.
    images = [scene.permute(1, 2, 0).numpy() for scene in precision.scenes((0, 1))]
    same = Segmenter(load_model(BREAKER, dtype=fallback, backend="torch", reuse=False))
    for got, expected_mask in zip(session.mask(images, "a cat"), same.mask(images, "a cat")):
        torch.testing.assert_close(got, expected_mask, rtol=0, atol=1e-6)
    # Asking again: the same session, and no second warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionFallbackWarning)
        assert textmask.load(BREAKER, dtype="fast", backend="torch") is session
    # Turned off: the precision asked for runs, unchecked.
    assert textmask.load(BREAKER, dtype="fast", backend="torch", check_precision=False).precision_name == "fast-int8"


def session_fast(name: str) -> Segmenter:
    return textmask.load(name, dtype="fast", backend="torch", check_precision=False)


@needs_int8
def test_the_check_and_the_calibration_are_cached(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session = Segmenter(load_model(PLAIN, dtype="fast", backend="torch", reuse=False))
    reference = textmask.load(PLAIN, check_precision=False)
    first = precision.check(session, lambda: reference)
    assert first.holds and not first.cached and first.agreement.relative_rms < precision.RELATIVE_RMS_BOUND
    assert len(list((cache / "precision").glob("random-tiny-v4-fast-int8-*.json"))) == 1
    assert len(list((cache / "precision").glob("random-tiny-v4-int8-plan-*.safetensors"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("should have come from the cache")

    again = precision.check(session, fail)  # read back: nothing measured, nothing made
    assert again.cached and again.agreement == first.agreement
    monkeypatch.setattr("textmask.fast.calibrate_int8", fail)
    rebuilt = Segmenter(load_model(PLAIN, dtype="fast", backend="torch", reuse=False))  # the plan from the cache
    torch.testing.assert_close(_logits(rebuilt), _logits(session), rtol=0, atol=0)
    monkeypatch.setattr(precision, "CHECK_VERSION", precision.CHECK_VERSION + 1)  # another key: measured again
    assert not precision.check(session, lambda: reference).cached
    listed = precision.cached_checks()
    assert {entry["precision"] for entry in listed} == {"fast-int8"} and all(entry["holds"] for entry in listed)


def test_the_check_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(precision.ENV_SWITCH, "0")
    assert not precision.enabled() and precision.enabled(True)
    monkeypatch.setenv(precision.ENV_SWITCH, "1")
    assert precision.enabled() and not precision.enabled(False)


def test_the_faces_show_the_precision_and_its_agreement(
    cache: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from textmask.comfy import runtime

    folder = textmask.load(PLAIN, check_precision=False).loaded.folder
    with caplog.at_level(logging.INFO, logger="textmask"):
        session = runtime._own_session(folder, torch.device("cpu"), torch.bfloat16)
    assert session.precision_name == "bfloat16" and session.precision_check.holds
    assert f"CLIPSeg {folder.name} on cpu runs bfloat16 (relative logit RMS" in caplog.text
    from cli_helpers import invoke

    result = invoke("info")
    assert result.exit_code == 0, result.output
    assert f"{folder.name} bfloat16: 0.0" in result.output and "(holds)" in result.output
    from textmask.info import environment

    assert environment()["precision_checks"][0]["precision"] == "bfloat16"


def test_the_server_reports_the_check(cache: Path) -> None:
    pytest.importorskip("fastapi")
    import time

    from fastapi.testclient import TestClient

    from textmask.serve import ServeConfig, create_app

    config = ServeConfig(model=PLAIN, device="cpu", dtype="bfloat16", backend="torch")
    with TestClient(create_app(config)) as client:
        deadline = time.monotonic() + 300
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the server was not ready after 300 s"
            time.sleep(0.1)
        info = client.get("/v1/info").json()
    assert info["dtype"] == "bfloat16", info
    check = info["precision_check"]
    assert check["precision"] == "bfloat16" and check["holds"] and 0 < check["relative_logit_rms"] < 0.04, check
    assert check["bound"] == {"relative_logit_rms": precision.RELATIVE_RMS_BOUND, "iou_at_logit_0": precision.IOU_BOUND}


def test_a_check_that_cannot_run_says_so(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("not enough memory")

    monkeypatch.setattr(precision, "measure", out_of_memory)
    session = Segmenter(load_model(PLAIN, dtype="bfloat16", backend="torch", reuse=False))
    with pytest.warns(PrecisionFallbackWarning, match="could not check bfloat16 against float32 .*not enough memory"):
        runs = precision.ensure_holds(session, load=out_of_memory, reference=out_of_memory)
    assert runs is session and runs.precision_check.agreement is None
