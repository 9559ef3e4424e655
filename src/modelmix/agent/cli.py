"""``modelmix agent run`` and ``agent history``: thin wrappers over :class:`modelmix.agent.Agent`."""

from __future__ import annotations

import json
import sys

import click

from modelmix.cli_common import device_option


@click.group("agent")
def agent() -> None:
    """The merge agent: choose which candidates to merge and how, on your examples; remember every trial."""


@agent.command("run")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="An agent YAML (base, models, tasks, general, general_tolerance, budget, seed, db, out, executor, "
                   "workers, batch, layer_groups); flags "
                   "given on the command line override it.")
@click.option("--base", type=click.Path(file_okay=False), default=None, help="The base model directory.")
@click.option("--models", multiple=True, type=click.Path(file_okay=False),
              help="Candidate model directories (fine-tunes of the base); repeat the flag for each.")
@click.option("--tasks", "tasks", multiple=True, metavar="NAME=PATH[:METRIC[:WEIGHT]]",
              help="A task's JSONL examples ({'input','output'} rows; metric exact_match or choice).")
@click.option("--general", type=click.Path(dir_okay=False), default=None,
              help="JSONL rows whose token loss measures general ability; the merge may exceed the base's by "
                   "--general-tolerance at most.")
@click.option("--general-tolerance", type=float, default=None, help="Default 0.05 (5 %).")
@click.option("--budget", type=int, default=None, help="Search trials (Optuna); default 50.")
@click.option("--seed", type=int, default=None, help="Default 0.")
@click.option("--db", default=None, help="Trial store: an SQLite file or an SQLAlchemy URL; default agent.db.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Where the chosen model is written.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier output directory.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="Where candidates are evaluated: this process (default) or Ray workers (pip install "
                   "'modelmix[ray]'; a local cluster unless --ray-address or RAY_ADDRESS names one).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Ray workers, each holding the skeleton and the opened candidates (default: the cluster's CPUs).")
@click.option("--ray-address", default=None, help="A running Ray cluster to join (e.g. auto, or ray://host:10001).")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Trials asked at once and evaluated together (default: the number of workers; a seed gives "
                   "the same choice for the same batch on either executor).")
@click.option("--layer-groups", type=click.IntRange(min=1), default=None,
              help="Per-layer-group weights: each candidate's weight becomes a gradient of this many values over "
                   "the layers (mergekit's weight: [a, b, c]); default 1, one weight per candidate.")
@device_option("Where candidates are merged and scored.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line.")
def run_cmd(config: str | None, base: str | None, models: tuple[str, ...], tasks: tuple[str, ...],
            general: str | None, general_tolerance: float | None, budget: int | None, seed: int | None,
            db: str | None, out: str | None, overwrite: bool, executor: str | None, workers: int | None,
            ray_address: str | None, batch: int | None, layer_groups: int | None, device: str,
            as_json: bool) -> None:
    """Perceive, select, search, confirm on held-out examples, write the model, its recipe and a report.

    Example: modelmix agent run --base zoo/base --models zoo/experts/addition --models zoo/experts/reverse
    --tasks add=add.jsonl --tasks rev=rev.jsonl --general general.jsonl --budget 50 --out merged
    """
    from pathlib import Path

    from modelmix.agent import Agent, TrialStore, load_spec, parse_task
    from modelmix.agent.spec import load_agent_config
    from modelmix.errors import ConfigError

    kw: dict = {"general_tolerance": 0.05, "budget": 50, "seed": 0, "db": "agent.db", "general": None,
                "base": None, "models": [], "tasks": [], "out": None, "executor": "local", "workers": None,
                "batch": None, "layer_groups": 1}
    if config is not None:
        kw.update(load_agent_config(config))
    given = {"base": base, "general": general, "general_tolerance": general_tolerance, "budget": budget,
             "seed": seed, "db": db, "out": out, "models": list(models) or None, "executor": executor,
             "workers": workers, "batch": batch, "layer_groups": layer_groups,
             "tasks": [parse_task(t) for t in tasks] or None}
    kw.update({k: v for k, v in given.items() if v is not None})
    missing = [f"--{k}" for k in ("base", "models", "tasks", "out") if not kw[k]]
    if missing:
        raise ConfigError(f"agent run needs {', '.join(missing)} (as flags or in --config).")
    spec = load_spec(kw["base"], kw["models"], kw["tasks"], general=kw["general"], budget=kw["budget"],
                     seed=kw["seed"], general_tolerance=kw["general_tolerance"], layer_groups=kw["layer_groups"])
    log = (lambda s: None) if as_json else (lambda s: click.echo(s, err=True))
    with TrialStore(kw["db"]) as store:
        res = Agent(spec, store, device=device, log=log, executor=kw["executor"], workers=kw["workers"],
                    address=ray_address, batch=kw["batch"]).run(Path(kw["out"]), overwrite=overwrite)
    if as_json:
        click.echo(json.dumps({"run": res.run, "chosen": res.chosen.to_dict(), "holdout": res.holdout,
                               "recommend_routing": res.recommend_routing, "trials": res.trials,
                               "pruned": res.pruned, "evaluations": res.evaluations, "seconds": res.seconds}))
        return
    click.echo(res.report["decision"])
    click.echo(f"wrote {kw['out']} (recipe.yml, agent_report.md/.html/.json"
               + (", router.yml" if res.recommend_routing else "") + ")")


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
