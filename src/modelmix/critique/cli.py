"""``modelmix critique run | eval | bench``: thin wrappers over ``modelmix.critique``."""

from __future__ import annotations

import json
import sys

import click

from modelmix.cli_common import device_option


@click.group("critique")
def critique() -> None:
    """Self-critique defences (RR, RR with an external critic, RR-merge; arXiv 2406.07188) and their evaluation."""


@critique.command("run")
@click.option("--model", required=True, help="The chat model: a local model directory, or URL#MODEL (an "
              "OpenAI-compatible server).")
@click.option("--critic", default=None, help="The critic model (rr-extcrit writes its critique with it; rr-merge "
              "merges it into --model). A directory, or URL#MODEL for rr-extcrit.")
@click.option("--strategy", "strategy", default="none", show_default=True,
              help="none, rr, rr-extcrit, rr-merge; several comma-separated, or all.")
@click.option("--merge-weight", default=None, help="rr-merge: the critic's share of the linear merge (default 0.5, "
              "the paper's 1.0/1.0); several comma-separated sweep them, e.g. 0.25,0.5,0.75.")
@click.option("--prompts", "prompts_path", required=True, type=click.Path(dir_okay=False),
              help="JSONL prompts: {\"prompt\"} or {\"messages\"}, optional \"kind\" (harmful | benign), \"id\", "
                   "\"reference\".")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The answers file (JSONL, one row per prompt and strategy with the whole conversation).")
@click.option("--overwrite", is_flag=True, help="Replace an existing answers file.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Tokens per answer and per rewrite.")
@click.option("--critique-max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Tokens per critique (default: --max-new-tokens).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Conversations decoded at once by a local model (default: by length, up to 256).")
@click.option("--critique-prompt", default=None, help="Replace the paper's critique request.")
@click.option("--rewrite-prompt", default=None, help="Replace the paper's rewrite request.")
@click.option("--merge-cache", type=click.Path(file_okay=False), default=None,
              help="rr-merge: write the merged model there through the merge engine (reused by later runs with "
                   "the same inputs) instead of merging in memory.")
@device_option("Where local models run.")
def run_cmd(model: str, critic: str | None, strategy: str, merge_weight: str | None, prompts_path: str, out: str,
            overwrite: bool, max_new_tokens: int, critique_max_new_tokens: int | None, batch_size: int | None,
            critique_prompt: str | None, rewrite_prompt: str | None, merge_cache: str | None, device: str) -> None:
    """Answer every prompt with each strategy and write the conversations.

    Example: modelmix critique run --model smol/base --critic smol/critic --strategy all --prompts p.jsonl
    --out answers.jsonl
    """
    from pathlib import Path

    from modelmix.critique.chat import parse_remote
    from modelmix.critique.prompts import CRITIQUE_PROMPT, REWRITE_PROMPT, load_prompts
    from modelmix.critique.run import parse_strategies, parse_weights, run
    from modelmix.io.outputs import check_output_file, write_file_atomic

    parse_strategies(strategy)
    parse_weights(merge_weight)
    for flag, text in (("--critique-prompt", critique_prompt), ("--rewrite-prompt", rewrite_prompt)):
        if text is not None and not text.strip():
            raise click.UsageError(f"{flag} is empty; leave it out for the paper's prompt.")
    inputs = [("--prompts", prompts_path)] + [(flag, ref) for flag, ref in (("--model", model), ("--critic", critic))
                                            if ref and parse_remote(ref) is None]
    if merge_cache:
        inputs.append(("--merge-cache", merge_cache))
    check_output_file(out, overwrite=overwrite, inputs=[(k, Path(v)) for k, v in inputs], suffix=(".jsonl",),
                      what="--out")
    prompts = load_prompts(prompts_path)
    rows = run(prompts, strategy, model, critic=critic, merge_weight=merge_weight, device=device,
               batch_size=batch_size, max_new_tokens=max_new_tokens, critique_max_new_tokens=critique_max_new_tokens,
               critique_prompt=critique_prompt or CRITIQUE_PROMPT, rewrite_prompt=rewrite_prompt or REWRITE_PROMPT,
               merge_cache=merge_cache, log=lambda s: click.echo(s, err=True))
    write_file_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), what="--out")
    click.echo(f"wrote {out}: {len(rows)} answers ({len(prompts)} prompts x {len(rows) // len(prompts)} runs)")


@critique.command("eval")
@click.option("--answers", "answers", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Answers file(s) written by `critique run`; repeat the flag to compare several.")
@click.option("--guard", default="lexicon", show_default=True,
              help="What judges an answer unsafe: lexicon, regex:PATTERN, python:MODULE:FUNCTION, or model:PATH "
                   "(a Llama-Guard-style model; or model:URL#MODEL).")
@device_option("Where a model guard runs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line: {\"strategies\": {label: metrics}}.")
def eval_cmd(answers: tuple[str, ...], guard: str, device: str, as_json: bool) -> None:
    """ASR with bootstrap 95 % CIs, over-refusal, helpfulness and cost per strategy, one table."""
    from modelmix.critique.guard import load_guard
    from modelmix.critique.metrics import check_rows, summarize, table
    from modelmix.eval.data import jsonl_objects

    rows = []
    for path in answers:
        mine = [obj for _, obj in jsonl_objects(path, "Answers file")]
        check_rows(mine, path)
        rows.extend(mine)
    models = {str(r.get("model")) for r in rows}
    if len(models) > 1:  # answers of several models: each strategy's label names its model
        from pathlib import Path

        for r in rows:
            r["label"] = f"{r.get('label') or r['strategy']} ({Path(str(r.get('model'))).name})"
    check_rows(rows, ", ".join(answers))
    g = load_guard(guard, device=device)
    summary = summarize(rows, g)
    if as_json:
        sys.stdout.write(json.dumps({"guard": g.name, "unparsed": g.unparsed, "strategies": summary}) + "\n")
        return
    click.echo(table(summary))
    click.echo(f"guard: {g.name}" + (f" ({g.unparsed} replies unreadable, counted unsafe)" if g.unparsed else ""))


@critique.command("bench")
@click.option("--zoo", "zoo_dir", required=True, type=click.Path(file_okay=False),
              help="A smol zoo (zoo build --preset smol): its base and its critic.")
@click.option("--harmful", type=click.IntRange(min=1), default=200, show_default=True, help="Attack prompts.")
@click.option("--benign", type=click.IntRange(min=1), default=100, show_default=True, help="Benign prompts.")
@click.option("--weights", default="0.25,0.5,0.75", show_default=True,
              help="RR-merge's sweep of the critic's share; the table's rr-merge row is 0.5 (the paper's).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Tokens per answer, critique and rewrite.")
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help="Keep the prompts and answers files in this new directory (default: a temporary one).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier --work directory.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prompt set.")
@device_option("Where the models run.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line.")
def bench_cmd(zoo_dir: str, harmful: int, benign: int, weights: str, max_new_tokens: int, work: str | None,
              overwrite: bool, seed: int, device: str, as_json: bool) -> None:
    """The miniature replication: every strategy on fictional jailbreaks, one table, and the issue's targets."""
    from modelmix.critique.bench import bench, render

    res = bench(zoo_dir, n_harmful=harmful, n_benign=benign, weights=weights, max_new_tokens=max_new_tokens,
                work=work, overwrite=overwrite, seed=seed, device=device,
                log=None if as_json else (lambda s: click.echo(s, err=True)))
    if as_json:
        sys.stdout.write(json.dumps(res) + "\n")
        return
    click.echo(render(res))
