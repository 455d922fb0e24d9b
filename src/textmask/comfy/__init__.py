"""textmask's ComfyUI node pack (``NODE_CLASS_MAPPINGS``); importing it is cheap (no torch, no transformers).

Besides textmask's own nodes, drop-ins for biegert's and WAS Node Suite's CLIPSeg nodes are registered when
those packs are not installed (:func:`textmask.comfy.dropins.available`).
"""

from .dropins import available as _available_dropins
from .nodes import NODE_CLASS_MAPPINGS as OWN_NODES
from .nodes import NODE_DISPLAY_NAME_MAPPINGS as OWN_DISPLAY_NAMES

_DROPINS, _DROPIN_NAMES = _available_dropins()
NODE_CLASS_MAPPINGS = {**OWN_NODES, **_DROPINS}
NODE_DISPLAY_NAME_MAPPINGS = {**OWN_DISPLAY_NAMES, **_DROPIN_NAMES}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "OWN_NODES"]
