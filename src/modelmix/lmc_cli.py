"""``modelmix lmc``: linear mode connectivity between two models (heavy imports only when it runs)."""

from __future__ import annotations

import click


@click.command("lmc")
@click.argument("model_a", type=click.Path())
@click.argument("model_b", type=click.Path())
@click.option("--examples", required=True, type=click.Path(dir_okay=False),
              help='JSONL, one {"input": ..., "output": ...} per line.')
@click.option("--points", type=click.IntRange(2, 1001), default=11, show_default=True,
              help="Uniformly spaced t values in [0, 1], endpoints included.")
@click.option("--metric", type=click.Choice(["exact_match"]), default=None,
              help="Also compute this metric at every t (loss is always computed).")
@click.option("--png", type=click.Path(dir_okay=False), default=None, help="Write a plot of the curve (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@click.option("--merge-best", is_flag=True, help="Write the interpolation at the lowest-loss t to --out.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output directory for --merge-best.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--device", default="cpu", show_default=True, help="Device for evaluation (cpu, cuda, ...).")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Rows per forward pass (default: by tokens).")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def lmc(ctx, model_a, model_b, examples, points, metric, png, as_json, merge_best, out_dir, overwrite, device,
        batch_size, debug):
    """Loss along theta(t) = (1-t)*MODEL_A + t*MODEL_B, the barrier height and the best t.

    barrier = max_t [loss(t) - ((1-t)*loss(0) + t*loss(1))]; near 0 means the two models are linearly
    connected and can be averaged. Interpolated models are evaluated in memory; only --merge-best writes.

    Example: modelmix lmc ft1 ft2 --examples heldout.jsonl --png lmc.png --merge-best --out merged
    """
    if ctx.obj is not None:
        ctx.obj["debug"] = ctx.obj.get("debug", False) or debug
    from modelmix.errors import ConfigError
    from modelmix.lmc import check_png, lmc_curve, merge_at, plot_curve
    from modelmix.soup import check_out

    if merge_best and out_dir is None:
        raise ConfigError("--merge-best needs --out DIR (where to write the merge at the best t).")
    if out_dir is not None and not merge_best:
        raise ConfigError("--out is only used with --merge-best; add --merge-best or drop --out.")
    check_out(out_dir, overwrite)  # fail before the evaluation, not after
    if png:
        check_png(png)
    _quiet_transformers()
    res = lmc_curve(model_a, model_b, examples, points, metric, device=device, batch_size=batch_size,
                    log=lambda s: click.echo(s, err=True))
    if png:
        plot_curve(res, png)
    written = merge_at(model_a, model_b, res.best_t, out_dir, overwrite=overwrite) if merge_best else None
    if as_json:
        d = res.to_dict()
        d["png"] = png
        d["merged"] = str(written) if written else None
        import json

        click.echo(json.dumps(d, indent=2))
        return
    click.echo(res.table())
    if png:
        click.echo(f"plot written to {png}")
    if written:
        click.echo(f"wrote (1-t)*A + t*B at t={res.best_t:.3f} to {written}")


def _quiet_transformers() -> None:
    """Loading the skeleton should not draw progress bars over the trajectory output."""
    try:
        from transformers.utils import logging

        logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
