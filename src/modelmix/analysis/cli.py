"""``modelmix analyze``: task-vector interference analysis from the command line.

torch, matplotlib and (only with --examples) transformers are imported inside the command, so the main
CLI's ``--help`` stays fast. Outputs are written only after the whole analysis succeeded.
"""

from __future__ import annotations

from pathlib import Path

import click

from modelmix.cli_common import (
    Command,
    device_option,
    examples_option,
    join_models,
    models_argument,
    separator_option,
)
from modelmix.errors import OutputError


def _check_outputs(html_out: str | None, png_dir: str | None, inputs: list, overwrite: bool) -> None:
    """Fail before the (long) analysis if an output location cannot be written, is an input, or holds
    something already (without --overwrite)."""
    from modelmix.io.outputs import check_output_file, guard_inputs

    if html_out is not None:
        check_output_file(html_out, inputs=inputs, what="--html", suffix=(".html", ".htm"), overwrite=overwrite)
    if png_dir is not None:
        guard_inputs(png_dir, inputs, what="--png-dir", allow_contains=True)  # it only adds files
        d = Path(png_dir)
        if d.exists() and not d.is_dir():
            raise OutputError(f"--png-dir {png_dir} exists and is not a directory.")
        if d.is_dir() and any(d.glob("*.png")) and not overwrite:
            raise OutputError(f"--png-dir {png_dir} already holds PNG files; pass --overwrite to replace the "
                              f"report's plots there.")


@click.command("analyze", cls=Command)
@click.option("--base", "base", required=True, help="The common base model (task vectors are M_i - base).")
@models_argument("M1 M2 ...")
@examples_option(required=False, multiple=True,
                 help="Decoder JSONL {input, output} file, one per task (repeatable): per-task loss, coverage, LMC.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), default=None, help="Write a self-contained HTML report.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on stdout.")
@click.option("--png-dir", type=click.Path(file_okay=False), default=None, help="Write the plots as PNG files here.")
@click.option("--top-k", type=float, default=0.2, show_default=True,
              help="Fraction of largest-magnitude entries per tensor used for sign conflict and overlap.")
@click.option("--metric", "metrics", multiple=True, default=("loss",), show_default=True,
              type=click.Choice(["loss", "exact_match"]), help="Task metrics with --examples (exact_match generates: slower).")
@separator_option()
@device_option()
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="Worker threads (default: cores, at most 4).")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) checkpoints, loaded with weights_only=True.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --html file and the plots in --png-dir.")
def analyze(base, models, models_opt, examples, html_out, as_json, png_dir, top_k, metrics, separator, device,
            threads, allow_pickle, overwrite):
    """Analyse how the task vectors of M1 M2 ... (relative to --base) interfere: norms, cosine similarity, sign
    conflicts and overlap among the top-k magnitudes, per layer and overall; with --examples also per-task
    scores and the loss along the linear path between two models. Prints findings (or --json).

    Example: modelmix analyze --base base ft1 ft2 --examples task1.jsonl --examples task2.jsonl --html report.html
    """
    from modelmix.analysis.api import analyze as run

    models = join_models(models, models_opt, at_least=2)
    inputs = [("base model", Path(base)), *[("input model", Path(m)) for m in models],
              *[("examples file", Path(e)) for e in examples]]
    _check_outputs(html_out, png_dir, inputs, overwrite)
    report = run(base, list(models), examples=list(examples) or None, top_k=top_k, device=device,
                 metrics=list(dict.fromkeys(metrics)), workers=threads, allow_pickle=allow_pickle,
                 separator=separator)
    if html_out is not None:
        report.write_html(html_out)
    if png_dir is not None:
        report.write_pngs(png_dir)
    if as_json:
        click.echo(report.dumps())
        return
    d = report.data
    click.echo(f"{len(d['models'])} models vs base {d['base']}: {d['n_params']:,} parameters, "
               f"top-k {d['top_k']:.0%} per tensor, {d['seconds']:.1f} s")
    for m in d["models"]:
        click.echo(f"  {m['name']}: |tau| = {m['norm']:.4g} ({(m['relative_norm'] or 0):.3%} of |base|)")
    for p in d["pairs"]:
        f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        click.echo(f"  {p['a']} / {p['b']}: cosine {f(p['cosine'])}, sign conflict {f(p['conflict_rate'])}, "
                   f"jaccard {f(p['jaccard'])}")
    click.echo("Findings:")
    for fd in report.findings:
        click.echo(f"  - {fd.text}")
