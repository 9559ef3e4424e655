"""Linear (weighted-average) merge, the model-soup average, and passthrough."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
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


@functools.lru_cache(maxsize=1)
def _torch_fuses_fma() -> bool:
    """Whether torch's vectorised CPU kernels run here (AVX2/AVX-512: ``addcmul_`` fuses multiply-add); its
    DEFAULT capability (e.g. ATEN_CPU_CAPABILITY=default) rounds separately, which the kernel does not."""
    try:
        return torch.backends.cpu.get_cpu_capability().upper() not in ("DEFAULT", "")
    except (AttributeError, RuntimeError):
        return False


def _linear_bf16(K: Any, p: Mapping[str, Any]) -> Callable[[list[np.ndarray], np.ndarray], bool] | None:
    """``linear`` of bf16 row chunks in one compiled pass (``Method.fast_bf16``): reads the bf16 bits,
    weighs, sums, divides and rounds in one sweep with the float32 operations of :func:`linear`, fused
    multiply-adds included (so only where torch's ``addcmul_`` fuses them too). None without the kernel or
    for a zero weight sum (the generic path reports it, after its NaN check, with the tensor's name)."""
    if not getattr(K, "HAS_FMA", False) or not hasattr(K, "linear_bf16") or not _torch_fuses_fma():
        return None
    w = [float(x) for x in p["weight"]]
    normalize = bool(p["normalize"])
    total = float(torch.tensor(w, dtype=torch.float32).sum()) if normalize else 1.0
    if normalize and total == 0.0:
        return None
    weight = np.asarray(w, dtype=np.float32)

    def fill(raws: list[np.ndarray], out: np.ndarray) -> bool:
        return K.linear_bf16(tuple(raws), weight, normalize, np.float32(total), out)

    return fill


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
        check=lambda p: weight_sum_or_raise("linear", p["weight"]) if p["normalize"] else None,
        fast_bf16=_linear_bf16,
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
