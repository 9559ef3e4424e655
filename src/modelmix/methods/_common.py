"""Small helpers shared by the merge-method modules (not a method module: the leading underscore keeps
``modelmix.methods`` from importing it as one)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from modelmix.errors import ConfigError
from modelmix.methods.registry import Param

# Parameter declarations reused by several methods.
WEIGHT = Param("weight", "model", float, help="Relative weight of this model's contribution (required).")


def as_f32(t: Tensor) -> Tensor:
    """Float32 view/copy of a tensor (methods compute in float32 as mergekit does)."""
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def check_count(method: str, tensors: Sequence[Tensor], values: Sequence[object], name: str) -> None:
    """A per-model parameter list must line up with the tensors; a mismatch is an executor bug."""
    if len(values) != len(tensors):
        raise ValueError(f"{method}: {len(values)} values for {name!r} but {len(tensors)} tensors")


def weight_sum_or_raise(method: str, weights: Sequence[float], what: str = "normalize: true") -> Tensor:
    """Sum of the weights as a float32 scalar; raise a ConfigError when it is zero (cannot normalize).

    Memoised: the executor calls methods once per row chunk with the same weights."""
    return _weight_sum(method, tuple(float(w) for w in weights), what)


@functools.lru_cache(maxsize=256)
def _weight_sum(method: str, weights: tuple[float, ...], what: str) -> Tensor:
    total = torch.tensor(list(weights), dtype=torch.float32).sum()
    if total.item() == 0.0:
        raise ConfigError(
            f"The {method} merge got model weights {list(weights)} which sum to zero, so {what} would "
            "divide by zero. Give weights with a non-zero sum, or set normalize: false."
        )
    return total
