"""textmask's own CLIPSeg: the model of Lüddecke & Ecker (2022) in plain torch, and CLIP's tokenizer.

* :class:`CLIPSeg`: CLIP's text and vision towers plus the CLIPSeg decoder, with the Hugging Face
  checkpoint's parameter names, so ``CIDAS/clipseg-*`` weights (and a transformers model's
  ``state_dict()``) load by name.
* :func:`load_clipseg`: build it from a model folder on the meta device and assign the mmapped
  safetensors weights (only those segmentation uses; the rest on first use).
* :class:`CLIPTextTokenizer`: the CLIP tokenizer on the ``tokenizers`` library.

Numerically the forward passes are transformers' (SDPA attention, the same op order), so float32 logits
agree with ``CLIPSegForImageSegmentation`` bit for bit at batch 1 on the CPU. Nothing here imports
transformers; :mod:`textmask.clipseg.hf` converts to and from it for interop.
"""

from __future__ import annotations

from .config import CLIPSegConfig, TextConfig, VisionConfig
from .model import CLIPSeg, SegmentationOutput, assign_parameters
from .tokenizer import CLIPTextTokenizer, TokenizerFilesError
from .weights import CheckpointReader, clipseg_from_state_dict, load_clipseg

__all__ = [
    "CLIPSeg",
    "CLIPSegConfig",
    "CLIPTextTokenizer",
    "CheckpointReader",
    "SegmentationOutput",
    "TextConfig",
    "TokenizerFilesError",
    "VisionConfig",
    "assign_parameters",
    "clipseg_from_state_dict",
    "load_clipseg",
]
