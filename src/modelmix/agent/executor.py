"""Where the agent's evaluations run: in this process, or in Ray actors.

An evaluation is one recipe merged into a skeleton in memory (or one candidate copied in) and scored on one
fidelity's rows. Both executors run the same :func:`compute`; they differ only in where. The agent asks for
a batch of evaluations at a time, in a fixed order, and the results come back in that order, so a search
with the same batch size makes the same trials whichever executor runs them (tested: the same choice).

* :class:`LocalExecutor` - one skeleton and one set of opened checkpoints in this process; the batch runs one
  evaluation after another.
* :class:`RayExecutor` - ``workers`` Ray actors, each holding its own skeleton and opened checkpoints (opened
  once, reused for every evaluation it gets); a batch is spread over them. For candidates whose evaluations
  take long enough that several machines (or cores) pay off. Ray is an optional extra
  (``pip install 'modelmix[ray]'``); ``address`` joins a running cluster, otherwise a local one is started.

The trial store stays with the agent: workers only compute, the driver records each result as it arrives.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from modelmix.agent.space import Recipe
from modelmix.agent.spec import AgentSpec
from modelmix.errors import InputError, ModelmixError

Job = tuple[Recipe, str]  # (recipe, fidelity)


def score(em: Any, spec: AgentSpec, fidelity: str) -> tuple[dict[str, float], float | None, dict[str, list[int]]]:
    """Task scores (and per-row hits for exact match), and the general loss, of the model in ``em``."""
    from modelmix.eval import metrics as M

    scores: dict[str, float] = {}
    hits: dict[str, list[int]] = {}
    for t in spec.tasks:
        rows = {"low": t.dev[: spec.low_examples], "dev": t.dev, "holdout": t.holdout}[fidelity]
        if t.metric == "exact_match":
            r = M.exact_match(em, rows, per_row=True)
            scores[t.name], hits[t.name] = r["exact_match"], r["hits"]
        else:
            scores[t.name] = M.choice(em, rows)["accuracy"]
    general = None
    if spec.general_rows:
        rows = spec.general_rows if fidelity != "low" else spec.general_rows[: 4 * spec.low_examples]
        general = M.loss(em, rows, reduction="token")["loss"]
    return scores, general, hits


def compute(c: Any, em: Any, spec: AgentSpec, recipe: Recipe, fidelity: str) -> dict[str, Any]:
    """One evaluation: ``{"scores", "general", "hits", "seconds"}``, or ``{"error"}`` when the method refuses
    the recipe (a refused recipe fails its trial, not the run)."""
    index = {str(m): i for i, m in enumerate(spec.models)}
    t0 = time.perf_counter()
    try:
        if recipe.method == "single":
            c.load(em, "base" if recipe.models[0] == "base" else index[recipe.models[0]])
        else:
            c.merge_into(em, recipe.method, **recipe.merge_kwargs(index))
        scores, general, hits = score(em, spec, fidelity)
    except ModelmixError as e:
        return {"error": str(e)}
    return {"scores": scores, "general": general, "hits": hits, "seconds": time.perf_counter() - t0}


def open_candidates(spec: AgentSpec) -> Any:
    """The candidates opened for merging, or a one-paragraph error that proposes routing."""
    from modelmix.candidates import Candidates

    try:
        return Candidates([str(m) for m in spec.models], base=spec.base, purpose="The agent merging these models")
    except InputError as e:
        raise InputError(f"{e} These candidates cannot be merged in weight space; route between them instead "
                         "(`modelmix serve` with a router config: docs/router.md).") from None


class LocalExecutor:
    """Evaluations one after another in this process, on one skeleton."""

    name = "local"
    workers = 1

    def __init__(self, spec: AgentSpec, device: str = "cpu") -> None:
        self.spec = spec
        self.c = open_candidates(spec)
        self.em = self.c.skeleton(device)

    def map(self, jobs: list[Job]) -> Iterator[dict[str, Any]]:
        for recipe, fidelity in jobs:
            yield compute(self.c, self.em, self.spec, recipe, fidelity)

    def close(self) -> None:
        self.c.close()


class _Worker:
    """A Ray actor: its own opened candidates and skeleton, kept for every evaluation it is given."""

    def __init__(self, spec: AgentSpec, device: str) -> None:
        self.spec = spec
        self.c = open_candidates(spec)
        self.em = self.c.skeleton(device)

    def compute(self, recipe: Recipe, fidelity: str) -> dict[str, Any]:
        return compute(self.c, self.em, self.spec, recipe, fidelity)


class RayExecutor:
    """A batch of evaluations spread over ``workers`` Ray actors (round robin, results in order)."""

    name = "ray"

    def __init__(self, spec: AgentSpec, device: str = "cpu", *, workers: int | None = None,
                 address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise InputError("--executor ray needs Ray, an optional extra: pip install 'modelmix[ray]' "
                             "(or use --executor local).") from None
        open_candidates(spec).close()  # refuse incompatible candidates here, before any worker starts
        import os

        self._ray = ray
        self._started = False
        address = address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            try:
                if address is not None:  # a running cluster: its own CPUs (num_cpus is not ours to set)
                    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
                else:
                    ray.init(num_cpus=workers or None, include_dashboard=False, logging_level="ERROR",
                             log_to_driver=False)
            except (ValueError, ConnectionError, RuntimeError) as e:
                raise InputError(f"--executor ray could not start or join a Ray cluster"
                                 f"{f' at {address}' if address else ''}: {e}") from None
            self._started = True
        try:
            n = workers or max(1, int(ray.available_resources().get("CPU", 1)))
            # an actor that dies (out of memory, a lost node) is restarted once and its evaluation retried
            actor = ray.remote(num_cpus=1, max_restarts=1, max_task_retries=1)(_Worker)
            self.actors = [actor.remote(spec, device) for _ in range(n)]
            self.workers = n
        except BaseException:
            self.close()
            raise

    def map(self, jobs: list[Job]) -> Iterator[dict[str, Any]]:
        refs = [self.actors[i % self.workers].compute.remote(r, f) for i, (r, f) in enumerate(jobs)]
        for ref in refs:
            yield self._ray.get(ref)

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            self._ray.kill(a)
        self.actors = []
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_executor(kind: str, spec: AgentSpec, device: str = "cpu", *, workers: int | None = None,
                  address: str | None = None) -> LocalExecutor | RayExecutor:
    if kind == "local":
        return LocalExecutor(spec, device)
    if kind == "ray":
        return RayExecutor(spec, device, workers=workers, address=address)
    raise InputError(f"--executor {kind!r}: use local or ray.")
