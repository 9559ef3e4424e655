"""``modelmix cocktail``: LM-Cocktail from the command line (torch/transformers imported only when run)."""

from __future__ import annotations

import json
import sys

import click

from modelmix.cli_common import (
    Command,
    device_option,
    examples_option,
    join_models,
    models_argument,
    separator_option,
)
from modelmix.errors import ConfigError


@click.command("cocktail", cls=Command)
@models_argument("M1 M2 ...")
@examples_option(required=False,
                 help='JSONL examples: {"input","output"} (decoder) or {"query","pos","neg"} (encoder).')
@click.option("--weights", "weights", multiple=True, type=float, metavar="W1 W2 ...",
              help="Explicit weights, one per model (instead of --examples); normalised to sum 1.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output model directory.")
@click.option("--type", "kind", type=click.Choice(["decoder", "encoder"]), default=None,
              help="Model type (default: detected from the models' configs); must match the models.")
@click.option("--temperature", type=float, default=5.0, show_default=True, help="Softmax temperature T in softmax(-L/T).")
@click.option("--weights-only", is_flag=True, help="Print one JSON object with weights/losses/models; write nothing.")
@click.option("--granularity", type=click.Choice(["model", "layer"]), default="model", show_default=True,
              help="layer: also search per-layer-group weights, kept only if better on held-out examples.")
@click.option("--budget", type=click.IntRange(0, 100000), default=40, show_default=True,
              help="Loss evaluations for the layer-granularity search.")
@click.option("--blocks", type=click.IntRange(1, 1000), default=4, show_default=True,
              help="Blocks of layers for --granularity layer (plus embeddings and head groups).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=2, show_default=True,
              help="LM-Cocktail's batch size: the loss is the mean of per-batch losses (and in-batch negatives).")
@click.option("--max-length", type=click.IntRange(2, 1 << 20), default=2048, show_default=True,
              help="Truncate examples to this many tokens (as LM-Cocktail).")
@click.option("--neg-number", type=click.IntRange(0, 10000), default=7, show_default=True,
              help="Negatives sampled per encoder example.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling encoder negatives.")
@separator_option()
@device_option("Device for computing the losses.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (only once the new model is complete).")
def cocktail(models: tuple[str, ...], models_opt: tuple[str, ...], examples: str | None, weights: tuple[float, ...],
             out_dir: str | None, kind: str | None, temperature: float, weights_only: bool, granularity: str,
             budget: int, blocks: int, batch_size: int, max_length: int, neg_number: int, seed: int,
             separator: str | None, device: str, overwrite: bool) -> None:
    """Mix models with LM-Cocktail weights softmax(-loss/T) computed on a few examples (or given weights).

    Example: modelmix cocktail expert base --examples few.jsonl --out mixed
    """
    models = tuple(join_models(models, models_opt, at_least=2))
    model_list, weight_list = list(models), list(weights)
    if weights_only and weight_list:
        raise ConfigError("--weights-only computes weights from --examples; it cannot be combined with --weights.")
    if bool(weight_list) == bool(examples):
        raise ConfigError("Give either --examples (to compute the weights) or --weights (one per model).")
    if not weights_only and not out_dir:
        raise ConfigError("--out is required unless --weights-only is given.")
    if weight_list and granularity != "model":
        raise ConfigError("--granularity layer searches weights on --examples; with explicit --weights there is "
                          "nothing to search. Drop one of them.")

    from modelmix import cocktail as C
    from modelmix.io.outputs import check_model_output

    check_model_output(None if weights_only else out_dir, overwrite=overwrite, models=model_list,
                       files=[examples])  # before computing anything
    if weight_list:
        paths = C.check_models(model_list)
        ws = C.check_weights(weight_list, len(paths))
        res = C.mix(paths, out_dir, weights=ws, overwrite=overwrite)  # type: ignore[arg-type]
        click.echo(f"merged {len(paths)} models with weights {[round(w / sum(ws), 6) for w in ws]} into {res}")
        return
    log = None if weights_only else (lambda s: click.echo(s, err=True))
    cw = C.compute_weights(model_list, examples, type=kind, temperature=temperature, batch_size=batch_size,  # type: ignore[arg-type]
                           max_length=max_length, neg_number=neg_number, seed=seed, device=device, separator=separator,
                           granularity=granularity, budget=budget, blocks=blocks, log=log)
    if weights_only:
        click.echo(json.dumps(cw.to_dict()))
        return
    C.print_weights(cw, sys.stdout)
    if cw.search:
        s = cw.search
        click.echo(f"held-out loss: model-level {s['model_level']['heldout_loss']:.4f}, layer-level "
                   f"{s['layer_level']['heldout_loss']:.4f} -> keeping {s['kept']}-level weights")
    from pathlib import Path

    res = C.merge_with_weights([Path(m) for m in model_list], Path(out_dir), cw.weights,  # type: ignore[arg-type]
                               layer_weights=cw.layer_weights, groups=cw.groups, overwrite=overwrite,
                               protect=[("examples file", Path(examples))])  # type: ignore[arg-type]
    click.echo(res.summary())
