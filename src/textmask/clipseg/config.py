"""CLIPSeg's configuration: what ``config.json`` says, with the defaults transformers fills in.

A checkpoint's ``config.json`` is the JSON of transformers' ``CLIPSegConfig``: top-level decoder settings,
``text_config`` and ``vision_config`` dicts that name only what differs from the defaults (the CIDAS
checkpoints write little more than ``patch_size: 16`` and ``eos_token_id: 2``), and in old files also
``text_config_dict`` / ``vision_config_dict``, which win over ``text_config`` / ``vision_config`` as they
do in transformers. The defaults below are transformers' (4.45 to 5.x agree), so an absent key means
what it means to transformers.

Only the settings textmask's modules implement are accepted; :meth:`CLIPSegConfig.check_supported` names
any other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

SUPPORTED_ACTIVATIONS = ("quick_gelu",)


@dataclass(frozen=True)
class TextConfig:
    """CLIP's text tower (transformers' ``CLIPSegTextConfig`` defaults: ViT-B/16 CLIP's text transformer)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    # 2 in the CIDAS checkpoints (written before transformers fixed the default): pool at the highest token
    # id, which is the end token. Any other value: pool at the first occurrence of that id.
    eos_token_id: int | None = 49407


@dataclass(frozen=True)
class VisionConfig:
    """CLIP's vision tower (transformers' ``CLIPSegVisionConfig`` defaults: ViT-B/32 at 224 px)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class CLIPSegConfig:
    """The whole model: both towers and the decoder (transformers' ``CLIPSegConfig`` defaults).

    Attributes:
        extract_layers: vision layers (0-based) whose outputs feed the decoder, shallowest first.
        reduce_dim: the decoder's width; every extracted activation is projected to it.
        conditional_layer: the decoder layer before which FiLM applies the prompt embedding.
        use_complex_transposed_convolution: the refined upsampler (conv 3×3, two transposed convs) instead
            of one transposed convolution.
        logit_scale_init_value: CLIP's contrastive temperature (unused for masks; kept to write config.json).
        name_or_path: where the config came from (not part of the architecture).
    """

    text_config: TextConfig = field(default_factory=TextConfig)
    vision_config: VisionConfig = field(default_factory=VisionConfig)
    projection_dim: int = 512
    extract_layers: tuple[int, ...] = (3, 6, 9)
    reduce_dim: int = 64
    decoder_num_attention_heads: int = 4
    decoder_intermediate_size: int = 2048
    conditional_layer: int = 0
    use_complex_transposed_convolution: bool = False
    logit_scale_init_value: float = 2.6592
    name_or_path: str = ""

    # ------------------------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config.json") -> CLIPSegConfig:
        """Build from the ``config.json`` mapping; absent keys take transformers' defaults.

        Raises:
            ModelLoadError: the mapping is not a CLIPSeg config, or a value has the wrong type.
        """
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        model_type = raw.get("model_type", "clipseg")
        if model_type != "clipseg":
            raise ModelLoadError(
                f"{where}: model_type {model_type!r} is not CLIPSeg ('clipseg'); textmask runs CLIPSeg checkpoints "
                "such as CIDAS/clipseg-rd64-refined"
            )
        text = _sub_config(raw, "text_config", where)
        vision = _sub_config(raw, "vision_config", where)
        try:
            config = cls(
                text_config=_dataclass_from(TextConfig, text, f"{where}: text_config"),
                vision_config=_dataclass_from(VisionConfig, vision, f"{where}: vision_config"),
                name_or_path=str(raw.get("_name_or_path", "") or ""),
                **_known_fields(cls, raw, exclude=("text_config", "vision_config", "name_or_path")),
            )
            return replace(config, extract_layers=tuple(int(i) for i in config.extract_layers))
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"{where}: a setting has the wrong type ({exc})") from None

    @classmethod
    def from_file(cls, path: Path) -> CLIPSegConfig:
        """Read ``config.json``.

        Raises:
            ModelLoadError: unreadable or invalid JSON, or not a CLIPSeg config.
        """
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelLoadError(
                f"{path} could not be loaded: it is not valid JSON ({exc}). The file may be corrupt or truncated; "
                "delete the model folder and download it again"
            ) from None
        config = cls.from_dict(raw, str(path))
        return config if config.name_or_path else replace(config, name_or_path=str(path.parent))

    @classmethod
    def from_object(cls, config: Any) -> CLIPSegConfig:
        """From a config *object*: transformers' ``CLIPSegConfig`` (via ``to_dict()``) or this class."""
        if isinstance(config, cls):
            return config
        to_dict = getattr(config, "to_dict", None)
        if not callable(to_dict):
            raise ModelLoadError(f"model config: expected a CLIPSeg config, got {type(config).__name__}")
        return cls.from_dict(to_dict(), f"{type(config).__name__}")

    # ------------------------------------------------------------------------------------ checking
    def check_supported(self, where: str = "config.json") -> CLIPSegConfig:
        """Refuse settings textmask's modules do not implement, naming the setting. Returns ``self``.

        Raises:
            ModelLoadError: naming the first unsupported setting and its value.
        """
        text, vision = self.text_config, self.vision_config

        def refuse(name: str, value: Any, why: str) -> ModelLoadError:
            return ModelLoadError(
                f"{where}: {name}={value!r} is not supported by textmask's CLIPSeg ({why}); supported are the "
                "CIDAS CLIPSeg checkpoints (clipseg-rd64-refined, clipseg-rd64, clipseg-rd16) and their fine-tunes"
            )

        for name, tower in (("text_config", text), ("vision_config", vision)):
            if tower.hidden_act not in SUPPORTED_ACTIVATIONS:
                raise refuse(f"{name}.hidden_act", tower.hidden_act, f"only {', '.join(SUPPORTED_ACTIVATIONS)}")
            if tower.hidden_size % tower.num_attention_heads:
                raise refuse(f"{name}.num_attention_heads", tower.num_attention_heads, "must divide hidden_size")
        if self.reduce_dim % self.decoder_num_attention_heads:
            raise refuse("decoder_num_attention_heads", self.decoder_num_attention_heads, "must divide reduce_dim")
        for name in ("image_size", "patch_size"):
            value = getattr(vision, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise refuse(f"vision_config.{name}", value, "must be one positive integer")
        if vision.image_size % vision.patch_size:
            raise refuse("vision_config.image_size", vision.image_size, "must be a multiple of patch_size")
        if self.use_complex_transposed_convolution and vision.patch_size % 4:
            raise refuse("vision_config.patch_size", vision.patch_size, "the refined upsampler needs a multiple of 4")
        layers = self.extract_layers
        if not layers or any(i < 0 or i >= vision.num_hidden_layers for i in layers):
            last = vision.num_hidden_layers - 1
            raise refuse("extract_layers", list(layers), f"each must be a vision layer 0..{last}")
        if text.eos_token_id is None:
            raise refuse("text_config.eos_token_id", None, "the text embedding is read at the end token")
        return self

    @property
    def vision_layers_for_masks(self) -> int:
        """How many vision layers the decoder reads from: layers ``0..max(extract_layers)``."""
        return max(self.extract_layers) + 1

    # ------------------------------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` mapping transformers reads back into the same architecture (every value explicit)."""
        text = {"model_type": "clipseg_text_model", **asdict(self.text_config)}
        vision = {"model_type": "clipseg_vision_model", **asdict(self.vision_config)}
        top = asdict(self)
        for name in ("text_config", "vision_config", "name_or_path"):
            top.pop(name)
        return {
            "architectures": ["CLIPSegForImageSegmentation"],
            "model_type": "clipseg",
            **top,
            "extract_layers": list(self.extract_layers),
            "decoder_hidden_act": "quick_gelu",  # transformers' default; its decoder layers use ReLU whatever it says
            "text_config": text,
            "vision_config": vision,
        }


def _sub_config(raw: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """``text_config`` / ``vision_config``, with the legacy ``*_dict`` form applied as transformers applies it:
    the legacy dict, completed with the defaults, replaces every default key of the other."""
    value = raw.get(name) or {}
    legacy = raw.get(f"{name}_dict")
    if not isinstance(value, dict) or (legacy is not None and not isinstance(legacy, dict)):
        raise ModelLoadError(f"{where}: {name} must be a JSON object")
    if legacy is None:
        return dict(value)
    kind = TextConfig if name == "text_config" else VisionConfig
    return {**value, **asdict(kind()), **legacy}


def _known_fields(kind: type, raw: dict[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    names = {f.name for f in fields(kind)} - set(exclude)
    return {name: raw[name] for name in names if name in raw and raw[name] is not None}


def _dataclass_from(kind: type, raw: dict[str, Any], where: str) -> Any:
    values = _known_fields(kind, raw)
    for item in fields(kind):
        if item.name in values and item.type in ("int", "float") and not isinstance(values[item.name], (int, float)):
            raise ModelLoadError(f"{where}: {item.name} must be a number, got {values[item.name]!r}")
    if kind is TextConfig:
        if "pad_token_id" in raw and raw["pad_token_id"] is None:  # an explicit null is meaningful here
            values["pad_token_id"] = None
        if isinstance(raw.get("eos_token_id"), list):
            ids = raw["eos_token_id"]
            values["eos_token_id"] = int(ids[0]) if ids else None
    return kind(**values)
