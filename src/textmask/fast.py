"""The fast mode's vision layers: the same CLIP encoder layer, rearranged for speed, not for bit-parity.

``textmask.load(..., dtype="fast", backend="torch")`` (and ``dtype="fast"`` alone where OpenVINO is not
installed or the CPU lacks native bf16: :func:`textmask.model.resolve_backend`) runs the vision tower through
:class:`FastVisionLayer` copies of the model's layers (the model itself is left untouched: other paths, such as
image prompts, still use it):

* the query, key and value projections are one matrix multiply (one pass over the activations);
* CLIP's activation ``x · sigmoid(1.702 x)`` becomes one in-place ``silu``: the factor 1.702 is folded
  into ``fc1``'s weights and bias, and its inverse into ``fc2``'s weights (exact in real arithmetic);
* on a CPU, the linear layers may be int8 with dynamic activation quantization (``quantize="int8"``,
  :class:`Int8DynamicLinear`: 8-bit activations on CPUs with VNNI, 7-bit elsewhere), while everything
  else stays in float32; on a GPU the layers run in float16.

The results agree with the float32 path to about 1e-2 in probability (``tests/test_fast_mode.py`` pins
the agreement; ``benchmarks/bench.py`` measures it on the full-size architecture).
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_QUICK_GELU_FACTOR = 1.702


def _is_quick_gelu(activation: Any) -> bool:
    from .clipseg.layers import QuickGELU

    return isinstance(activation, QuickGELU)


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI int8 dot products (AVX512-VNNI, AVX-VNNI or AMX), read from /proc/cpuinfo.

    Without VNNI, int8 kernels add pairs of products in 16 bits, which can saturate unless activations use
    7 of their 8 bits (``reduce_range``); with VNNI the products go straight into 32 bits and all 8 bits are
    safe, which halves the quantization error of the activations.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return False


class Int8DynamicLinear(nn.Module):
    """A linear map with int8 weights (per-tensor, symmetric) and activations quantized on the fly.

    ``torch.ao``'s dynamic quantized linear always quantizes activations to 7 bits (``reduce_range=True``), the
    safe choice for CPUs without VNNI; this one uses all 8 bits where :func:`cpu_has_vnni`. Maps
    ``[..., in_features]`` float32 → ``[..., out_features]`` float32.
    """

    def __init__(self, linear: nn.Linear, reduce_range: bool | None = None) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
            from torch.ao.quantization import quantize_dynamic

            quantized = quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)[0]
        self.packed = quantized._packed_params._packed_params
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.reduce_range = (not cpu_has_vnni()) if reduce_range is None else reduce_range

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(inputs, self.packed, reduce_range=self.reduce_range)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, reduce_range={self.reduce_range}"


class FastVisionLayer(nn.Module):
    """One CLIP vision encoder layer (pre-norm attention + MLP), rearranged for speed.

    Built from a :class:`textmask.clipseg.layers.EncoderLayer` by :meth:`from_layer`; ``forward`` maps
    ``[B, T, D]`` → ``[B, T, D]`` like the original, with no attention mask.
    """

    def __init__(
        self,
        layer_norm1: nn.LayerNorm,
        qkv: nn.Module,
        out_proj: nn.Module,
        layer_norm2: nn.LayerNorm,
        fc1: nn.Module,
        fc2: nn.Module,
        activation: Any,
        heads: int,
        scale: float,
    ) -> None:
        super().__init__()
        self.layer_norm1, self.qkv, self.out_proj = layer_norm1, qkv, out_proj
        self.layer_norm2, self.fc1, self.fc2 = layer_norm2, fc1, fc2
        self.activation = activation  # None: in-place silu (CLIP's quick GELU with the factor folded away)
        self.heads = heads
        self.scale = scale

    @classmethod
    @torch.no_grad()
    def from_layer(
        cls, layer: nn.Module, dtype: torch.dtype, device: torch.device, quantize: str | None = None
    ) -> FastVisionLayer:
        """Copy ``layer``'s weights into a fast layer in ``dtype`` on ``device``.

        Args:
            quantize: ``"int8"``: int8 dynamic quantization of the four linear layers (CPU, float32 only).
        """
        attention, mlp = layer.self_attn, layer.mlp

        def linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
            out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="cpu")
            out.weight.copy_(weight.float())
            if bias is not None:
                out.bias.copy_(bias.float())
            return out

        qkv = linear(
            torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]),
            torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias]),
        )
        out_proj = linear(attention.out_proj.weight, attention.out_proj.bias)
        activation = mlp.activation_fn
        fc1 = linear(mlp.fc1.weight, mlp.fc1.bias)
        fc2 = linear(mlp.fc2.weight, mlp.fc2.bias)
        if _is_quick_gelu(activation):
            # x·σ(1.702x) = silu(1.702x)/1.702: scale fc1's output up and fc2's input down.
            fc1.weight.mul_(_QUICK_GELU_FACTOR)
            fc1.bias.mul_(_QUICK_GELU_FACTOR)
            fc2.weight.div_(_QUICK_GELU_FACTOR)
            activation = None
        norm1 = copy.deepcopy(layer.layer_norm1).float()
        norm2 = copy.deepcopy(layer.layer_norm2).float()
        if quantize == "int8":
            if device.type != "cpu" or dtype != torch.float32:
                raise ValueError("int8 quantization runs on the CPU in float32")
            qkv, out_proj, fc1, fc2 = (Int8DynamicLinear(m) for m in (qkv, out_proj, fc1, fc2))
        elif quantize is not None:
            raise ValueError(f"quantize: {quantize!r} is not one of None, 'int8'")
        fast = cls(norm1, qkv, out_proj, norm2, fc1, fc2, activation, attention.num_heads, attention.scale)
        if quantize is None:
            fast = fast.to(device=device, dtype=dtype)
        else:
            fast.layer_norm1.to(device)
            fast.layer_norm2.to(device)
        return fast.eval()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = hidden.shape
        qkv = self.qkv(self.layer_norm1(hidden)).view(batch, tokens, 3, self.heads, width // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
        del qkv, query, key, value
        attended = attended.transpose(1, 2).reshape(batch, tokens, width)
        hidden = self.out_proj(attended).add_(hidden)
        del attended
        inner = self.fc1(self.layer_norm2(hidden))
        inner = F.silu(inner, inplace=True) if self.activation is None else self.activation(inner)
        return self.fc2(inner).add_(hidden)


def fast_vision_layers(
    layers: list[nn.Module], dtype: torch.dtype, device: torch.device, quantize: str | None = None
) -> list[FastVisionLayer]:
    """:class:`FastVisionLayer` copies of CLIP vision encoder layers (see :meth:`FastVisionLayer.from_layer`)."""
    return [FastVisionLayer.from_layer(layer, dtype, device, quantize) for layer in layers]
