"""Subspace merging: Task Singular Vectors (TSV-Merge).

Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging", CVPR 2025,
https://arxiv.org/abs/2412.00081.

Why: the task vectors of different fine-tunes are low-rank per layer, and most interference comes from
their top singular directions overlapping. TSV-Merge keeps each task's top singular directions and
decorrelates them before summing, so tasks stop overwriting each other's dominant directions.

For every 2-D weight, with base ``B`` and models ``X_i``:

1. task vector ``D_i = X_i - B``, truncated SVD ``D_i ~= U_i S_i V_i^T`` keeping ``rank`` directions, or
   (``rank: 0``) the fewest directions holding an ``energy`` fraction of ``||D_i||_F^2``;
2. concatenate ``U = [U_1 .. U_n]``, ``V = [V_1 .. V_n]``, ``S = diag(w_1 S_1, .., w_n S_n)``;
3. orthogonalise with the polar factor: ``U_perp = P Q^T`` from the thin SVD ``U = P Sigma Q^T``
   (the orthonormal matrix closest to ``U`` in Frobenius norm), likewise ``V_perp``;
4. result ``B + lambda * U_perp S V_perp^T``.

Each task keeps at most ``min(rows, cols) // n`` directions (the paper's 1/n "sv_reduction" is exactly
this cap): more than ``min(rows, cols)`` directions in total cannot be mutually orthonormal, and the
polar factor of an over-complete concatenation would shrink every task's contribution.

One model at full rank gives back task arithmetic (``U_1`` is already orthonormal); tasks with mutually
orthogonal singular spaces give their plain sum; the update has rank at most ``n * rank``. 1-D tensors
(norms, biases) and tensors of other ranks fall back to task arithmetic ``B + lambda * sum_i w_i D_i``.

Memory per tensor: the inputs plus ``n * k * (rows + cols)`` factors. Matrices whose smaller side exceeds
``_RSVD_MIN_DIM`` use a randomized SVD (Halko et al. 2011) seeded from the per-tensor seed on a CPU
``torch.Generator``; ``torch.svd_lowrank`` is not used because it draws from the global RNG, which is
neither reproducible across threads nor per tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modelmix.methods._common import as_f32, check_count
from modelmix.methods.registry import Method, Param, register

_RSVD_MIN_DIM = 1024  # randomized SVD only above this smaller side; exact SVD is fast enough below
_OVERSAMPLE = 10
_POWER_ITERS = 4


def _rank_for_energy(s: Tensor, energy: float, total: float) -> int:
    """Fewest leading singular values whose squared sum reaches ``energy * total`` (relative tolerance
    1e-6, so ``energy: 1`` does not keep roundoff-level directions)."""
    if total <= 0:
        return 0
    cum = torch.cumsum(s.double() ** 2, 0)
    target = energy * total * (1 - 1e-6)
    k = int(torch.searchsorted(cum, torch.tensor([target], dtype=cum.dtype)).item()) + 1
    return min(k, s.numel())


def _randomized_svd(a: Tensor, q: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``q`` SVD ``(U, S, V)`` by a randomized range finder with power iterations."""
    m, n = a.shape
    omega = torch.randn(n, q, generator=gen, dtype=torch.float32).to(a.device)
    y = a @ omega
    for _ in range(_POWER_ITERS):
        y, _r = torch.linalg.qr(y)
        z, _r = torch.linalg.qr(a.T @ y)
        y = a @ z
    basis, _r = torch.linalg.qr(y)
    ub, s, vh = torch.linalg.svd(basis.T @ a, full_matrices=False)
    return basis @ ub, s, vh.T


def truncated_svd(
    d: Tensor, rank: int, energy: float, gen: torch.Generator | None = None, max_k: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(U, S, V)`` of ``d`` with ``k`` columns: ``rank`` when > 0, else the energy-based rank; at most
    ``max_k`` columns."""
    m, n = d.shape
    full = min(m, n)
    if max_k is not None:
        rank = min(rank, max_k) if rank > 0 else rank
    if full > _RSVD_MIN_DIM and gen is not None:
        total = float(torch.linalg.vector_norm(d, dtype=torch.float64) ** 2)
        q = min(full, rank if rank > 0 else 32)
        while 2 * (q + _OVERSAMPLE) < full:
            u, s, v = _randomized_svd(d, q + _OVERSAMPLE, gen)
            k = min(rank, q) if rank > 0 else _rank_for_energy(s, energy, total)
            # energy mode: accept only if the sketch captured the target (k within the sketch) or the cap
            captured = k < s.numel() and float((s[:k].double() ** 2).sum()) >= energy * total * (1 - 1e-6)
            if rank > 0 or captured or (max_k is not None and k >= max_k):
                k = k if max_k is None else min(k, max_k)
                return _drop_null(u[:, :k], s[:k], v[:, :k], max(m, n))
            q *= 2
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    if rank > 0:
        k = min(rank, full)
    else:
        k = _rank_for_energy(s, energy, float((s.double() ** 2).sum()))
        k = k if max_k is None else min(k, max_k)
    return _drop_null(u[:, :k], s[:k], vh[:k].T, max(m, n))


def _drop_null(u: Tensor, s: Tensor, v: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Drop directions below the numerical rank (``matrix_rank``'s tolerance): their singular vectors are
    arbitrary, and orthogonalising them against other tasks' directions would rotate real ones."""
    if not s.numel():
        return u, s, v
    keep = int((s > s[0] * size * torch.finfo(torch.float32).eps).sum())
    return u[:, :keep], s[:keep], v[:, :keep]


def _polar(a: Tensor) -> Tensor:
    """Orthonormal factor ``P Q^T`` of the thin SVD ``a = P Sigma Q^T`` (closest orthonormal matrix)."""
    p, _sigma, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def subspace(
    tensors: list[Tensor],
    *,
    base: Tensor | None,
    weight: list[float],
    rank: int = 0,
    energy: float = 0.9,
    seed: int = 0,
    **params: float,
) -> Tensor:
    """TSV-Merge of one tensor (see the module docstring); ``lambda`` arrives in ``params``."""
    check_count("subspace", tensors, weight, "weight")
    lam = float(params.pop("lambda", 1.0))
    if params:
        raise TypeError(f"subspace: unexpected parameters {sorted(params)}")
    b = as_f32(base)  # type: ignore[arg-type]
    if not tensors:
        return b.clone()
    if b.dim() != 2:
        out = torch.zeros_like(b)
        for t, w in zip(tensors, weight, strict=True):
            out.add_(as_f32(t) - b, alpha=float(w))
        return b + lam * out if lam != 1 else b + out
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    # the n tasks' directions must fit side by side, else the polar factor cannot keep them orthonormal
    max_k = max(1, min(b.shape) // max(1, sum(1 for w in weight if w != 0)))
    us: list[Tensor] = []
    ss: list[Tensor] = []
    vs: list[Tensor] = []
    for t, w in zip(tensors, weight, strict=True):
        if w == 0:
            continue
        u, s, v = truncated_svd(as_f32(t) - b, int(rank), float(energy), gen, max_k)
        if s.numel():
            us.append(u)
            ss.append(s * float(w))
            vs.append(v)
    if not us:
        return b.clone()
    u_perp = _polar(torch.cat(us, 1))
    v_perp = _polar(torch.cat(vs, 1))
    update = (u_perp * torch.cat(ss)) @ v_perp.T
    return b + lam * update if lam != 1 else b + update


register(
    Method(
        name="subspace",
        fn=subspace,
        params=(
            Param("weight", "model", float, 1.0, help="Scale of this model's singular values (its task vector)."),
            Param(
                "rank",
                "global",
                int,
                0,
                low=0,
                help="Singular directions kept per task and matrix; 0 = choose per matrix from `energy`.",
            ),
            Param(
                "energy",
                "global",
                float,
                0.9,
                low=1e-6,
                high=1.0,
                help="With rank 0: keep the fewest directions holding this fraction of the task vector's "
                "squared Frobenius norm.",
            ),
            Param("lambda", "global", float, 1.0, help="Scale applied to the merged task vector."),
        ),
        needs_base=True,
        random=True,  # only the randomized SVD of large matrices draws from the per-tensor seed
        elementwise=False,
        min_models=1,
        description="Task Singular Vectors: low-rank task vectors decorrelated across tasks, then summed.",
        reference="Gargiulo et al. 2025 (TSV-Merge), https://arxiv.org/abs/2412.00081.",
    )
)
