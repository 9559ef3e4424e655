"""Optional bridge to EleutherAI's lm-evaluation-harness (``pip install lm-eval``) for real benchmarks.

modelmix's own metrics cover the zoo and LM-Cocktail-style example files; users with public benchmarks
(hellaswag, arc_easy, gsm8k, ...) can score a merged model, or an in-memory candidate merge, with the harness
through the same entry points. The harness is not a dependency: it is imported only when asked for, and its
task data must already be in the local datasets cache when offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelmix.errors import InputError


def _harness() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise InputError(
            "lm-evaluation-harness is not installed: `pip install lm-eval` into this environment to use "
            "--lm-eval (its task datasets must be available locally when offline)."
        ) from None
    return lm_eval


def run_lm_eval(
    model: str | Path | Any,
    tasks: list[str],
    *,
    device: str = "cpu",
    batch_size: int | str = "auto",
    num_fewshot: int | None = None,
    limit: int | float | None = None,
) -> dict[str, dict[str, float]]:
    """Score ``model`` (an HF directory, or a loaded ``EvalModel``) on lm-eval ``tasks``.

    Returns ``{task: {metric: value}}`` with lm-eval's metric names (``acc,none`` -> ``acc``), in the same
    shape as ``evaluate_zoo`` so tables and JSON output are shared.
    """
    if not tasks:
        raise InputError("--lm-eval needs at least one task name, e.g. --lm-eval hellaswag,arc_easy.")
    lm_eval = _harness()
    if isinstance(model, (str, Path)):
        if not Path(model).is_dir():
            raise InputError(f"Model directory {model} does not exist.")
        lm: Any = "hf"
        model_args: Any = f"pretrained={model},device={device}"
    else:  # an EvalModel (or anything with .model/.tokenizer): wrap the loaded weights, no re-read
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model.model, tokenizer=model.tokenizer, batch_size=batch_size, device=device)
        model_args = None
    try:
        out = lm_eval.simple_evaluate(
            model=lm, model_args=model_args, tasks=list(tasks), num_fewshot=num_fewshot,
            batch_size=batch_size, device=device, limit=limit,
        )
    except KeyError as e:
        raise InputError(f"lm-eval does not know task {e}; list tasks with `lm_eval --tasks list`.") from None
    results: dict[str, dict[str, float]] = {}
    for task, metrics in (out or {}).get("results", {}).items():
        clean = {}
        for key, value in metrics.items():
            name = key.split(",")[0]
            if isinstance(value, (int, float)) and not name.endswith("_stderr") and name != "alias":
                clean[name] = float(value)
        results[task] = clean
    return results
