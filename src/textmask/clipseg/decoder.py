"""CLIPSeg's decoder: reduce the extracted vision activations, condition them on the prompt (FiLM), run the
small transformer and upsample the patch grid to logits (``decoder.*`` in the checkpoint)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import CLIPSegConfig
from .layers import DecoderLayer


def transposed_convolution(config: CLIPSegConfig) -> nn.Module:
    """The upsampler: patch grid ``[B, R, g, g]`` → logits ``[B, 1, g·p, g·p]`` (p = patch size).

    rd64-refined (``use_complex_transposed_convolution``): conv 3×3, ReLU, transposed conv ×p/4 to R/2
    channels, ReLU, transposed conv ×p/4 to 1 channel. The others: one transposed conv ×p.
    """
    reduce_dim, patch = config.reduce_dim, config.vision_config.patch_size
    if not config.use_complex_transposed_convolution:
        return nn.ConvTranspose2d(reduce_dim, 1, patch, stride=patch)
    kernel = patch // 4
    return nn.Sequential(
        nn.Conv2d(reduce_dim, reduce_dim, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(reduce_dim, reduce_dim // 2, kernel_size=kernel, stride=kernel),
        nn.ReLU(),
        nn.ConvTranspose2d(reduce_dim // 2, 1, kernel_size=kernel, stride=kernel),
    )


class Decoder(nn.Module):
    """The decoder; its layers keep the vision tower's LayerNorm epsilon (as in transformers)."""

    def __init__(self, config: CLIPSegConfig) -> None:
        super().__init__()
        self.conditional_layer = config.conditional_layer
        self.film_mul = nn.Linear(config.projection_dim, config.reduce_dim)
        self.film_add = nn.Linear(config.projection_dim, config.reduce_dim)
        self.transposed_convolution = transposed_convolution(config)
        depth = len(config.extract_layers)
        width = config.vision_config.hidden_size
        self.reduces = nn.ModuleList([nn.Linear(width, config.reduce_dim) for _ in range(depth)])
        eps = config.vision_config.layer_norm_eps
        heads, inner = config.decoder_num_attention_heads, config.decoder_intermediate_size
        self.layers = nn.ModuleList([DecoderLayer(config.reduce_dim, heads, inner, eps) for _ in range(depth)])

    def forward(self, activations: list[torch.Tensor], conditional_embeddings: torch.Tensor) -> torch.Tensor:
        """One prompt per image, as transformers pairs them.

        Args:
            activations: the vision outputs at ``extract_layers``, shallowest first, each ``[B, 1 + N, D]``.
            conditional_embeddings: ``[B, projection_dim]``, one per image.

        Returns:
            logits ``[B, S, S]`` (S = √N · patch size).
        """
        output: torch.Tensor | None = None
        for index, (activation, layer, reduce) in enumerate(zip(activations[::-1], self.layers, self.reduces)):
            output = reduce(activation) if output is None else reduce(activation) + output
            if index == self.conditional_layer:
                film = self.film_mul(conditional_embeddings) * output.permute(1, 0, 2)
                output = (film + self.film_add(conditional_embeddings)).permute(1, 0, 2)
            output = layer(output)
        assert output is not None
        output = output[:, 1:, :].transpose(1, 2)  # drop the class token: [B, R, N]
        side = int(math.sqrt(output.shape[2]))
        output = output.reshape(conditional_embeddings.shape[0], output.shape[1], side, side)
        return self.transposed_convolution(output).squeeze(1)
