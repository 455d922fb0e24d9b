"""ComfyUI entry point: this repository is a ComfyUI custom-node folder.

Clone (or symlink) it into ``ComfyUI/custom_nodes/`` and install ``requirements.txt``. Importing this file is
cheap: it puts the bundled ``src/`` on ``sys.path`` and reads the node declarations; torch, transformers and
the model load only when a node runs, so a version problem shows up as an error on the node, not as a
broken ComfyUI.
"""

import logging
import os
import sys

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if os.path.isdir(os.path.join(_SRC, "textmask")) and _SRC not in sys.path and "textmask" not in sys.modules:
    # The bundled copy matches these nodes; it wins over an older pip-installed textmask.
    sys.path.insert(0, _SRC)

try:
    from textmask.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except Exception:  # keep ComfyUI running; the log says why the nodes are missing
    logging.getLogger("textmask").exception("textmask: the ComfyUI nodes could not be loaded")

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
