"""``modelmix lmc``: linear mode connectivity between two models (heavy imports only when it runs)."""

from __future__ import annotations

import click

from modelmix.cli_common import (
    Command,
    device_option,
    examples_option,
    join_models,
    models_argument,
    separator_option,
)


@click.command("lmc", cls=Command)
@models_argument("MODEL_A MODEL_B")
@examples_option(help='JSONL, one {"input": ..., "output": ...} per line.')
@click.option("--points", type=click.IntRange(2, 1001), default=11, show_default=True,
              help="Uniformly spaced t values in [0, 1], endpoints included.")
@click.option("--metric", type=click.Choice(["exact_match"]), default=None,
              help="Also compute this metric at every t (loss is always computed); --merge-best then picks "
                   "the t with the best metric.")
@click.option("--png", type=click.Path(dir_okay=False), default=None, help="Write a plot of the curve (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@click.option("--merge-best", is_flag=True,
              help="Write the interpolation at the best t (by --metric if given, else lowest loss) to --out.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output directory for --merge-best.")
@click.option("--overwrite", is_flag=True, help="Replace --out and --png if they exist.")
@separator_option()
@device_option("Device for evaluation.")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Rows per forward pass (default: by tokens).")
def lmc(models, models_opt, examples, points, metric, png, as_json, merge_best, out_dir, overwrite, separator,
        device, batch_size):
    """Loss along theta(t) = (1-t)*MODEL_A + t*MODEL_B, the barrier height and the best t.

    barrier = max_t [loss(t) - ((1-t)*loss(0) + t*loss(1))]; near 0 means the two models are linearly
    connected and can be averaged. Interpolated models are evaluated in memory; only --merge-best writes.

    Example: modelmix lmc ft1 ft2 --examples heldout.jsonl --png lmc.png --merge-best --out merged
    """
    from pathlib import Path

    from modelmix.errors import ConfigError
    from modelmix.lmc import check_png, lmc_curve, merge_at, plot_curve
    from modelmix.soup import check_out

    model_a, model_b = join_models(models, models_opt, at_least=2, at_most=2)
    if merge_best and out_dir is None:
        raise ConfigError("--merge-best needs --out DIR (where to write the merge at the best t).")
    if out_dir is not None and not merge_best:
        raise ConfigError("--out is only used with --merge-best; add --merge-best or drop --out.")
    check_out(out_dir, overwrite, [model_a, model_b], [examples])  # fail before the evaluation, not after
    inputs = [("input model", Path(model_a)), ("input model", Path(model_b)), ("examples file", Path(examples))]
    if png:  # not inside --out either: replacing --out would delete the plot just written
        check_png(png, inputs + ([("--out directory", Path(out_dir))] if out_dir else []), overwrite=overwrite)
    res = lmc_curve(model_a, model_b, examples, points, metric, device=device, batch_size=batch_size,
                    separator=separator, log=lambda s: click.echo(s, err=True))
    if png:
        plot_curve(res, png)
    t = res.selected_t
    written = merge_at(model_a, model_b, t, out_dir, overwrite=overwrite, protect=inputs[2:]) if merge_best else None
    if as_json:
        d = res.to_dict()
        d["png"] = png
        d["merged"] = str(written) if written else None
        d["merged_t"] = t if written else None
        import json

        click.echo(json.dumps(d, indent=2))
        return
    click.echo(res.table())
    if png:
        click.echo(f"plot written to {png}")
    if written:
        by = f"highest {metric}" if metric else "lowest loss"
        click.echo(f"wrote (1-t)*A + t*B at t={t:.3f} ({by}) to {written}")
