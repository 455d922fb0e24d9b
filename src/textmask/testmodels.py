"""Random-weight CLIPSeg models for tests, demos and benchmarks: ``random-tiny`` and ``random-full``, and their
stand-ins for trained weights, ``random-tiny-outliers`` / ``random-full-outliers`` (and ``-int8-breaker``).

They have the real CLIP tokenizer (rebuilt offline from the shipped BPE file, :mod:`textmask.vocab`) and,
for ``random-full``, the exact rd64-refined architecture (ViT-B/16, 352 px), so speed and memory are those of
the real model. Their masks are meaningless. Built once into textmask's cache
(``$TEXTMASK_CACHE/random-tiny-v4``) and written atomically, with textmask's own modules (no transformers);
the folders are in the Hugging Face layout, so transformers loads them too (the tests' reference).

**Stand-ins.** Random weights give every channel of every activation the same spread, which makes int8 look
better than it is on trained CLIP. The ``-outliers`` models are the plain random model after
:func:`add_outlier_channels`, a transform that leaves the function unchanged (float32 logits equal the plain
model's within float rounding: ``tests/test_precision.py``) but gives the vision tower's activations the
statistics of trained vision transformers that matter to reduced precision:

* every post-LayerNorm channel gets its own range (a log-uniform factor in [0.5, 4]), and a few per layer 5–60×
  (RepQ-ViT, Li et al., ICCV 2023: post-LayerNorm activations of trained ViTs vary severely between channels);
* the same few feature dimensions are 20–60× larger than the rest in every layer (LLM.int8(), Dettmers et al.
  2022: systematic outlier dimensions, the same in every layer, which break per-tensor int8);
* a few value channels, and hence the attention output that the output projection reads, are 5–30× larger;
* the outlier channels are off-centre by up to 3 times their own scale (trained LayerNorm biases: the channel-wise
  asymmetry of Outlier Suppression+, Wei et al. 2023); the readers' biases take the offset back out.

Each factor multiplies a LayerNorm's weight and bias (or the value projection's rows) and divides the input
columns of the linear map that reads them, exactly as a trained model's LayerNorm gain and the next weights can
trade scale. ``-int8-breaker`` adds, in every layer, a few MLP units whose pre-activations are 300–3000× larger
(``fc1``'s rows) and whose output weights are as much smaller (``fc2``'s columns): ``fc2``'s input then has
outlier channels that no LayerNorm or weight can absorb (the activation sits between), in more layers than int8
keeps in float. It is *not* function-preserving (those units' quick GELU becomes nearly a ReLU), and it breaks
int8 by design; the fallback tests use it.

High-norm tokens (Darcet et al., "Vision Transformers Need Registers", 2024) are not reproduced: weights act
alike on every token, so the only per-token change that no LayerNorm sees is a multiple of the all-ones vector
added to the residual stream, and CLIPSeg's decoder reads the raw residual stream of layers 3, 6 and 9 through
its ``reduces`` projections, whose weights do not annihilate that vector: such a change would alter the masks.
In torch's int8 mode the residual stream and the ``reduces`` stay in float32, and every int8 linear map reads a
per-token normalized (post-LayerNorm) or attention-mixed input, so high-norm tokens reach int8 mainly through
MLP activations, which no weight transform can make larger without changing the function (quick GELU is not
homogeneous).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .clipseg import CLIPSeg, CLIPSegConfig, TextConfig, VisionConfig
from .clipseg.layers import MLP, Attention
from .clipseg.model import on_meta
from .clipseg.towers import VisionEmbeddings
from .constants import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM_MODEL_VERSION,
    RANDOM_SOURCES,
    STAND_IN_VERSION,
    cache_root,
)

log = logging.getLogger("textmask")


def random_model_folder(source: str) -> Path:
    """Where the random model ``source`` (``random-tiny`` / ``random-full``) lives in textmask's cache
    (built or not)."""
    if source not in RANDOM_SOURCES:
        raise ValueError(f"{source!r} is not one of the random models {RANDOM_SOURCES}")
    if _split_kind(source.split("-", 1)[1])[1]:
        return cache_root() / f"{source}-v{RANDOM_MODEL_VERSION}.{STAND_IN_VERSION}"
    return cache_root() / f"{source}-v{RANDOM_MODEL_VERSION}"


STAND_INS = ("outliers", "int8-breaker")


def _split_kind(kind: str) -> tuple[str, str | None]:
    """``"full-outliers"`` → ``("full", "outliers")``; ``"tiny"`` → ``("tiny", None)``."""
    base, _, variant = kind.partition("-")
    if variant and variant not in STAND_INS:
        raise ValueError(f"unknown random model kind {kind!r} (stand-ins: {STAND_INS})")
    return base, variant or None


def ensure_random_model(source: str) -> Path:
    """The folder of the random model ``source``, built first if it is not there yet."""
    folder = random_model_folder(source)
    if not (folder / "config.json").is_file():
        log.info("building the %s model in %s (random weights: masks are meaningless)", source, folder)
        build_random_model(source.split("-", 1)[1], folder)
    return folder


def random_config(kind: str) -> CLIPSegConfig:
    """The config of a random model: ``tiny`` (fast tests) or ``full`` (rd64-refined layout)."""
    if kind == "full":
        return CLIPSegConfig(
            vision_config=VisionConfig(patch_size=16),
            reduce_dim=64,
            use_complex_transposed_convolution=True,
            extract_layers=(3, 6, 9),
        )
    if kind == "tiny":
        return CLIPSegConfig(
            text_config=TextConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                vocab_size=49408,
                max_position_embeddings=77,
            ),
            vision_config=VisionConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=5,
                num_attention_heads=2,
                patch_size=16,
                image_size=224,
            ),
            projection_dim=16,
            reduce_dim=16,
            decoder_num_attention_heads=2,
            decoder_intermediate_size=32,
            use_complex_transposed_convolution=True,
            extract_layers=(1, 2, 3),
        )
    raise ValueError(f"unknown random model kind {kind!r}")


def build_random_model(kind: str | CLIPSegConfig, folder: str | Path, seed: int = 0) -> Path:
    """Build a random-weight CLIPSeg with the real CLIP tokenizer and save it in ``save_pretrained`` layout
    (transformers loads the folder too).

    Args:
        kind: ``"tiny"``, ``"full"`` or any supported :class:`~textmask.clipseg.CLIPSegConfig`.

    The folder is written next to its final place and renamed into it, so a crash never leaves half a
    model behind. Returns the folder.
    """
    from safetensors.torch import save_file

    from .vocab import write_clip_tokenizer_files

    variant = None
    if isinstance(kind, str):
        base, variant = _split_kind(kind)
        config = random_config(base)
    else:
        config = kind.check_supported("random model config")
    name = kind if isinstance(kind, str) else "custom"
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        with on_meta():
            model = CLIPSeg(config)
        model.to_empty(device="cpu").eval()
        _fill_random_weights(model, seed)
        _calibrate_logit_scale(model)
        if variant is not None:
            add_outlier_channels(model, strength=variant)
        weights = {key: value.contiguous() for key, value in model.state_dict().items()}
        # CLIP's contrastive temperature: no mask uses it, but transformers expects it in the file.
        weights["clip.logit_scale"] = torch.tensor(config.logit_scale_init_value)
        save_file(weights, str(staging / "model.safetensors"), metadata={"format": "pt"})
        hf_config = {**config.to_dict(), "dtype": "float32"}  # as transformers writes it (the v4 folders had it)
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        write_clip_tokenizer_files(staging)
        processor_config = {
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": list(IMAGENET_MEAN),
            "image_std": list(IMAGENET_STD),
            "image_processor_type": "ViTImageProcessor",
            "processor_class": "CLIPSegProcessor",
            "resample": 2,
            "rescale_factor": 1 / 255,
            "size": {"height": 352, "width": 352},
        }
        (staging / "preprocessor_config.json").write_text(json.dumps(processor_config, indent=2))
        (staging / "README.txt").write_text(
            f"textmask random-{name}: random weights (seed {seed}"
            + (f"; stand-in transform v{STAND_IN_VERSION}" if variant else "")
            + "). Masks from this model are meaningless;\n"
            "it exists for tests, demos and benchmarks. Real use: CIDAS/clipseg-rd64-refined.\n"
        )
        if folder.exists():  # built meanwhile by another process
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


_STRENGTHS = {
    # (every channel's factor range, per-layer outlier range, systematic outlier range, value outlier range,
    #  offsets of the outlier channels in units of their own scale)
    "outliers": ((0.5, 4.0), (5.0, 60.0), (20.0, 60.0), (5.0, 30.0), 2.0),
    "int8-breaker": ((0.5, 4.0), (5.0, 60.0), (20.0, 60.0), (5.0, 30.0), 2.0),
}
_BREAKER_MLP_FACTORS = (300.0, 3000.0)  # int8-breaker: a few MLP units per layer this much larger (fc2's input)


@torch.no_grad()
def add_outlier_channels(model: CLIPSeg, strength: str = "outliers", seed: int = 7) -> CLIPSeg:
    """Give the vision tower trained-ViT-like activation statistics without changing its function (in place).

    In every vision layer: each post-LayerNorm channel ``c`` of ``layer_norm1`` and ``layer_norm2`` is multiplied
    by a factor ``f_c`` (the LayerNorm's weight and bias) and the input column ``c`` of the linear maps that read
    it (q, k, v; ``fc1``) is divided by ``f_c``; a few value channels are multiplied (``v_proj``'s rows and bias)
    and ``out_proj``'s input columns divided. The factors (see the module docstring, and :data:`_STRENGTHS`):
    log-uniform in [0.5, 4] for every channel, 5–60 for ``D/96`` channels per layer, 20–60 for ``D/128`` dimensions
    that are the same in every layer, 5–30 for ``D/96`` value channels; the outlier channels are also shifted by
    1–3 times their factor, and the readers' biases compensate. ``strength="int8-breaker"`` also multiplies
    ``D_mlp/256`` MLP units per layer by 300–3000 (``fc1``'s rows; ``fc2``'s columns divided): that part changes the
    function.

    Args:
        model: a :class:`~textmask.clipseg.CLIPSeg` in float32.
        strength: ``"outliers"`` (the realistic stand-in) or ``"int8-breaker"``.
        seed: the factors' generator seed.
    """
    spread, few, systematic_range, values, offset = _STRENGTHS[strength]
    generator = torch.Generator().manual_seed(seed)
    vision = model.config.vision_config
    width = vision.hidden_size
    count = max(2, width // 96)

    def log_uniform(size: int, low: float, high: float) -> torch.Tensor:
        draw = torch.rand(size, generator=generator, dtype=torch.float64)
        return torch.exp(torch.log(torch.tensor(low)) + draw * (torch.log(torch.tensor(high / low))))

    def pick(size: int) -> torch.Tensor:
        return torch.randperm(width, generator=generator)[:size]

    systematic = pick(max(2, width // 128))
    for layer in model.clip.vision_model.encoder.layers:
        attention, mlp = layer.self_attn, layer.mlp
        for norm, readers in (
            (layer.layer_norm1, (attention.q_proj, attention.k_proj, attention.v_proj)),
            (layer.layer_norm2, (mlp.fc1,)),
        ):
            factor = log_uniform(width, *spread)
            outliers = torch.cat([pick(count), systematic])
            factor[outliers[:count]] = log_uniform(count, *few)
            factor[systematic] = log_uniform(len(systematic), *systematic_range)
            shift = torch.zeros(width, dtype=torch.float64)
            signs = torch.randint(0, 2, (len(outliers),), generator=generator).double() * 2 - 1
            shift[outliers] = signs * offset * factor[outliers] * (0.5 + torch.rand(len(outliers), generator=generator))
            _scale_channel(norm, readers, factor, shift)
        factor = torch.ones(width, dtype=torch.float64)
        factor[pick(count)] = log_uniform(count, *values)
        v_proj = attention.v_proj
        v_proj.weight.copy_(v_proj.weight.double() * factor[:, None])
        v_proj.bias.copy_(v_proj.bias.double() * factor)
        out_proj = attention.out_proj
        out_proj.weight.copy_(out_proj.weight.double() / factor[None, :])
        if strength == "int8-breaker":  # not function-preserving: these units' quick GELU becomes about a ReLU
            inner = mlp.fc1.out_features
            units = torch.randperm(inner, generator=generator)[: max(2, inner // 256)]
            factor = log_uniform(len(units), *_BREAKER_MLP_FACTORS)
            mlp.fc1.weight[units] = (mlp.fc1.weight[units].double() * factor[:, None]).float()
            mlp.fc1.bias[units] = (mlp.fc1.bias[units].double() * factor).float()
            mlp.fc2.weight[:, units] = (mlp.fc2.weight[:, units].double() / factor[None, :]).float()
    return model


def _scale_channel(
    norm: torch.nn.LayerNorm, readers: tuple[torch.nn.Linear, ...], factor: torch.Tensor, shift: torch.Tensor
) -> None:
    """Multiply a LayerNorm's output channels by ``factor`` and add ``shift`` to them; divide the readers' input
    columns by ``factor`` and take the shift out of their biases (in float64, so that the float32 weights are the
    closest to the exact transform)."""
    norm.weight.copy_(norm.weight.double() * factor)
    norm.bias.copy_(norm.bias.double() * factor + shift)
    for linear in readers:
        weight = linear.weight.double() / factor[None, :]
        linear.weight.copy_(weight)
        linear.bias.copy_(linear.bias.double() - weight @ shift)


def _fill_random_weights(model: CLIPSeg, seed: int) -> None:
    """Overwrite every parameter from one seeded generator, in name order, with CLIP's initialization.

    The draws are those textmask's random models have always had (they were first made with transformers'
    modules, whose parameters have the same names and shapes): one generator, parameters in sorted name
    order, from the distributions of transformers' ``CLIPSegPreTrainedModel._init_weights`` (OpenAI CLIP's
    scheme: norms 1/0, biases 0, attention and MLP projections scaled by width and depth, other weights
    N(0, 0.02)). ``logit_scale`` is not a parameter here and drew nothing there.
    """
    stds = _clip_init_stds(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            std = stds[name]
            if isinstance(std, float):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            else:
                parameter.fill_(std[0])


def _clip_init_stds(model: CLIPSeg) -> dict[str, float | tuple[float]]:
    """Parameter name → the std of its normal init, or ``(value,)`` for a constant (norms, biases)."""
    stds: dict[str, float | tuple[float]] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, _parameter in module.named_parameters(recurse=False):
            if isinstance(module, torch.nn.LayerNorm):
                stds[prefix + name] = (1.0 if name == "weight" else 0.0,)
            elif name == "bias":
                stds[prefix + name] = (0.0,)
            else:
                stds[prefix + name] = 0.02
    config = model.config
    # Attention and MLP scales use their stack's width and the *vision* depth for the decoder (transformers'
    # decoder layers are configured by a copy of the vision config).
    stacks = {
        "clip.text_model.": (config.text_config.hidden_size, config.text_config.num_hidden_layers),
        "clip.vision_model.": (config.vision_config.hidden_size, config.vision_config.num_hidden_layers),
        "decoder.": (config.reduce_dim, config.vision_config.num_hidden_layers),
    }
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, VisionEmbeddings):
            stds[prefix + "class_embedding"] = module.embed_dim**-0.5
        elif isinstance(module, (Attention, MLP)):
            width, depth = next(stack for start, stack in stacks.items() if prefix.startswith(start))
            in_std = width**-0.5 * (2 * depth) ** -0.5
            if isinstance(module, Attention):
                for projection in ("q_proj", "k_proj", "v_proj"):
                    stds[f"{prefix}{projection}.weight"] = in_std
                stds[f"{prefix}out_proj.weight"] = width**-0.5
            else:
                stds[f"{prefix}fc1.weight"] = (2 * width) ** -0.5
                stds[f"{prefix}fc2.weight"] = in_std
    stds["clip.text_projection.weight"] = config.text_config.hidden_size**-0.5
    stds["clip.visual_projection.weight"] = config.vision_config.hidden_size**-0.5
    return stds


def _calibrate_logit_scale(model: CLIPSeg, target_std: float = 3.0) -> None:
    """Scale a random model's last decoder layer so its logits spread like a trained model's (std ≈ 3).

    Random initialization gives logits in the hundreds, where every sigmoid saturates to exactly 0 or 1;
    such a model would hide mistakes in probabilities, normalization and thresholds.
    """
    generator = torch.Generator().manual_seed(1234)
    size = model.config.vision_config.patch_size * 22
    pixels = torch.randn(1, 3, size, size, generator=generator)
    embedding = torch.randn(1, model.config.projection_dim, generator=generator)
    with torch.no_grad():
        logits = model(pixel_values=pixels, conditional_embeddings=embedding).logits
        last = model.decoder.transposed_convolution
        last = last[-1] if isinstance(last, torch.nn.Sequential) else last
        scale = target_std / float(logits.std())
        last.weight.mul_(scale)
        if last.bias is not None:
            last.bias.mul_(scale)
