"""Errors textmask raises on purpose, and the helpers every layer uses to report failures in one line.

Each message names the input and says what to do. This module imports neither torch nor anything heavy, so
faces and the batch layer can use it at import time.

:class:`textmask.OutOfMemoryError` (the device ran out of memory even one image at a time) lives in
:mod:`textmask.engine`, because it also subclasses ``torch.OutOfMemoryError``; :func:`is_out_of_memory`
recognises it, torch's own and the allocators' messages without importing torch.
"""

from __future__ import annotations

import errno

# Errors that mean an output folder cannot take more files: a run stops instead of failing every input.
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)})
# Allocation failures that are not torch.OutOfMemoryError: the CPU allocator and MPS raise RuntimeError.
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")


class TextmaskError(Exception):
    """Base class for every error textmask raises deliberately."""


class ModelNotFoundError(TextmaskError, FileNotFoundError):
    """The model weights are not where the source says, or cannot be downloaded."""


class ModelLoadError(TextmaskError):
    """The model files exist but cannot be loaded (corrupt, truncated, unsupported format)."""


class BackendUnavailable(TextmaskError, ImportError):
    """A backend or precision needs a package that is not installed (the message says what to install)."""


class InputError(TextmaskError, ValueError):
    """An image input cannot be used (wrong shape, dtype, values, or an unreadable file)."""


class ImageTooLargeError(InputError):
    """An image has more pixels than may be opened safely (Pillow's decompression-bomb limit, or a face's own)."""


class PromptError(TextmaskError, ValueError):
    """A prompt cannot be used (wrong type, or an example image that cannot be read)."""


class OutputError(TextmaskError, OSError):
    """An output folder cannot be written (disk full, read-only): the run stops."""


class Interrupted(Exception):
    """A run was asked to stop between two chunks (``should_stop()`` returned True); nothing is half-written."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when the message is empty)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation (CUDA, CPU, MPS, Python), as opposed to any other failure.

    ``torch.OutOfMemoryError`` (and textmask's subclass) is recognised by its class name, so this needs no torch.
    """
    if isinstance(error, MemoryError) or any(cls.__name__ == "OutOfMemoryError" for cls in type(error).__mro__):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _OOM_MESSAGES)


def out_of_memory_message(what: str, device: object, detail: str, advice: str | None = None) -> str:
    """The one message for "out of memory even one image at a time", wherever it is reported.

    Args:
        what: the input that did not fit (``images[3]``, a file name, "the batch").
        device: the device that ran out.
        detail: the allocator's own first line.
        advice: what to try instead; the default suits the Python API.
    """
    advice = advice or (
        "Try a smaller image or output_size, fewer prompts per call, a reduced precision (dtype='fast' or "
        "'float16' on a GPU), or device='cpu'"
    )
    return f"{what}: out of memory on {device} even one image at a time ({detail}). {advice}"


def write_failure(source: str, error: OSError) -> OutputError | None:
    """An :class:`OutputError` that stops the run when ``error`` means the output folder is full or read-only,
    else None (only this input failed)."""
    if error.errno in FATAL_ERRNOS:
        return OutputError(f"cannot write outputs for {source}: {error.strerror or error}; stopping")
    return None
