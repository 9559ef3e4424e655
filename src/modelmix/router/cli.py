"""``modelmix route classify`` and ``route eval``: thin wrappers over :class:`modelmix.router.Router`."""

from __future__ import annotations

import json

import click

from modelmix.router.config import STRATEGIES


@click.group("route")
def route() -> None:
    """Classify queries over a router config's routes, and evaluate the classifier."""


@route.command("classify")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("query")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=None,
              help="Override the config's strategy for this decision.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def classify(config: str, query: str, strategy: str | None, as_json: bool) -> None:
    """The calibrated distribution over the routes (and "none"), the strategy, the models, and why.

    Loads the encoder only, never the generation models.

    Example: modelmix route classify router.yml "what is 12 + 30"
    """
    from modelmix.router import Router

    r = Router.from_config(config)
    d = r.route(query, strategy=strategy)
    if as_json:
        click.echo(json.dumps({"query": query, **d.to_dict(), "thresholds": r.thresholds}))
        return
    click.echo(f"query: {query}")
    for name, p in d.classification.distribution.items():
        s = d.classification.scores.get(name)
        extra = f"  (similarity {s:.3f}, threshold {r.thresholds[name]:.2f})" if s is not None else ""
        click.echo(f"  {name:<20} {p:7.1%}{extra}")
    w = ", ".join(f"{m} {x:.2f}" for m, x in zip(d.models, d.weights, strict=True))
    click.echo(f"strategy: {d.strategy}; models: {w}")
    click.echo(f"why: {d.why}")


@route.command("eval")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help='Labelled JSONL rows {"query": ..., "route": ...} (route: a route name or "none").')
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line.")
def eval_cmd(config: str, data: str, as_json: bool) -> None:
    """Top-1 accuracy, macro-F1, expected calibration error and latency of the classifier on labelled queries.

    Example: modelmix route eval router.yml --data labelled.jsonl --json
    """
    from modelmix.router import Router
    from modelmix.router.config import load_router_config
    from modelmix.router.evaluate import evaluate, read_labeled

    cfg = load_router_config(config)
    rows = read_labeled(data, [name for name, _, _ in cfg.intents()])  # before the encoder loads
    r = Router(cfg)
    m = evaluate(r.classify, rows)
    if as_json:
        click.echo(json.dumps(m))
        return
    cal = r.classifier.calibration
    click.echo(f"{m['n']} queries: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}, ECE {m['ece']:.3f}, "
               f"latency p50 {m['p50_ms']:.1f} ms, p95 {m['p95_ms']:.1f} ms")
    click.echo(f"calibration: temperature {cal.temperature:.4f}, none bias {cal.none_bias:.3f}, leave-one-out "
               f"accuracy on the utterances {cal.loo_accuracy:.3f} ({cal.n_utterances} utterances, "
               f"{cal.n_background} off-topic sentences)")
    if r.fit_report is not None:
        f = r.fit_report
        click.echo(f"  then fitted on {f['n']} labelled queries ({cfg.calibration}): on them accuracy "
                   f"{f['after']['accuracy']:.3f}, ECE {f['before']['ece']:.3f} -> {f['after']['ece']:.3f}")


@route.command("stats")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(config: str, as_json: bool) -> None:
    """Per route: traffic, feedback and mean score per model (from the feedback store), and what the learner
    believes (each model's posterior mean: who serves the route next).

    Example: modelmix route stats router.yml --json
    """
    from modelmix.router.config import load_router_config
    from modelmix.router.learner import Learner
    from modelmix.router.store import Store

    cfg = load_router_config(config)
    with Store(cfg.store_url()) as s:
        per = s.stats()
        n = s.feedback_events()
        learner = Learner.for_config(cfg)
        for ev in s.events_since(0):
            learner.update(*ev[1:])
    beliefs, strategies = learner.beliefs(), learner.strategy_beliefs()
    routes = {r.name: per.get(r.name, {"interactions": 0, "feedback": 0, "mean_score": None, "models": {}})
              for r in cfg.routes}
    for k in per:
        routes.setdefault(k, per[k])  # e.g. "none", or a route since removed from the config
    for k, b in beliefs.items():
        routes[k]["learner"] = b  # posterior mean per model: who serves this route next
        routes[k]["strategies"] = strategies[k]  # per multi-model strategy: how well it has done here
    if as_json:
        click.echo(json.dumps({"routes": routes, "feedback_events": n}))
        return
    click.echo(f"{'route':<20} {'traffic':>8} {'feedback':>9} {'mean score':>11}  models (feedback, mean score)")
    for name, r in routes.items():
        ms = ", ".join(f"{m} ({v['feedback']}, {v['mean_score']:.2f})" for m, v in r["models"].items()) or "-"
        mean = "-" if r["mean_score"] is None else f"{r['mean_score']:.3f}"
        click.echo(f"{name:<20} {r['interactions']:>8} {r['feedback']:>9} {mean:>11}  {ms}")
        if "learner" in r:
            click.echo(" " * 22 + "learner: " + ", ".join(f"{m} {v['mean']:.2f}" for m, v in r["learner"].items()))
        tried = {k: v for k, v in r.get("strategies", {}).items() if v["feedback"] > 0}
        if tried:
            click.echo(" " * 22 + "strategies: " + ", ".join(f"{k} {v['mean']:.2f} ({v['feedback']:.1f})"
                                                            for k, v in tried.items()))
    click.echo(f"{n} feedback events in {cfg.store_url()}")


@route.command("export")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help='JSONL file of {"input","output","score"} examples (for modelmix cocktail or the agent).')
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def export(config: str, out: str, overwrite: bool) -> None:
    """Write the feedback as {"input","output","score"} examples, ready to re-weight a merge.

    Example: modelmix route export router.yml --out feedback.jsonl
    """
    from pathlib import Path

    from modelmix.io.outputs import check_output_file, input_list, write_file_atomic
    from modelmix.router.config import load_router_config
    from modelmix.router.store import Store

    cfg = load_router_config(config)
    store = cfg.store_url()
    files = [config, store.removeprefix("sqlite:///") if store.startswith("sqlite:///") else None]
    models = [p for p in (cfg.model_path(m) for m in cfg.models) if p is not None]
    check_output_file(Path(out), inputs=input_list(models, files, "router config or store"), overwrite=overwrite,
                      what="--out")
    with Store(store) as s:
        rows = list(s.export())
    write_file_atomic(Path(out), "".join(json.dumps(r) + "\n" for r in rows), what="--out")
    click.echo(f"{len(rows)} examples written to {out}")


@click.command("serve")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="TCP port.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="uvicorn worker processes sharing the port and the feedback store.")
def serve_cmd(config: str, host: str, port: int, workers: int) -> None:
    """Serve the router: POST /v1/chat/completions (model "router" or "router-<strategy>"), /v1/feedback,
    /v1/models, /healthz, /metrics.

    Example: modelmix serve router.yml --port 8000
    """
    from modelmix.router.serve import serve

    serve(config, host, port, workers)
