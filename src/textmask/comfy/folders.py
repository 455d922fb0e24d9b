"""Where ComfyUI keeps CLIPSeg models: the ``clipseg`` model folder, registered with ``folder_paths``.

SaltAI's and WAS Node Suite's CLIPSeg loaders keep the Hugging Face cache in ``ComfyUI/models/clipseg``
(``models--CIDAS--clipseg-rd64-refined/...``); textmask registers that folder under the name ``clipseg``
(users can add more with ``extra_model_paths.yaml``: ``clipseg: path/to/folder``) and looks there first.

This module imports only the standard library at import time: ComfyUI's ``folder_paths`` is used when
ComfyUI has loaded it, and everything still works (with no model folders) outside ComfyUI.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

from ..constants import DEFAULT_MODEL

log = logging.getLogger("textmask")

FOLDER_NAME = "clipseg"


def comfy_module(name: str) -> ModuleType | None:
    """A ComfyUI module (``folder_paths``, ``comfy.model_management``, ...) when running inside ComfyUI, else None.

    Modules are only imported when ComfyUI itself is loaded (its ``folder_paths`` or ``comfy`` package is in
    ``sys.modules``): importing ComfyUI's modules into another process would initialise its devices.
    """
    module = sys.modules.get(name)
    if module is not None:
        return module
    if "folder_paths" not in sys.modules and "comfy.model_management" not in sys.modules:
        return None
    try:
        return importlib.import_module(name)
    except Exception:  # an optional integration: never let it break a node
        log.debug("textmask: ComfyUI module %s is not available", name, exc_info=True)
        return None


def clipseg_folders() -> list[Path]:
    """ComfyUI's ``clipseg`` model folders (registering ``models/clipseg`` first if needed); [] outside ComfyUI."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        return []
    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    known = folder_paths.folder_names_and_paths.get(FOLDER_NAME)
    if known is None:
        folder_paths.folder_names_and_paths[FOLDER_NAME] = ([default], set())
    elif default not in known[0]:
        # An extra_model_paths.yaml entry came first: keep it, and put the standard folder in front.
        folder_paths.add_model_folder_path(FOLDER_NAME, default, is_default=True)
    return [Path(p) for p in folder_paths.get_folder_paths(FOLDER_NAME)]


def _hf_cache_name(folder: str) -> str | None:
    """``models--ORG--NAME`` → ``ORG/NAME``."""
    if not folder.startswith("models--"):
        return None
    parts = folder[len("models--") :].split("--")
    return "/".join(parts) if len(parts) >= 2 and all(parts) else None


def list_models() -> list[str]:
    """Model choices for the loader: the default hub id first, then every model found in the clipseg folders.

    A folder holding ``config.json`` is listed by its path relative to its clipseg folder (``/`` separated);
    a Hugging Face cache folder ``models--ORG--NAME`` with a snapshot is listed as ``ORG/NAME``.
    """
    found: set[str] = set()
    for root in clipseg_folders():
        if not root.is_dir():
            continue
        for current, dirnames, filenames in os.walk(root, followlinks=True):
            relative = Path(current).relative_to(root)
            parts = relative.parts
            if parts and (name := _hf_cache_name(parts[0])) is not None:
                if len(parts) == 1:
                    dirnames[:] = [d for d in dirnames if d == "snapshots"]
                elif len(parts) == 2:
                    continue  # snapshots/: look into each snapshot
                else:
                    if "config.json" in filenames:
                        found.add(name)
                    dirnames[:] = []
                continue
            if parts and "config.json" in filenames:
                found.add(relative.as_posix())
                dirnames[:] = []
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return [DEFAULT_MODEL, *sorted(found - {DEFAULT_MODEL})]


def resolve_model(name: str) -> Path:
    """A model choice or free text (hub id, folder, folder relative to a clipseg folder) → a local model folder.

    :func:`textmask.model.locate_model` with ComfyUI's clipseg folders searched first (by folder name and as
    Hugging Face caches) and a missing hub id downloaded into ``models/clipseg`` (only when online, as the
    SaltAI/WAS loaders do).

    Raises:
        textmask.errors.ModelNotFoundError: saying where it looked and how to get the weights.
    """
    from ..errors import ModelNotFoundError
    from ..model import locate_model

    roots = clipseg_folders()
    try:
        return locate_model(str(name).strip() or DEFAULT_MODEL, search_dirs=roots)
    except ModelNotFoundError as exc:
        where = "" if roots else " (not running in ComfyUI: no models/clipseg folder)"
        raise ModelNotFoundError(
            f"CLIPSeg model: {exc}{where} In ComfyUI, put the model folder into ComfyUI/models/clipseg and pick it "
            "in the 'CLIPSeg Model Loader (textmask)' node."
        ) from None
