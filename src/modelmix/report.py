"""`modelmix zoo report`: merge the zoo's decoder experts with every method and measure each merge.

Why: a merge method is only as good as what it does to real fine-tunes. The zoo gives us experts that
share a base and each master one task, so merging them and scoring the result on every task (plus the
`general` text the base was pretrained on) shows, on one table, how much task skill each method keeps and
how much general ability it gives up. Everything is measured, never copied from the manifest: base,
experts and merges are scored by the same harness on the same split.

Speed: the experts are read once (:class:`modelmix.candidates.Candidates`) and every merge is built in
memory, tensor by tensor, straight into one model skeleton, so nothing is written or re-read
(``--write-dir`` additionally writes each merge through the streaming engine).

Metrics: each decoder task's own metric (``exact_match`` for the zoo's tasks, as a fraction in [0, 1];
shown as % in the table) and, for the ``general`` task, ``loss`` in nats per token with the zoo's own
format (no separator between input and output, token-mean reduction: the convention of ``zoo.json``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from modelmix.cli_common import Command, device_option
from modelmix.errors import ConfigError, InputError, OutputError, did_you_mean
from modelmix.eval.zoo_eval import score_tasks

if TYPE_CHECKING:
    import torch

    from modelmix.candidates import Candidates
    from modelmix.eval.models import EvalModel
    from modelmix.zoo.manifest import Zoo

# metrics where higher is better (a task's "main" score); everything else (loss) is lower-is-better
_ACCURACY_METRICS = {"exact_match": "exact_match", "choice": "accuracy"}


@dataclass(frozen=True)
class Recipe:
    """One merge row: a registered method at fixed, documented default parameters.

    ``pair``: merge only the first two experts, the first acting as the base (SLERP interpolates two
    models; mergekit's slerp takes the first as ``base_model``). Otherwise the experts are merged with the
    zoo's base model as ``base`` (methods that take no base simply ignore it).
    """

    method: str
    params: Mapping[str, Any]
    why: str
    pair: bool = False


# Defaults from each method's paper (or mergekit's documented examples); never tuned on the zoo.
RECIPES: dict[str, Recipe] = {
    "soup": Recipe("soup", {}, "uniform average of all experts (Wortsman et al. 2022, uniform soup)"),
    "task_arithmetic": Recipe(
        "task_arithmetic", {"weight": 0.3},
        "base + 0.3·Σ task vectors; λ≈0.3–0.4 is the usual pick of Ilharco et al. 2023 (λ=1 is too strong)"),
    "ties": Recipe(
        "ties", {"weight": 1.0, "density": 0.2, "normalize": True},
        "keep the top 20 % of each task vector, elect signs, disjoint mean, λ=1 (Yadav et al. 2023 defaults)"),
    "dare_ties": Recipe(
        "dare_ties", {"weight": 1.0, "density": 0.5, "normalize": True},
        "DARE (drop 50 % at random, rescale by 1/0.5; Yu et al. 2024) then TIES sign election and "
        "disjoint mean; merge seed 0"),
    "breadcrumbs": Recipe(
        "breadcrumbs", {"weight": 0.3, "density": 0.9, "gamma": 0.01},
        "drop the largest 1 % and the smallest 9 % of each task vector, then task arithmetic with 0.3 "
        "(Davari & Belilovsky 2024: β≈0.9, γ=0.01)"),
    "slerp": Recipe("slerp", {"t": 0.5}, "spherical midpoint (t=0.5) of the first two experts", pair=True),
    "model_stock": Recipe(
        "model_stock", {}, "interpolation toward the base from the experts' angle (Jang et al. 2024)"),
    "subspace": Recipe(
        "subspace", {"weight": 1.0, "lambda": 1.0, "energy": 0.9},
        "TSV-Merge: per layer, each task's top singular directions (90 % energy), decorrelated, α=1 "
        "(Gargiulo et al. 2025)"),
}
DEFAULT_METHODS: tuple[str, ...] = tuple(RECIPES)


@dataclass
class Row:
    """One evaluated model: ``scores`` maps task -> its main metric (accuracy-like or loss)."""

    name: str
    kind: str  # "base" | "expert" | "merge" | "cocktail"
    scores: dict[str, float]
    detail: str = ""
    merge_seconds: float = 0.0
    eval_seconds: float = 0.0


@dataclass
class ZooReport:
    """All rows plus what they were measured on; renders itself as Markdown, JSON and a PNG."""

    zoo: Path
    preset: str
    split: str
    acc_tasks: list[str]  # tasks scored by exact match / accuracy (fractions in [0, 1])
    loss_tasks: list[str]  # tasks scored by loss (general ability)
    metrics: dict[str, str]  # task -> metric name
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    state_dicts: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ derived numbers
    def mean(self, row: Row) -> float:
        return sum(row.scores[t] for t in self.acc_tasks) / max(len(self.acc_tasks), 1)

    def expert_score(self, task: str) -> float | None:
        """The score of the expert trained on `task` on that task (None: no expert for it)."""
        return next((r.scores[task] for r in self.rows if r.kind == "expert" and r.detail == task), None)

    def normalized(self, row: Row) -> float:
        """Normalized accuracy: mean over tasks of row's score / that task's expert's score (the share of each
        expert's skill a merge keeps; tasks whose expert scores 0 are left out)."""
        parts = [row.scores[t] / e for t in self.acc_tasks if (e := self.expert_score(t))]
        return sum(parts) / len(parts) if parts else float("nan")

    def _rank_key(self, row: Row) -> tuple[float, float]:
        """Task mean, ties broken by the lower general loss (the model that gave up less)."""
        return self.mean(row), -sum(row.scores[t] for t in self.loss_tasks)

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def summary(self) -> str:
        """The "what the table shows" paragraph, computed from the rows (no hand-written claims)."""
        base = next((r for r in self.rows if r.kind == "base"), None)
        experts = [r for r in self.rows if r.kind == "expert"]
        merges = [r for r in self.rows if r.kind == "merge"]
        if not merges:
            return "No merge was evaluated."
        pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
        best = max(merges, key=self._rank_key)
        worst = min(merges, key=self._rank_key)
        parts = [f"Best merge by task mean (ties: lower loss): **{best.name}** at {pct(self.mean(best))} "
                 f"(worst: {worst.name}, {pct(self.mean(worst))})."]
        if any(r.kind == "expert" for r in self.rows):
            by_norm = max(merges, key=self.normalized)
            parts.append(f"Normalized accuracy (the share of each expert's skill kept, averaged over tasks): best "
                         f"**{by_norm.name}** at {self.normalized(by_norm):.2f}, worst "
                         f"{min(merges, key=self.normalized).name} at {min(map(self.normalized, merges)):.2f}.")
        if base is not None:
            every = [m.name for m in merges if all(m.scores[t] > base.scores[t] for t in self.acc_tasks)]
            parts.append(f"{len(every)} of {len(merges)} merges beat the base on every task"
                         + (f" ({', '.join(every)})." if every else "."))
            above = [m.name for m in merges if self.mean(m) > self.mean(base)]
            parts.append(f"The base model averages {pct(self.mean(base))}; {len(above)} of {len(merges)} merges "
                         "score above it" + (f" ({', '.join(above)})." if above else "."))
        if experts:
            best_exp = max(experts, key=self._rank_key)
            own = [r.scores[r.detail] for r in experts if r.detail in r.scores]
            ref = f"the best single expert averages {pct(self.mean(best_exp))} ({best_exp.name})"
            if own:
                ref += f", and the experts score {pct(sum(own) / len(own))} on average on their own task " \
                       "(the ceiling a merge would reach if it kept every skill)"
            parts.append(ref[0].upper() + ref[1:] + ".")
            beat = [m.name for m in merges if self.mean(m) > self.mean(best_exp)]
            parts.append(f"{len(beat)} of {len(merges)} merges beat the best single expert's mean"
                         + (f" ({', '.join(beat)})." if beat else "."))
        for lt in self.loss_tasks:
            if base is None:
                break
            b = base.scores[lt]
            ranked = sorted(merges, key=lambda r: r.scores[lt])
            kept = [m.name for m in merges if m.scores[lt] <= b]
            exp_txt = ""
            if experts:
                e = sum(r.scores[lt] for r in experts) / len(experts)
                exp_txt = f"; the experts average {e:.3f} ({_rel(e, b)})"
            parts.append(
                f"General ability ({lt} loss, lower is better): base {b:.3f}{exp_txt}; the best-retaining merge "
                f"is {ranked[0].name} at {ranked[0].scores[lt]:.3f} ({_rel(ranked[0].scores[lt], b)}) and the "
                f"worst {ranked[-1].name} at {ranked[-1].scores[lt]:.3f} ({_rel(ranked[-1].scores[lt], b)})"
                + ("" if best is ranked[0] else
                   f"; the best merge by task mean, {best.name}, is at {best.scores[lt]:.3f} "
                   f"({_rel(best.scores[lt], b)})")
                + f". {len(kept)} of {len(merges)} merges are at or below the base's {lt} loss.")
        return " ".join(parts)

    # ------------------------------------------------------------------ renderings
    def to_markdown(self) -> str:
        """The results table (exact match in %, loss in nats/token), the recipes used, and the summary."""
        head = ["model", *self.acc_tasks, "task mean", "normalized", *(f"{t} (loss ↓)" for t in self.loss_tasks)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            label = f"**{r.name}**" if r.kind in ("merge", "cocktail") else r.name
            cells = [f"{100 * r.scores[t]:.1f}" for t in self.acc_tasks]
            cells.append(f"{100 * self.mean(r):.1f}")
            cells.append(f"{self.normalized(r):.2f}" if r.kind in ("merge", "cocktail") else "")
            cells += [f"{r.scores[t]:.3f}" for t in self.loss_tasks]
            lines.append("| " + " | ".join([label, *cells]) + " |")
        metric_names = sorted({self.metrics[t] for t in self.acc_tasks})
        out = [
            f"Zoo `{self.preset}` preset, `{self.split}` split. Task columns: {' / '.join(metric_names)} in %; "
            f"task mean over {len(self.acc_tasks)} tasks; normalized = mean over tasks of the score / that task's "
            "expert's score; loss in nats per token (zoo format, token mean).",
            "",
            *lines,
            "",
            "Merge recipes (parameters; inputs): why these defaults",
            "",
        ]
        for r in self.rows:
            if r.kind in ("merge", "cocktail"):
                out.append(f"* **{r.name}** — {r.detail} (merged in {r.merge_seconds:.2f} s)")
        out += ["", "**What the table shows.** " + self.summary(), ""]
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        """What `zoo report --json` prints (one line): every row's scores and each merge's normalized
        accuracy (``cocktail`` rows, when asked for, under their own key)."""
        def num(x: float) -> float | None:  # JSON has no NaN (no expert scored above 0)
            return None if x != x else x

        d: dict[str, Any] = {"rows": {r.name: dict(r.scores) for r in self.rows},
                             "normalized": {r.name: num(self.normalized(r)) for r in self.rows if r.kind == "merge"}}
        cock = {r.name: num(self.normalized(r)) for r in self.rows if r.kind == "cocktail"}
        if cock:
            d["cocktail"] = cock
        return d

    def plot(self, path: str | Path) -> Path:
        """Grouped bars of per-task exact match per model, with the general loss as markers (right axis)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from modelmix.io.outputs import check_png, save_png

        check_png(path)
        n, k = len(self.rows), len(self.acc_tasks)
        fig, ax = plt.subplots(figsize=(max(8.0, 0.75 * n + 2), 4.8))
        try:
            width = 0.8 / max(k, 1)
            for j, t in enumerate(self.acc_tasks):
                xs = [i + (j - (k - 1) / 2) * width for i in range(n)]
                ax.bar(xs, [100 * r.scores[t] for r in self.rows], width, label=t, color=f"C{j}")
            ax.scatter(range(n), [100 * self.mean(r) for r in self.rows], marker="_", s=400, color="black",
                       zorder=3, label="task mean")
            for i, r in enumerate(self.rows):
                if r.kind != "expert":
                    ax.axvspan(i - 0.45, i + 0.45, color="grey" if r.kind == "base" else "tab:blue",
                               alpha=0.06, lw=0)
            ax.set_xticks(range(n))
            ax.set_xticklabels([r.name.removeprefix("experts/") + (" (expert)" if r.kind == "expert" else "")
                                for r in self.rows], rotation=35, ha="right")
            ax.set_ylabel("exact match (%)")
            ax.set_ylim(0, 105)
            handles, labels = ax.get_legend_handles_labels()
            if self.loss_tasks:
                ax2 = ax.twinx()
                for j, t in enumerate(self.loss_tasks):
                    h = ax2.plot(range(n), [r.scores[t] for r in self.rows], "D", color="black" if j == 0 else f"C{k + j}",
                                 mfc="white", ms=7, label=f"{t} loss (right)")
                    handles += h
                    labels.append(f"{t} loss (right)")
                ax2.set_ylabel("loss (nats/token, lower is better)")
                ax2.set_ylim(0, max(r.scores[t] for r in self.rows for t in self.loss_tasks) * 1.15)
            ax.legend(handles, labels, fontsize=8, ncol=min(len(labels), 4), loc="upper center",
                      bbox_to_anchor=(0.5, 1.2), frameon=False)
            ax.set_title(f"zoo {self.preset}: experts and merges ({self.split} split)", pad=45)
            fig.tight_layout()
            p = save_png(fig, path, dpi=110, what="chart")
        finally:
            plt.close(fig)
        return p


def _rel(x: float, ref: float) -> str:
    return f"{100 * (x - ref) / ref:+.1f} % vs base" if ref else "n/a"


def check_methods(methods: Sequence[str] | None) -> list[str]:
    """Resolve ``--methods`` (names or comma lists) against the report's recipes; ConfigError otherwise."""
    if not methods:
        return list(DEFAULT_METHODS)
    out: list[str] = []
    for item in methods:
        for m in (s.strip() for s in str(item).split(",")):
            if not m:
                continue
            if m not in RECIPES:
                raise ConfigError(f"The zoo report has no recipe for method {m!r}; choose from "
                                  f"{', '.join(RECIPES)}.{did_you_mean(m, RECIPES)}")
            if m not in out:
                out.append(m)
    if not out:
        raise ConfigError("--methods names no method.")
    return out


def _load_tasks(z: Zoo, split: str) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Decoder task -> (metric, examples), all validated before any model runs."""
    from modelmix.eval.data import METRIC_KIND, load_examples

    out: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    for t in z.decoder_tasks():
        metric = z.tasks[t]["metric"]
        if metric not in METRIC_KIND:
            raise InputError(f"Zoo task {t!r} has unknown metric {metric!r}.")
        f = z.split_path(t, split)
        if not f.is_file():
            if split == "train":  # general has no train split by design
                continue
            raise InputError(f"Zoo task {t!r} has no {split} split: {f} does not exist.")
        out[t] = (metric, load_examples(f, METRIC_KIND[metric]))
    if not any(m in _ACCURACY_METRICS for m, _ in out.values()):
        raise InputError(f"The zoo at {z.path} has no exact-match decoder task with a {split} split.")
    return out


def merge_recipe(recipe: Recipe, cands: Candidates, em: EvalModel) -> EvalModel:
    """Build one recipe's merge into the skeleton ``em`` (in memory, seed 0: what ``merge_tensors`` and
    ``--write-dir``'s engine merge compute from the same inputs). ``cands``: the experts, with the base."""
    if recipe.pair:
        if len(cands) < 2:
            raise InputError(f"{recipe.method} merges two experts; the zoo has {len(cands)}.")
        return cands.merge_into(em, recipe.method, models=[1], base=0, seed=0, **recipe.params)
    return cands.merge_into(em, recipe.method, seed=0, **recipe.params)


def _write_merge(name: str, recipe: Recipe, base_path: Path, expert_paths: Sequence[Path], out: Path,
                 overwrite: bool = False) -> None:
    """Write one merge through the streaming engine (same inputs and seed as the in-memory merge)."""
    from modelmix.api import merge
    from modelmix.methods import get_method

    m = get_method(recipe.method)
    if recipe.pair:
        base, models = expert_paths[0], [expert_paths[1]]
    else:
        base, models = base_path, list(expert_paths)
    per_model = {k: v for k, v in recipe.params.items() if m.param(k).scope == "model"}
    glob = {k: v for k, v in recipe.params.items() if k not in per_model}
    cfg: dict[str, Any] = {
        "merge_method": recipe.method,
        "models": [{"model": str(m), **({"parameters": dict(per_model)} if per_model else {})} for m in models],
        "dtype": "float32", "tokenizer_source": "base", "random_seed": 0,
    }
    if glob:
        cfg["parameters"] = dict(glob)
    if m.uses_base or recipe.pair:  # the engine would average a base that the method does not use
        cfg["base_model"] = str(base)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"Cannot create --write-dir {out}: {e}.") from None
    merge(cfg, out / name, overwrite=overwrite)


def report(
    zoo_dir: str | Path,
    *,
    methods: Sequence[str] | None = None,
    split: str = "test",
    out: str | Path | None = None,
    png: str | Path | None = None,
    write_dir: str | Path | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    keep_state_dicts: bool = False,
    intro: str | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    cocktail: int = 0,
) -> ZooReport:
    """Evaluate base, every decoder expert and every merge on every decoder task of the zoo at `zoo_dir`.

    `out` gets the Markdown (`intro` above the table), `png` the chart, `write_dir/<method>` each merged
    model (engine-written). `keep_state_dicts` keeps the merged float32 state dicts on the result (tests
    compare them to :func:`modelmix.api.merge_tensors`). Existing outputs are replaced only with
    `overwrite`. `cocktail` > 0 adds, per expert, the LM-Cocktail of expert and base with weights from
    that many validation examples of the expert's task. All arguments are checked before the first merge.
    """
    from modelmix.zoo.manifest import load_zoo

    t_start = time.perf_counter()
    say = log or (lambda s: None)
    names = check_methods(methods)
    if split not in ("train", "validation", "test"):
        raise ConfigError(f"Unknown split {split!r}; choose train, validation or test.")
    from modelmix.devices import check_device
    from modelmix.io.outputs import guard_inputs

    device = check_device(device)
    zoo_in = [("zoo", Path(zoo_dir))]
    from modelmix.io.outputs import check_output_file, check_png

    if out is not None:
        check_output_file(out, inputs=zoo_in, what="--out", overwrite=overwrite)
    if png is not None:
        check_png(png, zoo_in, overwrite=overwrite)
    if write_dir is not None:
        guard_inputs(write_dir, zoo_in, what="--write-dir", allow_contains=True)  # each merge is checked itself
        if Path(write_dir).exists() and not Path(write_dir).is_dir():
            raise OutputError(f"--write-dir {write_dir} exists and is not a directory.")
        clash = [n for n in names if (Path(write_dir) / n).exists()]
        if clash and not overwrite:
            raise OutputError(f"--write-dir {write_dir} already holds {', '.join(clash)}; pass --overwrite to "
                              f"replace those merges.")
    z = load_zoo(zoo_dir)
    experts = z.experts("decoder")
    if not experts:
        raise InputError(f"The zoo at {z.path} has no decoder experts to merge.")
    parents = {z.models[m].get("parent") for m in experts}
    if len(parents) != 1:
        raise InputError(f"The zoo's decoder experts have different parents ({sorted(map(str, parents))}); "
                         "task-vector merges need one shared base.")
    base_name = str(parents.pop())
    if any(RECIPES[n].pair for n in names) and len(experts) < 2:
        raise InputError("slerp merges two experts; the zoo has only one.")
    tasks = _load_tasks(z, split)
    few_shot: dict[str, list[dict[str, Any]]] = {}
    if cocktail:  # checked before the first merge, like every other argument
        if split == "validation":
            raise ConfigError("--cocktail takes its examples from the validation split; score another --split.")
        from modelmix.eval.data import load_examples

        for task in experts.values():
            f = z.split_path(task, "validation")
            if not f.is_file():
                raise InputError(f"--cocktail needs validation examples of {task!r}: {f} does not exist.")
            few_shot[task] = load_examples(f, "decoder")[:cocktail]
    # score the tasks the experts were trained for (not, e.g., the smol zoo's critic task) and general ability
    tasks = {t: v for t, v in tasks.items() if v[0] not in _ACCURACY_METRICS or t in experts.values()}
    acc = [t for t, (m, _) in tasks.items() if m in _ACCURACY_METRICS]
    rep = ZooReport(zoo=z.path, preset=z.preset, split=split, acc_tasks=acc,
                    loss_tasks=[t for t in tasks if t not in acc], metrics={t: m for t, (m, _) in tasks.items()})

    from modelmix.candidates import Candidates

    say(f"loading {base_name} and {len(experts)} experts from {z.path}")
    enames = list(experts)
    with Candidates([z.model_path(m) for m in enames], base=z.model_path(base_name),
                    purpose="Merging the zoo's experts") as cands:
        em = cands.skeleton(device)
        if em.kind != "decoder":
            raise InputError(f"{z.model_path(base_name)} is not a causal LM.")

        def evaluate(name: str, kind: str, detail: str = "", merge_s: float = 0.0) -> None:
            t0 = time.perf_counter()
            scores = score_tasks(em, tasks, batch_size)
            row = Row(name, kind, scores, detail, merge_s, time.perf_counter() - t0)
            rep.rows.append(row)
            cells = " ".join(f"{t}={v:.3f}" for t, v in scores.items())
            say(f"{name:<22} {cells}  ({row.eval_seconds:.1f}s)")

        evaluate(base_name, "base")  # the skeleton was loaded from the base: its weights are the base's
        for i, (name, task) in enumerate(experts.items()):
            cands.load(em, i)
            evaluate(name, "expert", detail=task)
        for n in names:
            r = RECIPES[n]
            t0 = time.perf_counter()
            merge_recipe(r, cands, em)
            secs = time.perf_counter() - t0
            params = ", ".join(f"{k} {v}" for k, v in r.params.items()) or "no parameters"
            inputs = (f"{enames[1]} onto {enames[0]} as base" if r.pair
                      else f"{len(enames)} experts onto `{base_name}`")
            label = f"{n} ({enames[0].split('/')[-1]}+{enames[1].split('/')[-1]})" if r.pair else n
            evaluate(label, "merge", f"`{r.method}` ({params}; {inputs}): {r.why}", secs)
            if keep_state_dicts:
                rep.state_dicts[label] = {k: v.detach().clone() for k, v in em.model.state_dict().items()}
            if write_dir is not None:
                _write_merge(n, r, z.model_path(base_name), [z.model_path(m) for m in enames], Path(write_dir),
                             overwrite)
                say(f"wrote {Path(write_dir) / n}")
        for i, (name, task) in enumerate(experts.items() if cocktail else ()):
            from modelmix.weighting.cocktail import compute_weights

            few = few_shot[task]
            t0 = time.perf_counter()
            w = compute_weights([z.model_path(name), z.model_path(base_name)], few, separator="",
                                device=device).weights
            cands.merge_into(em, "linear", models=[i, "base"], weight=list(w))
            evaluate(f"cocktail({task})", "cocktail",
                     f"LM-Cocktail of {name} and {base_name}, weights {w[0]:.3f}/{w[1]:.3f} = softmax(-loss/5) on "
                     f"{len(few)} {task} validation examples", time.perf_counter() - t0)
    rep.seconds = time.perf_counter() - t_start
    if out is not None:
        text = rep.to_markdown()
        if intro:
            text = intro.rstrip() + "\n\n" + text
        from modelmix.io.outputs import write_file_atomic

        write_file_atomic(out, text + f"\n_Report computed in {rep.seconds:.0f} s._\n", what="report")
    if png is not None:
        rep.plot(png)
    return rep


DOC_INTRO = """# Zoo report: merge methods on the zoo's experts

Every decoder expert of the zoo (one per task, all fine-tuned from the same base) is merged with each
method at its paper's default parameters (listed below the table; nothing is tuned on the zoo), and base,
experts and merges are all evaluated freshly by the same harness on the same split: exact match per task
(%), their mean, normalized accuracy (mean over tasks of the merge's score / that task's expert's score:
the share of each expert's skill the merge keeps) and the `general` loss (nats per token; lower = more
general ability kept). Merges are built in memory (`merge_tensors`) and swapped into one model skeleton.
The numbers are whatever was measured: a method that loses here loses in the table.

The zoo is recipe 4 (`src/modelmix/zoo/build.py`): a base that has seen every task but answers a fixed half
of the prompts in a chatty form ("it is 640"), and experts that are short fine-tunes sharpening one task
each, with replay of the base's pretraining data - the situation of real fine-tunes of a strong base. The
experiments that led to it: `docs/zoo_experiments.md`.

Regenerate (the build about 6 min, the report the time printed at the bottom, on a 2-core CPU):

```
modelmix zoo build --out zoo-default --preset default
modelmix zoo report --zoo zoo-default --out docs/zoo_report.md --png docs/zoo_report.png --doc --overwrite
```

![per-task exact match and general loss](zoo_report.png)
"""


@click.command(name="report", cls=Command)
@click.option("--zoo", "zoo_dir", required=True, type=click.Path(path_type=Path),
              help="A zoo directory (from `modelmix zoo build`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the Markdown report here (default: print the table).")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a bar chart of per-task exact match and general loss (PNG).")
@click.option("--split", type=click.Choice(["train", "validation", "test"]), default="test", show_default=True,
              help="Which split of every zoo task to score on.")
@click.option("--methods", multiple=True,
              help=f"Merges to run (repeat or comma-separate; default all: {', '.join(DEFAULT_METHODS)}).")
@click.option("--json", "as_json", is_flag=True,
              help='Print one JSON line: {"rows": {model: {task: score, ..., "general": loss}}, '
                   '"normalized": {merge: value}} (and "cocktail": {row: value} with --cocktail).')
@click.option("--cocktail", type=click.IntRange(0), default=0, show_default=True,
              help="Also LM-Cocktail each expert with the base, weights from this many validation examples.")
@click.option("--write-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write each merged model through the engine to DIR/<method> (--overwrite replaces one there).")
@click.option("--doc", is_flag=True, help="Put the docs page intro (title, regeneration command) above the table.")
@device_option("Evaluation device.")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Rows per forward pass (default: by tokens).")
@click.option("--quiet", "-q", is_flag=True, help="No per-model progress on stderr.")
@click.option("--overwrite", is_flag=True, help="Replace --out, --png and the merges in --write-dir if they exist.")
def report_cmd(zoo_dir: Path, out: Path | None, png: Path | None, split: str, methods: tuple[str, ...],
               as_json: bool, cocktail: int, write_dir: Path | None, doc: bool, device: str,
               batch_size: int | None, quiet: bool, overwrite: bool) -> None:
    """Merge the zoo's decoder experts with every method and score base, experts and merges on every task.

    Example: modelmix zoo report --zoo zoo-default --out docs/zoo_report.md --png docs/zoo_report.png --doc
    """
    rep = report(zoo_dir, methods=methods or None, split=split, out=out, png=png, write_dir=write_dir,
                 device=device, batch_size=batch_size, intro=DOC_INTRO if doc else None, overwrite=overwrite,
                 log=None if quiet else (lambda s: click.echo(s, err=True)), cocktail=cocktail)
    if as_json:
        click.echo(json.dumps(rep.to_json()))
    elif out is None:
        click.echo(rep.to_markdown())
    else:
        click.echo(f"wrote {out}" + (f" and {png}" if png else "") + f" ({rep.seconds:.0f} s)")
