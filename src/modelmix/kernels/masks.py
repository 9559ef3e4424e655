"""Sparsification of task vectors (deltas) as used by TIES, DARE, breadcrumbs and DELLA (mergekit 0.1.5).

Each function takes a float32 delta and returns a new, sparsified (and optionally rescaled) float32 tensor.
Random masks come from counter-based per-model streams (``uniforms``: a hash of seed and element index),
computed on the CPU and moved to the tensor's device, so the same seed gives bit-identical masks on any device and thread count.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from modelmix.errors import ConfigError
from modelmix.kernels.select import CHUNK, rank_band_mask, topk_mask

Rescale = Literal["l1", "inverse_density", "none"]

_RESCALE_EPS = 1e-7  # mergekit: skip L1 rescaling when either norm is below this


def normalize_rescale(value: object) -> Rescale:
    """Map a recipe's ``rescale`` value to a mode; booleans are mergekit's spelling (true = ``l1``)."""
    if value is True:
        return "l1"
    if value is False or value is None:
        return "none"
    if isinstance(value, str) and value.lower() in ("l1", "inverse_density", "none"):
        return value.lower()  # type: ignore[return-value]
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return "l1" if value.lower() == "true" else "none"
    raise ConfigError(
        f'Invalid rescale value {value!r}: use true/"l1" (rescale kept entries so the L1 norm of the task '
        'vector is unchanged, mergekit\'s behaviour), "inverse_density" (divide kept entries by their keep '
        'probability, the DARE/DELLA paper form) or false/"none".'
    )


def rescale_l1(original: Tensor, masked: Tensor) -> Tensor:
    """Scale ``masked`` (in place) so its L1 norm equals ``original``'s; no-op for (near) zero norms.

    Both norms are float64 fixed-partition sums (``modelmix.kernels.reduce``: per-row partials added in
    row order), the factor is their quotient rounded to float32: what the executor's streamers compute,
    whatever the chunking or thread count."""
    from modelmix.kernels import reduce as red

    row = red.row_len(original.shape)
    before = red.abs_sum(original.contiguous(), row)
    after = red.abs_sum(masked.contiguous(), row)
    if before < _RESCALE_EPS or after < _RESCALE_EPS:
        return masked
    return masked.mul_(float(np.float32(before / after)))


def _finish(delta: Tensor, mask: Tensor, rescale: Rescale, keep_prob: float | Tensor) -> Tensor:
    masked = delta * mask
    if rescale == "l1":
        return rescale_l1(delta, masked)
    if rescale == "inverse_density":
        if isinstance(keep_prob, Tensor):
            return masked.div_(keep_prob)
        return masked.div_(keep_prob) if keep_prob > 0 else masked
    return masked


def magnitude_prune(delta: Tensor, density: float, rescale: Rescale = "none") -> Tensor:
    """Keep the ``max(1, int(density * n))`` largest magnitudes (TIES); density >= 1 keeps everything."""
    if density >= 1:
        return delta.clone()
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    return _finish(delta, topk_mask(delta, k), rescale, density)


def breadcrumbs_prune(delta: Tensor, density: float, gamma: float, rescale: Rescale = "none") -> Tensor:
    """Drop the top ``gamma`` fraction (outliers) and the small tail, keeping ``int(density * n)`` entries.

    As mergekit 0.1.5: when ``density + gamma > 1`` fewer outliers are dropped so the kept count is still
    ``int(density * n)``; with tiny tensors ``int(gamma * n)`` is 0 and only the small tail is dropped
    (an earlier mergekit slicing bug zeroed the whole tensor there).
    """
    if density >= 1:
        return delta.clone()
    n = delta.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bottom = max(0, n - target - n_top)
    # ascending ranks [n_bottom, n_bottom + target)  ==  descending ranks [n - n_bottom - target, n - n_bottom)
    mask = rank_band_mask(delta, n - n_bottom - target, n - n_bottom)
    return _finish(delta, mask, rescale, density)


def model_seed(seed: int, index: int) -> int:
    """Seed of model ``index``'s mask stream for one tensor: every model has its own stream, so a chunked
    executor can produce any model's draws for any element range directly (see ``uniforms``)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    return z ^ (z >> 29)


def uniforms(seed: int, start: int, n: int) -> Tensor:
    """Uniforms in [0, 1) for elements ``start .. start+n`` of mask stream ``seed`` (float32, CPU).

    Counter-based (splitmix64 of seed and element index, top 24 bits): a pure function of the index, so the
    same seed gives bit-identical masks whatever the chunking, thread count or device.
    """
    from modelmix.kernels.backend import kernels

    out = np.empty(n, dtype=np.float32)
    k = kernels()
    if k is not None:
        k.uniforms(np.uint64(seed), np.int64(start), out)
        return torch.from_numpy(out)
    with np.errstate(over="ignore"):  # same arithmetic as the compiled kernels, vectorised (mod 2**64 wraps)
        z = np.uint64(seed) + (np.arange(start, start + n, dtype=np.uint64) + np.uint64(1)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    out[:] = (z >> np.uint64(40)).astype(np.float32) * _INV24
    return torch.from_numpy(out)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_INV24 = np.float32(1.0 / (1 << 24))


def bernoulli_keep_mask(shape: torch.Size, p: float | Tensor, seed: int, device: torch.device) -> Tensor:
    """Mask with each entry kept with probability ``p`` (scalar, or a tensor of per-entry probabilities):
    ``u < p`` with u from mask stream ``seed`` in flat order, computed on the CPU in chunks."""
    numel = 1
    for d in shape:
        numel *= d
    out = torch.empty(numel, dtype=torch.bool, device=device)
    p_flat = p.reshape(-1) if isinstance(p, Tensor) else None
    for s in range(0, numel, CHUNK):
        u = uniforms(seed, s, min(CHUNK, numel - s)).to(device)
        thr = p_flat[s : s + u.numel()] if p_flat is not None else p
        torch.lt(u, thr, out=out[s : s + u.numel()])
    return out.view(shape)


def dare_prune(delta: Tensor, density: float, seed: int, rescale: Rescale = "l1") -> Tensor:
    """DARE: keep each entry with probability ``density``. Every model with density < 1 consumes exactly
    ``numel`` draws (density <= 0 too, as mergekit), so one model's density never shifts another's mask."""
    if density >= 1:
        return delta.clone()
    mask = bernoulli_keep_mask(delta.shape, density, seed, delta.device)
    return _finish(delta, mask, rescale, density)


def della_keep_prob(delta: Tensor, density: float, epsilon: float) -> Tensor:
    """DELLA (MagPrune) keep probabilities: linear in the magnitude rank within each row, in
    ``[density - epsilon, density + epsilon]``; rows are along dim 1 (a 1-D tensor is one row).

    Ranks need an order within a row, so each row is sorted (stable, so ties rank by index): rows are
    short, this is not a whole-tensor sort. A row of one element gets the middle probability ``density``
    (mergekit divides 0 by 0 there).
    """
    t = delta.unsqueeze(0) if delta.dim() < 2 else delta
    mag = t.abs().movedim(1, -1)
    width = mag.shape[-1]
    flat = mag.reshape(-1, width)
    ranks = torch.empty_like(flat)
    rows_per_step = max(1, CHUNK // max(width, 1))
    steps = torch.arange(width, dtype=torch.float32, device=delta.device)
    rank_norm = steps / (width - 1) if width > 1 else torch.full_like(steps, 0.5)
    for r in range(0, flat.shape[0], rows_per_step):
        block = flat[r : r + rows_per_step]
        order = torch.sort(block, dim=-1, stable=True).indices
        ranks[r : r + rows_per_step].scatter_(-1, order, rank_norm.expand_as(block).contiguous())
    probs = (density - epsilon) + ranks * (2 * epsilon)
    return probs.view(mag.shape).movedim(-1, 1).reshape(delta.shape).contiguous()


def della_prune(
    delta: Tensor, density: float, epsilon: float, seed: int, rescale: Rescale = "l1"
) -> Tensor:
    """DELLA: drop entries at random, with small magnitudes dropped more often (MagPrune). For 0 < density
    < 1 the caller has checked that density +/- epsilon lies inside (0, 1) (``methods._gta.check_della``)."""
    if density >= 1:
        return delta.clone()
    if density <= 0:
        return torch.zeros_like(delta)
    probs = della_keep_prob(delta, density, epsilon)
    mask = bernoulli_keep_mask(delta.shape, probs, seed, delta.device)
    return _finish(delta, mask, rescale, probs)
