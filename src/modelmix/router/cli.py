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
    rows = read_labeled(data, [x.name for x in cfg.routes])  # before the encoder loads
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
