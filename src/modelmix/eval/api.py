"""`evaluate`: one entry point for every metric, used by the CLI, zoo evaluation and merge-weight search.

Stable API::

    evaluate(model_or_path, dataset, metric, *, tokenizer=None, batch_size=None, device="cpu",
             max_new_tokens=None, loss_reduction="lmcocktail", loss_group_size=2,
             separator=None) -> dict[str, float]

* ``model_or_path``: a local HF / sentence-transformers directory, a loaded transformers model (with
  ``tokenizer=`` or a local ``name_or_path``), or an :class:`EvalModel` (the fast path for repeated
  evaluation: load once, swap weights with ``EvalModel.load_state_dict``).
* ``dataset``: a JSONL path or a list of dicts (validated strictly either way, see ``modelmix.eval.data``).
* ``metric``: ``"exact_match" | "loss" | "choice" | "retrieval"`` or a list of them (results merged).
  Keys of the result: ``exact_match``; ``loss``; ``accuracy`` and ``accuracy_norm``; ``recall@1`` and
  ``mrr`` (semantics in ``modelmix.eval.metrics``).
* ``batch_size``: rows per forward pass; None picks batches by a token budget (recommended).
* ``device``: only used when a path is loaded; an existing model stays where it is.
* ``loss_reduction`` / ``loss_group_size``: see ``metrics.loss`` (default: LM-Cocktail's exact number).
* ``separator``: text between input and output/option for ``loss`` and ``choice``; None (default) takes the
  model's own convention (``modelmix.eval.models.prompt_separator``: ``""`` for modelmix zoo models, else
  LM-Cocktail's ``" "``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from modelmix.errors import InputError, did_you_mean
from modelmix.eval.data import METRIC_KIND, coerce_examples

METRICS = tuple(METRIC_KIND)
#: metric -> whether a higher value is better (``loss`` is nats per token; the others are accuracies/recalls)
HIGHER_IS_BETTER = {"exact_match": True, "loss": False, "choice": True, "retrieval": True}


def higher_is_better(metric: str) -> bool:
    """Direction of a metric, the one place searches (greedy soups, LMC, the agent) look it up."""
    try:
        return HIGHER_IS_BETTER[metric]
    except KeyError:
        raise InputError(f"Unknown metric {metric!r}; choose from {', '.join(METRICS)}.{did_you_mean(metric, METRICS)}") from None


def is_better(a: float, b: float, metric: str) -> bool:
    """Is score ``a`` strictly better than ``b`` under ``metric``?"""
    return a > b if higher_is_better(metric) else a < b


def check_metrics(metric: str | Sequence[str]) -> list[str]:
    """Normalise ``metric`` to a non-empty list of known metric names (InputError otherwise)."""
    names = [metric] if isinstance(metric, str) else list(metric)
    if not names:
        raise InputError("No metric given; choose from " + ", ".join(METRICS) + ".")
    for m in names:
        if m not in METRIC_KIND:
            raise InputError(
                f"Unknown metric {m!r}; choose from {', '.join(METRICS)}.{did_you_mean(m, METRICS)}"
            )
    return list(dict.fromkeys(names))


def evaluate(
    model_or_path: Any,
    dataset: str | Path | Iterable[Mapping[str, Any]],
    metric: str | Sequence[str],
    *,
    tokenizer: Any = None,
    batch_size: int | None = None,
    device: str = "cpu",
    max_new_tokens: int | None = None,
    loss_reduction: str = "lmcocktail",
    loss_group_size: int = 2,
    separator: str | None = None,
) -> dict[str, float]:
    """Evaluate a model on a dataset with one or more metrics; returns ``{score name: value}``."""
    from modelmix.eval import metrics as M
    from modelmix.eval.models import as_eval_model

    names = check_metrics(metric)
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}.")
    # validate the data before paying for model loading
    kinds = {METRIC_KIND[m] for m in names}
    if not isinstance(dataset, (str, Path)):
        dataset = list(dataset)  # may be validated once per kind
    data_by_kind = {k: coerce_examples(dataset, k) for k in kinds}
    em = as_eval_model(model_or_path, tokenizer=tokenizer, device=device)
    out: dict[str, float] = {}
    for m in names:
        ex = data_by_kind[METRIC_KIND[m]]
        if m == "exact_match":
            out.update(M.exact_match(em, ex, batch_size=batch_size, max_new_tokens=max_new_tokens))
        elif m == "loss":
            out.update(
                M.loss(
                    em,
                    ex,
                    batch_size=batch_size,
                    reduction=loss_reduction,
                    group_size=loss_group_size,
                    separator=separator,
                )
            )
        elif m == "choice":
            out.update(M.choice(em, ex, batch_size=batch_size, separator=separator))
        else:
            out.update(M.retrieval(em, ex, batch_size=batch_size))
    return out
