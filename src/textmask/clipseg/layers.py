"""The transformer pieces CLIP and CLIPSeg's decoder share: attention, MLP and the two kinds of layer.

Parameter names follow the Hugging Face checkpoints (``self_attn.q_proj``, ``mlp.fc1``, ``layer_norm1``...),
so weights load by name. The forward passes are transformers' CLIPSeg forward with SDPA attention, op for op
(the same bits on the CPU); :mod:`textmask.engine` runs the same ops with in-place residuals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """CLIP's activation ``x · sigmoid(1.702 x)``, written as transformers writes it (the same bits)."""

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return values * torch.sigmoid(1.702 * values)


class Attention(nn.Module):
    """Multi-head self-attention: ``[B, T, D]`` → ``[B, T, D]``.

    Args:
        width: D.
        heads: number of heads; D must be a multiple.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.head_dim = width // heads
        self.scale = self.head_dim**-0.5
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """Attend over ``hidden`` ``[B, T, D]``.

        Args:
            mask: optional boolean ``[B, 1, T, T]``, True where a query may attend to a key.
            causal: each token attends only to itself and earlier tokens (ignored when ``mask`` is given:
                the mask must then include causality).
        """
        batch, tokens, _ = hidden.shape
        shape = (batch, tokens, self.num_heads, self.head_dim)
        query = self.q_proj(hidden).view(shape).transpose(1, 2)  # [B, heads, T, head_dim]
        key = self.k_proj(hidden).view(shape).transpose(1, 2)
        value = self.v_proj(hidden).view(shape).transpose(1, 2)
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=causal and mask is None, scale=self.scale
        )
        return self.out_proj(attended.transpose(1, 2).reshape(batch, tokens, -1).contiguous())


class MLP(nn.Module):
    """``fc2(activation(fc1(x)))``: ``[..., D]`` → ``[..., D]`` through ``[..., inner]``."""

    def __init__(self, width: int, inner: int, activation: nn.Module) -> None:
        super().__init__()
        self.activation_fn = activation
        self.fc1 = nn.Linear(width, inner)
        self.fc2 = nn.Linear(inner, width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden)))


class EncoderLayer(nn.Module):
    """A CLIP tower layer (pre-norm): ``x + attn(ln1(x))``, then ``+ mlp(ln2(·))``; ``[B, T, D]`` → ``[B, T, D]``."""

    def __init__(self, width: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.self_attn = Attention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, inner, QuickGELU())
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.layer_norm1(hidden), mask, causal)
        return hidden + self.mlp(self.layer_norm2(hidden))


class DecoderLayer(nn.Module):
    """A CLIPSeg decoder layer (post-norm, ReLU): ``ln1(x + attn(x))``, then ``ln2(· + mlp(·))``.

    ``[B, T, R]`` → ``[B, T, R]`` (R = reduce_dim).
    """

    def __init__(self, width: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.self_attn = Attention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, inner, nn.ReLU())
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.layer_norm1(hidden + self.self_attn(hidden))
        return self.layer_norm2(hidden + self.mlp(hidden))
