"""``modelmix import-gguf``: a GGUF file as a Hugging Face model directory (torch/transformers imported only
when it runs)."""

from __future__ import annotations

import click

from modelmix.cli_common import Command, debug_enabled


@click.command("import-gguf", cls=Command)
@click.argument("gguf_file", type=click.Path(dir_okay=True), metavar="FILE.gguf")
@click.argument("out_dir", type=click.Path(), metavar="OUT_DIR")  # the library explains a file there
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="What the dequantised weights are stored as.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists (only once the new model is complete).")
def import_gguf(gguf_file: str, out_dir: str, dtype: str, overwrite: bool) -> None:
    """Convert a llama-family GGUF file into a Hugging Face model directory OUT_DIR.

    The weights are dequantised by transformers' GGUF loader and written as safetensors, with config.json,
    generation_config.json and the tokenizer (chat template included), so plain
    AutoModelForCausalLM.from_pretrained(OUT_DIR) loads it and every modelmix command can merge it.
    OUT_DIR appears only once complete.

    Example: modelmix import-gguf SmolLM2-135M-Instruct.Q4_1.gguf smollm2
    """
    from modelmix.io.gguf import run_import

    res = run_import(gguf_file, out_dir, dtype=dtype, overwrite=overwrite, quiet=not debug_enabled(),
                     log=lambda s: click.echo(s, err=True))
    click.echo(str(res.path))
    click.echo(res.summary())
