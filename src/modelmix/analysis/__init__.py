"""Task-vector interference analysis (``modelmix analyze``).

``analyze(base, models, *, examples=None, top_k=0.2, device="cpu") -> AnalysisReport``; imported lazily so
``import modelmix.analysis`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelmix.analysis.api import AnalysisReport, analyze

__all__ = ["AnalysisReport", "analyze"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from modelmix.analysis import api

        return getattr(api, name)
    raise AttributeError(f"module 'modelmix.analysis' has no attribute {name!r}")
