"""The OpenVINO backend (CPU): the vision tower (with the decoder's prompt-free projections) and the decoder as
OpenVINO graphs.

``textmask.load(..., backend="openvino")`` runs :meth:`textmask.Segmenter.encode_pixels` — patch embedding,
``pre_layrnorm``, vision layers ``0..max(extract_layers)`` and the decoder's ``reduces`` projections — through
one OpenVINO graph (:func:`vision_graph`), and :meth:`textmask.Segmenter.decode` after the FiLM projections —
the decoder layers and transposed convolutions — through a second, small one (:func:`decoder_graph`, float32:
1.3–1.8× torch's float32 decoder, which matters with several prompts). The text tower, the FiLM projections and
example-image prompts stay in torch (float32). Results do not depend on the batch size (bit for bit).

* **Graph.** :func:`vision_graph` writes the graph with OpenVINO's opset from textmask's own CLIPSeg modules
  (:mod:`textmask.clipseg`), op for op as their forward (one fused QKV matrix multiply; CLIP's
  ``x·σ(1.702x)`` is OpenVINO's ``Swish`` with β = 1.702; attention is its ``ScaledDotProductAttention``).
  No tracing: it takes a fraction of a second, where ``openvino.convert_model`` (TorchScript tracing) took
  4–80 s depending on the machine's load.
* **Precisions.** ``float32`` (float32 weights, f32 inference), ``bfloat16`` (weights stored as float16,
  bf16 inference; only on CPUs with native bf16) and ``int8`` (NNCF post-training quantization of the vision
  graph, calibrated on :func:`calibration_images` or the caller's images; the patch-embedding convolution stays
  in float, and what stays in float runs in bf16 where the CPU has it). The decoder graph always runs in float32.
* **Cache.** The vision graph is saved once as OpenVINO IR in ``cache_root()/openvino/<name>-<precision>-<key>/``,
  keyed by the model files' identity (or, for a model handed over in memory, a hash of its weights), the
  precision, the calibration set, the OpenVINO version and :data:`IR_VERSION`; written to a temporary folder
  and renamed into place. An entry that does not read back (truncated, corrupt, another version) is
  deleted and rebuilt. The decoder graph is small and built at each load (milliseconds). Quantizing needs
  ``nncf`` (``pip install 'textmask[openvino-quantize]'``), once; running a cached int8 IR needs only
  ``openvino``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .constants import cache_root
from .errors import BackendUnavailable, ModelLoadError, first_line

log = logging.getLogger("textmask")

PRECISIONS = ("float32", "bfloat16", "int8")
IR_VERSION = 1  # bump when vision_graph's graph changes: cached IRs of other versions are not used
CALIBRATION_VERSION = 1  # bump when calibration_images changes
CALIBRATION_COUNT = 32
INSTALL = "pip install 'textmask[openvino]'"
INSTALL_QUANTIZE = "pip install 'textmask[openvino-quantize]'"
_IR_NAME = "vision"
# OpenVINO's inference precision per textmask precision. int8: what NNCF leaves in float (attention, layer norms,
# the patch embedding) runs in bf16 where the CPU has it (OpenVINO's own default): 25 % faster than in float32
# for mean |Δp| 0.0023 instead of 0.0021 on random-full (docs/benchmarks.md).
_INFERENCE_PRECISION = {"float32": "f32", "bfloat16": "bf16", "int8": "bf16"}
_LOCK = threading.Lock()


# ------------------------------------------------------------------------------------ availability
def import_openvino() -> Any:
    """The ``openvino`` module.

    Raises:
        BackendUnavailable: it is not installed (or does not import), saying what to install.
    """
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend='openvino' needs OpenVINO, which is not installed here ({first_line(exc)}): {INSTALL}"
        ) from None
    return openvino


def openvino_installed() -> bool:
    """Whether ``openvino`` can be found (without importing it)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def nncf_installed() -> bool:
    """Whether ``nncf`` (needed to quantize to int8, once per model) can be found."""
    try:
        return importlib.util.find_spec("nncf") is not None
    except (ImportError, ValueError):
        return False


def openvino_version() -> str:
    """The installed OpenVINO's full version string (part of every cache key)."""
    ov = import_openvino()
    return str(getattr(ov, "__version__", None) or ov.get_version())


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    return import_openvino().Core()


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX512-BF16 or AMX).

    The plugin's word (``OPTIMIZATION_CAPABILITIES``) comes from the CPU's feature bits; a one-matmul bf16 graph is
    then compiled to be sure, once per process (milliseconds). The two disagree where oneDNN may use less than the
    CPU has: ``ONEDNN_MAX_CPU_ISA=AVX2`` (set to emulate another CPU, as the tests do) leaves "BF16" advertised
    but no bf16 kernel to compile, and every bf16 or int8 graph would then fail to compile.
    """
    try:
        if "BF16" not in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return False
        import numpy as np
        from openvino import Model, opset13

        pixels = opset13.parameter([1, 16], np.float32)
        weights = opset13.constant(np.ones((16, 16), np.float32))
        probe = Model([opset13.matmul(pixels, weights, False, False)], [pixels], "bf16-probe")
        _core().compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
        return True
    except Exception:  # no CPU plugin, or no bf16 kernels: nothing in bf16 runs here
        return False


def fast_precision() -> str:
    """What ``dtype="fast"`` means with ``backend="openvino"``: ``bfloat16`` where the CPU has it (the speed of
    torch's int8 at a third of its error), else ``int8`` when NNCF can quantize, else ``float32``."""
    if cpu_supports_bf16():
        return "bfloat16"
    return "int8" if nncf_installed() else "float32"


def resolve_precision(dtype: str | torch.dtype | None) -> str:
    """``dtype`` as an OpenVINO precision: ``float32`` (default), ``bfloat16``, ``int8``, or ``fast``.

    Raises:
        ValueError: ``float16`` or another dtype OpenVINO's CPU path does not run, or bf16 on a CPU without it.
    """
    names = {None: "float32", torch.float32: "float32", torch.bfloat16: "bfloat16"}
    name = names.get(dtype, dtype) if not isinstance(dtype, str) else dtype
    if name == "fast":
        return fast_precision()
    if name not in PRECISIONS:
        raise ValueError(
            f"dtype: {dtype!r} with backend='openvino': use one of {[*PRECISIONS, 'fast']} "
            "(float16 is a GPU dtype: use the torch backend there)"
        )
    if name == "bfloat16" and not cpu_supports_bf16():
        raise ValueError(
            "dtype: 'bfloat16' with backend='openvino' needs a CPU with native bf16 (AVX512-BF16 or AMX), which this "
            "one lacks; use 'float32' or 'int8'"
        )
    return str(name)


# ------------------------------------------------------------------------------------------- graph
def _const(ops: Any, tensor: torch.Tensor | np.ndarray) -> Any:
    """A float32 (or integer) constant node from a tensor."""
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach().to("cpu", torch.float32).numpy()
    return ops.constant(np.ascontiguousarray(tensor))


def _ints(ops: Any, *values: int) -> Any:
    return ops.constant(np.array(values, dtype=np.int64))


def _layer_norm(ops: Any, hidden: Any, norm: torch.nn.LayerNorm) -> Any:
    """``nn.LayerNorm`` over the last axis: MVN (ε inside the square root, as torch), then scale and shift."""
    normed = ops.mvn(hidden, _ints(ops, -1), True, float(norm.eps), "inside_sqrt")
    return ops.add(ops.multiply(normed, _const(ops, norm.weight)), _const(ops, norm.bias))


def _linear(ops: Any, hidden: Any, weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """``hidden @ weight.T + bias`` (``nn.Linear``)."""
    out = ops.matmul(hidden, _const(ops, weight), False, True)
    return ops.add(out, _const(ops, bias)) if bias is not None else out


def _attention(ops: Any, hidden: Any, attention: Any, width: int) -> Any:
    """:class:`textmask.clipseg.layers.Attention` without a mask, ``[B, T, D]`` → ``[B, T, D]``: one fused QKV
    matrix multiply, OpenVINO's scaled dot-product attention, the output projection."""
    heads = attention.num_heads
    qkv = _linear(
        ops,
        hidden,
        torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]),
        torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias]),
    )
    qkv = ops.reshape(qkv, _ints(ops, 0, 0, 3, heads, width // heads), True)
    qkv = ops.transpose(qkv, _ints(ops, 2, 0, 3, 1, 4))  # [3, B, heads, T, head_dim]
    query, key, value = (ops.squeeze(part, _ints(ops, 0)) for part in ops.split(qkv, 0, 3).outputs())
    scale = ops.constant(np.float32(attention.scale))
    attended = ops.scaled_dot_product_attention(query, key, value, scale=scale, causal=False)
    attended = ops.reshape(ops.transpose(attended, _ints(ops, 0, 2, 1, 3)), _ints(ops, 0, 0, width), True)
    return _linear(ops, attended, attention.out_proj.weight, attention.out_proj.bias)


@torch.no_grad()
def vision_graph(clipseg: Any, size: tuple[int, int]) -> Any:
    """The OpenVINO graph of :meth:`textmask.Segmenter.encode_pixels` for ``size`` inputs, float32.

    Input ``pixel_values`` ``[B, 3, H, W]`` (B dynamic); outputs ``reduced_0..`` ``[B, T, R]``, one per decoder
    layer in decoder order (deepest extract layer first), as :class:`textmask.engine.ImageFeatures` holds them.

    Args:
        clipseg: a :class:`textmask.clipseg.CLIPSeg` (any dtype; the graph's weights are float32).
        size: ``(height, width)`` of the pixels, the processor's size (352×352 for rd64-refined).
    """
    ov = import_openvino()
    import openvino.opset13 as ops

    config = clipseg.config
    vision = clipseg.clip.vision_model
    embeddings = vision.embeddings
    width = config.vision_config.hidden_size
    height, image_width = size
    pixels = ops.parameter([-1, 3, height, image_width], np.float32, name="pixel_values")
    patch = embeddings.patch_size
    hidden = ops.convolution(
        pixels, _const(ops, embeddings.patch_embedding.weight), [patch, patch], [0, 0], [0, 0], [1, 1]
    )
    hidden = ops.transpose(ops.reshape(hidden, _ints(ops, 0, width, -1), True), _ints(ops, 0, 2, 1))  # [B, N, D]
    batch = ops.gather(ops.shape_of(pixels, "i64"), _ints(ops, 0), ops.constant(np.int64(0)))
    class_shape = ops.concat([batch, _ints(ops, 1, width)], 0)
    class_token = ops.broadcast(_const(ops, embeddings.class_embedding.reshape(1, 1, width)), class_shape)
    hidden = ops.concat([class_token, hidden], 1)  # [B, T, D]
    hidden = ops.add(hidden, _const(ops, embeddings.position_table(height, image_width)))
    hidden = _layer_norm(ops, hidden, vision.pre_layrnorm)
    wanted = set(config.extract_layers)
    found: dict[int, Any] = {}
    for index, layer in enumerate(vision.encoder.layers[: config.vision_layers_for_masks]):
        attention, mlp = layer.self_attn, layer.mlp
        hidden = ops.add(hidden, _attention(ops, _layer_norm(ops, hidden, layer.layer_norm1), attention, width))
        inner = _linear(ops, _layer_norm(ops, hidden, layer.layer_norm2), mlp.fc1.weight, mlp.fc1.bias)
        inner = ops.swish(inner, ops.constant(np.float32(1.702)))  # x·σ(1.702x): CLIP's quick GELU
        hidden = ops.add(hidden, _linear(ops, inner, mlp.fc2.weight, mlp.fc2.bias))
        if index in wanted:
            found[index] = hidden
    ordered = [found[index] for index in config.extract_layers][::-1]
    results = []
    for number, (reduce, activation) in enumerate(zip(clipseg.decoder.reduces, ordered)):
        output = _linear(ops, activation, reduce.weight, reduce.bias)
        output.output(0).get_tensor().set_names({f"reduced_{number}"})
        results.append(ops.result(output))
    return ov.Model(results, [pixels], "textmask_clipseg_vision")


@torch.no_grad()
def decoder_graph(clipseg: Any, tokens: int) -> Any:
    """The OpenVINO graph of :meth:`textmask.Segmenter.decode` after the FiLM projections, float32.

    Inputs ``reduced_0..`` ``[B, T, R]`` (the vision graph's outputs), ``film_mul`` and ``film_add`` ``[P, R]``
    (the decoder's FiLM projections of P prompt embeddings); output logits ``[B·P, S, S]``, image-major (image 0
    with each prompt, then image 1...), as the torch decoder computes them: reduced features summed layer by
    layer, FiLM at ``conditional_layer``, the post-norm decoder layers (ReLU), then the transposed convolutions.

    Args:
        clipseg: a :class:`textmask.clipseg.CLIPSeg`.
        tokens: T = 1 + (S / patch)².
    """
    ov = import_openvino()
    import openvino.opset13 as ops

    config = clipseg.config
    decoder = clipseg.decoder
    width = config.reduce_dim
    depth = len(config.extract_layers)
    reduced = [ops.parameter([-1, tokens, width], np.float32, name=f"reduced_{i}") for i in range(depth)]
    film_mul = ops.parameter([-1, width], np.float32, name="film_mul")
    film_add = ops.parameter([-1, width], np.float32, name="film_add")
    batch = ops.gather(ops.shape_of(reduced[0], "i64"), _ints(ops, 0), ops.constant(np.int64(0)))
    prompts = ops.gather(ops.shape_of(film_mul, "i64"), _ints(ops, 0), ops.constant(np.int64(0)))
    pairs_shape = ops.concat([batch, prompts, _ints(ops, tokens, width)], 0)  # [B, P, T, R]

    def per_pair(values: Any) -> Any:  # [B, T, R] → [B·P, T, R], each image repeated for each prompt
        return ops.reshape(
            ops.broadcast(ops.unsqueeze(values, _ints(ops, 1)), pairs_shape), _ints(ops, -1, tokens, width), False
        )

    output: Any = None
    expanded = False
    for index, (features, layer) in enumerate(zip(reduced, decoder.layers)):
        if expanded:
            features = per_pair(features)
        output = features if output is None else ops.add(features, output)
        if index == config.conditional_layer:
            scale = ops.unsqueeze(film_mul, _ints(ops, 0, 2))  # [1, P, 1, R]
            shift = ops.unsqueeze(film_add, _ints(ops, 0, 2))
            output = ops.add(ops.multiply(ops.unsqueeze(output, _ints(ops, 1)), scale), shift)  # [B, P, T, R]
            output = ops.reshape(output, _ints(ops, -1, tokens, width), False)
            expanded = True
        attended = _attention(ops, output, layer.self_attn, width)
        output = _layer_norm(ops, ops.add(attended, output), layer.layer_norm1)
        mlp = layer.mlp
        inner = ops.relu(_linear(ops, output, mlp.fc1.weight, mlp.fc1.bias))
        output = _layer_norm(ops, ops.add(_linear(ops, inner, mlp.fc2.weight, mlp.fc2.bias), output), layer.layer_norm2)
    if not expanded:
        output = per_pair(output)
    side = round((tokens - 1) ** 0.5)
    grid = ops.slice(output, _ints(ops, 1), _ints(ops, tokens), _ints(ops, 1), _ints(ops, 1))  # drop the class token
    grid = ops.reshape(ops.transpose(grid, _ints(ops, 0, 2, 1)), _ints(ops, -1, width, side, side), False)
    upsample = decoder.transposed_convolution
    modules = list(upsample) if isinstance(upsample, torch.nn.Sequential) else [upsample]
    for module in modules:
        if isinstance(module, torch.nn.ReLU):
            grid = ops.relu(grid)
            continue
        stride, padding = list(module.stride), list(module.padding)
        if isinstance(module, torch.nn.ConvTranspose2d):
            grid = ops.convolution_backprop_data(
                grid, _const(ops, module.weight), stride, pads_begin=padding, pads_end=padding, dilations=[1, 1]
            )
        else:
            grid = ops.convolution(grid, _const(ops, module.weight), stride, padding, padding, [1, 1])
        if module.bias is not None:
            grid = ops.add(grid, _const(ops, module.bias.reshape(1, -1, 1, 1)))
    logits = ops.squeeze(grid, _ints(ops, 1))  # [B·P, S, S]
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([ops.result(logits)], [*reduced, film_mul, film_add], "textmask_clipseg_decoder")


class OpenVINODecoder:
    """A compiled :func:`decoder_graph`: ``(reduced features [B, T, R]..., film_mul, film_add [P, R])`` →
    logits ``[B, P, S, S]`` float32."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, reduced: Sequence[torch.Tensor], film_mul: torch.Tensor, film_add: torch.Tensor) -> torch.Tensor:
        arrays = [x.detach().to("cpu", torch.float32).contiguous().numpy() for x in (*reduced, film_mul, film_add)]
        with self._lock:
            results = self._request.infer(dict(enumerate(arrays)), share_inputs=True, share_outputs=False)
            logits = torch.from_numpy(np.asarray(results[self.compiled.outputs[0]]))
        return logits.reshape(reduced[0].shape[0], film_mul.shape[0], *logits.shape[-2:])


def load_decoder(clipseg: Any, tokens: int) -> OpenVINODecoder:
    """The decoder graph, built (a few milliseconds: it is small, so it is not cached on disk) and compiled in
    float32 whatever the vision graph's precision: 1.3× torch's float32 decoder for one prompt, 1.8× for five,
    with its agreement; in bf16 it was 1.8× / 2.8× but took mean |Δp| from 0.0012 to 0.0018 (docs/benchmarks.md)."""
    import_openvino()
    return OpenVINODecoder(_compile(decoder_graph(clipseg, tokens), "float32", "decoder"))


# ------------------------------------------------------------------------------------- calibration
def calibration_images(count: int = CALIBRATION_COUNT, seed: int = 0) -> list[torch.Tensor]:
    """The built-in calibration set: ``count`` procedurally drawn, natural-looking scenes, deterministic.

    Outdoor scenes (sky, horizon, textured ground, trees, animals, people), rooms (walls, floor, furniture,
    windows), street scenes (buildings with window grids, a road), close-ups on a blurred background and
    textures; varied sizes, exposures, blur and grain. Drawn with numpy's seeded generator and Pillow, so the
    same on every machine; no image files ship with textmask.

    Returns:
        ``count`` uint8 tensors ``[3, H, W]`` (sizes differ), the layout the engine's preprocessing takes.
    """
    return [_scene(index, seed) for index in range(count)]


_SIZES = ((384, 512), (512, 384), (352, 352), (480, 640), (640, 480), (300, 400), (600, 450), (256, 320))


def _noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth value noise ``[H, W]`` in [0, 1]: a coarse random grid resized bicubically."""
    from PIL import Image

    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), dtype=np.float32) / 255.0


def _colour(rng: np.random.Generator, base: Sequence[int], spread: int = 40) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(value + rng.integers(-spread, spread + 1), 0, 255)) for value in base)
    return r, g, b


def _scene(index: int, seed: int) -> torch.Tensor:
    """One calibration scene (see :func:`calibration_images`) ``[3, H, W]`` uint8."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng([seed, index, CALIBRATION_VERSION])
    height, width = _SIZES[index % len(_SIZES)]
    kind = ("outdoor", "room", "street", "closeup", "texture", "outdoor", "room", "closeup")[index % 8]
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    if kind == "texture":
        base = np.asarray(_colour(rng, (120, 110, 90), 80), np.float32)
        texture = sum(_noise(rng, height, width, cells) / (1 + octave) for octave, cells in enumerate((4, 12, 40, 120)))
        texture = texture / texture.max()
        canvas = base * (0.4 + 0.9 * texture[..., None]) + rng.normal(0, 12, (1, 1, 3))
    elif kind == "room":
        wall = np.asarray(_colour(rng, (200, 190, 170), 50), np.float32)
        floor = np.asarray(_colour(rng, (130, 95, 60), 40), np.float32)
        horizon = int(height * rng.uniform(0.55, 0.75))
        canvas = np.where(np.arange(height)[:, None, None] < horizon, wall * (0.8 + 0.3 * ys), floor * (0.7 + 0.5 * ys))
        canvas = canvas * (0.85 + 0.3 * _noise(rng, height, width, 6)[..., None])
        canvas = np.broadcast_to(canvas, (height, width, 3))
    else:  # sky over ground
        sky_top = np.asarray(_colour(rng, (90, 140, 220), 40), np.float32)
        sky_low = np.asarray(_colour(rng, (190, 210, 240), 30), np.float32)
        ground = np.asarray(_colour(rng, (80, 130, 60) if kind != "street" else (95, 95, 100), 40), np.float32)
        horizon = int(height * rng.uniform(0.35, 0.7))
        sky = sky_top + (sky_low - sky_top) * np.clip(ys / max(horizon / height, 1e-3), 0, 1)
        grass = ground * (0.6 + 0.7 * _noise(rng, height, width, 30)[..., None]) * (0.8 + 0.4 * ys)
        canvas = np.where(np.arange(height)[:, None, None] < horizon, sky, grass)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    if kind in ("outdoor", "street", "closeup"):
        horizon = int(height * 0.5)
    shapes = {"outdoor": 7, "room": 6, "street": 9, "closeup": 3, "texture": 0}[kind]
    for _ in range(shapes):
        x, y = int(rng.integers(0, width)), int(rng.integers(height // 4, height))
        size = int(rng.integers(min(height, width) // 12, min(height, width) // (2 if kind == "closeup" else 4)))
        choice = rng.integers(0, 5)
        if kind == "street" and choice < 3:  # a building with a window grid
            top = int(rng.integers(0, height // 2))
            box = [x - size, top, x + size, height]
            draw.rectangle(box, fill=_colour(rng, (150, 120, 110), 60))
            light = _colour(rng, (220, 220, 170), 30)
            for wy in range(top + 8, height - 8, 18):
                for wx in range(x - size + 6, x + size - 8, 16):
                    draw.rectangle([wx, wy, wx + 7, wy + 10], fill=light if rng.random() < 0.6 else (40, 40, 50))
        elif kind == "room" and choice < 2:  # a window
            draw.rectangle([x - size, y - size * 2, x + size, y - size // 2], fill=_colour(rng, (200, 225, 250), 20))
        elif choice == 0:  # a tree: trunk and crown
            draw.rectangle([x - size // 8, y - size, x + size // 8, y + size // 2], fill=_colour(rng, (100, 70, 40)))
            draw.ellipse([x - size, y - 2 * size, x + size, y - size // 3], fill=_colour(rng, (40, 110, 45)))
        elif choice == 1:  # an animal: body, head, legs
            coat = _colour(rng, (120, 100, 80), 70)
            draw.ellipse([x - size, y - size // 2, x + size, y + size // 2], fill=coat)
            draw.ellipse([x + size // 2, y - size, x + size + size // 3, y - size // 4], fill=coat)
            for leg in (-0.7, -0.3, 0.3, 0.7):
                draw.rectangle(
                    [x + int(leg * size), y + size // 3, x + int(leg * size) + size // 8, y + size], fill=coat
                )
        elif choice == 2:  # a person: head, torso, legs
            draw.ellipse(
                [x - size // 5, y - size, x + size // 5, y - size // 2], fill=_colour(rng, (210, 170, 140), 40)
            )
            draw.rectangle(
                [x - size // 3, y - size // 2, x + size // 3, y + size // 3], fill=_colour(rng, (60, 80, 150), 90)
            )
            draw.rectangle([x - size // 4, y + size // 3, x + size // 4, y + size], fill=_colour(rng, (50, 50, 60), 30))
        elif choice == 3:  # furniture, a car, a box
            draw.rectangle([x - size, y - size // 2, x + size, y + size // 3], fill=_colour(rng, (150, 60, 50), 90))
            draw.ellipse([x - size, y + size // 5, x - size // 2, y + size // 2], fill=(25, 25, 25))
            draw.ellipse([x + size // 2, y + size // 5, x + size, y + size // 2], fill=(25, 25, 25))
        else:  # a ball, a plate, a sun
            draw.ellipse(
                [x - size // 2, y - size // 2, x + size // 2, y + size // 2], fill=_colour(rng, (230, 200, 80), 60)
            )
    if kind == "closeup":  # one large subject in front of a blurred scene
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(3, 8))))
        draw = ImageDraw.Draw(image)
        cx, cy, r = width // 2, height // 2, int(min(height, width) * rng.uniform(0.25, 0.4))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_colour(rng, (170, 120, 90), 80))
        draw.ellipse([cx - r // 2, cy - r // 2, cx - r // 4, cy - r // 4], fill=(30, 30, 30))
        draw.ellipse([cx + r // 4, cy - r // 2, cx + r // 2, cy - r // 4], fill=(30, 30, 30))
    elif rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.5))))
    pixels = np.asarray(image, dtype=np.float32)
    exposure = float(rng.choice([0.35, 0.7, 1.0, 1.0, 1.0, 1.25]))  # some dark and some bright shots
    vignette = 1.0 - 0.35 * (np.linspace(-1, 1, width)[None, :] ** 2 + np.linspace(-1, 1, height)[:, None] ** 2) / 2
    pixels = pixels * exposure * vignette[..., None] + rng.normal(0, float(rng.uniform(1, 8)), pixels.shape)
    levels = np.clip(pixels, 0, 255).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(levels.transpose(2, 0, 1)))


def _quantize(model: Any, pixels: Sequence[np.ndarray]) -> Any:
    """NNCF post-training int8 quantization of the float32 graph, calibrated on ``pixels`` (``[1, 3, H, W]``
    each): transformer preset (SmoothQuant, fast bias correction), the patch-embedding convolution left in
    float. NNCF's progress goes to stderr, so stdout (the CLI's ``--json``) stays clean."""
    import nncf

    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return nncf.quantize(
                model,
                nncf.Dataset(list(pixels)),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(pixels),
                ignored_scope=nncf.IgnoredScope(types=["Convolution"]),
            )
    finally:
        nncf_log.setLevel(level)


# ------------------------------------------------------------------------------------------- cache
def weights_identity(folder: Path | None, clipseg: Any) -> dict[str, Any]:
    """What identifies the weights a graph is built from.

    A model folder: ``config.json``'s hash and each weights file's resolved path, size and modification time
    (cheap; a Hugging Face snapshot's files resolve to content-addressed blobs). Without a folder (a model
    handed over in memory): a hash of the tensors the graph holds.
    """
    if folder is not None and (folder / "config.json").is_file():
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
        described = []
        for path in files:
            if path.suffix == ".json":
                described.append([path.name, hashlib.sha256(path.read_bytes()).hexdigest()])
            else:
                stat = path.stat()
                described.append([path.name, str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        return {"folder": str(folder.resolve()), "files": described}
    digest = hashlib.sha256()
    for name, tensor in sorted(_graph_tensors(clipseg).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return {"weights_sha256": digest.hexdigest(), "config": repr(clipseg.config)}


def _graph_tensors(clipseg: Any) -> dict[str, torch.Tensor]:
    """The parameters :func:`vision_graph` reads, by name."""
    depth = clipseg.config.vision_layers_for_masks
    keep = ("clip.vision_model.embeddings.", "clip.vision_model.pre_layrnorm.", "decoder.reduces.")
    layers = tuple(f"clip.vision_model.encoder.layers.{i}." for i in range(depth))
    return {name: p for name, p in clipseg.named_parameters() if name.startswith(keep + layers)}


def cache_entry(name: str, key: dict[str, Any]) -> Path:
    """The cache folder of one graph: ``cache_root()/openvino/<name>-<precision>-<hash of key>``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "model"
    return cache_root() / "openvino" / f"{slug}-{key['precision']}-{digest}"


def _read_entry(entry: Path, key: dict[str, Any]) -> Any | None:
    """The cached graph, or None when there is none; an entry that does not read back is deleted."""
    meta_path = entry / "meta.json"
    if not entry.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") != key:
            raise ValueError("it was made for another model, precision or OpenVINO version")
        for file_name, size in meta["files"].items():
            actual = (entry / file_name).stat().st_size
            if actual != size:
                raise ValueError(f"{file_name} has {actual} bytes, not {size}")
        model = _core().read_model(str(entry / f"{_IR_NAME}.xml"), str(entry / f"{_IR_NAME}.bin"))
        if len(model.outputs) != key["outputs"]:
            raise ValueError(f"{len(model.outputs)} outputs, not {key['outputs']}")
        return model
    except Exception as exc:
        log.warning("OpenVINO cache entry %s is unusable (%s); rebuilding it", entry, first_line(exc))
        shutil.rmtree(entry, ignore_errors=True)
        return None


def _write_entry(ov: Any, entry: Path, model: Any, key: dict[str, Any], compress: bool, extra: dict[str, Any]) -> None:
    """Save the graph as IR into a temporary folder beside ``entry``, then rename it into place (atomic: a crash
    leaves no half-written entry; when another process got there first, its entry is kept)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        ov.save_model(model, str(staging / f"{_IR_NAME}.xml"), compress_to_fp16=compress)
        files = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
        meta = {"key": key, "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if entry.exists():
            shutil.rmtree(staging, ignore_errors=True)
            return
        os.replace(staging, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------- run
class OpenVINOVisionTower:
    """A compiled :func:`vision_graph`: pixels ``[B, 3, H, W]`` → the reduced features, ``B`` any.

    Attributes:
        precision: ``float32``, ``bfloat16`` or ``int8``.
        entry: its cache folder.
        built: whether this load built the graph (and quantized it, for int8) rather than read it from the cache.
        timings: seconds per step of this load: ``build``, ``calibration_images`` (drawing and preparing the
            built-in set), ``quantize`` (NNCF, its import included), ``save`` (when built), ``read``, ``compile``.
    """

    def __init__(self, compiled: Any, precision: str, entry: Path, built: bool, timings: dict[str, float]) -> None:
        self.compiled = compiled
        self.precision = precision
        self.entry = entry
        self.built = built
        self.timings = timings
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()  # one request, reused: calls from several threads take turns

    def __call__(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[B, 3, H, W]`` → one float32 ``[B, T, R]`` CPU tensor per decoder layer (decoder order)."""
        array = pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()
        with self._lock:
            results = self._request.infer({0: array}, share_inputs=True, share_outputs=False)
            return tuple(torch.from_numpy(np.asarray(results[output])) for output in self.compiled.outputs)

    def __repr__(self) -> str:
        return f"OpenVINOVisionTower({self.precision}, {self.entry})"


def load_tower(
    clipseg: Any,
    name: str,
    folder: Path | None,
    precision: str,
    size: tuple[int, int],
    prepare: Callable[[list[torch.Tensor]], torch.Tensor],
    calibration: Any = None,
    pixels: str = "",
) -> OpenVINOVisionTower:
    """The compiled vision graph of ``clipseg`` in ``precision``: read from textmask's cache, or built (and
    quantized) once and saved there.

    Args:
        clipseg: the loaded :class:`textmask.clipseg.CLIPSeg`.
        name: the model's name, for the cache folder's name.
        folder: the model folder (its files identify the weights), or None for a model handed over in memory.
        precision: ``float32``, ``bfloat16`` or ``int8``.
        size: the pixels' ``(height, width)``.
        prepare: 8-bit images (uint8 ``[3, H, W]`` each) → pixel values ``[n, 3, H, W]`` as the session makes
            them (used to calibrate int8).
        calibration: int8 only: images to calibrate on (anything :func:`textmask.images.as_image_batch` takes;
            a few dozen typical of the job); None: the built-in set, :func:`calibration_images`.
        pixels: what ``prepare`` does, in words (the session's preprocessing settings): int8's built-in
            calibration is keyed by it, since its pixel values depend on it.

    Raises:
        BackendUnavailable: OpenVINO is not installed; or int8 is not cached and NNCF is not installed.
        ModelLoadError: OpenVINO cannot compile the graph on this CPU.
    """
    ov = import_openvino()
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {PRECISIONS}")
    timings: dict[str, float] = {}
    calibration_pixels: list[np.ndarray] = []
    key: dict[str, Any] = {
        "ir_version": IR_VERSION,
        "openvino": openvino_version(),
        "precision": precision,
        "size": list(size),
        "outputs": len(clipseg.config.extract_layers),
        "weights": weights_identity(folder, clipseg),
    }
    if precision == "int8":
        if calibration is None:
            key["calibration"] = f"builtin-v{CALIBRATION_VERSION}-{CALIBRATION_COUNT}"
            key["pixels"] = pixels
        else:
            calibration_pixels = _calibration_pixels(_user_levels(calibration), prepare)
            digest = hashlib.sha256(b"".join(p.tobytes() for p in calibration_pixels)).hexdigest()
            key["calibration"] = f"images-{len(calibration_pixels)}-{digest}"
    entry = cache_entry(name, key)
    with _LOCK:
        started = time.perf_counter()
        model = _read_entry(entry, key)
        built = model is None
        if model is None:
            if precision == "int8" and not nncf_installed():
                raise BackendUnavailable(
                    "dtype 'int8' with backend='openvino' quantizes the model once (then runs the cached int8 model "
                    f"with OpenVINO alone), which needs NNCF: {INSTALL_QUANTIZE}. Or use dtype 'bfloat16' or "
                    "'float32', which need only OpenVINO."
                )
            started = time.perf_counter()
            try:
                model = vision_graph(clipseg, size)
            except Exception as exc:
                raise ModelLoadError(
                    f"OpenVINO could not convert {name}'s vision tower ({type(exc).__name__}: {first_line(exc)}); "
                    "use backend='torch'"
                ) from exc
            timings["build"] = time.perf_counter() - started
            extra: dict[str, Any] = {}
            if precision == "int8":
                if not calibration_pixels:
                    started = time.perf_counter()
                    calibration_pixels = _calibration_pixels(calibration_images(), prepare)
                    timings["calibration_images"] = time.perf_counter() - started
                log.info(
                    "quantizing %s to int8 on %d calibration images (once; cached in %s)",
                    name,
                    len(calibration_pixels),
                    entry,
                )
                started = time.perf_counter()
                try:
                    model = _quantize(model, calibration_pixels)
                except ImportError as exc:
                    raise BackendUnavailable(
                        f"NNCF could not be imported ({first_line(exc)}): {INSTALL_QUANTIZE}, with an NNCF that "
                        "matches the installed OpenVINO; or use dtype 'bfloat16' or 'float32'"
                    ) from exc
                except Exception as exc:
                    raise ModelLoadError(
                        f"NNCF could not quantize {name} to int8 ({type(exc).__name__}: {first_line(exc)}); use "
                        "dtype 'bfloat16' or 'float32'"
                    ) from exc
                timings["quantize"] = extra["quantize_seconds"] = time.perf_counter() - started
            started = time.perf_counter()
            try:
                _write_entry(ov, entry, model, key, compress=precision == "bfloat16", extra=extra)
                timings["save"] = time.perf_counter() - started
            except OSError as exc:  # a read-only or full cache: run anyway, converting again next time
                log.warning("could not save the OpenVINO model in %s (%s); it will be rebuilt next time", entry, exc)
            if precision == "bfloat16":  # compile what the cache holds (float16 weights), as later loads will
                read = _read_entry(entry, key)
                model = read if read is not None else model
        else:
            timings["read"] = time.perf_counter() - started
        started = time.perf_counter()
        compiled = _compile(model, precision)
        timings["compile"] = time.perf_counter() - started
    return OpenVINOVisionTower(compiled, precision, entry, built, timings)


def _user_levels(images: Any) -> list[torch.Tensor]:
    """The caller's calibration images (anything :func:`textmask.images.as_image_batch` takes) as 8-bit
    ``[3, H, W]`` tensors."""
    from .images import as_image_batch

    batch = as_image_batch(images, "calibration")
    if len(batch) == 0:
        raise ValueError("calibration: give at least one image")
    return batch.levels(0, len(batch))


def _calibration_pixels(
    levels: Sequence[torch.Tensor], prepare: Callable[[list[torch.Tensor]], torch.Tensor]
) -> list[np.ndarray]:
    """8-bit images ``[3, H, W]`` → pixel values, one ``[1, 3, S, S]`` float32 array each."""
    out = []
    for start in range(0, len(levels), 8):
        values = prepare(list(levels[start : start + 8])).to(torch.float32).cpu().numpy()
        out.extend(np.ascontiguousarray(values[i : i + 1]) for i in range(len(values)))
    return out


def _compile(model: Any, precision: str, what: str = "vision tower") -> Any:
    """Compile for the CPU in ``precision``, on as many threads as torch uses (so ``torch.set_num_threads`` and
    Ray's per-actor CPU limits apply here too)."""
    inference = _INFERENCE_PRECISION[precision]
    if inference == "bf16" and precision == "int8" and not cpu_supports_bf16():
        inference = "f32"
    config = {
        "INFERENCE_PRECISION_HINT": inference,
        "INFERENCE_NUM_THREADS": max(1, torch.get_num_threads()),
        "PERFORMANCE_HINT": "LATENCY",
    }
    try:
        return _core().compile_model(model, "CPU", config)
    except Exception as exc:
        raise ModelLoadError(f"OpenVINO could not compile the {what} for this CPU ({first_line(exc)})") from None
