"""`zoo.json`: the manifest that tells tools (the evaluation harness, tests, demos) what a zoo contains.

Shape (``format`` 1)::

    {"format": 1, "preset": str, "seed": int, "recipe_version": str,
     "tasks":  {name: {"type": "decoder"|"encoder", "metric": "exact_match"|"loss"|"retrieval",
                       "path": "tasks/<name>", "sizes": {split: n}}},
     "models": {name: {"path": str, "type": "decoder"|"encoder", "parent"?: str, "trained_on": [task],
                       "params"?: int, "train_steps"?: int, "train_seconds"?: float, "source"?: str,
                       "role"?: "critic"}},
     "scores": {model: {task: {metric: value}}},
     "samples"?: {model: [{"prompt", "answer"}]}, "build_seconds"?: float}   # smol zoo
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmix.errors import DataError, InputError, did_you_mean

FORMAT = 1
MANIFEST = "zoo.json"


@dataclass
class Zoo:
    """A loaded zoo manifest plus path helpers (all paths absolute)."""

    path: Path
    preset: str
    seed: int
    recipe_version: str
    tasks: dict[str, dict[str, Any]]
    models: dict[str, dict[str, Any]]
    scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def model_path(self, name: str) -> Path:
        """Directory of model `name` (``"base"``, ``"experts/addition"``, ``"embedders/base"``, ...)."""
        if name not in self.models:
            raise InputError(f"The zoo at {self.path} has no model {name!r}.{did_you_mean(name, self.models)}")
        return self.path / self.models[name]["path"]

    def task_path(self, name: str) -> Path:
        if name not in self.tasks:
            raise InputError(f"The zoo at {self.path} has no task {name!r}.{did_you_mean(name, self.tasks)}")
        return self.path / self.tasks[name]["path"]

    def split_path(self, task: str, split: str) -> Path:
        """``tasks/<task>/<split>.jsonl``."""
        return self.task_path(task) / f"{split}.jsonl"

    def decoder_tasks(self) -> list[str]:
        return [t for t, s in self.tasks.items() if s["type"] == "decoder"]

    def encoder_tasks(self) -> list[str]:
        return [t for t, s in self.tasks.items() if s["type"] == "encoder"]

    def experts(self, kind: str = "decoder") -> dict[str, str]:
        """Fine-tuned models of `kind` mapped to the single task each was trained on (not the critic: it is
        a tool for the self-critique work, not a task expert to merge)."""
        return {m: spec["trained_on"][0] for m, spec in self.models.items()
                if spec["type"] == kind and spec.get("parent") and len(spec.get("trained_on", [])) == 1
                and spec.get("role") != "critic"}


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _read(mf: Path, missing: type[Exception], hint: str = "") -> Any:
    if not mf.is_file():
        raise missing(f"{mf.parent} is not a model zoo: {mf} does not exist{hint}.")
    try:
        return json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"Cannot read the zoo manifest {mf}: {e}.") from None


def check_tasks(tasks: Any, mf: Path) -> dict[str, dict[str, Any]]:
    """The validated ``tasks`` block: a non-empty object of ``{"type", "metric", "path"}`` entries with a
    known type and metric (DataError naming the task otherwise). The one check of it, for ``load_zoo`` and
    for ``eval --zoo``, which also reads task collections that have only this block."""
    from modelmix.eval.data import METRIC_KIND

    if not isinstance(tasks, dict) or not tasks:
        raise DataError(f'{mf}: expected a non-empty object under "tasks".')
    for name, spec in tasks.items():
        if not isinstance(spec, dict):
            raise DataError(f"{mf}: task {name!r} must be an object.")
        for key in ("type", "metric", "path"):
            if not isinstance(spec.get(key), str):
                raise DataError(f"{mf}: task {name!r} is missing the string field {key!r}.")
        if spec["type"] not in ("decoder", "encoder"):
            raise DataError(f"{mf}: task {name!r} has type {spec['type']!r}; expected 'decoder' or 'encoder'.")
        if spec["metric"] not in METRIC_KIND:
            raise DataError(f"{mf}: task {name!r} has unknown metric {spec['metric']!r}.")
    return tasks


def read_tasks(path: str | Path) -> dict[str, dict[str, Any]]:
    """Only the validated ``tasks`` of ``DIR/zoo.json`` (any task collection; DataError on any problem)."""
    mf = Path(path) / MANIFEST
    data = _read(mf, DataError)
    return check_tasks(data.get("tasks") if isinstance(data, dict) else None, mf)


def load_zoo(path: str | Path) -> Zoo:
    """Read and check a zoo's ``DIR/zoo.json``; `InputError` if absent, `DataError` if malformed."""
    root = Path(path)
    mf = root / MANIFEST
    data = _read(mf, InputError, " (build one with `modelmix zoo build`)")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{mf}: unsupported manifest format {data.get('format') if isinstance(data, dict) else data!r}; "
                        f"this modelmix reads format {FORMAT}.")
    check_tasks(data.get("tasks"), mf)
    if not isinstance(data.get("models"), dict):
        raise DataError(f"{mf}: expected an object under 'models'.")
    for name, spec in data["models"].items():
        missing = [k for k in ("path", "type") if not isinstance(spec, dict) or k not in spec]
        if missing:
            raise DataError(f"{mf}: model {name!r} lacks {', '.join(missing)}.")
    return Zoo(path=root.resolve(), preset=str(data.get("preset", "")), seed=int(data.get("seed", 0)),
               recipe_version=str(data.get("recipe_version", "")), tasks=data["tasks"], models=data["models"],
               scores=data.get("scores") or {})
