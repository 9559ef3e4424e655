"""Throughput benchmark of the evaluation harness on a tiny char-level Llama (no downloads).

``.venv/bin/python benchmarks/bench_eval.py [--n 600] [--hidden 256] [--layers 3] [--threads N] [--hf-generate]``

Reports load time, exact_match time (greedy generation; an untrained model never emits eos, so this is
the worst case: every row runs to its token budget) and loss time. ``--hf-generate`` also times
``model.generate`` on the same prompts for comparison with the hand-written KV-cache loop.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time


def addition_examples(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        out.append({"input": f"What is {a}+{b}?", "output": str(a + b)})
    return out


def main() -> None:
    import json
    import os
    import statistics

    import torch

    from modelmix.eval import metrics as M
    from modelmix.eval._tiny import save_tiny_llama
    from modelmix.eval.models import EvalModel

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--hf-generate", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs of each measurement (median, range)")
    ap.add_argument("--json", default=None, help="also write every run here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ex = addition_examples(args.n)
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as d:
        save_tiny_llama(d, hidden=args.hidden, layers=args.layers, heads=4, intermediate=2 * args.hidden)
        for _ in range(args.repeat):
            run: dict[str, float] = {"loadavg_1m_before": round(os.getloadavg()[0], 2)}
            t0 = time.perf_counter()
            em = EvalModel.from_pretrained(d)
            run["load_s"] = time.perf_counter() - t0
            if args.threads:
                em.num_threads = args.threads
            M.loss(em, ex[:8])  # warm-up
            t0, c0 = time.perf_counter(), time.process_time()
            r_loss = M.loss(em, ex, batch_size=args.batch_size)
            run["loss_s"], run["loss_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            r_em = M.exact_match(em, ex, batch_size=args.batch_size)
            run["exact_match_s"], run["exact_match_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
            if args.hf_generate:
                run["hf_generate_s"], run["hf_generate_cpu_s"] = _hf_generate(em, ex, args.batch_size)
            runs.append(run)
    n_params = sum(p.numel() for p in em.model.parameters())
    print(f"model: {n_params / 1e6:.2f}M params, threads={torch.get_num_threads()}, n={args.n}, {args.repeat} runs "
          "(median [min-max])")

    def cell(key: str) -> str:
        xs = [r[key] for r in runs]
        return f"{statistics.median(xs):6.2f} s [{min(xs):.2f}-{max(xs):.2f}]"

    print(f"load            {cell('load_s')} wall (transformers already imported)")
    print(f"loss            {cell('loss_s')} wall {cell('loss_cpu_s')} cpu  {r_loss}")
    print(f"exact_match     {cell('exact_match_s')} wall {cell('exact_match_cpu_s')} cpu  {r_em} (untrained)")
    if args.hf_generate:
        print(f"hf generate     {cell('hf_generate_s')} wall {cell('hf_generate_cpu_s')} cpu  (same budget)")
    if args.json:
        summary = {k: {"median": statistics.median([r[k] for r in runs]), "min": min(r[k] for r in runs),
                       "max": max(r[k] for r in runs)} for k in runs[0] if k != "loadavg_1m_before"}
        with open(args.json, "w") as f:
            json.dump({"n_params": n_params, "threads": torch.get_num_threads(), "n": args.n, "hidden": args.hidden,
                       "layers": args.layers, "runs": runs, "summary": summary}, f, indent=2)


def _hf_generate(em, ex, batch_size):  # noqa: ANN001, ANN202 - benchmark helper
    import torch

    tok = em.tokenizer
    tok.padding_side = "left"
    budget = 2 * max(len(e["output"]) for e in ex) + 4
    t0, c0 = time.perf_counter(), time.process_time()
    bs = batch_size or 256
    prompts = sorted((e["input"] for e in ex), key=len)
    with torch.inference_mode(), em.threads():
        for i in range(0, len(prompts), bs):
            enc = tok(prompts[i : i + bs], return_tensors="pt", padding=True)
            em.model.generate(**enc, max_new_tokens=budget, do_sample=False, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)
    tok.padding_side = "right"
    return time.perf_counter() - t0, time.process_time() - c0


if __name__ == "__main__":
    main()
