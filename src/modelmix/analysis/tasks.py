"""Per-task scores (complementarity) and the loss along the linear path between two models.

Only used with ``--examples``; this is the one part of the analysis that imports transformers. One model
skeleton is loaded (:class:`modelmix.candidates.Candidates`) and each model's weights are swapped into it and
scored on every task file; the linear path is :func:`modelmix.weighting.lmc.lmc_curve`, one forward pass per
point and task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelmix.errors import DataError


def task_name(path: str | Path, taken: set[str]) -> str:
    """A short unique name for a task file (its stem, disambiguated by parent directory or an index)."""
    p = Path(path)
    name = p.stem
    if name in taken:
        name = f"{p.parent.name}/{p.stem}"
    i = 2
    base = name
    while name in taken:
        name = f"{base}#{i}"
        i += 1
    taken.add(name)
    return name


def validate_examples(paths: Sequence[str | Path]) -> dict[str, Path]:
    """Load every file strictly (decoder ``{"input","output"}`` JSONL) before any model work; name -> path."""
    from modelmix.eval.data import load_examples

    taken: set[str] = set()
    out: dict[str, Path] = {}
    for p in paths:
        load_examples(p, "decoder")  # DataError for missing/empty/malformed files
        out[task_name(p, taken)] = Path(p)
    if not out:
        raise DataError("No example files given.")
    return out


def score_models(
    paths: dict[str, Path], tasks: dict[str, Path], metrics: Sequence[str], device: str,
    separator: str | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{model name: {task: {metric: value}}}``; each model's weights are read once into one skeleton and
    scored with its own prompt convention (or ``separator``)."""
    from modelmix.candidates import Candidates
    from modelmix.eval.models import prompt_separator

    names = list(paths)
    scores: dict[str, dict[str, dict[str, float]]] = {}
    with Candidates([paths[n] for n in names], purpose="Scoring the models on the same skeleton", cache_bytes=0) as cands:
        em = cands.skeleton(device)
        for i, name in enumerate(names):
            if i:
                cands.load(em, i)
            em.separator = separator if separator is not None else prompt_separator(cands.path(i))
            scores[name] = {t: cands.score(em, str(f), list(metrics)) for t, f in tasks.items()}
    return scores


def lmc_curve(
    path_a: Path, path_b: Path, tasks: dict[str, Path], device: str, points: int = 11,
    separator: str | None = None,
) -> dict[str, Any]:
    """Loss at ``(1 - alpha) * A + alpha * B`` for ``points`` evenly spaced alphas, per task, with the
    barrier (max of loss minus the chord between the endpoint losses) and the best alpha, computed by
    :func:`modelmix.weighting.lmc.lmc_curve` (the ``modelmix lmc`` implementation).
    """
    from modelmix.weighting.lmc import barrier_height
    from modelmix.weighting.lmc import lmc_curve as lmc_impl

    loss: dict[str, list[float]] = {}
    barrier: dict[str, float] = {}
    alphas: list[float] = []
    for t, f in tasks.items():
        r = lmc_impl(path_a, path_b, str(f), points, device=device, separator=separator)
        alphas, loss[t], barrier[t] = list(r.ts), list(r.losses), barrier_height(r.ts, r.losses)
    res: dict[str, Any] = {"alphas": alphas, "loss": loss, "barrier": barrier}
    res["best_alpha"] = {t: res["alphas"][min(range(len(ls)), key=lambda i: (ls[i], i))] for t, ls in res["loss"].items()}
    return res
