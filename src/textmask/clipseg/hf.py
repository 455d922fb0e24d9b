"""Interop with transformers' CLIPSeg: the one module of textmask that imports transformers, and only when
:func:`to_transformers` is called (ComfyUI's loader nodes, whose output other node packs use as a
``(CLIPSegProcessor, CLIPSegForImageSegmentation)`` pair).

Going the other way (a transformers model into textmask's modules) needs no transformers import: see
:func:`from_transformers`.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import CLIPSegConfig
from .model import CLIPSeg, assign_parameters
from .weights import clipseg_from_state_dict


def from_transformers(
    model: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> CLIPSeg:
    """textmask's :class:`CLIPSeg` over a transformers ``CLIPSegForImageSegmentation``'s weights.

    Its config becomes a :class:`CLIPSegConfig` (refused with :class:`~textmask.errors.ModelLoadError` when
    unsupported). Where ``device``/``dtype`` (None: as they are) match, the new model holds the very same
    ``nn.Parameter`` objects: nothing is copied and the caller's model is not changed; otherwise it holds
    converted copies.
    """
    config = CLIPSegConfig.from_object(model.config).check_supported(f"{type(model).__name__}.config")
    return clipseg_from_state_dict(config, model.state_dict(keep_vars=True), device=device, dtype=dtype)


def to_transformers(model: CLIPSeg) -> Any:
    """A transformers ``CLIPSegForImageSegmentation`` (eval mode) over ``model``'s parameters (shared, not copied).

    The missing vision layers are loaded first. ``logit_scale`` (CLIP's contrastive temperature, which
    segmentation never reads) is the config's initial value.
    """
    from transformers import CLIPSegConfig as TransformersConfig
    from transformers import CLIPSegForImageSegmentation

    model.complete_vision_tower()
    settings = model.config.to_dict()
    settings.pop("architectures", None)
    config = TransformersConfig(**settings)
    if model.config.name_or_path:
        config._name_or_path = model.config.name_or_path
    with torch.device("meta"):
        converted = CLIPSegForImageSegmentation(config)
    reference = model.decoder.film_mul.weight
    assign_parameters(converted, _with_logit_scale(converted, dict(model.named_parameters()), reference))
    for name, buffer in list(converted.named_buffers()):
        if not buffer.is_meta:
            continue
        if not name.endswith("position_ids"):
            raise RuntimeError(f"transformers' CLIPSeg has a buffer textmask does not know how to fill: {name}")
        owner_name, _, attribute = name.rpartition(".")
        owner = converted.get_submodule(owner_name)
        values = torch.arange(buffer.shape[-1], device=reference.device).expand(buffer.shape)
        owner.register_buffer(attribute, values, persistent=False)
    return converted.eval()


def _with_logit_scale(
    converted: torch.nn.Module, parameters: dict[str, torch.Tensor], reference: torch.Tensor
) -> dict[str, torch.Tensor]:
    out = dict(parameters)
    for name, parameter in converted.named_parameters():
        if name not in out and name.endswith("logit_scale"):
            value = float(getattr(converted.config, "logit_scale_init_value", 2.6592))
            out[name] = torch.full(parameter.shape, value, device=reference.device, dtype=reference.dtype)
    return out
