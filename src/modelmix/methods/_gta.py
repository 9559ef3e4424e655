"""Shared core of the task-vector family (task arithmetic, TIES, DARE, breadcrumbs, DELLA), following
mergekit 0.1.5's generalized task arithmetic:

1. delta_i = model_i - base, sparsified per model (magnitude / random / outlier band / DELLA),
2. delta_i *= weight_i,
3. optionally elect a sign per element and drop the deltas that disagree (TIES consensus),
4. sum, optionally divide by the sum of the (surviving) weights, multiply by lambda, add to the base.

A method of the family is one :class:`TaskVectorVariant` (sparsifier, consensus, defaults); its parameters
are declared here once (:attr:`TaskVectorVariant.params`), and the table in ``task_arithmetic`` builds each
variant's reference function (there) and its streamer (``_gta_stream``) from the same description. Both
read resolved parameters: every default comes from these declarations.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
from torch import Tensor

from modelmix.errors import ConfigError
from modelmix.methods._common import WEIGHT, as_f32, check_count
from modelmix.methods.registry import Param

Consensus = Literal["sum", "count"]


class Sparsifier(enum.Enum):
    """How each model's task vector is sparsified before the merge."""

    NONE = "none"  # keep everything (task arithmetic)
    MAGNITUDE = "magnitude"  # the largest-magnitude `density` (TIES)
    RANDOM = "random"  # each entry with probability `density` (DARE)
    OUTLIERS = "outliers"  # drop the top `gamma`, keep the next `density` (breadcrumbs)
    DELLA = "della"  # at random, keep probability by magnitude rank within a row (DELLA MagPrune)

    @property
    def random(self) -> bool:
        """Draws random masks (the method takes ``seed``)."""
        return self in (Sparsifier.RANDOM, Sparsifier.DELLA)


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
LAMBDA = Param("lambda", "global", float, 1.0, help="Scale applied to the merged task vector.")
INT8_MASK = Param("int8_mask", "global", bool, False, help="Accepted for mergekit compatibility; no effect here.")


def _normalize_param(default: bool) -> Param:
    return Param(
        "normalize",
        "global",
        bool,
        default,
        help="Divide the merged task vector by the sum of the weights (of the models agreeing in sign).",
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


@dataclass(frozen=True)
class TaskVectorVariant:
    """One method of the task-vector family, as mergekit 0.1.5's table of generalized-task-arithmetic
    methods describes it: a sparsifier, whether signs are elected (TIES consensus), and the defaults of
    ``normalize`` and ``rescale``."""

    name: str
    sparsifier: Sparsifier
    consensus: bool  # elect a sign per element and drop disagreeing deltas (TIES)
    normalize: bool  # default of `normalize`
    rescale: str  # default of `rescale`
    reference: str  # paper

    def __post_init__(self) -> None:
        if not isinstance(self.sparsifier, Sparsifier):  # a typo must not silently become another method
            raise ValueError(
                f"unknown sparsifier {self.sparsifier!r}; expected one of "
                f"{', '.join(f'Sparsifier.{s.name}' for s in Sparsifier)}"
            )

    @cached_property
    def params(self) -> tuple[Param, ...]:
        """The variant's parameter declarations (``Method.params``): every default and bound, once."""
        out = [WEIGHT, DENSITY, LAMBDA, _normalize_param(self.normalize), _rescale_param(self.rescale), INT8_MASK]
        if self.consensus:
            out.append(CONSENSUS)
        if self.sparsifier is Sparsifier.OUTLIERS:
            out.append(GAMMA)
        if self.sparsifier is Sparsifier.DELLA:
            out.append(EPSILON)
        return tuple(out)


def check_della(density: Sequence[float], epsilon: Sequence[float]) -> None:
    """DELLA's keep probabilities range over density +/- epsilon; both ends must stay inside (0, 1) for every
    model that is sparsified at all (0 < density < 1). The one check: ``Method.check`` at plan time, and the
    reference and the streamer before they draw a mask."""
    for d, e in zip(density, epsilon, strict=True):
        if 0 < d < 1 and (d + e >= 1 or d - e <= 0):
            raise ConfigError(
                f"DELLA needs density - epsilon > 0 and density + epsilon < 1, but density={d} and "
                f"epsilon={e}. Lower epsilon (default {EPSILON.default:g}) or move density away from 0 and 1."
            )


def elect_keep(deltas: list[Tensor], method: Consensus) -> Tensor:
    """Per element: is the elected sign positive? ``sum`` weighs each delta by its value (TIES paper);
    ``count`` is a plain majority of signs. Ties (zero) elect positive, as mergekit."""
    acc = torch.zeros_like(deltas[0])
    for d in deltas:
        acc += d if method == "sum" else torch.sign(d)
    return acc >= 0


def agree(delta: Tensor, positive: Tensor) -> Tensor:
    """Elements whose sign equals the elected one (zeros never agree)."""
    return torch.where(positive, delta > 0, delta < 0)


def merge_deltas(
    tensors: list[Tensor],
    base: Tensor,
    *,
    weight: list[float],
    sparsify: Callable[[int, Tensor], Tensor] | None,
    consensus: Consensus | None,
    normalize: bool,
    lam: float,
) -> Tensor:
    """Generalized task arithmetic; ``sparsify(i, delta)`` returns model i's sparsified delta."""
    check_count("task-vector merge", tensors, weight, "weight")
    b = as_f32(base)
    if not tensors:
        return b.clone()
    deltas = []
    for i, t in enumerate(tensors):
        d = (as_f32(t) - b).contiguous()  # layout-independent reductions (bit-identical results)
        if sparsify is not None:
            d = sparsify(i, d)
        deltas.append(d.mul_(weight[i]))
    return combine_deltas(deltas, b, weight=weight, consensus=consensus, normalize=normalize, lam=lam)


def combine_deltas(
    deltas: list[Tensor], b: Tensor, *, weight: list[float], consensus: Consensus | None, normalize: bool, lam: float
) -> Tensor:
    """Steps 3-4 on already sparsified and weighted deltas (also used chunk by chunk by the streamers)."""
    if consensus is not None:
        positive = elect_keep(deltas, consensus)
        mixed = torch.zeros_like(b)
        divisor = torch.zeros_like(b)
        for d, w in zip(deltas, weight, strict=True):
            keep = agree(d, positive)
            mixed += d * keep
            divisor += keep * float(w)
        divisor[divisor == 0] = 1
        if normalize:
            mixed /= divisor
    else:
        mixed = deltas[0]
        for d in deltas[1:]:
            mixed += d
        total = torch.tensor(weight, dtype=torch.float32).sum().item()
        if normalize and abs(total) >= 1e-8:  # mergekit: a (near) zero weight sum is not divided by
            mixed /= total
    if lam != 1:
        mixed *= lam
    return b + mixed
