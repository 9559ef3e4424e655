"""Task-vector merges: task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties,
della and della_linear. They differ only in the sparsifier, the sign consensus and the defaults, exactly
as mergekit 0.1.5's table of generalized-task-arithmetic methods (see ``_gta.merge_deltas``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from modelmix.errors import ConfigError
from modelmix.kernels.masks import (
    breadcrumbs_prune,
    dare_prune,
    della_prune,
    magnitude_prune,
    model_seed,
    normalize_rescale,
)
from modelmix.methods._common import WEIGHT
from modelmix.methods._gta import merge_deltas
from modelmix.methods.registry import Method, Param, register

DENSITY = Param(
    "density", "model", float, 1.0, low=0.0, high=1.0, help="Fraction of this model's task vector to keep."
)
GAMMA = Param(
    "gamma",
    "model",
    float,
    0.01,
    low=0.0,
    high=1.0,
    help="Fraction of the largest-magnitude entries (outliers) to drop before keeping `density`.",
)
EPSILON = Param(
    "epsilon",
    "model",
    float,
    0.15,
    low=0.0,
    high=0.5,
    help="Keep probabilities range over density +/- epsilon by magnitude rank within each row.",
)
CONSENSUS = Param(
    "consensus_method",
    "global",
    str,
    "sum",
    choices=("sum", "count"),
    help='Sign election: "sum" of weighted deltas (TIES paper, mergekit) or "count" of signs (modelmix extra).',
)


def _rescale_param(default: str) -> Param:
    return Param(
        "rescale",
        "global",
        bool | str,  # type: ignore[arg-type]  # mergekit writes true/false; modelmix adds named modes
        default,
        choices=(True, False, "l1", "inverse_density", "none"),
        help='After sparsifying: "l1"/true rescales kept entries to the task vector\'s L1 norm '
        '(mergekit 0.1.5), "inverse_density" divides them by their keep probability (the DARE/DELLA '
        'papers), "none"/false leaves them.',
    )


def _make(
    sparsifier: str | None, consensus: bool, default_normalize: bool, default_rescale: str
) -> Callable[..., Tensor]:
    def fn(tensors: list[Tensor], *, base: Tensor | None, **p: Any) -> Tensor:
        n = len(tensors)
        density = p.get("density") or [1.0] * n
        rescale = normalize_rescale(p.get("rescale", default_rescale))
        seed = int(p.get("seed", 0))

        def sparsify(i: int, d: Tensor) -> Tensor:
            if sparsifier == "magnitude":
                return magnitude_prune(d, density[i], rescale)
            if sparsifier == "random":
                return dare_prune(d, density[i], model_seed(seed, i), rescale)
            if sparsifier == "outliers":
                gamma = p.get("gamma") or [0.01] * n
                return breadcrumbs_prune(d, density[i], gamma[i], rescale)
            epsilon = p.get("epsilon") or [0.15] * n
            return della_prune(d, density[i], epsilon[i], model_seed(seed, i), rescale)

        return merge_deltas(
            tensors,
            base,  # type: ignore[arg-type]
            weight=p["weight"],
            sparsify=sparsify if sparsifier else None,
            consensus=p.get("consensus_method", "sum") if consensus else None,
            normalize=bool(p.get("normalize", default_normalize)),
            lam=float(p.get("lambda", 1.0)),
        )

    return fn


def _check_della(p: dict[str, Any]) -> None:
    """DELLA's keep probabilities range over density +/- epsilon; both ends must stay inside (0, 1)."""
    eps = p.get("epsilon") or [0.15] * len(p["weight"])
    for d, e in zip(p.get("density") or [1.0] * len(p["weight"]), eps, strict=True):
        if 0 < d < 1 and (d + e >= 1 or d - e <= 0):
            raise ConfigError(
                f"DELLA needs density - epsilon > 0 and density + epsilon < 1, but density={d} and "
                f"epsilon={e}. Lower epsilon (default 0.15) or move density away from 0 and 1."
            )


_VARIANTS = [
    # name, sparsifier, sign consensus, normalize default, rescale default, reference
    ("task_arithmetic", None, False, False, "none", "Ilharco et al. 2022, https://arxiv.org/abs/2212.04089"),
    ("ties", "magnitude", True, True, "none", "Yadav et al. 2023, https://arxiv.org/abs/2306.01708"),
    ("dare_ties", "random", True, False, "l1", "Yu et al. 2023, https://arxiv.org/abs/2311.03099"),
    ("dare_linear", "random", False, False, "l1", "Yu et al. 2023, https://arxiv.org/abs/2311.03099"),
    (
        "breadcrumbs",
        "outliers",
        False,
        False,
        "none",
        "Davari & Belilovsky 2023, https://arxiv.org/abs/2312.06795",
    ),
    (
        "breadcrumbs_ties",
        "outliers",
        True,
        False,
        "none",
        "Davari & Belilovsky 2023, https://arxiv.org/abs/2312.06795",
    ),
    ("della", "della", True, True, "l1", "Deep et al. 2024, https://arxiv.org/abs/2406.11617"),
    ("della_linear", "della", False, False, "l1", "Deep et al. 2024, https://arxiv.org/abs/2406.11617"),
]

_DESCRIPTIONS = {
    None: "Adds the weighted task vectors (model - base) to the base.",
    "magnitude": "keeps the largest-magnitude `density` of each task vector",
    "random": "keeps each task-vector entry with probability `density` (DARE)",
    "outliers": "drops the top `gamma` outliers and the small tail, keeping `density` (breadcrumbs)",
    "della": "drops entries at random, small magnitudes more often (DELLA MagPrune)",
}

for _name, _sp, _cons, _norm, _resc, _ref in _VARIANTS:
    _params = [
        WEIGHT,
        DENSITY,
        Param("lambda", "global", float, 1.0, help="Scale applied to the merged task vector."),
        Param(
            "normalize",
            "global",
            bool,
            _norm,
            help="Divide the merged task vector by the sum of the weights (of the models agreeing in sign).",
        ),
        _rescale_param(_resc),
        Param(
            "int8_mask", "global", bool, False, help="Accepted for mergekit compatibility; no effect here."
        ),
    ]
    if _cons:
        _params.append(CONSENSUS)
    if _sp == "outliers":
        _params.append(GAMMA)
    if _sp == "della":
        _params.append(EPSILON)
    _desc = _DESCRIPTIONS[None] if _sp is None else f"Task arithmetic that {_DESCRIPTIONS[_sp]}"
    if _cons:
        _desc += ", then drops entries disagreeing with the elected sign (TIES)"
    register(
        Method(
            name=_name,
            fn=_make(_sp, _cons, _norm, _resc),
            check=_check_della if _sp == "della" else None,
            params=tuple(_params),
            needs_base=True,
            random=_sp in ("random", "della"),
            elementwise=_sp is None,
            min_models=0,
            description=_desc + ("" if _sp is None else "."),
            reference=f"{_ref}; mergekit 0.1.5 `{_name}`.",
        )
    )
