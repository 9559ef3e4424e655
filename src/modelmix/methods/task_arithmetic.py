"""Task-vector merges: task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties,
della and della_linear. They differ only in the sparsifier, the sign consensus and the defaults, exactly
as mergekit 0.1.5's table of generalized-task-arithmetic methods (see ``_gta.merge_deltas``): one
:class:`~modelmix.methods._gta.TaskVectorVariant` each, from which its parameters, its reference function
(below) and its streamer (``_gta_stream``) are built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from modelmix.kernels.masks import (
    breadcrumbs_prune,
    dare_prune,
    della_prune,
    magnitude_prune,
    model_seed,
    normalize_rescale,
)
from modelmix.methods._gta import Sparsifier, TaskVectorVariant, check_della, merge_deltas
from modelmix.methods._gta_stream import task_vector_streamer
from modelmix.methods.registry import Method, register, with_defaults

_TA = "Ilharco et al. 2022, https://arxiv.org/abs/2212.04089"
_TIES = "Yadav et al. 2023, https://arxiv.org/abs/2306.01708"
_DARE = "Yu et al. 2023, https://arxiv.org/abs/2311.03099"
_BREADCRUMBS = "Davari & Belilovsky 2023, https://arxiv.org/abs/2312.06795"
_DELLA = "Deep et al. 2024, https://arxiv.org/abs/2406.11617"

V = TaskVectorVariant
VARIANTS = (
    # name, sparsifier, sign consensus, normalize default, rescale default, reference
    V("task_arithmetic", Sparsifier.NONE, False, False, "none", _TA),
    V("ties", Sparsifier.MAGNITUDE, True, True, "none", _TIES),
    V("dare_ties", Sparsifier.RANDOM, True, False, "l1", _DARE),
    V("dare_linear", Sparsifier.RANDOM, False, False, "l1", _DARE),
    V("breadcrumbs", Sparsifier.OUTLIERS, False, False, "none", _BREADCRUMBS),
    V("breadcrumbs_ties", Sparsifier.OUTLIERS, True, False, "none", _BREADCRUMBS),
    V("della", Sparsifier.DELLA, True, True, "l1", _DELLA),
    V("della_linear", Sparsifier.DELLA, False, False, "l1", _DELLA),
)

_DESCRIPTIONS = {
    Sparsifier.MAGNITUDE: "keeps the largest-magnitude `density` of each task vector",
    Sparsifier.RANDOM: "keeps each task-vector entry with probability `density` (DARE)",
    Sparsifier.OUTLIERS: "drops the top `gamma` outliers and the small tail, keeping `density` (breadcrumbs)",
    Sparsifier.DELLA: "drops entries at random, small magnitudes more often (DELLA MagPrune)",
}


def _reference(v: TaskVectorVariant) -> Callable[..., Tensor]:
    """The variant's whole-tensor reference function (``Method.fn``)."""
    params, sp = v.params, v.sparsifier

    def fn(tensors: list[Tensor], *, base: Tensor | None, **given: Any) -> Tensor:
        n = len(tensors)
        p = with_defaults(params, given, n)
        density = p["density"]
        rescale = normalize_rescale(p["rescale"])
        seed = int(p.get("seed", 0))
        if sp is Sparsifier.DELLA:
            check_della(density, p["epsilon"])

        def sparsify(i: int, d: Tensor) -> Tensor:
            if sp is Sparsifier.MAGNITUDE:
                return magnitude_prune(d, density[i], rescale)
            if sp is Sparsifier.RANDOM:
                return dare_prune(d, density[i], model_seed(seed, i), rescale)
            if sp is Sparsifier.OUTLIERS:
                return breadcrumbs_prune(d, density[i], p["gamma"][i], rescale)
            return della_prune(d, density[i], p["epsilon"][i], model_seed(seed, i), rescale)

        return merge_deltas(
            tensors,
            base,  # type: ignore[arg-type]
            weight=p["weight"],
            sparsify=None if sp is Sparsifier.NONE else sparsify,
            consensus=p["consensus_method"] if v.consensus else None,
            normalize=bool(p["normalize"]),
            lam=float(p["lambda"]),
        )

    return fn


def _check_della(p: dict[str, Any]) -> None:
    check_della(p["density"], p["epsilon"])


def _method(v: TaskVectorVariant) -> Method:
    if v.sparsifier is Sparsifier.NONE:
        desc = "Adds the weighted task vectors (model - base) to the base"
    else:
        desc = f"Task arithmetic that {_DESCRIPTIONS[v.sparsifier]}"
    if v.consensus:
        desc += ", then drops entries disagreeing with the elected sign (TIES)"
    elementwise = v.sparsifier is Sparsifier.NONE
    return Method(
        name=v.name,
        fn=_reference(v),
        check=_check_della if v.sparsifier is Sparsifier.DELLA else None,
        params=v.params,
        needs_base=True,
        random=v.sparsifier.random,
        elementwise=elementwise,
        min_models=0,
        description=desc + ".",
        reference=f"{v.reference}; mergekit 0.1.5 `{v.name}`.",
        # element-wise task arithmetic runs as plain row chunks; the others need whole-tensor statistics
        streamer=None if elementwise else task_vector_streamer(v),
    )


for _v in VARIANTS:
    register(_method(_v))
