"""Small stand-ins for the ComfyUI modules textmask's nodes use, so the nodes can be tested without ComfyUI.

They mirror ComfyUI 0.8.0's signatures and the behaviour that matters (see docs/comfyui.md):
``folder_paths`` model-folder registration; ``comfy.model_management`` device choice, ``load_models_gpu``,
unloading and the interrupt flag; ``comfy.utils.ProgressBar``; ``comfy.model_patcher.ModelPatcher``, which,
like the real one, assigns ``model.device`` when it loads (so wrapping a transformers model directly fails
here as it does in ComfyUI). The real thing is exercised by tests/test_comfy_integration.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch


class InterruptProcessingException(Exception):
    """ComfyUI's exception for the cancel button."""


@dataclass
class ComfyStubs:
    """The stub modules (name → module) and what they recorded."""

    base: Path
    modules: dict[str, ModuleType]
    load_calls: list[dict[str, Any]] = field(default_factory=list)
    loaded: list[Any] = field(default_factory=list)
    progress: list[tuple[int, int | None]] = field(default_factory=list)
    interrupted: bool = False

    @property
    def models_dir(self) -> Path:
        return self.base / "models"

    def unload_all(self) -> None:
        for patcher in self.loaded:
            patcher.detach()
        self.loaded.clear()


def make_stubs(base: Path) -> ComfyStubs:
    """Fresh stub modules rooted at ``base`` (``base/models`` is ``folder_paths.models_dir``)."""
    stubs = ComfyStubs(base=base, modules={})

    # ---------------------------------------------------------------- folder_paths
    folder_paths = ModuleType("folder_paths")
    folder_paths.base_path = str(base)
    folder_paths.models_dir = str(base / "models")
    folder_paths.folder_names_and_paths = {
        "checkpoints": ([str(base / "models" / "checkpoints")], {".safetensors"}),
        "custom_nodes": ([str(base / "custom_nodes")], set()),
    }

    def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        table = folder_paths.folder_names_and_paths
        if folder_name not in table:
            table[folder_name] = ([full_folder_path], set())
            return
        paths = table[folder_name][0]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)

    def get_folder_paths(folder_name: str) -> list[str]:
        return folder_paths.folder_names_and_paths[folder_name][0][:]

    folder_paths.add_model_folder_path = add_model_folder_path
    folder_paths.get_folder_paths = get_folder_paths
    folder_paths.get_input_directory = lambda: str(base / "input")
    folder_paths.get_output_directory = lambda: str(base / "output")

    # ---------------------------------------------------- comfy.model_management
    mm = ModuleType("comfy.model_management")
    cpu = torch.device("cpu")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.get_torch_device = lambda: cpu
    mm.unet_offload_device = lambda: cpu
    mm.text_encoder_offload_device = lambda: cpu
    mm.intermediate_device = lambda: cpu
    mm.cpu_mode = lambda: True
    mm.should_use_fp16 = lambda device=None, model_params=0, prioritize_performance=True, manual_cast=False: False

    def load_models_gpu(
        models: list[Any],
        memory_required: int = 0,
        force_patch_weights: bool = False,
        minimum_memory_required: int | None = None,
        force_full_load: bool = False,
    ) -> None:
        stubs.load_calls.append({"models": list(models), "force_full_load": force_full_load})
        for patcher in models:
            if patcher not in stubs.loaded:
                patcher.load(patcher.load_device)
                stubs.loaded.insert(0, patcher)

    def throw_exception_if_processing_interrupted() -> None:
        if stubs.interrupted:
            stubs.interrupted = False
            raise InterruptProcessingException()

    def interrupt_current_processing(value: bool = True) -> None:
        stubs.interrupted = value

    mm.load_models_gpu = load_models_gpu
    mm.unload_all_models = stubs.unload_all
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.interrupt_current_processing = interrupt_current_processing
    mm.processing_interrupted = lambda: stubs.interrupted

    # -------------------------------------------------------------- comfy.utils
    utils = ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total: int, node_id: str | None = None) -> None:
            self.total = total
            self.current = 0

        def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
            if total is not None:
                self.total = total
            self.current = min(value, self.total)
            stubs.progress.append((self.current, self.total))

        def update(self, value: int) -> None:
            self.update_absolute(self.current + value)

    utils.ProgressBar = ProgressBar

    # ------------------------------------------------------- comfy.model_patcher
    model_patcher = ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model: Any, load_device: Any, offload_device: Any, size: int = 0, **_: Any) -> None:
            self.model = model
            self.load_device = load_device
            self.offload_device = offload_device
            if getattr(model, "device", None) is None:
                model.device = offload_device

        def load(self, device_to: Any = None, **_: Any) -> None:
            self.model.to(device_to)
            self.model.device = device_to  # as ComfyUI does: fails on a bare transformers model

        def detach(self, unpatch_all: bool = True) -> None:
            self.model.to(self.offload_device)
            self.model.device = self.offload_device

    model_patcher.ModelPatcher = ModelPatcher

    comfy = ModuleType("comfy")
    comfy.__path__ = []  # a package
    comfy.model_management = mm
    comfy.utils = utils
    comfy.model_patcher = model_patcher
    stubs.modules = {
        "folder_paths": folder_paths,
        "comfy": comfy,
        "comfy.model_management": mm,
        "comfy.utils": utils,
        "comfy.model_patcher": model_patcher,
    }
    os.makedirs(base / "models", exist_ok=True)
    return stubs
