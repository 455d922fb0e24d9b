"""Random-weight CLIPSeg models for tests, demos and benchmarks: ``random-tiny`` and ``random-full``.

They have the real CLIP tokenizer (rebuilt offline from the shipped BPE file, :mod:`textmask.vocab`) and,
for ``random-full``, the exact rd64-refined architecture (ViT-B/16, 352 px), so speed and memory are those of
the real model. Their masks are meaningless. Built once into textmask's cache
(``$TEXTMASK_CACHE/random-tiny-v4``) and written atomically, with textmask's own modules (no transformers);
the folders are in the Hugging Face layout, so transformers loads them too (the tests' reference).
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
from .constants import IMAGENET_MEAN, IMAGENET_STD, RANDOM_MODEL_VERSION, RANDOM_SOURCES, cache_root

log = logging.getLogger("textmask")


def random_model_folder(source: str) -> Path:
    """Where the random model ``source`` (``random-tiny`` / ``random-full``) lives in textmask's cache
    (built or not)."""
    if source not in RANDOM_SOURCES:
        raise ValueError(f"{source!r} is not one of the random models {RANDOM_SOURCES}")
    return cache_root() / f"{source}-v{RANDOM_MODEL_VERSION}"


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

    config = random_config(kind) if isinstance(kind, str) else kind.check_supported("random model config")
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
            f"textmask random-{name}: random weights (seed {seed}). Masks from this model are meaningless;\n"
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
