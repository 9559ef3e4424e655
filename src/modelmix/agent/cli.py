"""``modelmix agent run`` and ``agent history``: thin wrappers over :class:`modelmix.agent.Agent`."""

from __future__ import annotations

import json
import sys

import click


@click.group("agent")
def agent() -> None:
    """The merge agent: choose which candidates to merge and how, on your examples; remember every trial."""


@agent.command("run")
@click.option("--base", required=True, type=click.Path(file_okay=False), help="The base model directory.")
@click.option("--models", required=True, multiple=True, type=click.Path(file_okay=False),
              help="Candidate model directories (fine-tunes of the base); repeat or list several.")
@click.option("--tasks", "tasks", required=True, multiple=True, metavar="NAME=PATH[:METRIC[:WEIGHT]]",
              help="A task's JSONL examples ({'input','output'} rows; metric exact_match or choice).")
@click.option("--general", type=click.Path(dir_okay=False), default=None,
              help="JSONL rows whose token loss measures general ability; the merge may exceed the base's by "
                   "--general-tolerance at most.")
@click.option("--general-tolerance", type=float, default=0.05, show_default=True)
@click.option("--budget", type=int, default=50, show_default=True, help="Search trials (Optuna).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--db", default="agent.db", show_default=True, help="Trial store: an SQLite file or an SQLAlchemy URL.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where the chosen model is written.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier output directory.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line.")
def run_cmd(base: str, models: tuple[str, ...], tasks: tuple[str, ...], general: str | None,
            general_tolerance: float, budget: int, seed: int, db: str, out: str, overwrite: bool, device: str,
            as_json: bool) -> None:
    """Perceive, select, search, confirm on held-out examples, write the model, its recipe and a report.

    Example: modelmix agent run --base zoo/base --models zoo/experts/* --tasks add=add.jsonl
    --tasks rev=rev.jsonl --general general.jsonl --budget 50 --out merged
    """
    from pathlib import Path

    from modelmix.agent import Agent, TrialStore, load_spec, parse_task

    spec = load_spec(base, list(models), [parse_task(t) for t in tasks], general=general, budget=budget,
                     seed=seed, general_tolerance=general_tolerance)
    log = (lambda s: None) if as_json else (lambda s: click.echo(s, err=True))
    with TrialStore(db) as store:
        res = Agent(spec, store, device=device, log=log).run(Path(out), overwrite=overwrite)
    if as_json:
        click.echo(json.dumps({"run": res.run, "chosen": res.chosen.to_dict(), "holdout": res.holdout,
                               "recommend_routing": res.recommend_routing, "trials": res.trials,
                               "pruned": res.pruned, "evaluations": res.evaluations, "seconds": res.seconds}))
        return
    click.echo(res.report["decision"])
    click.echo(f"wrote {out} (recipe.yml, agent_report.md, agent_report.json)")


@agent.command("history")
@click.option("--db", default="agent.db", show_default=True, help="The trial store of earlier runs.")
@click.option("--run", "run_id", default=None, help="Only this run.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per trial.")
def history_cmd(db: str, run_id: str | None, as_json: bool) -> None:
    """Every evaluation of every run: recipe, fidelity, scores, objective, seconds."""
    from pathlib import Path

    from modelmix.agent import TrialStore
    from modelmix.agent.space import Recipe
    from modelmix.errors import InputError

    if "://" not in db and not Path(db).is_file():
        raise InputError(f"--db {db}: no trial store there (run `modelmix agent run` first).")
    with TrialStore(db) as store:
        rows = store.history(run_id)
    for r in rows:
        if as_json:
            sys.stdout.write(json.dumps(r) + "\n")
            continue
        rec = r["recipe"]
        desc = rec["models"][0] if rec["method"] == "single" else Recipe.from_dict(rec).describe()
        obj = "–" if r["objective"] is None else f"{r['objective']:.3f}"
        click.echo(f"{r['run']} {r['fidelity']:8s} {obj:>7s} {r['seconds']:6.2f}s  {desc}")
