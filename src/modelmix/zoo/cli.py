"""`modelmix zoo ...` commands.

`zoo` is a plain `click.Group` holding what the zoo package owns (``build``); the main CLI mounts
``zoo report`` on it from its own application module (:mod:`modelmix.report`), so the zoo never imports it. Heavy imports (torch, transformers) happen
inside the command bodies so ``modelmix --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from modelmix.cli_common import Command

PRESET_NAMES = ("test", "default", "smol")  # = zoo.build.PRESET_NAMES (not imported: keeps --help light)


@click.group(name="zoo")
def zoo() -> None:
    """Build and inspect the zoo of small models trained from scratch (offline, CPU)."""


@zoo.command(name="build", cls=Command)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the zoo to (a copy of the cached build).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="default", show_default=True,
              help="'test': tiny models for the test suite, about 1 min to build; 'default': the tiny "
                   "mergeable zoo, about 6 min; 'smol': SmolLM2-135M-Instruct and chat fine-tunes of it, "
                   "about 19 min (measured on a 2-core CPU; a cached build is instant).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data, init and training order.")
@click.option("--force", is_flag=True, help="Rebuild even if cached, and replace an existing --out.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def build_cmd(out: Path, preset: str, seed: int, force: bool, no_progress: bool) -> None:
    """Train (or reuse from the cache) the base model, task experts and embedders (smol: the imported
    SmolLM2 base, chat experts and a critic), then copy them to OUT.

    Cached under $MODELMIX_CACHE (else $XDG_CACHE_HOME/modelmix, else ~/.cache/modelmix) per preset, seed
    and recipe version, so a second build is instant.
    """
    from modelmix.zoo.build import build_zoo
    from modelmix.zoo.manifest import load_zoo

    path = build_zoo(out, preset=preset, seed=seed, progress=not no_progress, force=force)
    z = load_zoo(path)
    n_dec = sum(s["type"] == "decoder" for s in z.models.values())
    click.echo(f"zoo ({z.preset}, seed {z.seed}) at {path}: {len(z.models)} models ({n_dec} decoders, "
               f"{len(z.models) - n_dec} embedders), {len(z.tasks)} tasks; decoders' exact match:")
    dec = [t for t in z.decoder_tasks() if t != "general"]
    for name in [m for m, s in z.models.items() if s["type"] == "decoder"]:
        sc = z.scores.get(name, {})
        cells = " ".join(f"{t}={sc[t]['exact_match']:.2f}" for t in dec if "exact_match" in sc.get(t, {}))
        click.echo(f"  {name:<20} {cells} general_loss={sc.get('general', {}).get('loss', float('nan')):.3f}")
