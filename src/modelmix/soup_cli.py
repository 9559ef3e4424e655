"""``modelmix soup``: uniform or greedy model soup (torch/transformers are imported only when it runs)."""

from __future__ import annotations

import click

from modelmix.cli_common import (
    Command,
    device_option,
    examples_option,
    join_examples,
    join_models,
    models_argument,
    separator_option,
)


@click.command("soup", cls=Command)
@models_argument("M1 M2 ...")
@examples_option(alias="--eval", help='Held-out JSONL, one {"input": ..., "output": ...} per line.')
@click.option("--greedy", is_flag=True, help="Greedy soup (add a model only if the held-out score improves).")
@click.option("--metric", type=click.Choice(["loss", "exact_match"]), default="loss", show_default=True,
              help="Held-out score: loss (lower is better) or exact_match (higher is better).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output model directory.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (only once the new soup is complete).")
@separator_option()
@device_option("Device for evaluation.")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Rows per forward pass (default: by tokens).")
def soup(models, models_opt, examples, examples_alias, greedy, metric, out_dir, overwrite, separator, device,
         batch_size):
    """Average fine-tuned models into a soup scored on held-out examples (Wortsman et al. 2022).

    Uniform soup averages all models; --greedy sorts them by held-out score, starts from the best and adds
    a model only if the soup improves, printing each step. Candidates are evaluated in memory; only the
    final soup is written to --out.

    Example: modelmix soup ft1 ft2 ft3 --examples heldout.jsonl --greedy --out soup
    """
    from modelmix.soup import model_soup

    all_models = join_models(models, models_opt, at_least=2)
    examples = join_examples(examples, examples_alias)
    res = model_soup(all_models, examples, greedy=greedy, metric=metric, out_dir=out_dir, overwrite=overwrite,
                     device=device, batch_size=batch_size, separator=separator, log=click.echo)
    if greedy:
        click.echo(f"greedy soup: kept {len(res.kept)} of {len(all_models)} models, held-out {metric} {res.score:.6g}")
