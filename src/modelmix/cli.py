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

from modelmix.cli_common import DEBUG_HELP, Command, device_option
from modelmix.errors import ModelmixError

# name -> (module, attribute, the one-line description shown by `modelmix --help` without importing it)
_LAZY = {
    "zoo": ("modelmix.zoo.cli", "zoo", "Build the offline model zoo (base, task experts, embedders) and report on it."),
    "eval": ("modelmix.eval.cli", "eval_command", "Evaluate a model on JSONL examples or on every task of a zoo."),
    "cocktail": ("modelmix.weighting.cli", "cocktail", "LM-Cocktail: merge with weights softmax(-loss/T) from a few examples."),
    "soup": ("modelmix.weighting.cli", "soup", "Uniform or greedy model soup, scored on held-out examples."),
    "lmc": ("modelmix.weighting.cli", "lmc", "Linear mode connectivity: loss along the straight path between two models."),
    "analyze": ("modelmix.analysis.cli", "analyze", "Task-vector interference analysis (norms, cosines, sign conflicts) with an HTML report."),
    "import-gguf": ("modelmix.gguf_cli", "import_gguf", "Convert a llama-family GGUF file into a Hugging Face model directory."),
    "serve": ("modelmix.router.cli", "serve_cmd", "Serve the router as an OpenAI-compatible endpoint (FastAPI + uvicorn)."),
    "route": ("modelmix.router.cli", "route", "Router: classify queries over routes (a calibrated distribution) and evaluate it."),
    "agent": ("modelmix.agent.cli", "agent", "Merge agent: choose candidates and a merge recipe on your examples, confirm on held-out ones."),
    "critique": ("modelmix.critique.cli", "critique", "Self-critique defences (RR, RR-extcrit, RR-merge) against jailbreaks, and their evaluation."),
}


# subcommands that live in an application module but belong under another package's group (imported with it)
_MOUNTS = {"zoo": [("report", "modelmix.report", "report_cmd")]}


class LazyGroup(click.Group):
    """Subcommands from other packages are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {k for k, v in _LAZY.items() if _available(v[0])})

    def get_command(self, ctx: click.Context, name: str):
        if name in _LAZY and _available(_LAZY[name][0]):
            mod, attr, _ = _LAZY[name]
            cmd = getattr(importlib.import_module(mod), attr)
            for sub, smod, sattr in _MOUNTS.get(name, ()):
                if sub not in cmd.commands:
                    cmd.add_command(getattr(importlib.import_module(smod), sattr), name=sub)
            return cmd
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in _LAZY:
                rows.append((name, _LAZY[name][2]))
            else:
                cmd = super().get_command(ctx, name)
                rows.append((name, cmd.get_short_help_str(limit=1000) if cmd else ""))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="modelmix")
@click.option("--debug", is_flag=True, help=DEBUG_HELP)
@click.pass_context
def app(ctx: click.Context, debug: bool) -> None:
    """modelmix: merge, weigh and analyse language models."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug or ctx.obj.get("debug", False)  # main() takes --debug out wherever it is


def _parse_size(s: str) -> int:
    units = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "T": 10**12, "TB": 10**12}
    t = s.strip().upper().replace(" ", "")
    num = t.rstrip("KMGTIB")
    try:
        n = int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError):
        raise click.BadParameter(f"{s!r} is not a size like 5GB, 500MB or 2GiB") from None
    if n < 1:
        raise click.BadParameter(f"{s!r}: a shard size must be positive, like 5GB, 500MB or 2GiB")
    return n


@app.command(cls=Command)
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists (only once the new model is complete).")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Worker threads (default: all cores).")
@device_option("Device for the arithmetic (inputs are read and outputs written by the CPU).")
@click.option("--seed", type=int, default=None, help="Random seed for DARE/DELLA (overrides the recipe's random_seed).")
@click.option("--out-shard-size", default="5GB", show_default=True, help="Maximum size of one output shard.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.bin) checkpoints, loaded with weights_only=True.")
@click.option("--dry-run", is_flag=True, help="Print the plan (tensors, sources, method, resolved parameters); write nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def merge(recipe, out_dir, overwrite, threads, device, seed, out_shard_size, allow_pickle, dry_run, quiet):
    """Merge models per a mergekit-style YAML RECIPE into a Hugging Face model directory OUT_DIR."""
    if not dry_run:
        _merge(recipe, out_dir, overwrite=overwrite, threads=threads, device=device, seed=seed,
               out_shard_size=_parse_size(out_shard_size), allow_pickle=allow_pickle, quiet=quiet)
        return
    from modelmix import api

    p = api.plan(recipe, allow_pickle=allow_pickle, seed=seed)
    api.show_notes(p, limit=len(p.notes))
    try:
        click.echo(f"# {len(p.tasks)} output tensors, {p.out_bytes / 1e9:.3f} GB, method {p.method.name}")
        for t in p.tasks:
            click.echo(t.describe())
        sys.stdout.flush()
    except BrokenPipeError:  # `modelmix merge --dry-run | head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter's final flush goes nowhere
    finally:
        p.close()


def _merge(recipe, out_dir, *, quiet: bool, **kw) -> None:
    """``modelmix merge`` without --dry-run. Ctrl-C, from before torch is imported until the summary is
    printed, is a request the merge honours at safe points: every thread is joined and the temporary
    directory removed, then "Aborted." and exit 130; once the output is in place it is ignored (exit 0).
    See ``modelmix.interrupt``."""
    from modelmix import interrupt

    intr = interrupt.install()
    try:
        from modelmix import api

        res = api.merge(recipe, out_dir, quiet=quiet, **kw)
        if not quiet:
            click.echo(res.summary())
    finally:
        interrupt.uninstall(intr)


@app.command(cls=Command)
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--allow-pickle", is_flag=True,
              help="Accept pickle (.bin) checkpoints, which merge would load with weights_only=True.")
def check(recipe, allow_pickle):
    """Preflight a RECIPE: every input readable, names/shapes compatible, parameters valid. Reads no weights."""
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
    from modelmix import interrupt

    interrupt.reset()
    args = list(sys.argv[1:] if argv is None else argv)
    # --debug is a group option, accepted anywhere (``modelmix merge r.yml out --debug``): taken out here
    debug = "--debug" in args or os.environ.get("MODELMIX_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    if not debug:
        _quiet_libraries()
    try:
        app.main(args=args, prog_name="modelmix", standalone_mode=False, obj={"debug": debug})
    except ModelmixError as e:
        if debug:
            raise
        click.echo("error: " + textwrap.fill(str(e), width=100, subsequent_indent="  ", break_on_hyphens=False,
                                                break_long_words=False), err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:  # click turns a KeyboardInterrupt in a command into Abort
        _aborted()
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # raised outside click's own handling
        _aborted()
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)



def _aborted() -> None:
    """Ctrl-C: exit 130 with "Aborted." (nothing was written: a merge removes its temporary directory
    before the interrupt reaches here) -- unless the merge had already completed, the interrupt arriving
    as the command returned: then the output is in place and the exit is 0."""
    from modelmix import interrupt

    if interrupt.finished():
        sys.exit(0)
    click.echo("Aborted.", err=True)
    sys.exit(interrupt.exit_code())  # 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP


def _quiet_libraries() -> None:
    """No library chatter on stderr (transformers' FutureWarnings, "Loading weights" and "Writing model
    shards" bars, hub notices) unless --debug: modelmix prints its own progress and errors. Environment
    variables cover libraries imported later; already-imported ones are told directly."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


if __name__ == "__main__":
    main()
