"""What an agent run is given: candidates, tasks and their examples, constraints, budget; and the data split.

The user's examples are the only ground truth, so each task's file is split once, deterministically from the
seed, into a **dev** part the search may look at and a **held-out** part it never sees (by default 1/3 of the
rows, at least 2, taken from a seeded shuffle). The cheap fidelity of the search scores the first
``low_examples`` dev rows of each task; promising candidates are scored on the whole dev part; only the
final shortlist is scored on the held-out part, and the choice is made there.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmix.errors import ConfigError, DataError, InputError

#: metrics the agent optimises (exact match, multiple choice accuracy: higher is better)
TASK_METRICS = ("exact_match", "choice")


@dataclass
class Task:
    name: str
    path: Path
    metric: str = "exact_match"
    weight: float = 1.0
    dev: list[dict[str, Any]] = field(default_factory=list)
    holdout: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AgentSpec:
    base: Path
    models: list[Path]
    tasks: list[Task]
    #: text rows (``{"text"}`` or ``{"input","output"}``) whose token-mean loss measures general ability
    general: Path | None = None
    #: the merge's general loss may exceed the base's by at most this fraction (0.05: 5 %)
    general_tolerance: float = 0.05
    budget: int = 50
    seed: int = 0
    holdout_fraction: float = 1 / 3
    low_examples: int = 8
    methods: tuple[str, ...] = ("linear", "task_arithmetic", "ties", "dare_ties", "breadcrumbs", "breadcrumbs_ties",
                                "della", "model_stock", "slerp")
    general_rows: list[dict[str, Any]] = field(default_factory=list)
    #: > 1: each candidate's weight is a gradient of this many values over the layers (per-layer-group weights)
    layer_groups: int = 1

    def fingerprint(self) -> str:
        """What makes two runs the same search: inputs (by path and example content), split and seed. A rerun
        with the same fingerprint resumes from the store and never evaluates a recipe twice."""
        h = hashlib.sha256()
        payload = {"base": str(self.base), "models": [str(m) for m in self.models], "seed": self.seed,
                   "holdout": self.holdout_fraction, "low": self.low_examples, "tol": self.general_tolerance,
                   "tasks": [(t.name, t.metric, t.weight, _rows_hash(t.dev), _rows_hash(t.holdout)) for t in self.tasks],
                   "general": _rows_hash(self.general_rows),
                   **({"layer_groups": self.layer_groups} if self.layer_groups != 1 else {})}
        h.update(json.dumps(payload, sort_keys=True).encode())
        return h.hexdigest()[:16]


def _rows_hash(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def parse_task(arg: str) -> tuple[str, Path, str, float]:
    """``NAME=PATH[:METRIC[:WEIGHT]]`` from the command line."""
    if "=" not in arg:
        raise ConfigError(f"--tasks {arg!r}: expected NAME=PATH (optionally NAME=PATH:METRIC:WEIGHT), e.g. "
                          "math=math.jsonl or math=math.jsonl:exact_match:2.")
    name, rest = arg.split("=", 1)
    parts = rest.split(":")
    path, metric, weight = parts[0], parts[1] if len(parts) > 1 and parts[1] else "exact_match", 1.0
    if len(parts) > 2:
        try:
            weight = float(parts[2])
        except ValueError:
            raise ConfigError(f"--tasks {arg!r}: weight {parts[2]!r} is not a number.") from None
    if not name.strip():
        raise ConfigError(f"--tasks {arg!r}: the task needs a name before '='.")
    if metric not in TASK_METRICS:
        raise ConfigError(f"--tasks {arg!r}: metric {metric!r} is not one the agent optimises; use one of "
                          f"{', '.join(TASK_METRICS)}.")
    if weight <= 0:
        raise ConfigError(f"--tasks {arg!r}: the weight must be positive.")
    return name.strip(), Path(path), metric, weight


def load_spec(base: str | Path, models: list[str | Path], tasks: list[tuple[str, Path, str, float]], *,
              general: str | Path | None = None, budget: int = 50, seed: int = 0, **kw: Any) -> AgentSpec:
    """Check every input before anything heavy and split the examples; raises a one-paragraph error."""
    from modelmix.eval.data import load_examples

    if budget < 1:
        raise ConfigError(f"--budget {budget}: the search needs at least one evaluation.")
    if len(models) < 2:
        raise InputError(f"The agent chooses among candidates and needs at least two models; got {len(models)}. "
                         "To evaluate one model use `modelmix eval`.")
    # absolute from here on: recipe.yml and router.yml are read relative to their own directory
    paths = [Path(m).expanduser().resolve() for m in models]
    base = Path(base).expanduser().resolve()
    for p in [base, *paths]:
        if not (p / "config.json").is_file():
            raise InputError(f"{p}: " + ("does not exist." if not p.exists() else
                                         "has no config.json; not a Hugging Face model directory."))
    dup = sorted({str(p) for p in paths if paths.count(p) > 1})
    if dup:
        raise InputError(f"--models lists {', '.join(dup)} twice; each candidate once.")
    if not tasks:
        raise ConfigError("The agent needs at least one task (--tasks NAME=PATH) to score candidates on.")
    names = [t[0] for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"Task names must be unique; got {', '.join(names)}.")
    spec = AgentSpec(base, paths, [], budget=budget, seed=seed, **kw)
    if not isinstance(spec.layer_groups, int) or spec.layer_groups < 1:
        raise ConfigError(f"--layer-groups {spec.layer_groups}: a whole number, 1 (one weight per candidate) or "
                          "more (a weight per group of layers).")
    if not 0 < spec.holdout_fraction < 1:
        raise ConfigError(f"holdout_fraction {spec.holdout_fraction} must be between 0 and 1.")
    for name, path, metric, weight in tasks:
        path = Path(path).expanduser().resolve()
        kind = "choice" if metric == "choice" else "decoder"
        rows = load_examples(path, kind)  # DataError naming file:line on a malformed row
        if len(rows) < 4:
            raise DataError(f"{path}: task {name!r} has {len(rows)} example(s); the agent needs at least 4 (a "
                            "dev part to search on and a held-out part to confirm on).")
        order = list(range(len(rows)))
        random.Random(f"{seed}:{name}").shuffle(order)
        n_hold = max(2, round(len(rows) * spec.holdout_fraction))
        spec.tasks.append(Task(name, path, metric, weight, dev=[rows[i] for i in order[n_hold:]],
                               holdout=[rows[i] for i in order[:n_hold]]))
    if general is not None:
        spec.general = Path(general).expanduser().resolve()
        spec.general_rows = load_examples(spec.general, "decoder")
        if not spec.general_rows:
            raise DataError(f"{general}: the general-ability file has no rows.")
    return spec


def load_agent_config(path: str | Path) -> dict[str, Any]:
    """The YAML form of ``agent run`` for repeatable runs, checked like a recipe (unknown keys with a
    did-you-mean). Relative paths are relative to the file. Returns ``run``'s keyword arguments::

        base: zoo/base
        models: [zoo/experts/addition, zoo/experts/reverse]
        tasks:
          addition: {path: add.jsonl, metric: exact_match, weight: 2}
          reverse: rev.jsonl
        general: general.jsonl
        general_tolerance: 0.05       # general loss <= base's + 5 %
        budget: 50
        seed: 0
        db: agent.db
        out: merged
        executor: local               # or ray (workers: N; batch: trials evaluated together)
        layer_groups: 1               # 3: each candidate's weight a gradient of 3 values over the layers
    """
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    from modelmix.config.loading import _parse_yaml
    from modelmix.config.messages import format_validation_error

    class _Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class TaskEntry(_Strict):
        path: str
        metric: str = "exact_match"
        weight: float = Field(1.0, gt=0)

    class AgentConfig(_Strict):
        base: str
        models: list[str] = Field(min_length=2)
        tasks: dict[str, TaskEntry | str] = Field(min_length=1)
        general: str | None = None
        general_tolerance: float = Field(0.05, ge=0)
        budget: int = Field(50, ge=1)
        seed: int = 0
        db: str = "agent.db"
        out: str | None = None
        executor: Literal["local", "ray"] = "local"
        workers: int | None = Field(None, ge=1)
        batch: int | None = Field(None, ge=1)
        layer_groups: int = Field(1, ge=1)

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: agent config not found." if not p.exists() else f"{p}: not a file.")
    raw = _parse_yaml(p.read_text(encoding="utf-8"), str(p))
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of keys (base, models, tasks, ...), got {type(raw).__name__}.")
    try:
        cfg = AgentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(p), root=AgentConfig)) from None

    def rel(x: str) -> Path:
        q = Path(x).expanduser()
        return q if q.is_absolute() else p.resolve().parent / q

    tasks = []
    for name, t in cfg.tasks.items():
        entry = TaskEntry(path=t) if isinstance(t, str) else t
        if entry.metric not in TASK_METRICS:
            raise ConfigError(f"{p}: tasks.{name}.metric: {entry.metric!r} is not one the agent optimises; use one "
                              f"of {', '.join(TASK_METRICS)}.")
        tasks.append((name, rel(entry.path), entry.metric, entry.weight))
    return {"base": rel(cfg.base), "models": [rel(m) for m in cfg.models], "tasks": tasks,
            "general": rel(cfg.general) if cfg.general else None, "general_tolerance": cfg.general_tolerance,
            "budget": cfg.budget, "seed": cfg.seed, "db": str(rel(cfg.db)) if "://" not in cfg.db else cfg.db,
            "out": rel(cfg.out) if cfg.out else None, "executor": cfg.executor, "workers": cfg.workers,
            "batch": cfg.batch, "layer_groups": cfg.layer_groups}
