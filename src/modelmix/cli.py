"""The ``modelmix`` command line: thin wrappers over the Python API.

Subcommands living in other packages (zoo, eval, ...) are imported only when invoked, so ``modelmix --help``
and the start of a merge never import transformers.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import textwrap

import click

from modelmix.errors import ModelmixError

_LAZY = {
    "zoo": ("modelmix.zoo.cli", "zoo", "Build the offline model zoo and its reports."),
    "eval": ("modelmix.eval.cli", "eval_command", "Evaluate a model on JSONL data or on the zoo tasks."),
    "cocktail": ("modelmix.cocktail_cli", "cocktail", "LM-Cocktail: merge with weights computed from a few examples."),
    "soup": ("modelmix.soup_cli", "soup", "Uniform or greedy model soup scored on held-out examples."),
    "lmc": ("modelmix.lmc_cli", "lmc", "Linear mode connectivity: loss along the path between two models."),
    "analyze": ("modelmix.analysis.cli", "analyze", "Task-vector interference analysis with an HTML report."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {k for k, v in _LAZY.items() if _available(v[0])})

    def get_command(self, ctx: click.Context, name: str):
        if name in _LAZY and _available(_LAZY[name][0]):
            mod, attr, _ = _LAZY[name]
            return getattr(importlib.import_module(mod), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in _LAZY:
                rows.append((name, _LAZY[name][2]))
            else:
                cmd = super().get_command(ctx, name)
                rows.append((name, cmd.get_short_help_str(60) if cmd else ""))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="modelmix")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def app(ctx: click.Context, debug: bool) -> None:
    """modelmix: merge, weigh and analyse language models."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug or ctx.obj.get("debug", False)


def _parse_size(s: str) -> int:
    units = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "T": 10**12, "TB": 10**12}
    t = s.strip().upper().replace(" ", "")
    num = t.rstrip("KMGTIB")
    try:
        return int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError):
        raise click.BadParameter(f"{s!r} is not a size like 5GB, 500MB or 2GiB") from None


@app.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists (only once the new model is complete).")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Worker threads (default: all cores).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=None, help="Random seed for DARE/DELLA (overrides the recipe's random_seed).")
@click.option("--out-shard-size", default="5GB", show_default=True, help="Maximum size of one output shard.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) checkpoints, loaded with weights_only=True.")
@click.option("--dry-run", is_flag=True, help="Print the plan (tensors, sources, method, resolved parameters); write nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def merge(ctx, recipe, out_dir, overwrite, threads, device, seed, out_shard_size, allow_pickle, dry_run, quiet, debug):
    """Merge models per a mergekit-style YAML RECIPE into an HF model directory OUT_DIR."""
    ctx.obj["debug"] |= debug
    from modelmix import api

    if dry_run:
        p = api.plan(recipe, allow_pickle=allow_pickle, seed=seed)
        api.show_notes(p, limit=len(p.notes))
        try:
            click.echo(f"# {len(p.tasks)} output tensors, {p.out_bytes / 1e9:.3f} GB, method {p.method.name}")
            for t in p.tasks:
                click.echo(t.describe())
        finally:
            p.close()
        return
    res = api.merge(recipe, out_dir, overwrite=overwrite, threads=threads, device=device, seed=seed,
                    out_shard_size=_parse_size(out_shard_size), allow_pickle=allow_pickle, quiet=quiet)
    if not quiet:
        click.echo(res.summary())


@app.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--allow-pickle", is_flag=True)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def check(ctx, recipe, allow_pickle, debug):
    """Preflight a RECIPE: every input readable, names/shapes compatible, parameters valid. Reads no weights."""
    ctx.obj["debug"] |= debug
    from modelmix import api

    p = api.plan(recipe, allow_pickle=allow_pickle)
    api.show_notes(p, limit=len(p.notes))
    try:
        click.echo(
            f"ok: {len(p.models)} model(s), {len(p.tasks)} output tensors, {p.out_bytes / 1e9:.3f} GB, "
            f"method {p.method.name}"
        )
    finally:
        p.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one paragraph on stderr and exit code 2 (traceback only with --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MODELMIX_DEBUG") == "1"
    try:
        app.main(args=args, prog_name="modelmix", standalone_mode=False, obj={"debug": debug})
    except ModelmixError as e:
        if debug:
            raise
        click.echo("error: " + textwrap.fill(str(e), width=100, subsequent_indent="  "), err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted; no output was written.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
