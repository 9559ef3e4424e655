"""modelmix: merge, weigh, analyse and route language models.

Public API (imported lazily so ``import modelmix`` stays cheap):
``merge(recipe, out_dir, ...)``, ``plan(recipe)``, ``merge_tensors(method, tensors, base=None, **params)``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["merge", "merge_tensors", "plan", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("merge", "merge_tensors", "plan"):
        from modelmix import api

        return getattr(api, name)
    raise AttributeError(f"module 'modelmix' has no attribute {name!r}")
