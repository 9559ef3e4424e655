"""Built-in merge methods.

Importing this package imports every module in it, and each module registers its methods with
``register`` at import time, so adding a method is adding a file (no central list to edit).
"""

import importlib
import pkgutil

from modelmix.methods.registry import REQUIRED, Method, Param, all_methods, get_method, register

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "registry" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["REQUIRED", "Method", "Param", "all_methods", "get_method", "register"]
