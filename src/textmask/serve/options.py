"""The mask options as HTTP form fields, taken generically from :class:`textmask.MaskOptions`' dataclass fields:
a field added to ``MaskOptions`` (``refine``...) becomes a form field, an OpenAPI parameter and a ``/v1/info``
entry with no change here. Types come from the field's annotation, valid values from its metadata
(``choices``, ``min``, ``max``), descriptions from the class docstring's ``Attributes:`` section.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import MISSING, Field, fields
from typing import Any, Literal, Optional, Union

from ..postprocess import MaskOptions

_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _documented(cls: type) -> dict[str, str]:
    """``Attributes:`` entries of a Google-style docstring: name → one-line description."""
    text = (cls.__doc__ or "").split("Attributes:", 1)
    if len(text) < 2:
        return {}
    described: dict[str, str] = {}
    current: list[str] = []
    for line in text[1].splitlines():
        match = re.match(r"^\s{4,8}([a-z_][a-z0-9_]*(?:\s*,\s*[a-z_][a-z0-9_]*)*):\s*(.*)$", line)
        if match:
            current = [name.strip() for name in match.group(1).split(",")]
            for name in current:
                described[name] = match.group(2).strip()
        elif line.strip() and current:
            for name in current:
                described[name] = f"{described[name]} {line.strip()}"
        elif not line.strip() and described:
            current = []
    return {name: re.sub(r"``([^`]*)``", r"\1", value) for name, value in described.items()}


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """``float | None`` → ``(float, True)``; ``int`` → ``(int, False)``; a union whose first member is a plain
    scalar (``bool | RefineOptions``: the richer forms are for Python callers) → that scalar; anything else →
    ``(that, False)``."""
    origin = typing.get_origin(annotation)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        nullable = len(members) < len(typing.get_args(annotation))
        if len(members) == 1 or members[0] in _SCALARS:
            return members[0], nullable
    return annotation, False


class OptionField:
    """One :class:`MaskOptions` field as the service offers it."""

    def __init__(self, spec: Field, annotation: Any, description: str) -> None:
        self.name = spec.name
        base, self.nullable = _base_type(annotation)
        self.choices: tuple[Any, ...] | None = tuple(spec.metadata["choices"]) if "choices" in spec.metadata else None
        self.minimum = spec.metadata.get("min")
        self.maximum = spec.metadata.get("max")
        self.default = spec.default if spec.default is not MISSING else None
        self.base = base if base in _SCALARS else str  # an unusual type arrives as text; MaskOptions checks it
        self.description = description

    @property
    def form_type(self) -> Any:
        """The annotation of the form parameter (FastAPI parses and documents it)."""
        kind: Any = Literal[self.choices] if self.choices else self.base
        return Optional[kind] if self.nullable else kind  # noqa: UP045 - built at run time

    def describe(self) -> dict[str, Any]:
        """The field for ``/v1/info`` (the web page builds its controls from it)."""
        return {
            "name": self.name,
            "type": _SCALARS[self.base],
            "nullable": self.nullable,
            "default": self.default,
            "choices": list(self.choices) if self.choices else None,
            "min": self.minimum,
            "max": self.maximum,
            "description": self.description,
        }


def option_fields() -> list[OptionField]:
    """Every :class:`MaskOptions` field, in declaration order."""
    hints = typing.get_type_hints(MaskOptions)
    described = _documented(MaskOptions)
    return [OptionField(spec, hints.get(spec.name, str), described.get(spec.name, "")) for spec in fields(MaskOptions)]


def build_options(values: dict[str, Any]) -> MaskOptions:
    """Form values (already typed) → :class:`MaskOptions`; ``ValueError`` naming the field when one is invalid."""
    return MaskOptions(**values)


def field_of(error: Exception, names: typing.Iterable[str]) -> str | None:
    """The field an error message starts with (``"threshold: must be in [0, 1]"`` → ``"threshold"``), if any."""
    head = str(error).split(":", 1)[0].strip()
    return head if head in set(names) else None
