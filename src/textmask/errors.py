"""Errors textmask raises on purpose. Each message names the input and says what to do.

:class:`textmask.OutOfMemoryError` (the device ran out of memory even one image at a time) lives in
:mod:`textmask.engine`, because it also subclasses ``torch.OutOfMemoryError`` and this module stays torch-free.
"""

from __future__ import annotations


class TextmaskError(Exception):
    """Base class for every error textmask raises deliberately."""


class ModelNotFoundError(TextmaskError, FileNotFoundError):
    """The model weights are not where the source says, or cannot be downloaded."""


class ModelLoadError(TextmaskError):
    """The model files exist but cannot be loaded (corrupt, truncated, unsupported format)."""


class InputError(TextmaskError, ValueError):
    """An image input cannot be used (wrong shape, dtype, values, or an unreadable file)."""


class PromptError(TextmaskError, ValueError):
    """A prompt cannot be used (wrong type, or an example image that cannot be read)."""
