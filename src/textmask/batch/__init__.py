"""The batch layer: many inputs in, files out, the same way whatever runs the work.

* :mod:`~textmask.batch.inputs`: discovery (files, folders, globs, stdin) and input keys;
* :mod:`~textmask.batch.naming`: mask targets, output names, resume (what is still to write);
* :mod:`~textmask.batch.store`: the atomic store (local folders, pyarrow filesystems) and stale temporaries;
* :mod:`~textmask.batch.job`: :class:`MaskJob`, :class:`ModelSpec`, :class:`Report`, and the per-image steps
  (read, mask, render and store) every executor shares;
* :mod:`~textmask.batch.video`: videos streamed through a ``frames → masks`` callable;
* executors, asked for by name with :func:`executor`: ``local`` (this process, :mod:`~textmask.batch.local`) and
  ``ray`` (Ray actors, provided by :mod:`textmask.ray_data`), so a face never imports another face.

Torch-free at import: the engine loads when a run starts.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Protocol

from ..errors import TextmaskError
from .inputs import STDIN, CollisionError, Discovery, InputItem, discover_inputs, input_key, input_kind
from .job import Failure, MaskJob, ModelSpec, Report
from .naming import MaskTarget, PlannedOutput, make_targets, output_name, pending_outputs, plan_outputs, prompt_slug
from .store import Store, atomic_path, check_writable, remove_stale_temporaries

__all__ = [
    "STDIN",
    "CollisionError",
    "Discovery",
    "Executor",
    "ExecutorUnavailable",
    "Failure",
    "InputItem",
    "MaskJob",
    "MaskTarget",
    "ModelSpec",
    "PlannedOutput",
    "Report",
    "Store",
    "atomic_path",
    "check_writable",
    "discover_inputs",
    "executor",
    "input_key",
    "input_kind",
    "make_targets",
    "output_name",
    "pending_outputs",
    "plan_outputs",
    "prompt_slug",
    "remove_stale_temporaries",
]

# name → (module, class, what to install when the module cannot be imported)
EXECUTORS = {
    "local": ("textmask.batch.local", "LocalExecutor", ""),
    "ray": ("textmask.ray_data", "RayExecutor", "Ray Data: pip install 'textmask[ray]'"),
}


class ExecutorUnavailable(TextmaskError, ImportError):
    """The executor asked for needs a package that is not installed."""


class Executor(Protocol):
    """Runs a :class:`MaskJob` over inputs and reports what it did."""

    def run(
        self,
        items: Any,
        job: MaskJob,
        progress: Any = None,
        should_stop: Any = None,
        on_failure: Any = None,
    ) -> Report: ...


def executor(name: str, model: ModelSpec, **settings: Any) -> Executor:
    """The executor called ``name`` (``"local"`` or ``"ray"``) for ``model``; ``settings`` are its own options
    (Ray: ``address``, ``actors``, ``cpus_per_actor``, ``gpus_per_actor``).

    Raises:
        ValueError: an unknown name, or settings that executor does not take.
        ExecutorUnavailable: its package is missing (the message says what to install).
    """
    if name not in EXECUTORS:
        raise ValueError(f"engine: {name!r} is not one of {sorted(EXECUTORS)}")
    module_name, class_name, needs = EXECUTORS[name]
    try:
        module = import_module(module_name)
    except ImportError as exc:
        raise ExecutorUnavailable(f"--engine {name} needs {needs or exc}") from None
    return getattr(module, class_name)(model, **settings)
