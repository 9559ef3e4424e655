"""Streaming task-vector statistics: norms, cosines, top-k sign conflicts and top-k overlap.

Everything is computed tensor by tensor, so memory is bounded by the largest tensor, not the model:

* For each tensor and model ``i`` the task vector ``tau_i = float32(M_i) - float32(B)`` is built in row
  chunks read with ``pread`` into reusable buffers (no mmap, no whole-model state dict).
* The per-tensor top-k threshold (the exact ``k``-th largest ``|tau_i|``, ``k = max(1, int(top_k * n))``,
  the same ``k`` TIES uses) comes from the linear-time radix select in :mod:`modelmix.kernels.select`;
  it needs the whole tensor's ``tau_i``, so one float32 copy per model is held while its tensor is
  processed. When all models' copies together would exceed ``keep_bytes`` (only the embedding and
  ``lm_head`` of typical models), they are built one model at a time for the threshold and rebuilt chunk by
  chunk for the pairwise pass, so the peak is one float32 tensor plus chunk buffers.
* Sums are accumulated per chunk in float32 (BLAS dot products) and across chunks in float64 (Python
  floats); counts are exact integers.

Tensors are independent, so they are processed by a small thread pool (torch releases the GIL); each
worker runs torch single-threaded, which beats intra-op threading on small shared machines.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from modelmix.errors import InputError
from modelmix.io.checkpoint import Checkpoint
from modelmix.io.safetensors_file import FileReader
from modelmix.kernels.select import select_kth
from modelmix.planner import layer_index

CHUNK_ELEMS = 1 << 20  # elements per row chunk: temporaries of a few MiB stay cache-friendly
KEEP_BYTES = 128 << 20  # hold all models' float32 task vectors of a tensor at once up to this size


@dataclass
class TensorStats:
    """Raw sums for one tensor (or an aggregate of several): everything else is derived from these."""

    n: int = 0
    base_sq: float = 0.0
    sq: list[float] = field(default_factory=list)  # per model: sum tau_i^2
    topk: list[int] = field(default_factory=list)  # per model: |S_i|, the top-k set size
    dot: dict[tuple[int, int], float] = field(default_factory=dict)  # i < j: sum tau_i * tau_j
    both: dict[tuple[int, int], int] = field(default_factory=dict)  # |S_i & S_j|
    conflict: dict[tuple[int, int], int] = field(default_factory=dict)  # |{p in S_i & S_j: sign differs}|

    @classmethod
    def zeros(cls, m: int) -> TensorStats:
        pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
        return cls(0, 0.0, [0.0] * m, [0] * m, dict.fromkeys(pairs, 0.0), dict.fromkeys(pairs, 0),
                   dict.fromkeys(pairs, 0))

    def add(self, o: TensorStats) -> None:
        self.n += o.n
        self.base_sq += o.base_sq
        for i in range(len(self.sq)):
            self.sq[i] += o.sq[i]
            self.topk[i] += o.topk[i]
        for p in self.dot:
            self.dot[p] += o.dot[p]
            self.both[p] += o.both[p]
            self.conflict[p] += o.conflict[p]

    # -- derived quantities (None where undefined, e.g. a zero task vector) -----------------------------
    def norm(self, i: int) -> float:
        return math.sqrt(self.sq[i])

    def cosine(self, i: int, j: int) -> float | None:
        if i == j:
            return 1.0 if self.sq[i] > 0 else None
        a, b = min(i, j), max(i, j)
        den = math.sqrt(self.sq[a] * self.sq[b])
        return max(-1.0, min(1.0, self.dot[(a, b)] / den)) if den > 0 else None

    def conflict_rate(self, i: int, j: int) -> float | None:
        a, b = min(i, j), max(i, j)
        both = self.both[(a, b)]
        return self.conflict[(a, b)] / both if both else None

    def jaccard(self, i: int, j: int) -> float | None:
        a, b = min(i, j), max(i, j)
        union = self.topk[a] + self.topk[b] - self.both[(a, b)]
        return self.both[(a, b)] / union if union else None


@dataclass
class StreamResult:
    """Per-tensor stats (for per-layer grouping) plus the names of tensors that were not analysed."""

    tensors: dict[str, TensorStats]
    layer_of: dict[str, int | None]
    skipped: list[str]


def check_compatible(base: Checkpoint, models: Sequence[Checkpoint]) -> list[str]:
    """Names of the non-empty floating-point tensors to analyse (:func:`modelmix.io.compat.check_compatible`:
    InputError if names, shapes, architectures or vocabularies differ)."""
    from modelmix.io.compat import check_compatible as check

    names = check(base, models, ref_label="the base", purpose="Comparing task vectors")
    return [n for n in names if base.entry(n).numel > 0]


class _Worker:
    """Per-thread readers and reusable raw byte buffers (fresh multi-MiB tensors cost page faults)."""

    def __init__(self, device: torch.device):
        self.reader = FileReader()
        self.device = device
        self.raw: dict[int, torch.Tensor] = {}
        self.f32: dict[int, torch.Tensor] = {}

    def buffer(self, slot: int, nbytes: int) -> torch.Tensor:
        b = self.raw.get(slot)
        if b is None or b.numel() < nbytes:
            b = self.raw[slot] = torch.empty(nbytes, dtype=torch.uint8)
        return b[:nbytes]

    def f32buf(self, slot: int, n: int) -> torch.Tensor:
        b = self.f32.get(slot)
        if b is None or b.numel() < n:
            b = self.f32[slot] = torch.empty(n, dtype=torch.float32, device=self.device)
        return b[:n]

    def read_rows(self, ckpt: Checkpoint, name: str, r0: int, r1: int, out: torch.Tensor, slot: int) -> None:
        """Rows [r0, r1) of ``name`` as float32 into ``out`` (flat, on the device)."""
        e = ckpt.entry(name)
        if getattr(ckpt, "_pickled", None) is not None:
            t = ckpt.read(name, rows=(r0, r1) if len(e.shape) else None)
            out.copy_(t.reshape(-1))
            return
        row_bytes = e.nbytes // max(1, e.shape[0]) if len(e.shape) else e.nbytes
        nbytes = (r1 - r0) * row_bytes
        if e.dtype == torch.float32 and out.device.type == "cpu":
            self.reader.read_into(e, out, r0 * row_bytes, nbytes)
            return
        raw = self.buffer(slot, nbytes)
        self.reader.read_into(e, raw, r0 * row_bytes, nbytes)
        out.copy_(raw.view(e.dtype))

    def close(self) -> None:
        self.reader.close()


def _count(mask: torch.Tensor) -> int:
    return int(torch.count_nonzero(mask))


def _tensor_stats(
    name: str, base: Checkpoint, models: Sequence[Checkpoint], top_k: float, w: _Worker, keep_bytes: int,
    chunk_elems: int,
) -> TensorStats:
    e = base.entry(name)
    shape = tuple(e.shape)
    n = e.numel
    m = len(models)
    rows = shape[0] if shape else 1
    row_elems = n // rows if rows else 1
    step = max(1, chunk_elems // max(1, row_elems))
    spans = [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]
    k = max(1, int(top_k * n))
    dev = w.device
    st = TensorStats.zeros(m)
    st.n = n

    def fill_tau(i: int, r0: int, r1: int, out: torch.Tensor, bchunk: torch.Tensor) -> None:
        w.read_rows(models[i], name, r0, r1, out, slot=1)
        out.sub_(bchunk)

    def base_chunk(r0: int, r1: int) -> torch.Tensor:
        b = w.f32buf(0, (r1 - r0) * row_elems)
        w.read_rows(base, name, r0, r1, b, slot=0)
        return b

    keep = m * n * 4 <= keep_bytes
    thr: list[float] = []
    taus: list[torch.Tensor] = []
    if keep:
        taus = [torch.empty(n, dtype=torch.float32, device=dev) for _ in range(m)]
        for r0, r1 in spans:
            b = base_chunk(r0, r1)
            st.base_sq += float(torch.dot(b, b))
            for i in range(m):
                fill_tau(i, r0, r1, taus[i][r0 * row_elems : r1 * row_elems], b)
        thr = [select_kth(t, k).threshold for t in taus]
    else:
        full = torch.empty(n, dtype=torch.float32, device=dev)
        for i in range(m):
            for r0, r1 in spans:
                b = base_chunk(r0, r1)
                if i == 0:
                    st.base_sq += float(torch.dot(b, b))
                fill_tau(i, r0, r1, full[r0 * row_elems : r1 * row_elems], b)
            thr.append(select_kth(full, k).threshold)
        del full

    pairs = list(st.dot)
    for r0, r1 in spans:
        s0, s1 = r0 * row_elems, r1 * row_elems
        if keep:
            ch = [t[s0:s1] for t in taus]
        else:
            b = base_chunk(r0, r1)
            ch = []
            for i in range(m):
                t = w.f32buf(2 + i, s1 - s0)
                fill_tau(i, r0, r1, t, b)
                ch.append(t)
        masks, negs = [], []
        for i, t in enumerate(ch):
            st.sq[i] += float(torch.dot(t, t))
            a = t.abs()
            # the top-k set: |tau| >= threshold (ties included), never an exact zero
            mask = a > 0 if thr[i] <= 0 else a >= thr[i]
            st.topk[i] += _count(mask)
            masks.append(mask)
            negs.append(t < 0)
        for i, j in pairs:
            st.dot[(i, j)] += float(torch.dot(ch[i], ch[j]))
            both = masks[i] & masks[j]
            st.both[(i, j)] += _count(both)
            st.conflict[(i, j)] += _count(both.logical_and_(negs[i] != negs[j]))
    for i in range(m):
        if not math.isfinite(st.sq[i]):
            raise InputError(f"Tensor {name!r} of {models[i].ref} (or of the base) contains NaN or Inf values.")
    return st


def _schedule(names: list[str], base: Checkpoint, m: int, keep_bytes: int) -> list[str]:
    """Largest first (load balance), but the too-big-to-keep tensors spread evenly among the rest, so one
    worker handles a big tensor while the others work through small ones instead of waiting for the lock."""
    by_size = sorted(names, key=lambda n: -base.entry(n).numel)
    big = [n for n in by_size if m * base.entry(n).numel * 4 > keep_bytes]
    small = [n for n in by_size if m * base.entry(n).numel * 4 <= keep_bytes]
    if not big:
        return small
    out: list[str] = []
    per = -(-len(small) // len(big))
    for i, b in enumerate(big):
        out.append(b)
        out.extend(small[i * per : (i + 1) * per])
    return out


def stream_stats(
    base: Checkpoint,
    models: Sequence[Checkpoint],
    top_k: float,
    *,
    device: str = "cpu",
    workers: int | None = None,
    keep_bytes: int = KEEP_BYTES,
    chunk_elems: int = CHUNK_ELEMS,
    progress: Callable[[int, int], None] | None = None,
) -> StreamResult:
    """Per-tensor :class:`TensorStats` for every floating-point tensor (see the module docstring)."""
    names = check_compatible(base, models)
    skipped = [n for n in base.names() if n not in set(names)]
    dev = torch.device(device)
    if workers is None:
        workers = 1 if dev.type == "cuda" else max(1, min(4, os.cpu_count() or 1))
    order = _schedule(names, base, len(models), keep_bytes)
    big_lock = threading.Lock()  # at most one tensor too big to keep is in flight: bounds peak memory
    local = threading.local()
    all_workers: list[_Worker] = []
    lock = threading.Lock()

    def run(name: str) -> TensorStats:
        w = getattr(local, "w", None)
        if w is None:
            w = local.w = _Worker(dev)
            with lock:
                all_workers.append(w)
        if len(models) * base.entry(name).numel * 4 > keep_bytes:
            with big_lock:
                return _tensor_stats(name, base, models, top_k, w, keep_bytes, chunk_elems)
        return _tensor_stats(name, base, models, top_k, w, keep_bytes, chunk_elems)

    prev_threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)
    out: dict[str, TensorStats] = {}
    try:
        # each worker sets its own thread count: OpenMP's is per OS thread, the caller's does not reach it
        with torch.no_grad(), ThreadPoolExecutor(max_workers=workers, initializer=torch.set_num_threads,
                                                 initargs=(1,)) as ex:
            futures = {n: ex.submit(run, n) for n in order}
            try:
                for done, n in enumerate(order, 1):
                    out[n] = futures[n].result()
                    if progress is not None:
                        progress(done, len(order))
            except BaseException:
                for f in futures.values():  # fail fast: do not finish the remaining tensors
                    f.cancel()
                raise
    finally:
        torch.set_num_threads(prev_threads)
        for w in all_workers:
            w.close()
    tensors = {n: out[n] for n in names}
    return StreamResult(tensors=tensors, layer_of={n: layer_index(n) for n in names}, skipped=skipped)
