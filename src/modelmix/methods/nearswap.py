"""NearSwap: take the other model's value where it is close to the base, keep the base elsewhere."""

from __future__ import annotations

from torch import Tensor

from modelmix.methods._common import as_f32
from modelmix.methods.registry import Method, Param, register


def nearswap(tensors: list[Tensor], *, base: Tensor | None, t: float) -> Tensor:
    """Per element ``w = clamp(t / max(|base - x|, 1e-6), 0, 1)``; result ``w * x + (1 - w) * base``."""
    a = as_f32(base)  # type: ignore[arg-type]
    b = as_f32(tensors[0])
    w = (t / (a - b).abs_().clamp_(min=1e-6)).clamp_(0, 1)
    return w * b + (1 - w) * a


register(
    Method(
        name="nearswap",
        fn=nearswap,
        params=(
            Param(
                "t",
                "global",
                float,
                low=0.0,
                help="Distance scale: elements closer than t to the base take the other model's value fully.",
            ),
        ),
        needs_base=True,
        elementwise=True,
        min_models=1,
        max_models=1,
        description="Interpolates towards the other model only where its values are near the base's.",
        reference="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001; mergekit 0.1.5 `nearswap`.",
    )
)
