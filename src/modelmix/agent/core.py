"""The merge agent: perceive, select, search, decide, act, remember (see docs/agent.md).

1. **Perceive.** Every candidate (and the base) alone on every task's dev part and on the general rows; the
   task vectors' norms, cosines and sign conflicts (``modelmix.analysis``).
2. **Select.** Drop a candidate that beats the base on no task (it can only dilute), and the weaker of two
   near-duplicates (task vectors with cosine >= 0.9 and dev scores within 0.05 on every task); flag
   conflicting pairs. Every decision is kept with the numbers behind it.
3. **Search.** Optuna's TPE over :mod:`modelmix.agent.space`, seeded, warm-started with the proposals the
   analysis suggests (uniform soup, the papers' defaults for task arithmetic and breadcrumbs, TIES with a
   density from the measured conflict rate, DARE-TIES). Two fidelities: every trial is scored on the first
   few dev rows of each task; trials below the median of that score are pruned, the rest are scored on the
   whole dev part.
4. **Decide.** The best proposal on dev is the default. It, the best few searched recipes, the uniform soup,
   the base and each candidate are scored on the held-out part, never used in the search; a searched recipe
   replaces the default only when a paired bootstrap over the held-out rows shows it better with 95 %
   probability. Routing is estimated as the held-out score of the best candidate per task (an oracle router); when it
   beats the best merge by more than ``route_margin`` on task mean, the agent recommends routing and writes a
   router config beside the model.
5. **Act.** The chosen recipe through the streaming engine into the output directory, its mergekit YAML
   (``recipe.yml``), and the report (``agent_report.json`` / ``.md`` / ``.html``).
6. **Remember.** Every evaluation in the trial store, committed as it is made; a rerun resumes.

The objective of a merge is the weighted mean of its task scores, minus 10 x the share by which its general
loss exceeds the base's beyond ``general_tolerance`` (so a merge that forgets general ability loses to any
merge that keeps it, whatever its task scores).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelmix.agent.space import ENDPOINT, Recipe, suggest, trial_params
from modelmix.agent.spec import AgentSpec
from modelmix.agent.store import TrialStore
from modelmix.errors import InputError, ModelmixError

#: a candidate must beat the base on some task by more than this (dev exact match) to be kept
HELP_MARGIN = 0.02
#: near-duplicates: task-vector cosine at least this and every dev task score within DUP_SCORES
DUP_COSINE, DUP_SCORES = 0.9, 0.05
#: pairs flagged as conflicting: cosine below this, or sign conflicts in the shared top-k above CONFLICT_RATE
CONFLICT_COSINE, CONFLICT_RATE = 0.0, 0.4
#: the share of the budget spent refining the best method's continuous knobs with CMA-ES (after TPE), and
#: CMA-ES's initial step as a share of each knob's range (0.1: a tenth of [0, 1] for a weight, 0.14 of lambda)
REFINE, REFINE_SIGMA = 0.3, 0.1
#: how many of the best dev recipes are confirmed on the held-out part
SHORTLIST = 3
#: a searched recipe replaces the default proposal when it is better on the held-out rows with this probability
CONFIDENCE = 0.95
PENALTY = 10.0


@dataclass
class Evaluation:
    scores: dict[str, float]
    general: float | None
    objective: float
    seconds: float
    cached: bool = False
    hits: dict[str, list[int]] | None = None  # per held-out row, exact-match tasks (paired comparisons)


@dataclass
class AgentResult:
    run: str
    chosen: Recipe
    holdout: dict[str, Any]
    report: dict[str, Any]
    out: Path | None
    recommend_routing: bool
    router: dict[str, Any] | None  # the router config written (router.yml) when routing is recommended
    trials: int = 0
    pruned: int = 0
    evaluations: int = 0
    seconds: float = 0.0


class Agent:
    def __init__(self, spec: AgentSpec, store: TrialStore, *, device: str = "cpu", route_margin: float = 0.05,
                 sampler: str = "tpe", executor: str = "local", workers: int | None = None,
                 address: str | None = None, batch: int | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        """``sampler``: "tpe" (the agent) or "random" (plain random search over the same space, no warm
        start, no pruning: the baseline the benchmark compares against). ``executor``: "local" or "ray"
        (``workers`` actors; ``address`` of a running cluster, else a local one). ``batch``: trials asked of
        Optuna at once and evaluated together (default: the executor's workers); the same batch gives the same
        trials, and so the same choice, on either executor."""
        if sampler not in ("tpe", "random"):
            raise ValueError(f"sampler must be 'tpe' or 'random', got {sampler!r}")
        if batch is not None and batch < 1:
            raise InputError(f"--batch {batch}: at least one trial at a time.")
        self.spec, self.store, self.device, self.route_margin = spec, store, device, route_margin
        self.sampler = sampler
        self.executor_kind, self.workers, self.address, self.batch = executor, workers, address, batch
        self.trial_rss: list[int] = []  # resident bytes after each trial (memory must stay flat)
        self.log = log or (lambda s: None)
        self.run_id = spec.fingerprint()
        self.evaluations = 0  # evaluations actually computed (not read from the store)
        self.eval_seconds: list[float] = []

    # ------------------------------------------------------------------ evaluation
    def task_mean(self, scores: dict[str, float]) -> float:
        """The tasks' scores averaged with their weights."""
        return sum(t.weight * scores[t.name] for t in self.spec.tasks) / sum(t.weight for t in self.spec.tasks)

    def objective(self, scores: dict[str, float], general: float | None, base_general: float | None) -> float:
        if general is not None and not math.isfinite(general):
            return -PENALTY
        mean = self.task_mean(scores)
        if general is None or base_general is None:
            return mean
        return mean - PENALTY * max(0.0, general / base_general - 1 - self.spec.general_tolerance)

    def evaluate_many(self, jobs: list[tuple[Recipe, str]], base_general: dict[str, float | None], *,
                      errors: str = "raise") -> list[Evaluation | ModelmixError]:
        """Each ``(recipe, fidelity)``'s evaluation: from the store when this run measured it before, else
        computed by the executor (one batch, in order) and recorded as each result arrives. A recipe the method
        refuses raises, or with ``errors="return"`` comes back as its error (it fails its trial)."""
        keys = [(recipe.key(), fidelity) for recipe, fidelity in jobs]
        out: list[Evaluation | ModelmixError | None] = []
        first: dict[tuple[str, str], int] = {}  # each job to compute, once (a batch may repeat a recipe)
        for i, (key, fidelity) in enumerate(keys):
            hit = self.store.get(self.run_id, key, fidelity)
            if hit is None:
                out.append(None)
                first.setdefault((key, fidelity), i)
                continue
            s = hit["scores"]
            out.append(Evaluation(s["tasks"], s["general"], hit["objective"], hit["seconds"], cached=True,
                                  hits=s.get("hits")))
        todo = list(first.values())
        for i, res in zip(todo, self.executor.map([jobs[i] for i in todo]), strict=True):
            out[i] = self._record(*jobs[i], res, base_general)
        out = [e if e is not None else out[first[k]] for e, k in zip(out, keys, strict=True)]
        if errors == "raise":
            for e in out:
                if isinstance(e, ModelmixError):
                    raise e
        return out  # type: ignore[return-value]

    def evaluate(self, recipe: Recipe, fidelity: str, base_general: dict[str, float | None]) -> Evaluation:
        return self.evaluate_many([(recipe, fidelity)], base_general)[0]  # type: ignore[return-value]

    def _record(self, recipe: Recipe, fidelity: str, res: dict[str, Any],
                base_general: dict[str, float | None]) -> Evaluation | ModelmixError:
        """One computed result into the store (committed before the search goes on)."""
        if "error" in res:
            return ModelmixError(res["error"])
        scores, general, hits = res["scores"], res["general"], res["hits"]
        obj = self.objective(scores, general, base_general.get(fidelity))
        keep = hits if fidelity == "holdout" else None  # only the decision compares rows
        self.store.put(self.run_id, recipe.key(), fidelity, recipe.to_dict(),
                       {"tasks": scores, "general": general, **({"hits": keep} if keep else {})},
                       obj, res["seconds"], self.spec.seed)
        self.evaluations += 1
        self.eval_seconds.append(res["seconds"])
        return Evaluation(scores, general, obj, res["seconds"], hits=keep)

    # ------------------------------------------------------------------ the run
    def run(self, out: Path | None = None, *, overwrite: bool = False) -> AgentResult:
        t_start = time.perf_counter()
        spec = self.spec
        models = [str(m) for m in spec.models]
        if out is not None:
            from modelmix.io.outputs import check_output_dir

            out = check_output_dir(out, overwrite=overwrite, inputs=[("base model", spec.base), *[
                ("candidate model", m) for m in spec.models], *[("task examples", t.path) for t in spec.tasks]])
        self.store.start_run(self.run_id, {"base": str(spec.base), "models": models,
                                           "tasks": {t.name: str(t.path) for t in spec.tasks},
                                           "seed": spec.seed, "budget": spec.budget})
        from modelmix.agent.executor import make_executor

        self.executor = make_executor(self.executor_kind, spec, self.device, workers=self.workers,
                                      address=self.address)
        try:
            report: dict[str, Any] = {"run": self.run_id, "split": self._split_report(),
                                      "executor": {"kind": self.executor.name, "workers": self.executor.workers}}
            base_general: dict[str, float | None] = {}
            matrix = self._perceive(models, base_general, report)
            selected = self._select(models, matrix, report)
            best, study = self._search(selected, base_general, report)
            chosen, holdout, routing = self._decide(models, selected, best, base_general, report)
        finally:
            self.executor.close()
        report["seconds"] = time.perf_counter() - t_start
        report["evaluations"] = {"computed": self.evaluations, "per_candidate_s": _mean(self.eval_seconds)}
        if out is not None:
            self._act(chosen, out, overwrite, report, routing)
        self.store.finish_run(self.run_id, {"chosen": chosen.to_dict(), "holdout": holdout,
                                            "recommend_routing": routing is not None})
        return AgentResult(self.run_id, chosen, holdout, report, out, routing is not None,
                           routing["config"] if routing else None,
                           trials=report["search"]["trials"], pruned=report["search"]["pruned"],
                           evaluations=self.evaluations, seconds=report["seconds"])

    def _split_report(self) -> dict[str, Any]:
        return {t.name: {"dev": len(t.dev), "holdout": len(t.holdout), "low": min(self.spec.low_examples, len(t.dev)),
                         "metric": t.metric, "weight": t.weight, "file": str(t.path)} for t in self.spec.tasks}

    # 1. perceive ------------------------------------------------------
    def _perceive(self, models: list[str], base_general: dict[str, float | None],
                  report: dict[str, Any]) -> dict[str, Evaluation]:
        from modelmix.analysis import analyze

        self.log(f"perceive: {len(models)} candidates and the base on {len(self.spec.tasks)} task(s)")
        fids = ("low", "dev", "holdout")
        evs = self.evaluate_many([(Recipe("single", ("base",)), f) for f in fids], {})
        base = dict(zip(fids, evs, strict=True))
        base_general.update({fid: ev.general for fid, ev in base.items()})  # the constraint's anchor per fidelity
        matrix = dict(zip(models, self.evaluate_many([(Recipe("single", (m,)), "dev") for m in models],
                                                     base_general), strict=True))
        matrix["base"] = base["dev"]
        a = analyze(self.spec.base, [Path(m) for m in models], workers=1)
        names = [d["name"] for d in a.data["models"]]
        by_name = dict(zip(names, models, strict=True))
        pairs = [{**p, "a": by_name[p["a"]], "b": by_name[p["b"]]} for p in a.data["pairs"]]
        self._pairs = pairs
        report["matrix"] = {m: {"scores": e.scores, "general": e.general, "objective": e.objective}
                            for m, e in matrix.items()}
        report["task_vectors"] = {"norms": {by_name[d["name"]]: d["norm"] for d in a.data["models"]},
                                  "pairs": [{k: p[k] for k in ("a", "b", "cosine", "conflict_rate", "jaccard")}
                                            for p in pairs]}
        return matrix

    # 2. select --------------------------------------------------------
    def _select(self, models: list[str], matrix: dict[str, Evaluation], report: dict[str, Any]) -> list[str]:
        base = matrix["base"].scores
        decisions: list[dict[str, Any]] = []
        keep = []
        for m in models:
            gains = {t: matrix[m].scores[t] - base[t] for t in base}
            helped = [t for t, g in gains.items() if g > HELP_MARGIN]
            if helped:
                keep.append(m)
            else:
                decisions.append({"model": m, "action": "drop", "why": (
                    f"{Path(m).name} beats the base on no task by more than {HELP_MARGIN:.2f} (dev gains: "
                    + ", ".join(f"{t} {g:+.2f}" for t, g in gains.items()) + "); merged in, it can only dilute.")})
        for p in sorted(self._pairs, key=lambda p: -(p["cosine"] or 0)):
            a, b = p["a"], p["b"]
            if a not in keep or b not in keep or p["cosine"] is None:
                continue
            diff = max(abs(matrix[a].scores[t] - matrix[b].scores[t]) for t in base)
            if p["cosine"] >= DUP_COSINE and diff <= DUP_SCORES:
                weaker = a if matrix[a].objective < matrix[b].objective else b
                other = b if weaker == a else a
                keep.remove(weaker)
                decisions.append({"model": weaker, "action": "drop", "why": (
                    f"{Path(weaker).name} duplicates {Path(other).name}: task-vector cosine {p['cosine']:.2f}, dev "
                    f"scores within {diff:.2f} on every task; {Path(other).name} scores higher "
                    f"({matrix[other].objective:.3f} vs {matrix[weaker].objective:.3f}).")})
        conflicts = []
        for p in self._pairs:
            if p["a"] in keep and p["b"] in keep and p["cosine"] is not None and (
                    p["cosine"] < CONFLICT_COSINE or (p["conflict_rate"] or 0) > CONFLICT_RATE):
                conflicts.append(p)
                decisions.append({"model": f"{p['a']} + {p['b']}", "action": "flag", "why": (
                    f"{Path(p['a']).name} and {Path(p['b']).name} conflict: cosine {p['cosine']:.2f}, sign "
                    f"conflicts on {100 * (p['conflict_rate'] or 0):.0f} % of their shared top weights; TIES-style "
                    "sign election is proposed first.")})
        if not keep:  # nothing beats the base: keep the best candidate so there is still something to tune
            best = max(models, key=lambda m: matrix[m].objective)
            keep = [best]
            decisions.append({"model": best, "action": "keep", "why": (
                f"no candidate beats the base on any task; {Path(best).name} is kept as the best of them "
                f"(objective {matrix[best].objective:.3f} vs the base's {matrix['base'].objective:.3f}).")})
        for m in keep:
            helped = [t for t in base if matrix[m].scores[t] - base[t] > HELP_MARGIN]
            if helped:
                decisions.append({"model": m, "action": "keep", "why": f"{Path(m).name} helps on " + ", ".join(
                    f"{t} ({matrix[m].scores[t]:.2f} vs base {base[t]:.2f})" for t in helped) + "."})
        report["selection"] = {"kept": keep, "decisions": decisions, "conflicts": len(conflicts)}
        self.log(f"select: kept {len(keep)} of {len(models)}: " + ", ".join(Path(m).name for m in keep))
        self._conflict_rate = _mean([p["conflict_rate"] or 0.0 for p in self._pairs
                                     if p["a"] in keep and p["b"] in keep]) if len(keep) > 1 else 0.0
        self._cocktail = self._cocktail_weights(keep, report)
        return keep

    def _cocktail_weights(self, keep: list[str], report: dict[str, Any]) -> tuple[float, ...] | None:
        """LM-Cocktail's weights for the kept candidates: softmax(-loss / 5) of each one's loss on the cheap
        fidelity's rows of every task (``modelmix.weighting.cocktail``), a proposal for the linear merge."""
        from modelmix.weighting.cocktail import compute_weights

        rows = [{"input": r["input"], "output": r["output"]} for t in self.spec.tasks
                for r in t.dev[: self.spec.low_examples] if isinstance(r.get("output"), str)]
        if len(keep) < 2 or not rows:
            return None
        try:
            res = compute_weights(keep, rows, type="decoder", device=self.device)
        except ModelmixError as e:  # an encoder, or examples it cannot score: no proposal, said so
            report["cocktail"] = {"error": str(e)[:300]}
            return None
        report["cocktail"] = {"weights": dict(zip(keep, res.weights, strict=True)),
                              "losses": dict(zip(keep, res.losses, strict=True)), "rows": len(rows)}
        return tuple(round(w, 6) for w in res.weights)

    # 3. search --------------------------------------------------------
    def proposals(self, keep: list[str]) -> list[Recipe]:
        """Analysis-driven starting points (enqueued before TPE samples on its own): the uniform soup, the
        papers' defaults, TIES at the conflict-driven density, DARE-TIES, LM-Cocktail's weights, and SLERP
        halfway for a pair."""
        n, s = len(keep), self.spec.seed
        density = min(0.9, max(0.1, 1.0 - 2.0 * self._conflict_rate))  # more conflict: keep fewer weights

        def each(v: float) -> tuple[float, ...]:
            return tuple(v for _ in keep)

        ones = each(1.0)

        out = [Recipe("linear", tuple(keep), {}, {"weight": ones}, s),  # the uniform soup
               # the papers' defaults (the zoo report's fixed recipes): task arithmetic at 0.3 (Ilharco et al.),
               # breadcrumbs beta 0.9 / gamma 0.01 at 0.3 (Davari & Belilovsky)
               Recipe("task_arithmetic", tuple(keep), {"lambda": 0.3}, {"weight": ones}, s),
               Recipe("breadcrumbs", tuple(keep), {"lambda": 0.3}, {"weight": ones, "density": each(0.9),
                                                                     "gamma": each(0.01)}, s),
               # TIES with a density from the measured sign conflicts, and DARE-TIES scaled for n models
               Recipe("ties", tuple(keep), {}, {"weight": ones, "density": each(density)}, s),
               Recipe("dare_ties", tuple(keep), {"lambda": round(1.0 / max(1, n) ** 0.5, 3)},
                      {"weight": ones, "density": each(0.5)}, s)]
        if self._cocktail is not None:  # LM-Cocktail's weights from the cheap rows' losses
            out.append(Recipe("linear", tuple(keep), {}, {"weight": self._cocktail}, s))
        if n == 2:  # SLERP halfway between the pair
            out.append(Recipe("slerp", tuple(keep), {"t": 0.5}, {}, s))
        return [r for r in out if r.method in self.methods(keep)]

    def methods(self, keep: list[str]) -> list[str]:
        from modelmix.methods import get_method

        out = []
        for name in self.spec.methods:
            m = get_method(name)
            n = len(keep) - (1 if name in ENDPOINT else 0)  # SLERP's first candidate is its base endpoint
            if m.min_models <= n and (m.max_models is None or n <= m.max_models):
                out.append(name)
        return out

    def _search(self, keep: list[str], base_general: dict[str, float | None],
                report: dict[str, Any]) -> tuple[list[tuple[float, Recipe]], Any]:
        import warnings

        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        methods = self.methods(keep)
        batch = self.batch or self.executor.workers
        if self.sampler == "tpe":
            # constant liar: trials asked together (a batch) are steered away from each other
            sampler = optuna.samplers.TPESampler(seed=self.spec.seed, multivariate=True, group=True,
                                                 constant_liar=batch > 1,
                                                 n_startup_trials=min(10, max(1, self.spec.budget // 4)))
            pruner: Any = optuna.pruners.PercentilePruner(50.0, n_startup_trials=5, n_warmup_steps=0)
        else:
            sampler, pruner = optuna.samplers.RandomSampler(seed=self.spec.seed), optuna.pruners.NopPruner()
        study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
        if self.sampler == "tpe":
            for r in self.proposals(keep):
                study.enqueue_trial(trial_params(r, keep, self.spec.layer_groups), skip_if_exists=True)
        dev: list[tuple[float, Recipe]] = []
        trajectory: list[dict[str, Any]] = []
        failures: list[str] = []
        states = optuna.trial.TrialState
        counts = {"trials": 0, "pruned": 0, "failed": 0}
        best_trial: dict[str, Any] = {}  # recipe key -> its (first) trial's params and distributions (CMA-ES seed)

        def run_phase(study: Any, n: int, methods: list[str], phase: str, two_fidelities: bool) -> None:
            """``n`` trials of ``study``, ``batch`` at a time: asked in order, scored cheaply together, pruned
            in order, the rest scored on the whole dev part together."""
            def fail(trial: Any, e: ModelmixError) -> None:
                study.tell(trial, state=states.FAIL)
                counts["failed"] += 1
                failures.append(str(e)[:300])

            done = 0
            while done < n:
                trials = [study.ask() for _ in range(min(batch, n - done))]
                done += len(trials)
                numbers = list(range(counts["trials"], counts["trials"] + len(trials)))
                counts["trials"] += len(trials)
                recipes = [suggest(t, keep, methods, self.spec.seed, self.spec.layer_groups) for t in trials]
                lows: list[Any] = (self.evaluate_many([(r, "low") for r in recipes], base_general, errors="return")
                                   if two_fidelities else [None] * len(trials))
                go = []
                for t, k, r, low in zip(trials, numbers, recipes, lows, strict=True):
                    if isinstance(low, ModelmixError):  # a recipe the method refuses fails its trial, not the run
                        fail(t, low)
                        continue
                    if low is not None:
                        t.report(low.objective, 0)
                        if t.should_prune():
                            trajectory.append({"trial": k, "phase": phase, "recipe": r.describe(),
                                               "low": low.objective, "dev": None})
                            study.tell(t, state=states.PRUNED)
                            counts["pruned"] += 1
                            continue
                    go.append((t, k, r, low))
                fulls = self.evaluate_many([(r, "dev") for _, _, r, _ in go], base_general, errors="return")
                for (t, k, r, low), full in zip(go, fulls, strict=True):
                    if isinstance(full, ModelmixError):
                        fail(t, full)
                        continue
                    self.trial_rss.append(_rss())
                    dev.append((full.objective, r))
                    best_trial.setdefault(r.key(), (dict(t.params), dict(t.distributions)))
                    trajectory.append({"trial": k, "phase": phase, "recipe": r.describe(),
                                       "low": None if low is None else low.objective, "dev": full.objective,
                                       "general": full.general, "scores": full.scores})
                    study.tell(t, full.objective)

        # the last REFINE share of the budget: CMA-ES on the continuous knobs of the best method found so far
        refine = round(REFINE * self.spec.budget) if self.sampler == "tpe" and self.spec.budget >= 10 else 0
        self.log(f"search: {self.spec.budget} trials over {', '.join(methods)} "
                 f"({self.executor.name}, {batch} at a time" + (f"; the last {refine} refine with CMA-ES)"
                                                               if refine else ")"))
        t0 = time.perf_counter()
        run_phase(study, self.spec.budget - refine, methods, "tpe" if self.sampler == "tpe" else "random",
                  two_fidelities=self.sampler == "tpe")
        refined = None
        if refine:
            best_obj, best = max(dev, key=lambda x: x[0]) if dev else (None, None)
            frozen = best_trial.get(best.key()) if best is not None else None
            knobs = {k: d for k, d in frozen[1].items() if k != "method"} if frozen else {}
            if best_obj is not None and frozen is not None and len(knobs) >= 2:
                # CMA-ES needs two knobs or more (one is sampled at random); it is seeded with the best trial
                # itself (a completed trial of its study, with its stored score), so its first batch already
                # samples around it instead of uniformly
                x0 = {k: frozen[0][k] for k in knobs}
                with warnings.catch_warnings():  # x0/sigma0 are deprecated since Optuna 4.9 (removal: 6.0, pinned)
                    warnings.simplefilter("ignore", FutureWarning)
                    cma_sampler = optuna.samplers.CmaEsSampler(x0=x0, sigma0=REFINE_SIGMA, seed=self.spec.seed,
                                                               warn_independent_sampling=False)
                cma = optuna.create_study(direction="maximize", sampler=cma_sampler)
                cma.add_trial(optuna.trial.create_trial(params=x0, distributions=knobs, value=best_obj))
                refined = {"method": best.method, "from": best.describe(), "trials": refine, "start": best.to_dict()}
                run_phase(cma, refine, [best.method], "cmaes", two_fidelities=False)
            else:  # nothing scored in full, or the best method has fewer than two knobs: TPE goes on
                run_phase(study, refine, methods, "tpe", two_fidelities=True)
        search_seconds = time.perf_counter() - t0
        dev.sort(key=lambda x: -x[0])
        report["search"] = {"methods": methods, "trials": counts["trials"], "pruned": counts["pruned"],
                            "seconds": search_seconds, "failed": counts["failed"], "failures": failures[:3],
                            "sampler": self.sampler, "batch": batch, "refined": refined,
                            "trajectory": trajectory, "proposals": [r.describe() for r in self.proposals(keep)],
                            "best_dev": [{"objective": o, "recipe": r.describe()} for o, r in dev[:SHORTLIST]],
                            "pareto": _pareto([t for t in trajectory if t["dev"] is not None])}
        return dev, study

    # 4. decide --------------------------------------------------------
    def _decide(self, models: list[str], keep: list[str], dev: list[tuple[float, Recipe]],
                base_general: dict[str, float | None], report: dict[str, Any]) -> tuple[Recipe, dict[str, Any], Any]:
        # the default: the analysis' best proposal on dev (the papers' defaults, the soup, ...); a searched
        # recipe replaces it only when the held-out rows show it better with 95 % (paired bootstrap): 33 rows
        # a task cannot tell recipes 0.01-0.02 apart, and picking the best held-out number chose noise
        proposed = [(self.store.get(self.run_id, r.key(), "dev"), r) for r in self.proposals(keep)]
        proposed = [(h["objective"], r) for h, r in proposed if h is not None]
        soup = Recipe("linear", tuple(keep), {}, {"weight": tuple(1.0 for _ in keep)}, self.spec.seed)
        default = max(proposed, key=lambda x: x[0])[1] if proposed else soup
        short: list[Recipe] = [default]
        for _, r in dev:
            if len(short) == SHORTLIST + 1:
                break
            if r.key() not in {x.key() for x in short}:
                short.append(r)
        if soup.key() not in {x.key() for x in short}:
            short.append(soup)
        evs = self.evaluate_many([(r, "holdout") for r in short] + [(Recipe("single", (m,)), "holdout")
                                                                    for m in [*models, "base"]], base_general)
        merges = [{"recipe": r, "eval": e} for r, e in zip(short, evs, strict=False)]
        singles = dict(zip(models, evs[len(short):len(short) + len(models)], strict=True))
        base_e = evs[-1]
        d_eval = merges[0]["eval"]
        for x in merges:
            x["p_better"] = None if x is merges[0] else self.p_better(x["eval"], d_eval)
        better = [x for x in merges[1:] if x["p_better"] >= CONFIDENCE]
        win = max(better, key=lambda x: x["eval"].objective) if better else merges[0]
        chosen: Recipe = win["recipe"]
        oracle = {t.name: max(singles, key=lambda m: singles[m].scores[t.name]) for t in self.spec.tasks}
        route_mean = self.task_mean({t: singles[m].scores[t] for t, m in oracle.items()})
        merge_mean = self.task_mean(win["eval"].scores)
        best_single = max(singles, key=lambda m: singles[m].objective)
        routing, measured, router_mean = None, None, None
        if route_mean - merge_mean > self.route_margin:  # the upper bound says a router might win: measure one
            from modelmix.agent.routing import measure_router, router_config

            cfg = router_config(self.spec, oracle)
            try:
                measured = measure_router(cfg, self.spec, singles)
                router_mean = self.task_mean(measured["scores"])
            except (ModelmixError, ImportError, OSError) as e:  # no encoder here: the estimate alone, said so
                measured = {"error": str(e)[:300]}
            if (router_mean if router_mean is not None else route_mean) - merge_mean > self.route_margin:
                routing = {"routes": oracle, "route_mean": route_mean, "merge_mean": merge_mean,
                           "router_mean": router_mean, "config": cfg}
        holdout = {"chosen": chosen.describe(), "objective": win["eval"].objective, "scores": win["eval"].scores,
                   "general": win["eval"].general, "base": {"scores": base_e.scores, "general": base_e.general,
                                                            "objective": base_e.objective},
                   "singles": {m: {"scores": e.scores, "general": e.general, "objective": e.objective}
                               for m, e in singles.items()},
                   "default": default.describe(), "confidence": CONFIDENCE,
                   "shortlist": [{"recipe": x["recipe"].describe(), "objective": x["eval"].objective,
                                  "scores": x["eval"].scores, "general": x["eval"].general,
                                  "p_better": x["p_better"]} for x in merges],
                   "uniform_soup": soup.describe(), "best_single": best_single,
                   "routing_estimate": route_mean, "merge_task_mean": merge_mean,
                   "router_measured": None if measured is None else {**measured, "task_mean": router_mean}}
        report["holdout"] = holdout
        report["decision"] = _decision_text(chosen, win["eval"], singles[best_single], best_single, base_e, route_mean,
                                            merge_mean, routing, self.route_margin, measured, router_mean)
        challengers = merges[1:]
        if win is merges[0]:
            top = max(challengers, key=lambda x: x["p_better"], default=None)
            why = (f" It is the best of the analysis' proposals on the dev part; no searched recipe beat it on the "
                   f"held-out rows with {100 * CONFIDENCE:.0f} % confidence" + (
                       f" (the closest: {top['recipe'].describe()}, better with probability {top['p_better']:.2f})"
                       if top else "") + ".")
        else:
            why = (f" It beat the default proposal {default.describe()} on the held-out rows with probability "
                   f"{win['p_better']:.2f} (paired bootstrap).")
        report["decision"] += why
        report["chosen"] = chosen.to_dict()
        self.log(f"decide: {len(short)} recipes and {len(models) + 1} single models on the held-out part")
        return chosen, holdout, routing

    def p_better(self, a: Evaluation, b: Evaluation, n: int = 2000) -> float:
        """P(a's held-out objective > b's) by a paired bootstrap over each task's rows (both models scored on
        the same rows; tasks resampled independently, weighted as in the objective; a task without per-row
        results, and the general-loss penalty, count as their point difference). Ties are not wins."""
        import numpy as np

        rng = np.random.default_rng(self.spec.seed)
        w = sum(t.weight for t in self.spec.tasks)
        total = np.full(n, (a.objective - self.task_mean(a.scores)) - (b.objective - self.task_mean(b.scores)))
        for t in self.spec.tasks:
            ha, hb = (a.hits or {}).get(t.name), (b.hits or {}).get(t.name)
            if ha is None or hb is None:
                total += t.weight * (a.scores[t.name] - b.scores[t.name]) / w
                continue
            d = np.asarray(ha, dtype=np.float64) - np.asarray(hb, dtype=np.float64)
            total += t.weight * d[rng.integers(0, len(d), size=(n, len(d)))].mean(1) / w
        return float((total > 1e-12).mean())

    # 5. act -----------------------------------------------------------
    def _act(self, chosen: Recipe, out: Path, overwrite: bool, report: dict[str, Any], routing: Any) -> None:
        import yaml

        from modelmix.agent.report import write_report
        from modelmix.api import merge
        from modelmix.config import load_config

        cfg = load_config(chosen.to_mergekit(self.spec.base))
        protect = [("examples", t.path) for t in self.spec.tasks]
        merge(cfg, out, overwrite=overwrite, protect=protect)
        (out / "recipe.yml").write_text(cfg.to_yaml())
        if routing is not None:
            (out / "router.yml").write_text(yaml.safe_dump(routing["config"], sort_keys=False))
            report["router_config"] = str(out / "router.yml")
        write_report(report, out)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _pareto(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials no other trial beats on both task mean (higher) and general loss (lower)."""
    pts = [p for p in points if p.get("general") is not None]
    front = []
    for p in pts:
        pm = sum(p["scores"].values()) / len(p["scores"])
        dominated = False
        for q in pts:
            qm = sum(q["scores"].values()) / len(q["scores"])
            if q is not p and qm >= pm and q["general"] <= p["general"] and (qm > pm or q["general"] < p["general"]):
                dominated = True
                break
        if not dominated:
            front.append({"trial": p["trial"], "recipe": p["recipe"], "task_mean": pm, "general": p["general"]})
    return sorted(front, key=lambda p: -p["task_mean"])


def _decision_text(chosen: Recipe, e: Evaluation, single: Evaluation, single_name: str, base: Evaluation,
                   route_mean: float, merge_mean: float, routing: Any, margin: float,
                   measured: dict[str, Any] | None = None, router_mean: float | None = None) -> str:
    s = (f"Chose {chosen.describe()}: held-out objective {e.objective:.3f} (task mean {merge_mean:.3f}"
         + (f", general loss {e.general:.3f} vs the base's {base.general:.3f}" if e.general is not None
            and base.general is not None else "") + f"), against {single.objective:.3f} for the best single "
         f"candidate ({Path(single_name).name}) and {base.objective:.3f} for the base.")
    if router_mean is not None and measured is not None:
        got = (f" A router sending each query by its text alone (the config the agent would write) scores "
               f"{router_mean:.3f} on the held-out part ({100 * measured['routed_right']:.0f} % of the queries "
               f"sent to their own task's route; a perfect router, {route_mean:.3f}),")
    elif measured is not None:
        got = (f" The router could not be measured here ({measured['error']}); a perfect router would score "
               f"{route_mean:.3f},")
    else:
        got = None
    if routing is not None:
        s += (got or f" Routing would do better: sending each task to its best candidate scores {route_mean:.3f},")
        s += (f" against the merge's {merge_mean:.3f} (more than {margin:.2f} apart), so the agent recommends "
              "routing and wrote router.yml beside the model.")
    elif got is not None:
        s += got + f" not more than {margin:.2f} above the merge's {merge_mean:.3f}, so one merged model is the better deal."
    else:
        s += (f" Routing each task to its best candidate would score {route_mean:.3f}, within {margin:.2f} of the "
              "merge, so one merged model is the better deal.")
    return s
