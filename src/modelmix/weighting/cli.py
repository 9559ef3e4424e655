"""``modelmix cocktail``, ``soup`` and ``lmc``: the weighting commands (torch/transformers imported only when
one runs). Each is a thin wrapper over :mod:`modelmix.weighting`: parse, check the output location before any
evaluation, call the API, print."""

from __future__ import annotations

import json
import sys

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

    from modelmix.io.outputs import check_model_output
    from modelmix.weighting import cocktail as C

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
    from modelmix.weighting.soup import model_soup

    all_models = join_models(models, models_opt, at_least=2)
    examples = join_examples(examples, examples_alias)
    res = model_soup(all_models, examples, greedy=greedy, metric=metric, out_dir=out_dir, overwrite=overwrite,
                     device=device, batch_size=batch_size, separator=separator, log=click.echo)
    if greedy:
        click.echo(f"greedy soup: kept {len(res.kept)} of {len(all_models)} models, held-out {metric} {res.score:.6g}")


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
    from modelmix.io.outputs import check_model_output, check_png
    from modelmix.weighting.lmc import lmc_curve, merge_at, plot_curve

    model_a, model_b = join_models(models, models_opt, at_least=2, at_most=2)
    if merge_best and out_dir is None:
        raise ConfigError("--merge-best needs --out DIR (where to write the merge at the best t).")
    if out_dir is not None and not merge_best:
        raise ConfigError("--out is only used with --merge-best; add --merge-best or drop --out.")
    check_model_output(out_dir, overwrite=overwrite, models=[model_a, model_b], files=[examples])  # before evaluating
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
