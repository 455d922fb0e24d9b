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

int8 that holds on trained-like weights (issue 22): :func:`calibrate_int8` plans each layer once per model on
built-in scenes (:func:`textmask.precision.int8_plans` caches the plan): every channel that the query/key/value,
output and first MLP projections read is centred (Outlier Suppression+) and smoothed (SmoothQuant), both folded
into the LayerNorms, the value rows, the weight columns and the biases (exact in real arithmetic); weights get one
int8 scale per output channel; a linear map int8 cannot carry stays float32.

The results agree with the float32 path to about 1e-2 in probability (``tests/test_fast_mode.py`` pins
the agreement; ``benchmarks/bench.py`` measures it on the full-size architecture).
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
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
    """A linear map with int8 weights (symmetric; one scale per tensor, or per output channel) and activations
    quantized on the fly (one scale per call).

    ``torch.ao``'s dynamic quantized linear always quantizes activations to 7 bits (``reduce_range=True``), the
    safe choice for CPUs without VNNI; this one uses all 8 bits where :func:`cpu_has_vnni`. Maps
    ``[..., in_features]`` float32 → ``[..., out_features]`` float32.
    """

    def __init__(self, linear: nn.Linear, reduce_range: bool | None = None, per_channel: bool = False) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
            from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

            qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
            quantized = quantize_dynamic(nn.Sequential(linear), {nn.Linear: qconfig}, dtype=torch.qint8)[0]
        self.packed = quantized._packed_params._packed_params
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.per_channel = per_channel
        self.reduce_range = (not cpu_has_vnni()) if reduce_range is None else reduce_range

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(inputs, self.packed, reduce_range=self.reduce_range)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, reduce_range={self.reduce_range}, "
            f"per_channel={self.per_channel}"
        )


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
        cls,
        layer: nn.Module,
        dtype: torch.dtype,
        device: torch.device,
        quantize: str | None = None,
        plan: Int8Plan | None = None,
    ) -> FastVisionLayer:
        """Copy ``layer``'s weights into a fast layer in ``dtype`` on ``device``.

        Args:
            quantize: ``"int8"``: int8 dynamic quantization of the four linear layers (CPU, float32 only).
            plan: with ``quantize="int8"``: the smoothing folded in first, the linear maps kept in float and
                whether weights get one scale per output channel (:func:`calibrate_int8`); None: today's plain
                per-tensor int8 of all four.
        """
        attention = layer.self_attn
        norm1, qkv, out_proj, norm2, fc1, fc2, activation = _float_parts(layer)
        if quantize == "int8":
            if device.type != "cpu" or dtype != torch.float32:
                raise ValueError("int8 quantization runs on the CPU in float32")
            linears = {"qkv": qkv, "out_proj": out_proj, "fc1": fc1, "fc2": fc2}
            if plan is not None:
                _smooth(norm1, norm2, linears, plan.smooth, plan.shift)
            keep = () if plan is None else plan.keep_float
            per_channel = plan is not None and plan.per_channel
            quantized = {
                name: linear if name in keep else Int8DynamicLinear(linear, per_channel=per_channel)
                for name, linear in linears.items()
            }
            qkv, out_proj, fc1, fc2 = (quantized[name] for name in ("qkv", "out_proj", "fc1", "fc2"))
        elif quantize is not None:
            raise ValueError(f"quantize: {quantize!r} is not one of None, 'int8'")
        fast = cls(norm1, qkv, out_proj, norm2, fc1, fc2, activation, attention.num_heads, attention.scale)
        if quantize is None:
            fast = fast.to(device=device, dtype=dtype)
        else:
            fast.to(device)  # the float parts (norms, and linear maps kept in float)
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
    layers: list[nn.Module],
    dtype: torch.dtype,
    device: torch.device,
    quantize: str | None = None,
    plans: list[Int8Plan] | None = None,
) -> list[FastVisionLayer]:
    """:class:`FastVisionLayer` copies of CLIP vision encoder layers (see :meth:`FastVisionLayer.from_layer`);
    ``plans``: one :class:`Int8Plan` per layer (int8 only)."""
    return [
        FastVisionLayer.from_layer(layer, dtype, device, quantize, None if plans is None else plans[index])
        for index, layer in enumerate(layers)
    ]


# ----------------------------------------------------------------------------------- int8 that holds
LINEARS = ("qkv", "out_proj", "fc1", "fc2")
SMOOTHED = ("qkv", "out_proj", "fc1")  # fc2 reads the activation's output: no exact place to fold a scale into
SMOOTHING_ALPHA = 0.5  # SmoothQuant's migration strength: half the range (in log scale) moves into the weights
KEEP_FLOAT_ERROR = 0.05  # a linear map whose int8 output is off by more than this (relative) stays in float
MAX_FLOAT_FRACTION = 0.1  # at most this share of the linear maps stays in float (each costs about 2× in time)


@dataclass
class Int8Plan:
    """How one vision layer is made int8 (:func:`calibrate_int8`).

    Attributes:
        smooth: linear name (``qkv``, ``out_proj``, ``fc1``) → ``[in_features]`` factors ``s``: the linear's input
            is divided by ``s`` (folded into the LayerNorm, or into the value projection's rows) and its weight
            columns multiplied by ``s`` (SmoothQuant, Xiao et al. 2023).
        shift: linear name → ``[in_features]`` offsets ``z`` subtracted from the input first (folded into the
            LayerNorm's bias or the value bias; the linear's bias adds ``W z`` back): each channel centred on the
            middle of its calibration range (Outlier Suppression+, Wei et al. 2023).
        keep_float: linear maps left in float32.
        per_channel: weights get one scale per output channel.
        errors: each linear's relative output error in int8 on the calibration scenes (after smoothing).
    """

    smooth: dict[str, torch.Tensor] = field(default_factory=dict)
    shift: dict[str, torch.Tensor] = field(default_factory=dict)
    keep_float: tuple[str, ...] = ()
    per_channel: bool = True
    errors: dict[str, float] = field(default_factory=dict)


def _linear_copy(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="cpu")
    out.weight.copy_(weight.float())
    if bias is not None:
        out.bias.copy_(bias.float())
    return out


@torch.no_grad()
def _float_parts(layer: nn.Module) -> tuple[Any, ...]:
    """A layer's parts rearranged for speed, in float32 on the CPU: ``(norm1, qkv, out_proj, norm2, fc1, fc2,
    activation)``, with QKV fused and quick GELU's factor folded into ``fc1`` / ``fc2`` (activation None)."""
    attention, mlp = layer.self_attn, layer.mlp
    qkv = _linear_copy(
        torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]),
        torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias]),
    )
    out_proj = _linear_copy(attention.out_proj.weight, attention.out_proj.bias)
    activation = mlp.activation_fn
    fc1 = _linear_copy(mlp.fc1.weight, mlp.fc1.bias)
    fc2 = _linear_copy(mlp.fc2.weight, mlp.fc2.bias)
    if _is_quick_gelu(activation):
        # x·σ(1.702x) = silu(1.702x)/1.702: scale fc1's output up and fc2's input down.
        fc1.weight.mul_(_QUICK_GELU_FACTOR)
        fc1.bias.mul_(_QUICK_GELU_FACTOR)
        fc2.weight.div_(_QUICK_GELU_FACTOR)
        activation = None
    norm1 = copy.deepcopy(layer.layer_norm1).to("cpu", torch.float32)
    norm2 = copy.deepcopy(layer.layer_norm2).to("cpu", torch.float32)
    return norm1, qkv, out_proj, norm2, fc1, fc2, activation


@torch.no_grad()
def _smooth(
    norm1: nn.LayerNorm,
    norm2: nn.LayerNorm,
    linears: dict[str, nn.Linear],
    smooth: dict[str, Any],
    shift: dict[str, Any] | None = None,
) -> None:
    """Fold shifts and smoothing factors into float parts (exact in real arithmetic): ``qkv``'s into ``norm1``,
    ``fc1``'s into ``norm2``, ``out_proj``'s into the value rows of ``qkv`` (attention is linear in the values, and
    its weights sum to 1, so a value offset comes out as it went in)."""
    shift = shift or {}
    for name in sorted(shift, key=_fold_order):  # one order, so that a plan read back gives the same bits
        offsets = shift[name].to(torch.float32)
        linear = linears[name]
        linear.bias.add_(linear.weight @ offsets)
        if name in ("qkv", "fc1"):
            (norm1 if name == "qkv" else norm2).bias.sub_(offsets)
        elif name == "out_proj":
            linears["qkv"].bias[2 * offsets.numel() :].sub_(offsets)
        else:
            raise ValueError(f"a shift of {name!r} cannot be folded into the layer")
    for name in sorted(smooth, key=_fold_order):
        factors = smooth[name].to(torch.float32)
        linear = linears[name]
        linear.weight.mul_(factors[None, :])
        if name in ("qkv", "fc1"):
            norm = norm1 if name == "qkv" else norm2
            norm.weight.div_(factors)
            norm.bias.div_(factors)
        elif name == "out_proj":
            qkv = linears["qkv"]
            width = factors.numel()
            qkv.weight[2 * width :].div_(factors[:, None])
            qkv.bias[2 * width :].div_(factors)
        else:
            raise ValueError(f"smoothing of {name!r} cannot be folded into the layer")


def _fold_order(name: str) -> int:
    return LINEARS.index(name) if name in LINEARS else len(LINEARS)


def _recorder(store: dict[str, torch.Tensor], name: str) -> Callable[..., None]:
    """A forward pre-hook keeping a copy of the module's input in ``store[name]``."""

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        store[name] = args[0].detach().clone()

    return record


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm().clamp_min(1e-12))


@torch.no_grad()
def calibrate_int8(
    layers: list[nn.Module],
    hidden: torch.Tensor,
    smooth: bool = True,
    per_channel: bool = True,
    keep_float_error: float | None = KEEP_FLOAT_ERROR,
    alpha: float = SMOOTHING_ALPHA,
    shift: bool = True,
) -> list[Int8Plan]:
    """Plan int8 for each vision layer from calibration activations, layer by layer in float32.

    For each layer: the float layer's inputs to its four linear maps are recorded on ``hidden``; for ``qkv``,
    ``out_proj`` and ``fc1``, each input channel is centred (``z_c``: the middle of its range) and SmoothQuant's
    factors ``s_c = max|x_c - z_c|^α / max|W_c|^(1-α)`` are computed; each linear map
    is quantized (after smoothing) and its relative output error measured on the recorded inputs; the maps over
    ``keep_float_error`` stay in float32, the worst first, at most :data:`MAX_FLOAT_FRACTION` of all. The next
    layer is calibrated on this layer's float32 output.

    Args:
        layers: the model's vision encoder layers (float32, CPU).
        hidden: ``[N, T, D]`` the first layer's input (``pre_layrnorm`` of the embeddings) on calibration images.
        smooth, shift, per_channel, keep_float_error: each step can be turned off (None: nothing stays in float),
            to measure what it brings.

    Returns:
        one :class:`Int8Plan` per layer.
    """
    plans: list[Int8Plan] = []
    candidates: list[tuple[float, int, str]] = []
    for index, layer in enumerate(layers):
        float_layer = FastVisionLayer.from_layer(layer, torch.float32, torch.device("cpu"))
        inputs: dict[str, torch.Tensor] = {}

        hooks = [getattr(float_layer, name).register_forward_pre_hook(_recorder(inputs, name)) for name in LINEARS]
        try:
            output = float_layer(hidden.clone())
        finally:
            for hook in hooks:
                hook.remove()
        plan = Int8Plan(per_channel=per_channel)
        for name in SMOOTHED if smooth else ():
            linear = getattr(float_layer, name)
            low, high = inputs[name].amin(dim=(0, 1)), inputs[name].amax(dim=(0, 1))
            if shift:
                plan.shift[name] = (low + high) / 2
            activation_max = ((high - low) / 2 if shift else torch.maximum(-low, high)).clamp_min(1e-5)
            weight_max = linear.weight.abs().amax(dim=0).clamp_min(1e-5)
            plan.smooth[name] = (activation_max**alpha / weight_max ** (1 - alpha)).clamp_min(1e-5)
        norm1, qkv, out_proj, norm2, fc1, fc2, _ = _float_parts(layer)
        linears = {"qkv": qkv, "out_proj": out_proj, "fc1": fc1, "fc2": fc2}
        _smooth(norm1, norm2, linears, plan.smooth, plan.shift)
        for name, linear in linears.items():
            x = inputs[name]
            if name in plan.shift:
                x = x - plan.shift[name]
            if name in plan.smooth:
                x = x / plan.smooth[name]
            expected = linear(x)
            plan.errors[name] = _relative_error(Int8DynamicLinear(linear, per_channel=per_channel)(x), expected)
            candidates.append((plan.errors[name], index, name))
        plans.append(plan)
        hidden = output
    if keep_float_error is not None:
        budget = int(MAX_FLOAT_FRACTION * len(candidates))
        worst = sorted((c for c in candidates if c[0] > keep_float_error), reverse=True)[:budget]
        for _, index, name in worst:
            plans[index].keep_float = (*plans[index].keep_float, name)
    return plans
