"""Linear (weighted-average) merge, the model-soup average, and passthrough."""

from __future__ import annotations

import torch
from torch import Tensor

from modelmix.methods._common import WEIGHT, as_f32, check_count, weight_sum_or_raise
from modelmix.methods.registry import Method, Param, register


def linear(
    tensors: list[Tensor], *, base: Tensor | None = None, weight: list[float], normalize: bool = True
) -> Tensor:
    """``sum_i w_i x_i`` (divided by ``sum_i w_i`` when normalizing), accumulated in input order like
    mergekit. A zero weight sum with ``normalize`` is a recipe error (mergekit would emit NaN/Inf)."""
    check_count("linear", tensors, weight, "weight")
    dev = tensors[0].device
    w = torch.tensor(weight, dtype=torch.float32, device=dev)
    total = weight_sum_or_raise("linear", weight) if normalize else None
    out = torch.zeros(tensors[0].shape, dtype=torch.float32, device=dev)
    for t, wi in zip(tensors, w, strict=True):
        out.addcmul_(as_f32(t), wi)
    if total is not None:
        out.div_(total.to(dev))
    return out


def soup(tensors: list[Tensor], *, base: Tensor | None = None) -> Tensor:
    """Uniform average of all inputs ("model soup", Wortsman et al. 2022)."""
    out = torch.zeros(tensors[0].shape, dtype=torch.float32, device=tensors[0].device)
    for t in tensors:
        out.add_(as_f32(t))
    return out.div_(len(tensors))


def passthrough(
    tensors: list[Tensor], *, base: Tensor | None = None, scale: list[float | None] | None = None
) -> Tensor:
    """Return the single input unchanged (a copy), optionally multiplied by ``scale``."""
    s = scale[0] if scale else None
    x = as_f32(tensors[0])
    return x.clone() if s is None else x * s


register(
    Method(
        name="linear",
        fn=linear,
        params=(
            WEIGHT,
            Param(
                "normalize",
                "global",
                bool,
                True,
                help="Divide by the sum of the weights, so they need not sum to 1.",
            ),
        ),
        uses_base=False,
        elementwise=True,
        check=lambda p: weight_sum_or_raise("linear", p["weight"]) if p.get("normalize", True) else None,
        description="Weighted average of the models' tensors.",
        reference="Wortsman et al. 2022, https://arxiv.org/abs/2203.05482; mergekit 0.1.5 `linear`.",
    )
)

register(
    Method(
        name="soup",
        fn=soup,
        uses_base=False,
        elementwise=True,
        description="Uniform average of all models (a uniform model soup); linear with equal weights.",
        reference="Wortsman et al. 2022, https://arxiv.org/abs/2203.05482.",
    )
)

register(
    Method(
        name="passthrough",
        fn=passthrough,
        params=(
            Param(
                "scale",
                "model",
                float,
                None,
                help="Optional factor to multiply the tensor by (unset = unchanged).",
            ),
        ),
        uses_base=False,
        elementwise=True,
        max_models=1,
        description="Copies one model's tensor unchanged (layer stacking is done by the planner).",
        reference="mergekit 0.1.5 `passthrough`.",
    )
)
