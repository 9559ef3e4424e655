"""Evaluation harness: exact match, loss (LM-Cocktail compatible), multiple choice and retrieval.

Public API (imported lazily so that ``import modelmix.eval`` and the CLI's ``--help`` never import
torch/transformers)::

    evaluate(model_or_path, dataset, metric, *, tokenizer=None, batch_size=None, device="cpu",
             max_new_tokens=None) -> dict[str, float]                      # modelmix.eval.api
    load_examples(path, kind="decoder"|"encoder"|"choice") -> list[dict]    # modelmix.eval.data
    EvalModel.from_pretrained(path, device="cpu", dtype=torch.float32)     # modelmix.eval.models
    EvalModel.load_state_dict(state_dict)   # in-place weight swap, strict name/shape check
    evaluate_zoo(model_or_path, zoo_dir, split="test") -> {task: {metric: value}}  # modelmix.eval.zoo_eval

Metric semantics are documented in ``modelmix.eval.metrics`` and docs/evaluation.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelmix.eval.api import evaluate
    from modelmix.eval.data import load_examples
    from modelmix.eval.models import EvalModel
    from modelmix.eval.zoo_eval import evaluate_zoo

__all__ = ["EvalModel", "evaluate", "evaluate_zoo", "load_examples"]

_WHERE = {
    "evaluate": "modelmix.eval.api",
    "load_examples": "modelmix.eval.data",
    "EvalModel": "modelmix.eval.models",
    "evaluate_zoo": "modelmix.eval.zoo_eval",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'modelmix.eval' has no attribute {name!r}")
