"""textmask's ComfyUI node pack (``NODE_CLASS_MAPPINGS``); importing it is cheap (no torch, no transformers)."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
