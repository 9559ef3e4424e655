"""``modelmix eval``: score a model on JSONL files or on a model zoo.

    modelmix eval MODEL --examples FILE.jsonl [--examples ...] [--metric exact_match|loss|choice|retrieval ...]
                        [--json] [--batch-size N] [--device cpu|cuda]
    modelmix eval MODEL --zoo DIR [--split test] [--json]

Without ``--metric``, an encoder gets ``retrieval``; a decoder gets ``choice`` when the file's examples
have ``choices``, else ``exact_match`` and ``loss``. ``--json`` prints one object
``{"model": MODEL, "scores": {task: {metric: value}}}`` (task = file stem for ``--examples``); otherwise a plain
table. torch/transformers are imported only when the command runs, so ``--help`` stays instant. Bad
input raises a ``ModelmixError`` for the main CLI to report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from modelmix.cli_common import Command, device_option, examples_option, join_examples, separator_option
from modelmix.errors import InputError

METRIC_CHOICES = ("exact_match", "loss", "choice", "retrieval")


def _default_metrics(kind: str, data_file: Path) -> list[str]:
    if kind == "encoder":
        return ["retrieval"]
    try:
        with data_file.open(encoding="utf-8-sig") as fh:
            first = next((ln for ln in fh if ln.strip()), "")
        has_choices = "choices" in json.loads(first) if first else False
    except (OSError, ValueError, TypeError):
        has_choices = False  # let strict loading report the real problem
    return ["choice"] if has_choices else ["exact_match", "loss"]


def format_table(scores: dict[str, dict[str, float]]) -> str:
    """A plain, aligned ``task  metric  value`` table."""
    rows = [(task, m, f"{v:.4f}") for task, ms in scores.items() for m, v in ms.items()]
    head = ("task", "metric", "value")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    fmt = f"{{:<{widths[0]}}}  {{:<{widths[1]}}}  {{:>{widths[2]}}}"
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


@click.command("eval", cls=Command)
@click.argument("model", type=click.Path(path_type=Path))
@examples_option(required=False, multiple=True, alias="--data",
                 help="JSONL examples (repeatable); each file is one task, named by its file stem.")
@click.option("--zoo", type=click.Path(path_type=Path), help="Model zoo directory (with zoo.json).")
@click.option(
    "--split", default="test", show_default=True, type=click.Choice(["train", "validation", "test"]),
    help="Which split of every zoo task to score (with --zoo).",
)
@click.option(
    "--metric", "metrics", multiple=True, type=click.Choice(METRIC_CHOICES), help="Metric (repeatable)."
)
@click.option(
    "--lm-eval",
    "lm_eval_tasks",
    default=None,
    help="Comma-separated lm-evaluation-harness tasks (needs `pip install lm-eval`), e.g. hellaswag,arc_easy.",
)
@click.option("--limit", type=float, default=None, help="With --lm-eval: examples per task (or a fraction).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Rows per forward pass (default: auto)."
)
@device_option("Device to evaluate on.")
@click.option(
    "--loss-reduction",
    default="lmcocktail",
    show_default=True,
    type=click.Choice(["lmcocktail", "token", "example"]),
    help="How per-token losses are averaged (see docs/evaluation.md).",
)
@separator_option()
def eval_command(
    model: Path,
    examples: tuple[str, ...],
    examples_alias: tuple[str, ...],
    zoo: Path | None,
    split: str,
    metrics: tuple[str, ...],
    lm_eval_tasks: str | None,
    limit: float | None,
    as_json: bool,
    batch_size: int | None,
    device: str,
    loss_reduction: str,
    separator: str | None,
) -> None:
    """Evaluate MODEL (a model directory) on --examples files or on every matching task of a --zoo.

    Example: modelmix eval zoo/experts/addition --zoo zoo
    """
    data = [Path(p) for p in join_examples(examples, examples_alias, required=False)]
    if sum(map(bool, (data, zoo, lm_eval_tasks))) != 1:
        raise click.UsageError("Give one of --examples FILE (repeatable), --zoo DIR or --lm-eval TASKS.")
    if limit is not None and not lm_eval_tasks:
        raise click.UsageError("--limit applies to --lm-eval only (examples per lm-evaluation-harness task).")
    from modelmix.devices import check_device

    device = check_device(device)
    if lm_eval_tasks:
        from modelmix.eval.lm_eval_adapter import run_lm_eval

        tasks = [t.strip() for t in lm_eval_tasks.split(",") if t.strip()]
        lim = int(limit) if limit is not None and limit >= 1 else limit
        scores = run_lm_eval(model, tasks, device=device, batch_size=batch_size or "auto", limit=lim)
        _report(model, scores, as_json)
        return
    if zoo and metrics:
        raise click.UsageError("--metric applies to --examples; a zoo defines each task's metric.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only: never wait on the network
    from modelmix.eval.api import evaluate
    from modelmix.eval.data import METRIC_KIND, load_examples
    from modelmix.eval.models import EvalModel
    from modelmix.eval.zoo_eval import evaluate_zoo, read_manifest

    if zoo:
        read_manifest(zoo)  # fail on a bad zoo before loading the model
        em = EvalModel.from_pretrained(model, device=device)
        scores = evaluate_zoo(em, zoo, split, batch_size=batch_size, separator=separator)
    else:
        stems = [p.stem for p in data]
        if len(set(stems)) != len(stems):
            raise InputError(
                f"--examples files must have distinct names (used as task keys): {', '.join(stems)}."
            )
        from modelmix.eval.models import kind_of_dir, require_kind

        if Path(model).is_dir():  # a metric or file that does not fit the model: say so, not "missing field"
            for m in metrics:
                require_kind(model, "encoder" if METRIC_KIND[m] == "encoder" else "decoder", f"--metric {m}")
        for p in data:  # validate every file before paying for the model load
            if not metrics and Path(model).is_dir() and Path(p).is_file():
                have, want = kind_of_dir(model), _kind_of(p)
                if (have == "encoder") != (want == "encoder"):
                    shape = "{query, pos, neg} retrieval" if want == "encoder" else "{input, output} decoder"
                    raise InputError(f"{p} holds {shape} examples, but {model} is "
                                     f"{'an encoder' if have == 'encoder' else 'a decoder'}; give it examples "
                                     f"of its kind (or the model they were written for).")
            for kind in {METRIC_KIND[m] for m in metrics} or {_kind_of(p)}:
                load_examples(p, kind)
        em = EvalModel.from_pretrained(model, device=device)
        scores = {}
        for p in data:
            names = list(metrics) or _default_metrics(em.kind, p)
            scores[p.stem] = evaluate(
                em, p, names, batch_size=batch_size, loss_reduction=loss_reduction, separator=separator
            )
    _report(model, scores, as_json)


def _report(model: Path, scores: dict[str, dict[str, float]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"model": str(model), "scores": scores}))
    else:
        click.echo(f"model: {model}")
        click.echo(format_table(scores))


def _kind_of(path: Path) -> str:
    """Best-guess example kind of a file from its first record (for early validation only)."""
    try:
        with path.open(encoding="utf-8-sig") as fh:
            first = json.loads(next((ln for ln in fh if ln.strip()), "{}"))
    except (OSError, ValueError):
        return "decoder"  # load_examples will report the precise problem
    if isinstance(first, dict) and "query" in first:
        return "encoder"
    return "choice" if isinstance(first, dict) and "choices" in first else "decoder"
