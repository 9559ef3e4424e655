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
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ex = addition_examples(args.n)
    with tempfile.TemporaryDirectory() as d:
        save_tiny_llama(d, hidden=args.hidden, layers=args.layers, heads=4, intermediate=2 * args.hidden)
        t0 = time.perf_counter()
        em = EvalModel.from_pretrained(d)
        t_load = time.perf_counter() - t0
    n_params = sum(p.numel() for p in em.model.parameters())
    print(f"model: {n_params / 1e6:.2f}M params, threads={torch.get_num_threads()}, n={args.n}")
    print(f"load            {t_load:6.2f} s wall (transformers already imported)")
    if args.threads:
        em.num_threads = args.threads
    M.loss(em, ex[:8])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    r = M.loss(em, ex, batch_size=args.batch_size)
    print(
        f"loss            {time.perf_counter() - t0:6.2f} s wall {time.process_time() - c0:6.2f} s cpu  {r}"
    )
    t0, c0 = time.perf_counter(), time.process_time()
    r = M.exact_match(em, ex, batch_size=args.batch_size)
    print(
        f"exact_match     {time.perf_counter() - t0:6.2f} s wall {time.process_time() - c0:6.2f} s cpu  {r} (untrained)"
    )
    if args.hf_generate:
        tok = em.tokenizer
        tok.padding_side = "left"
        budget = 2 * max(len(e["output"]) for e in ex) + 4
        t0, c0 = time.perf_counter(), time.process_time()
        bs = args.batch_size or 256
        prompts = sorted((e["input"] for e in ex), key=len)
        with torch.inference_mode(), em.threads():
            for i in range(0, len(prompts), bs):
                enc = tok(prompts[i : i + bs], return_tensors="pt", padding=True)
                em.model.generate(
                    **enc,
                    max_new_tokens=budget,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"hf generate     {wall:6.2f} s wall {cpu:6.2f} s cpu  (same budget {budget}, batch {bs})")


if __name__ == "__main__":
    main()
