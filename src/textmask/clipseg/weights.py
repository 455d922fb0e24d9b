"""Reading CLIPSeg weights: safetensors files, mmapped and read by name; pickles only when allowed.

The model is built on the meta device (no random initialization, no memory), then each parameter is
assigned the checkpoint's tensor: for a CPU float32 model that is the mmapped file page itself (no copy),
otherwise one conversion. Weights the model does not use (``logit_scale``, position-id buffers, the vision
layers after the last extracted one) are never read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import ModelNotFoundError
from .config import CLIPSegConfig
from .model import CLIPSeg, assign_parameters, on_meta

log = logging.getLogger("textmask")

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin",)


class CheckpointReader:
    """Tensors of a model folder by parameter name.

    safetensors: every file's header is read and checked when the reader is made (a truncated or corrupt
    file fails here), tensors are read on request. Pickles (``pytorch_model.bin``, only with
    ``allow_pickle``) are loaded with ``torch.load(weights_only=True)``, mmapped where the format allows.

    Raises:
        ModelNotFoundError: the folder has no safetensors weights (and pickles are not allowed, or absent).
        OSError, ValueError, RuntimeError: the files cannot be read (the caller words the error).
    """

    def __init__(self, folder: Path, allow_pickle: bool = False) -> None:
        self.folder = folder
        self._files: dict[str, Path] = {}  # parameter name -> safetensors file
        self._pickled: Mapping[str, torch.Tensor] | None = None
        files = self._safetensors_files(folder)
        if files:
            from safetensors import safe_open

            for path in files:
                with safe_open(str(path), framework="pt", device="cpu") as opened:
                    for name in opened.keys():
                        self._files[name] = path
            return
        pickled = [folder / name for name in PICKLE_FILES if (folder / name).is_file()]
        if not allow_pickle or not pickled:
            others = sorted(p.name for p in folder.glob("*.bin"))
            detail = f"it only has {others}, " if others else ""
            raise ModelNotFoundError(
                f"model folder {folder} holds no *.safetensors weights; {detail}textmask loads only safetensors "
                "by default (pickled .bin files can run code). Convert them, or pass allow_pickle=True "
                "(--allow-pickle) for a source you trust."
            )
        self._pickled = _load_pickle(pickled[0])

    @staticmethod
    def _safetensors_files(folder: Path) -> list[Path]:
        if (folder / SAFETENSORS_FILE).is_file():
            return [folder / SAFETENSORS_FILE]
        index = folder / SAFETENSORS_INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            return [folder / name for name in sorted(set(weight_map.values()))]
        found = sorted(folder.glob("*.safetensors"))
        if len(found) > 1:
            raise ValueError(
                f"several safetensors files and no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}: "
                f"{[p.name for p in found]}; keep one"
            )
        return found

    @property
    def is_mmapped_safetensors(self) -> bool:
        return self._pickled is None

    def names(self) -> set[str]:
        return set(self._pickled) if self._pickled is not None else set(self._files)

    def tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors for ``names`` (CPU, as stored).

        Raises:
            KeyError: naming the parameters the checkpoint lacks.
        """
        available = self.names()
        missing = [name for name in names if name not in available]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise KeyError(
                f"the checkpoint lacks {len(missing)} weights the model needs ({shown}); is it a CLIPSeg model?"
            )
        if self._pickled is not None:
            return {name: self._pickled[name] for name in names}
        from safetensors import safe_open

        out: dict[str, torch.Tensor] = {}
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self._files[name], []).append(name)
        for path, wanted in by_file.items():
            with safe_open(str(path), framework="pt", device="cpu") as opened:
                for name in wanted:
                    out[name] = opened.get_tensor(name)
        return out


def _load_pickle(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (pre-zip) format cannot be mmapped
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path.name} holds a {type(state).__name__}, not a state dict")
    return state


def load_clipseg(
    folder: Path,
    config: CLIPSegConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    full_vision_tower: bool = False,
) -> CLIPSeg:
    """Build :class:`CLIPSeg` from a model folder's weights, in eval mode on ``device`` in ``dtype``.

    Args:
        folder: holds ``model.safetensors`` (or an index of shards, or with ``allow_pickle``
            ``pytorch_model.bin``).
        config: the folder's config (see :meth:`CLIPSegConfig.from_file`), already checked.
        full_vision_tower: build every vision layer now; by default only those the decoder reads, the rest
            when an example-image prompt first needs them (read from the same file then).

    Raises:
        ModelNotFoundError: no weights textmask may load.
        KeyError, ValueError, OSError, RuntimeError: missing, misshapen or unreadable weights.
    """
    reader = CheckpointReader(folder, allow_pickle)
    layers = None if full_vision_tower or not reader.is_mmapped_safetensors else config.vision_layers_for_masks
    with on_meta():
        model = CLIPSeg(config, vision_layers=layers, load_remaining=reader.tensors)
    names = [name for name, _ in model.named_parameters()]
    assign_parameters(model, reader.tensors(names), device=device, dtype=dtype)
    unused = reader.names() - set(names)
    if unused:
        log.debug("%s: %d checkpoint tensors not needed for masks, not read", folder, len(unused))
    return model.eval()


def clipseg_from_state_dict(
    config: CLIPSegConfig,
    state: Mapping[str, torch.Tensor],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> CLIPSeg:
    """:class:`CLIPSeg` over another model's weights (e.g. ``hf_model.state_dict(keep_vars=True)``).

    Tensors already on ``device`` in ``dtype`` (None: as they are) are shared, not copied; ``nn.Parameter``
    values stay the same objects, so the new model follows when their owner moves them. The whole vision
    tower is built (sharing costs nothing).
    """
    with on_meta():
        model = CLIPSeg(config)
    names = [name for name, _ in model.named_parameters()]
    missing = [name for name in names if name not in state]
    if missing:
        raise KeyError(f"the model lacks {len(missing)} CLIPSeg weights (first: {missing[0]})")
    assign_parameters(model, {name: state[name] for name in names}, device=device, dtype=dtype)
    return model.eval()
