"""`evaluate_zoo`: score one model on every task of a model zoo that matches its kind.

Zoo layout (manifest shape fixed by ``modelmix.zoo``)::

    ZOO/zoo.json   {"tasks": {"<task>": {"type": "decoder"|"encoder",
                                         "metric": "exact_match"|"loss"|"choice"|"retrieval",
                                         "path": "tasks/<task>"}, ...}, ...}
    ZOO/<path>/{train,validation,test}.jsonl

A decoder model is scored on every ``decoder`` task with the task's metric, plus ``loss`` for
``exact_match`` tasks (cheap, and what LM-Cocktail weighs by); an encoder on every ``encoder`` task. The
model is loaded once and reused. Tasks without a ``train`` split (``general``) are skipped for
``split="train"``; any other missing split file is a DataError.

Stable API::

    evaluate_zoo(model_or_path, zoo_dir, split="test", *, tasks=None, tokenizer=None, batch_size=None,
                 device="cpu", separator=None) -> {task: {score name: value}}

``separator`` is passed to ``loss``/``choice``; None (default) is the model's own convention (``""`` for the
zoo's models, trained on ``input + output`` without a space; ``" "`` gives LM-Cocktail's numbers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelmix.errors import DataError, InputError, did_you_mean
from modelmix.eval.data import METRIC_KIND, load_examples

SPLITS = ("train", "validation", "test")


def read_manifest(zoo_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The validated ``tasks`` mapping of ``ZOO/zoo.json`` (DataError on any problem;
    :func:`modelmix.zoo.manifest.read_tasks`: any directory with a tasks block, not only a built zoo)."""
    from modelmix.zoo.manifest import read_tasks

    return read_tasks(zoo_dir)


def evaluate_zoo(
    model_or_path: Any,
    zoo_dir: str | Path,
    split: str = "test",
    *,
    tasks: Sequence[str] | None = None,
    tokenizer: Any = None,
    batch_size: int | None = None,
    device: str = "cpu",
    separator: str | None = None,
) -> dict[str, dict[str, float]]:
    """Scores of one model on every zoo task of its kind (or the named ``tasks``), per task."""
    from modelmix.eval import metrics as M
    from modelmix.eval.models import as_eval_model

    if split not in SPLITS:
        raise InputError(
            f"Unknown split {split!r}; expected one of {', '.join(SPLITS)}.{did_you_mean(split, SPLITS)}"
        )
    zoo = Path(zoo_dir)
    manifest = read_manifest(zoo)
    if tasks is not None:
        for t in tasks:
            if t not in manifest:
                raise InputError(f"Task {t!r} is not in {zoo / 'zoo.json'}.{did_you_mean(t, manifest)}")
    em = as_eval_model(model_or_path, tokenizer=tokenizer, device=device)
    # load (and validate) all data before the first forward pass: a broken file fails fast
    plan: list[tuple[str, list[str], list[dict[str, Any]]]] = []
    for name, spec in manifest.items():
        if (tasks is not None and name not in tasks) or spec["type"] != em.kind:
            continue
        f = zoo / spec["path"] / f"{split}.jsonl"
        if not f.is_file() and split == "train":
            continue
        if not f.is_file():
            raise DataError(f"Zoo task {name!r} has no {split} split: {f} does not exist.")
        metric = spec["metric"]
        metrics = [metric, "loss"] if metric == "exact_match" else [metric]
        plan.append((name, metrics, load_examples(f, METRIC_KIND[metric])))
    if not plan:
        raise DataError(
            f"No {em.kind} task with a {split} split in {zoo / 'zoo.json'} to evaluate {em.name} on."
        )
    out: dict[str, dict[str, float]] = {}
    for name, metrics, ex in plan:
        scores: dict[str, float] = {}
        for m in metrics:
            if m == "exact_match":
                scores.update(M.exact_match(em, ex, batch_size=batch_size))
            elif m == "loss":
                scores.update(M.loss(em, ex, batch_size=batch_size, separator=separator))
            elif m == "choice":
                scores.update(M.choice(em, ex, batch_size=batch_size, separator=separator))
            else:
                scores.update(M.retrieval(em, ex, batch_size=batch_size))
        out[name] = scores
    return out


def score_tasks(em: Any, tasks: Mapping[str, tuple[str, list[dict[str, Any]]]],
                batch_size: int | None) -> dict[str, float]:
    """One number per decoder task as the zoo defines it: exact match, choice accuracy, or the token-mean
    loss (``reduction="token"``), all with the zoo's ``""`` separator (the zoo report and the smol build)."""
    from modelmix.eval import metrics as M

    res: dict[str, float] = {}
    for t, (metric, ex) in tasks.items():
        if metric == "exact_match":
            res[t] = M.exact_match(em, ex, batch_size=batch_size)["exact_match"]
        elif metric == "choice":
            res[t] = M.choice(em, ex, batch_size=batch_size, separator="")["accuracy"]
        elif metric == "loss":
            res[t] = M.loss(em, ex, batch_size=batch_size, reduction="token", separator="")["loss"]
        else:
            raise InputError(f"Zoo task {t!r}: metric {metric!r} does not apply to decoders.")
    return res
