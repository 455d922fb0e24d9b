"""The whole CLIPSeg model (transformers' ``CLIPSegForImageSegmentation``, in plain torch).

Segmentation reads the vision tower only up to ``max(extract_layers)``, so a model loaded for masks holds
just those layers. Example-image prompts need CLIP's whole vision tower: the remaining layers are loaded on
first use by :meth:`CLIPSeg.complete_vision_tower`, from the same weights.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelLoadError
from .config import CLIPSegConfig
from .decoder import Decoder
from .layers import EncoderLayer
from .towers import CLIPBackbone

WeightSource = Callable[[list[str]], Mapping[str, torch.Tensor]]
"""Given parameter names, returns their tensors (any device and dtype; they are converted)."""
_COMPLETING = threading.Lock()  # module-level, so models stay picklable and deep-copyable
_BUILDING = threading.Lock()
# What torch's layers call from reset_parameters(): on the meta device there is nothing to initialize, and
# skipping them saves a tenth of a second per model (each call also passes through the device mode).
_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "kaiming_uniform_",
                   "kaiming_normal_", "xavier_uniform_", "xavier_normal_")  # fmt: skip


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Build modules on the meta device (shapes only: no memory, no random initialization), for weights to be
    assigned afterwards (:func:`assign_parameters`). ``torch.nn.init``'s functions do nothing meanwhile (for
    the few milliseconds the build takes, in every thread: as transformers' ``no_init_weights`` does)."""
    with _BUILDING:
        saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
        try:
            for name in _INIT_FUNCTIONS:
                setattr(nn.init, name, _no_init)
            with torch.device("meta"):
                yield
        finally:
            for name, function in saved.items():
                setattr(nn.init, name, function)


def _no_init(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return tensor


@dataclass
class SegmentationOutput:
    """What :meth:`CLIPSeg.forward` returns (the fields of transformers' output that masks need)."""

    logits: torch.Tensor  # [B, S, S]
    conditional_embeddings: torch.Tensor  # [B, projection_dim]


class CLIPSeg(nn.Module):
    """CLIP (both towers) + CLIPSeg's decoder; parameter names are those of the Hugging Face checkpoints.

    Build it with :func:`textmask.clipseg.load_clipseg` (from a folder) or
    :func:`textmask.clipseg.clipseg_from_state_dict` (from another model's weights).

    Args:
        config: the architecture (see :class:`~textmask.clipseg.config.CLIPSegConfig`).
        vision_layers: how many vision layers to build now (default: all); the rest come from
            ``load_remaining`` when first needed.
        load_remaining: where :meth:`complete_vision_tower` gets the missing layers' weights.
    """

    def __init__(
        self, config: CLIPSegConfig, vision_layers: int | None = None, load_remaining: WeightSource | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.clip = CLIPBackbone(config, vision_layers)
        self.extract_layers = list(config.extract_layers)
        self.decoder = Decoder(config)
        self._load_remaining = load_remaining

    # --------------------------------------------------------------------------- vision tower
    @property
    def has_full_vision_tower(self) -> bool:
        return len(self.clip.vision_model.encoder.layers) == self.config.vision_config.num_hidden_layers

    def complete_vision_tower(self) -> None:
        """Build and load the vision layers after ``max(extract_layers)`` (once; thread-safe).

        They take the device and dtype of the layers already there.

        Raises:
            RuntimeError: the model was built without them and without a way to load them.
            ModelLoadError: their weights cannot be read (the file changed since the model was loaded).
        """
        if self.has_full_vision_tower:
            return
        with _COMPLETING:
            layers = self.clip.vision_model.encoder.layers
            total = self.config.vision_config.num_hidden_layers
            if len(layers) == total:
                return
            if self._load_remaining is None:
                raise RuntimeError("this CLIPSeg model was built without its last vision layers and cannot load them")
            reference = layers[0].layer_norm1.weight
            vision = self.config.vision_config
            new = {}
            for index in range(len(layers), total):
                with on_meta():
                    new[index] = EncoderLayer(
                        vision.hidden_size, vision.num_attention_heads, vision.intermediate_size, vision.layer_norm_eps
                    )
            prefix = "clip.vision_model.encoder.layers."
            names = [f"{prefix}{index}.{name}" for index, layer in new.items() for name, _ in layer.named_parameters()]
            try:
                tensors = self._load_remaining(names)
            except Exception as exc:  # the file changed or went away since the model was loaded
                raise ModelLoadError(
                    f"the vision layers after layer {len(layers) - 1}, which example-image prompts need, could not "
                    f"be read from the model's weights ({type(exc).__name__}: {exc}); load the model again"
                ) from None
            for index, layer in new.items():
                own = {name: tensors[f"{prefix}{index}.{name}"] for name, _ in layer.named_parameters()}
                assign_parameters(layer, own, device=reference.device, dtype=reference.dtype)
                layer.train(self.training)
            for index in sorted(new):
                layers.append(new[index])

    # ------------------------------------------------------------------------------ embeddings
    def get_conditional_embeddings(
        self,
        batch_size: int | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        conditional_pixel_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prompt embeddings ``[B, projection_dim]`` from token ids ``[B, T]`` or example pixels ``[B, 3, S, S]``.

        ``batch_size`` (when given) must equal the number of prompts, as in transformers.
        """
        if input_ids is not None:
            if batch_size is not None and len(input_ids) != batch_size:
                raise ValueError("Make sure to pass as many prompt texts as there are query images")
            return self.clip.text_features(input_ids, attention_mask)
        if conditional_pixel_values is not None:
            if batch_size is not None and len(conditional_pixel_values) != batch_size:
                raise ValueError("Make sure to pass as many prompt images as there are query images")
            self.complete_vision_tower()
            return self.clip.image_features(conditional_pixel_values)
        raise ValueError("give input_ids (text prompts) or conditional_pixel_values (example images)")

    def vision_activations(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Pixels ``[B, 3, S, S]`` → the vision outputs at ``extract_layers`` ``[B, 1 + N, D]``, shallowest first."""
        vision = self.clip.vision_model
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
        wanted = set(self.extract_layers)
        found: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(vision.encoder.layers[: self.config.vision_layers_for_masks]):
            hidden = layer(hidden)
            if index in wanted:
                found[index] = hidden
        return [found[index] for index in self.extract_layers]

    # --------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        conditional_pixel_values: torch.Tensor | None = None,
        conditional_embeddings: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> SegmentationOutput:
        """transformers' ``CLIPSegForImageSegmentation.forward``: one prompt per image.

        Args:
            input_ids, attention_mask: ``[B, T]`` text prompts, one per image.
            pixel_values: ``[B, 3, S, S]`` images (from the processor or ``Segmenter.preprocess``).
            conditional_pixel_values: ``[B, 3, S, S]`` example-image prompts instead of text.
            conditional_embeddings: ``[B, projection_dim]`` prompt embeddings instead of either.

        Returns:
            :class:`SegmentationOutput` with ``logits`` ``[B, S, S]``.
        """
        if pixel_values is None:
            raise ValueError("pixel_values: the images to segment are required")
        with torch.no_grad():
            activations = self.vision_activations(pixel_values)
        if conditional_embeddings is None:
            with torch.no_grad():
                conditional_embeddings = self.get_conditional_embeddings(
                    pixel_values.shape[0], input_ids, attention_mask, conditional_pixel_values
                )
        elif conditional_embeddings.shape != (pixel_values.shape[0], self.config.projection_dim):
            raise ValueError(
                f"conditional_embeddings: expected [{pixel_values.shape[0]}, {self.config.projection_dim}], "
                f"got {list(conditional_embeddings.shape)}"
            )
        logits = self.decoder(activations, conditional_embeddings)
        return SegmentationOutput(logits=logits, conditional_embeddings=conditional_embeddings)


def assign_parameters(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Put ``tensors`` (parameter name → tensor) into ``module`` in place of its (meta) parameters.

    Tensors already on ``device`` in ``dtype`` are used as they are (no copy: mmapped file pages stay
    mmapped, and an ``nn.Parameter`` stays the same object, shared with whoever else holds it); others are
    converted. Floating-point tensors only change dtype.

    Raises:
        KeyError: a parameter of ``module`` is missing from ``tensors``.
        ValueError: a tensor's shape differs from the parameter's, naming both.
    """
    for name, parameter in list(module.named_parameters()):
        value = tensors[name]
        if tuple(value.shape) != tuple(parameter.shape):
            raise ValueError(
                f"{name}: the weights have shape {list(value.shape)}, the model needs {list(parameter.shape)}"
            )
        target_dtype = dtype if dtype is not None and value.is_floating_point() else value.dtype
        target_device = torch.device(device) if device is not None else value.device
        if not same_device(value.device, target_device) or value.dtype != target_dtype:
            value = value.to(device=target_device, dtype=target_dtype)
        if not isinstance(value, nn.Parameter):
            value = nn.Parameter(value, requires_grad=False)
        owner_name, _, attribute = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        setattr(owner, attribute, value)


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same, ``cuda`` meaning the current CUDA device."""
    if a.type != b.type:
        return False
    if a.type == "cuda":
        current = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index or a.index is None or b.index is None
