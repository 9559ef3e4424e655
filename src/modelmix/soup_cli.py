"""``modelmix soup``: uniform or greedy model soup (torch/transformers are imported only when it runs)."""

from __future__ import annotations

import click


@click.command("soup")
@click.option("--models", "-m", "models", multiple=True, required=True,
              help="Model directories (repeat the option or list several after it).")
@click.argument("more_models", nargs=-1, type=click.Path())
@click.option("--eval", "eval_file", required=True, type=click.Path(dir_okay=False),
              help='Held-out JSONL, one {"input": ..., "output": ...} per line.')
@click.option("--greedy", is_flag=True, help="Greedy soup (add a model only if the held-out score improves).")
@click.option("--metric", type=click.Choice(["loss", "exact_match"]), default="loss", show_default=True,
              help="Held-out score: loss (lower is better) or exact_match (higher is better).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output model directory.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (only once the new soup is complete).")
@click.option("--device", default="cpu", show_default=True, help="Device for evaluation (cpu, cuda, ...).")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Rows per forward pass (default: by tokens).")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def soup(ctx, models, more_models, eval_file, greedy, metric, out_dir, overwrite, device, batch_size, debug):
    """Average fine-tuned models into a soup scored on held-out examples (Wortsman et al. 2022).

    Uniform soup averages all models; --greedy sorts them by held-out score, starts from the best and adds
    a model only if the soup improves, printing each step. Candidates are evaluated in memory; only the
    final soup is written to --out.

    Example: modelmix soup --models ft1 ft2 ft3 --eval heldout.jsonl --greedy --out soup
    """
    if ctx.obj is not None:
        ctx.obj["debug"] = ctx.obj.get("debug", False) or debug
    from modelmix.errors import InputError
    from modelmix.lmc_cli import _quiet_transformers
    from modelmix.soup import model_soup

    all_models = list(models) + list(more_models)
    if len(all_models) < 2:
        raise InputError(
            f"modelmix soup needs at least two models, got {len(all_models)} ({', '.join(all_models) or 'none'}). "
            "A soup of one model is that model; pass two or more with --models A B ..."
        )
    _quiet_transformers()
    res = model_soup(all_models, eval_file, greedy=greedy, metric=metric, out_dir=out_dir, overwrite=overwrite,
                     device=device, batch_size=batch_size, log=click.echo)
    if greedy:
        click.echo(f"greedy soup: kept {len(res.kept)} of {len(all_models)} models, held-out {metric} {res.score:.6g}")
