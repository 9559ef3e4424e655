"""What the weighting features share: the decoder skeleton they score in, the metric check, the one
streamed write of a chosen weighted average (``linear`` through ``modelmix.merge``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from modelmix.errors import InputError

if TYPE_CHECKING:
    from modelmix.candidates import Candidates
    from modelmix.eval.models import EvalModel

METRICS = ("loss", "exact_match")
Log = Callable[[str], None]


def check_metric(metric: str, allowed: Sequence[str] = METRICS) -> str:
    if metric not in allowed:
        from modelmix.errors import did_you_mean

        raise InputError(f"Unknown metric {metric!r}; choose from {', '.join(allowed)}.{did_you_mean(metric, allowed)}")
    return metric


def decoder_skeleton(cands: Candidates, device: str, separator: str | None, what: str) -> EvalModel:
    """The candidates' skeleton, which must be a causal LM (soups and LMC score decoder loss/exact match)."""
    em = cands.skeleton(device, separator=separator)
    if em.kind != "decoder":
        raise InputError(f"{cands.path(0)} is not a causal LM; {what} evaluate loss/exact_match of decoders.")
    return em


def write_linear(models: Sequence[str], weights: Sequence[float], out_dir: str | Path, *, overwrite: bool,
                 protect: Sequence[tuple[str, str | Path]] = ()) -> Path:
    """Write ``sum_i w_i model_i / sum_i w_i`` through the streaming engine (a ``linear`` recipe); every
    model (even one with weight 0) and ``protect`` stay clear of the output."""
    from modelmix.api import merge

    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(Path(m).absolute()), "parameters": {"weight": float(w)}}
                   for m, w in zip(models, weights, strict=True) if w != 0 or len(models) == 1],
    }
    guard = [*[("input model", Path(m)) for m in models], *protect]
    return merge(recipe, out_dir, overwrite=overwrite, protect=guard).out_dir
