"""Time the radix top-k kernel against torch.topk / kthvalue on a 65M-element float32 tensor.

    .venv/bin/python benchmarks/bench_select.py [numel] [density]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelmix.kernels.select import select_kth, topk_mask  # noqa: E402


def best(f, repeat: int = 3) -> float:
    out = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        out = min(out, time.perf_counter() - t0)
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 65_000_000
    density = float(sys.argv[2]) if len(sys.argv) > 2 else 0.2
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(n, generator=torch.Generator().manual_seed(0)).to(dev)
    k = int(density * n)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def timed(f):
        return best(lambda: (f(), sync()))

    sel = select_kth(x, k)
    ref = torch.topk(x.abs(), k, sorted=False).values.min().item()
    assert sel.threshold == ref, (sel.threshold, ref)
    print(f"device={dev} threads={torch.get_num_threads()} numel={n} k={k}")
    print(f"radix threshold (select_kth)   {timed(lambda: select_kth(x, k)):.3f} s")
    print(f"radix mask (topk_mask)         {timed(lambda: topk_mask(x, k)):.3f} s")
    print(f"torch.topk(|x|, k)             {timed(lambda: torch.topk(x.abs(), k, sorted=False)):.3f} s")
    print(f"torch.kthvalue(|x|)            {timed(lambda: torch.kthvalue(x.abs(), n - k + 1)):.3f} s")


if __name__ == "__main__":
    main()
