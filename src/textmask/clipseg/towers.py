"""CLIP's two towers: the text transformer (with its projection) and the vision transformer.

Module and parameter names are the Hugging Face checkpoint's (``clip.text_model...``,
``clip.vision_model.encoder.layers.N...``), so a checkpoint's weights load by name.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import CLIPSegConfig, TextConfig, VisionConfig
from .layers import EncoderLayer


def _embedding(count: int, width: int) -> nn.Embedding:
    """An embedding table left uninitialized (the checkpoint fills it): on the meta device, ``nn.Embedding``'s
    own normal init would import torch's decompositions, over a second at start-up."""
    return nn.Embedding(count, width, _weight=torch.empty(count, width))


class Encoder(nn.Module):
    """A stack of :class:`EncoderLayer` (``encoder.layers.N`` in the checkpoint).

    Args:
        layers: how many layers to build (a vision tower may start with only those the decoder reads).
    """

    def __init__(self, width: int, heads: int, inner: int, eps: float, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(width, heads, inner, eps) for _ in range(layers)])


class TextEmbeddings(nn.Module):
    """Token ids ``[B, T]`` → token + position embeddings ``[B, T, D]``."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.token_embedding = _embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = _embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        tokens, limit = input_ids.shape[-1], self.position_embedding.num_embeddings
        if tokens > limit:
            raise ValueError(f"{tokens} tokens, but CLIP's text tower reads at most {limit}")
        positions = torch.arange(tokens, device=input_ids.device)[None]
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class TextTransformer(nn.Module):
    """CLIP's causal text transformer: token ids → the hidden state at each text's end token ``[B, D]``."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.encoder = Encoder(
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            config.layer_norm_eps,
            config.num_hidden_layers,
        )
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids → the final-norm hidden state at each sequence's end token ``[B, D]``.

        Args:
            input_ids: ``[B, T]`` from the tokenizer (start token, text, end token, padding).
            attention_mask: ``[B, T]``, 1 for tokens and 0 for padding (None: no padding).
        """
        hidden = self.embeddings(input_ids)  # [B, T, D]
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            tokens = input_ids.shape[-1]
            causal = torch.ones(tokens, tokens, dtype=torch.bool, device=hidden.device).tril()
            mask = causal[None, None] & attention_mask.to(device=hidden.device, dtype=torch.bool)[:, None, None, :]
        for layer in self.encoder.layers:
            hidden = layer(hidden, mask, causal=True)
        hidden = self.final_layer_norm(hidden)
        ids = input_ids.to(device=hidden.device, dtype=torch.int)
        if self.config.eos_token_id == 2:  # old configs: the end token is the highest id in each sequence
            ends = ids.argmax(dim=-1)
        else:
            ends = (ids == self.config.eos_token_id).int().argmax(dim=-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), ends]


class VisionEmbeddings(nn.Module):
    """Pixels ``[B, 3, H, W]`` → class token + patch embeddings with position embeddings ``[B, 1 + N, D]``."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size, bias=False
        )
        self.num_positions = (config.image_size // config.patch_size) ** 2 + 1
        self.position_embedding = _embedding(self.num_positions, config.hidden_size)

    def patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` → class + patch embeddings without positions ``[B, 1 + N, D]``."""
        batch = pixel_values.shape[0]
        patches = self.patch_embedding(pixel_values.to(dtype=self.patch_embedding.weight.dtype))  # [B, D, h, w]
        patches = patches.flatten(2).transpose(1, 2)
        return torch.cat([self.class_embedding.expand(batch, 1, -1), patches], dim=1)

    def position_table(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings ``[1, 1 + N, D]`` for ``height × width`` inputs.

        The trained table is for ``image_size``; other sizes get its patch part resized bicubically (CLIPSeg runs
        at 352 px on a 224 px table), exactly as transformers' ``interpolate_pos_encoding`` does.
        """
        table = self.position_embedding.weight[None]  # [1, 1 + n, D]
        trained = self.num_positions - 1
        new_height, new_width = height // self.patch_size, width // self.patch_size
        if new_height * new_width == trained and height == width:
            return table.clone()
        side = int(trained**0.5)
        grid = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)  # [1, D, side, side]
        grid = nn.functional.interpolate(grid, size=(new_height, new_width), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).view(1, -1, table.shape[-1])
        return torch.cat((table[:, :1], grid), dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        hidden = self.patches(pixel_values)
        return hidden + self.position_table(height, width)


class VisionTransformer(nn.Module):
    """CLIP's vision transformer. ``encoder.layers`` may hold only the first layers (see
    :meth:`textmask.clipseg.CLIPSeg.complete_vision_tower`)."""

    def __init__(self, config: VisionConfig, layers: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # sic: the checkpoint's name
        self.encoder = Encoder(
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            config.layer_norm_eps,
            config.num_hidden_layers if layers is None else layers,
        )
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` → the class token after the last layer present and ``post_layernorm`` ``[B, D]``
        (CLIP's pooled image output when the tower is complete)."""
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.encoder.layers:
            hidden = layer(hidden)
        return self.post_layernorm(hidden[:, 0, :])


class CLIPBackbone(nn.Module):
    """CLIP: both towers and their projections into the shared embedding space (``clip.*`` in the checkpoint)."""

    def __init__(self, config: CLIPSegConfig, vision_layers: int | None = None) -> None:
        super().__init__()
        self.text_model = TextTransformer(config.text_config)
        self.vision_model = VisionTransformer(config.vision_config, vision_layers)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids ``[B, T]`` → text embeddings ``[B, projection_dim]``."""
        return self.text_projection(self.text_model(input_ids, attention_mask))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` → image embeddings ``[B, projection_dim]`` (needs the full vision tower)."""
        return self.visual_projection(self.vision_model(pixel_values))
