"""Model references: how a recipe names a model (``path``, ``path+lora`` or mergekit's mapping form).

This module owns the parsing of a reference and its identity (equality by spelling, as in mergekit), and
nothing else: it knows neither pydantic nor the file system. Where a reference points on disk is decided in
one place, `modelmix.io.checkpoint.resolve_model_path` (the CWD first, then the recipe's folder kept here as
``base_dir``), when a checkpoint is opened, not when the recipe is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmix.errors import did_you_mean
from modelmix.methods.registry import short


@dataclass(frozen=True)
class ModelRef:
    """A model (local folder) optionally with a LoRA adapter; equality is by spelling, as in mergekit."""

    path: str
    lora: str | None = None
    override_architecture: str | None = None
    base_dir: Path | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.path}+{self.lora}" if self.lora else self.path

    @classmethod
    def parse(cls, value: Any, base_dir: Path | None = None) -> ModelRef:
        """Parse ``path``, ``path+lora`` or mergekit's dict form; raises ValueError with a readable message."""
        if isinstance(value, ModelRef):
            return value if value.base_dir is not None or base_dir is None else _with_dir(value, base_dir)
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str):
            chunks = value.split("+")
            if len(chunks) > 2:
                raise ValueError(
                    f'cannot parse model reference "{value}": expected "path" or "path+lora_path"'
                )
            if any(not c.strip() for c in chunks):
                raise ValueError(f'empty path in model reference "{value}"')
            return cls(chunks[0], chunks[1] if len(chunks) == 2 else None, None, base_dir)
        if isinstance(value, dict):
            allowed = ("model", "lora", "override_architecture")
            for key in value:
                if key not in allowed:
                    raise ValueError(
                        f'unknown key "{key}" in model reference.{did_you_mean(key, allowed)} '
                        f"Allowed keys: {', '.join(allowed)}."
                    )
            if "model" not in value:
                raise ValueError('a model reference given as a mapping needs a "model" key')
            arch = value.get("override_architecture")
            if arch is not None and not isinstance(arch, str):
                raise ValueError(f"override_architecture must be a string, got {arch!r}")
            lora = value.get("lora")
            return cls(_path_of(value["model"]), None if lora is None else _path_of(lora), arch, base_dir)
        raise ValueError(f'expected a model path such as "./models/base" or "path+lora", got {short(value)}')


def _with_dir(ref: ModelRef, base_dir: Path) -> ModelRef:
    return ModelRef(ref.path, ref.lora, ref.override_architecture, base_dir)


def _path_of(value: Any) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, dict):
        unknown = [k for k in value if k not in ("path", "revision")]
        if unknown:
            raise ValueError(
                f'unknown key "{unknown[0]}" in model path.{did_you_mean(unknown[0], ("path", "revision"))}'
            )
        if value.get("revision") is not None:
            raise ValueError(
                f'Hugging Face Hub revisions are not supported (revision "{value["revision"]}"): '
                "modelmix reads local checkpoints; download the model and give its folder"
            )
        if isinstance(value.get("path"), str) and value["path"].strip():
            return value["path"]
    raise ValueError(f"expected a model path string, got {short(value)}")
