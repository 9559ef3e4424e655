"""RR-merge's model: the chat model and the critic merged linearly (the paper: weights 1.0/1.0, i.e. 0.5/0.5).

``weight`` is the critic's share: the merge is ``(1 - weight) * model + weight * critic`` (mergekit's
``linear``, normalised). Two ways to get it, both through the engine's method registry:

* :class:`MergedChat`: in memory. The two models are opened once (``Candidates``: checked compatible from
  their headers before any weight is read), one skeleton of the chat model is loaded, and each weight of a
  sweep is merged straight into its parameters - no file, no second copy;
* :func:`cached_merge`: on disk, through ``modelmix.merge`` (atomic write), in a cache directory keyed by
  the inputs' files and the weight, so a later run with the same inputs reuses it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from modelmix.critique.chat import LocalChat, local_chat


def recipe(model: str | Path, critic: str | Path, weight: float) -> dict[str, Any]:
    """The merge as a mergekit recipe (what ``modelmix merge`` would be given)."""
    return {"merge_method": "linear", "dtype": "float32",
            "models": [{"model": str(model), "parameters": {"weight": 1.0 - weight}},
                       {"model": str(critic), "parameters": {"weight": weight}}]}


class MergedChat:
    """model + critic merged in memory at any weight, into one reused skeleton."""

    def __init__(self, model: str | Path, critic: str | Path, *, device: str = "cpu", batch_size: int | None = None) -> None:
        from modelmix.candidates import Candidates

        self.cands = Candidates([str(model), str(critic)], what="model and critic")
        self.em = self.cands.skeleton(device, kind="decoder", model=0)
        self.batch_size = batch_size
        self.weight: float | None = None
        self.merge_seconds = 0.0

    def at(self, weight: float) -> LocalChat:
        t0 = time.perf_counter()
        self.cands.merge_into(self.em, "linear", weight=[1.0 - weight, weight])
        self.merge_seconds = time.perf_counter() - t0
        self.weight = weight
        return local_chat(f"merged@{weight:g}", self.em, batch_size=self.batch_size)

    def close(self) -> None:
        self.cands.close()


def _fingerprint(path: Path) -> list[Any]:
    return sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in path.iterdir() if f.is_file())


def cached_merge(model: str | Path, critic: str | Path, weight: float, cache_dir: str | Path) -> tuple[Path, bool]:
    """The merged model directory in ``cache_dir`` (written through the engine unless already there), and
    whether it was reused."""
    from modelmix.api import merge

    m, c = Path(model).expanduser().resolve(), Path(critic).expanduser().resolve()
    key = hashlib.sha256(json.dumps([str(m), _fingerprint(m), str(c), _fingerprint(c), float(weight)]).encode()).hexdigest()[:16]
    out = Path(cache_dir).expanduser() / f"rr-merge-{weight:g}-{key}"
    if (out / "config.json").is_file():
        return out, True
    out.parent.mkdir(parents=True, exist_ok=True)
    merge(recipe(m, c, weight), out)
    return out, False
