"""The dtype names a recipe may use (``dtype:``, ``out_dtype:``), shared by the checker and the planner.

mergekit's names (``bfloat16``, ``float16``, ``float32``, ``float64``, optionally ``torch.``-prefixed) plus
the aliases bf16/fp16/fp32/fp64/half/float/double. The names are checked at load time without torch;
`parse_dtype` imports torch only when the planner asks for the dtype itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelmix.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    import torch

DTYPES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float64": "float64",
    "fp64": "float64",
    "double": "float64",
}
MERGEKIT_DTYPES = ("bfloat16", "float16", "float32", "float64")


def dtype_name(name: str) -> str | None:
    """The canonical torch name of a recipe's dtype spelling, or None when it is not one."""
    key = name.strip().lower()
    if key.startswith("torch."):
        key = key[len("torch.") :]
    return DTYPES.get(key)


def parse_dtype(name: str | None) -> torch.dtype | None:
    """mergekit's dtype names (``bfloat16``, ``float16``, ``float32``, ``float64``, optionally ``torch.``-
    prefixed) plus the aliases bf16/fp16/fp32/fp64/half/float/double; None stays None."""
    if name is None:
        return None
    canonical = dtype_name(str(name))
    if canonical is None:
        raise ConfigError(
            f'Unknown dtype "{name}".{did_you_mean(name, DTYPES)} '
            f"Use one of {', '.join(MERGEKIT_DTYPES)} (or bf16, fp16, fp32)."
        )
    import torch

    return getattr(torch, canonical)
