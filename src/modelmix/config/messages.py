"""pydantic's validation errors as one readable `ConfigError` paragraph.

A recipe with a typo must say where and what in the user's terms (``models[1].parameters: unknown key
"paramters". Did you mean "parameters"?``), never as pydantic's report. This module maps each pydantic error
kind to such a sentence, with the key path spelled as in the recipe and the keys allowed at that place.
It owns wording only; which errors exist is the schema's (`modelmix.config.schema`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from modelmix.config.schema import MergeConfig
from modelmix.errors import did_you_mean
from modelmix.methods.registry import short


def format_validation_error(e: ValidationError, label: str, root: type[BaseModel] = MergeConfig) -> str:
    """The first problem (unknown keys first), then up to four more, prefixed with the file's label; ``root``
    is the schema validated (a recipe's by default), for the keys allowed where a key is unknown."""
    # unknown keys first: a typo ("mdel") also makes the intended key look missing
    errs = sorted(e.errors(include_url=False), key=lambda x: x["type"] != "extra_forbidden")
    first = _one_error(errs[0], root)
    rest = [_one_error(x, root) for x in errs[1:5]]
    more = f" Further problems: {' '.join(rest)}" if rest else ""
    extra = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
    return f"{label}: {first}{more}{extra}"


def _one_error(err: dict[str, Any], root: type[BaseModel] = MergeConfig) -> str:
    loc = tuple(err["loc"])
    path = _fmt_loc(loc)
    kind = err["type"]
    given = short(err.get("input"))
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1], root)
        allowed = list(owner.model_fields) if owner else []
        if owner is MergeConfig:
            allowed.append("tokenizer")
        hint = did_you_mean(str(loc[-1]), allowed)
        listing = f" Allowed keys here: {', '.join(allowed)}." if allowed else ""
        return f'{path}: unknown key "{loc[-1]}".{hint}{listing}'
    if kind == "missing":
        return f'{_fmt_loc(loc[:-1])}: required key "{loc[-1]}" is missing.'
    if kind in ("model_type", "model_attributes_type", "dict_type", "dataclass_type"):
        return f"{path}: expected a mapping of keys, got {given}."
    if kind in ("list_type", "tuple_type"):
        if loc and loc[-1] == "layer_range":
            return f"{path}: expected [start, end], got {given}."
        return f"{path}: expected a list, got {given}."
    if kind in ("too_short", "too_long") and loc and loc[-1] == "layer_range":
        return f"{path}: expected exactly two numbers [start, end], got {given}."
    if kind.startswith("int_"):
        return f"{path}: expected an integer, got {given}."
    if kind.startswith("float_"):
        return f"{path}: expected a number, got {given}."
    if kind.startswith("string_"):
        return f"{path}: expected a string, got {given}."
    if kind.startswith("bool_"):
        return f"{path}: expected true or false, got {given}."
    if kind == "value_error":
        exc = (err.get("ctx") or {}).get("error")
        msg = str(exc) if exc is not None else err["msg"]
        return f"{path}: {msg.rstrip('.')}."
    return f"{path}: {err['msg'].rstrip('.')} (got {given})."


def _fmt_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _model_at(loc: Sequence[Any], root: type[BaseModel] = MergeConfig) -> type[BaseModel] | None:
    """The schema class that owns the mapping at ``loc`` (for "did you mean" on unknown keys)."""
    cls: type[BaseModel] | None = root
    key_next = False  # the previous field was a mapping of names to schemas: this part is a name
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        if key_next:
            key_next = False
            continue
        f = cls.model_fields.get(part)
        if f is None:
            return None
        key_next = any(get_origin(t) is dict for t in (f.annotation, *get_args(f.annotation)))
        cls = _find_model(f.annotation)
    return cls


def _find_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in get_args(tp):
        found = _find_model(arg)
        if found is not None:
            return found
    return None
