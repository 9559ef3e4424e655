"""Which compiled kernels the CPU hot loops use: C via ctypes (``ckernels``) when it was built at install
time, else numba (``fused``), else none (callers fall back to torch).

Both backends have the same functions and signatures and give the same output tensors. C is preferred
because it loads in a millisecond where numba needs ~0.6 s of GIL-bound start-up per process.
``MODELMIX_KERNELS=c|numba|torch`` or :data:`FORCE` (tests) picks one explicitly.
"""

from __future__ import annotations

import os
from types import ModuleType

FORCE: str | None = None
_cache: dict[str, ModuleType | None] = {}


def kernels(loaded_only: bool = False) -> ModuleType | None:
    """The kernel module to use, or None for the torch path.

    ``loaded_only``: return numba kernels only if numba is already loaded (for small gains that would not
    pay for its start-up); C kernels are always cheap to load.
    """
    name = FORCE or os.environ.get("MODELMIX_KERNELS") or "auto"
    if name == "torch":
        return None
    if name in ("auto", "c"):
        mod = _get("c")
        if mod is not None or name == "c":
            return mod
    if loaded_only and name == "auto" and "modelmix.kernels.fused" not in _cache:
        return None
    return _get("numba")


def _get(name: str) -> ModuleType | None:
    key = "modelmix.kernels.ckernels" if name == "c" else "modelmix.kernels.fused"
    if key not in _cache:
        if name == "c":
            from modelmix.kernels import ckernels as mod
        else:
            from modelmix.kernels import fused as mod
        _cache[key] = mod if mod.AVAILABLE else None
    return _cache[key]
