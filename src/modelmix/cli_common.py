"""What every ``modelmix`` subcommand shares: one flag vocabulary, declared once.

* models are positional arguments everywhere (``modelmix soup M1 M2 M3 ...``); ``--models M1 M2`` is a
  hidden alias that takes every bare value after it;
* example files are ``--examples`` everywhere (older spellings stay as hidden aliases);
* ``--device`` is a choice of cpu/cuda, checked once (``modelmix.devices.check_device``);
* ``--separator`` overrides the model's own prompt convention wherever decoder examples are scored;
* ``--debug`` is declared once, on the command group; ``modelmix.cli.main`` accepts it anywhere on the
  command line (it takes it out before click parses) and commands ask :func:`debug_enabled`.

Imports nothing heavy: ``modelmix --help`` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from modelmix.devices import DEVICES

DEBUG_HELP = "Show full tracebacks (and library warnings) on errors."


class Command(click.Command):
    """A subcommand whose ``--models``/``--weights`` options take every bare value that follows them
    (``--models A B C``), as users of mergekit-style tools type them."""

    greedy = ("--models", "--weights")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        current: str | None = None
        for a in args:
            if a in self.greedy:
                current = a
                continue
            if any(a.startswith(g + "=") for g in self.greedy):
                current = None
                out.append(a)
                continue
            if current is not None and not (a.startswith("-") and not _is_number(a)):
                out += [current, a]
                continue
            current = None
            out.append(a)
        return super().parse_args(ctx, out)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def debug_enabled() -> bool:
    """Whether this run was given ``--debug`` (or ``MODELMIX_DEBUG=1``): full tracebacks, library output."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return bool(isinstance(getattr(root, "obj", None), dict) and root.obj.get("debug"))


class DeviceType(click.ParamType):
    """cpu, cuda or cuda:N, checked for spelling here (a usage error) and for availability by
    ``modelmix.devices.check_device`` when the command runs."""

    name = "device"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:  # noqa: ARG002
        return "[cpu|cuda|cuda:N]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        import re

        v = str(value).strip().lower()
        if v in DEVICES or re.fullmatch(r"cuda:\d+", v):
            return v
        self.fail(f"{value!r} is not one of 'cpu', 'cuda' (or 'cuda:N' for one of several GPUs).", param, ctx)


def device_option(help: str = "Device to run on.") -> Callable[[Any], Any]:  # noqa: A002
    return click.option("--device", type=DeviceType(), default="cpu", show_default=True, help=help)


def separator_option() -> Callable[[Any], Any]:
    return click.option(
        "--separator", default=None, metavar="TEXT",
        help="Text between input and output when scoring decoder examples (default: the model's own convention, "
             "'' for modelmix zoo models, LM-Cocktail's ' ' otherwise).",
    )


def models_argument(metavar: str = "MODELS...") -> Callable[[Any], Any]:
    """Positional model directories plus the hidden ``--models`` alias (see :func:`join_models`)."""

    def deco(f: Any) -> Any:
        f = click.option("--models", "-m", "models_opt", multiple=True, hidden=True,
                         help="Model directories (alias of the positional MODELS).")(f)
        return click.argument("models", nargs=-1, type=click.Path(), metavar=metavar)(f)

    return deco


def join_models(positional: Sequence[str], option: Sequence[str], *, at_least: int,
                at_most: int | None = None, what: str = "models") -> list[str]:
    """The models given positionally and/or with ``--models``, in order; a usage error if too few/many."""
    models = [*positional, *option]
    if len(models) < at_least or (at_most is not None and len(models) > at_most):
        words = {1: "one", 2: "two", 3: "three"}
        n_lo, n_hi = words.get(at_least, str(at_least)), words.get(at_most or 0, str(at_most))
        need = f"exactly {n_lo}" if at_most == at_least else (
            f"at least {n_lo}" if at_most is None else f"{n_lo} to {n_hi}")
        raise click.UsageError(f"This command needs {need} {what} (model directories), got {len(models)}"
                               + (f": {' '.join(models)}." if models else "."))
    return models


def examples_option(*, required: bool = True, multiple: bool = False, help: str,  # noqa: A002
                    alias: str | None = None) -> Callable[[Any], Any]:
    """``--examples FILE`` (a JSONL file; repeatable when ``multiple``), with an optional hidden alias
    (``--eval`` for soup, ``--data`` for eval) that fills the same value."""

    def deco(f: Any) -> Any:
        if alias is not None:
            f = click.option(alias, "examples_alias", multiple=multiple, hidden=True,
                             type=click.Path(dir_okay=False), help=f"Alias of --examples. {help}")(f)
        return click.option("--examples", "examples", multiple=multiple,
                            required=required and alias is None, type=click.Path(dir_okay=False),
                            help=help)(f)

    return deco


def join_examples(examples: Any, alias: Any, *, required: bool = True) -> Any:
    """``--examples`` and its hidden alias as one value (a tuple when the option is repeatable)."""
    if isinstance(examples, tuple):
        joined: Any = tuple(examples) + tuple(alias or ())
    else:
        joined = examples if examples is not None else alias
    if required and not joined:
        raise click.UsageError("Missing option '--examples' (a JSONL file of examples).")
    return joined
