"""Dev check: every modelmix merge method against mergekit 0.1.5 on random tensors (not part of the tests:
CI has no mergekit). Run with the bench venv, which has both:

    .bench-venv/bin/python benchmarks/check_methods_vs_mergekit.py

Random methods (DARE, DELLA) are compared by replacing mergekit's ``torch.bernoulli`` with a draw from the
same CPU generator modelmix uses (``u < p`` over the flattened tensor, model by model), so the masks agree
and everything else (ranks, rescaling, sign election, normalization) is checked exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import mergekit.sparsify as mk_sparsify  # noqa: E402
from mergekit.merge_methods import merge_tensors  # noqa: E402

from modelmix.kernels.select import CHUNK  # noqa: E402
from modelmix.methods import get_method  # noqa: E402

SHAPES = [(64, 48), (37,), (3, 5, 7), (1, 1)]


class _PatchedBernoulli:
    """Stand-in for torch.bernoulli inside mergekit.sparsify, drawing from modelmix's generator scheme."""

    def __init__(self) -> None:
        self.gen = torch.Generator(device="cpu")
        self.real = torch.bernoulli

    def seed(self, seed: int) -> None:
        self.gen.manual_seed(seed)

    def __call__(self, p: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        flat = p.reshape(-1)
        out = torch.empty_like(flat)
        for s in range(0, flat.numel(), CHUNK):
            u = torch.rand(min(CHUNK, flat.numel() - s), generator=self.gen, dtype=torch.float32)
            out[s : s + u.numel()] = (u < flat[s : s + u.numel()].float()).to(out.dtype)
        return out.view(p.shape)


_bern = _PatchedBernoulli()


class _TorchProxy:
    """mergekit.sparsify's `torch`, with bernoulli replaced."""

    def __getattr__(self, name: str):
        return _bern if name == "bernoulli" else getattr(torch, name)


mk_sparsify.torch = _TorchProxy()  # type: ignore[assignment]


def ours(name, base, models, gparams=None, mparams=None, seed=None):
    m = get_method(name)
    kw = dict(gparams or {})
    kw.update(mparams or {})
    if m.random:
        kw["seed"] = seed
    return m.fn(models, base=base, **kw)


def theirs(name, base, models, params, seed=None):
    if seed is not None:
        _bern.seed(seed)
    if base is None:
        return merge_tensors(models, name, parameters=params)
    return merge_tensors([base, *models], name, parameters=params, base_index=0)


def case(name, base, models, g=None, mp=None, seed=1234, use_base_in_mk=True):
    a = ours(name, base, models, g, mp, seed)
    params = dict(g or {})
    params.update(mp or {})
    b = theirs(
        name, base if use_base_in_mk else None, models if use_base_in_mk else [base, *models], params, seed
    )
    return _diff(a, b)


def _diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """(max abs difference, number of elements differing by more than 1e-4)."""
    if not a.numel():
        return 0.0, 0
    d = (a - b).abs()
    return d.max().item(), int((d > 1e-4).sum())


def main() -> None:
    torch.manual_seed(0)
    results: dict[str, tuple[float, int]] = {}

    def rec(label: str, diff: tuple[float, int] | float) -> None:
        d = diff if isinstance(diff, tuple) else (diff, -1)
        old = results.get(label, (0.0, 0))
        results[label] = (max(old[0], d[0]), max(old[1], d[1]))

    for shape in SHAPES:
        base = torch.randn(shape)
        ms = [base + 0.1 * torch.randn(shape) for _ in range(3)]
        w3 = [0.5, 0.3, 0.8]
        # linear / karcher / passthrough treat every input alike (no base)
        a = get_method("linear").fn([base, *ms], base=None, weight=[0.2, *w3], normalize=True)
        b = merge_tensors([base, *ms], "linear", parameters={"weight": [0.2, *w3], "normalize": True})
        rec("linear", _diff(a, b))
        a = get_method("linear").fn(ms, base=None, weight=w3, normalize=False)
        b = merge_tensors(ms, "linear", parameters={"weight": w3, "normalize": False})
        rec("linear", _diff(a, b))
        a = get_method("karcher").fn([base, *ms], base=None, max_iter=10, tol=1e-5)
        b = merge_tensors([base, *ms], "karcher")
        rec("karcher", _diff(a, b))
        a = get_method("passthrough").fn([ms[0]], base=None, scale=[0.5])
        b = merge_tensors([ms[0]], "passthrough", parameters={"scale": [0.5]})
        rec("passthrough", _diff(a, b))

        for t in (0.0, 0.3, 1.0):
            rec("slerp", case("slerp", base, ms[:1], {"t": t}))
            rec("slerp(colinear)", case("slerp", base, [base * 2], {"t": t}))
            rec("nearswap", case("nearswap", base, ms[:1], {"t": t * 0.1}))
        for rw, fl in ((False, True), (False, False), (True, False)):
            g = {"nuslerp_row_wise": rw, "nuslerp_flatten": fl}
            rec("nuslerp(base)", case("nuslerp", base, ms[:2], g, {"weight": [0.3, 0.6]}))
            a = get_method("nuslerp").fn(ms[:2], base=None, weight=[0.3, 0.6], **g)
            b = merge_tensors(ms[:2], "nuslerp", parameters={"weight": [0.3, 0.6], **g})
            rec("nuslerp(no base)", _diff(a, b))
        rec("multislerp(base)", case("multislerp", base, ms, {}, {"weight": w3}))
        a = get_method("multislerp").fn(ms, base=None, weight=w3)
        b = merge_tensors(ms, "multislerp", parameters={"weight": w3})
        rec("multislerp(no base)", _diff(a, b))
        for fw in (False, True):
            rec("model_stock", case("model_stock", base, ms, {"filter_wise": fw}))
        for k in (1.0, 0.5, 0.1):
            rec("sce", case("sce", base, ms, {"select_topk": k}))

        for density in (1.0, 0.7, 0.3, 0.0):
            mp = {"weight": w3, "density": [density, min(1.0, density + 0.2), density]}
            for name in (
                "task_arithmetic",
                "ties",
                "dare_linear",
                "dare_ties",
                "breadcrumbs",
                "breadcrumbs_ties",
            ):
                for g in ({}, {"normalize": True, "lambda": 0.7}, {"normalize": False, "rescale": True}):
                    rec(name, case(name, base, ms, g, mp))
            if 0.2 <= density <= 0.8 and shape[-1] > 1:  # mergekit: NaN keep-probabilities for 1-wide rows
                for name in ("della", "della_linear"):
                    for g in ({}, {"normalize": False, "rescale": False, "lambda": 1.3}):
                        rec(name, case(name, base, ms, g, {**mp, "epsilon": [0.1, 0.05, 0.15]}))
        rec(
            "breadcrumbs",
            case("breadcrumbs", base, ms, {}, {"weight": w3, "density": [0.5] * 3, "gamma": [0.2] * 3}),
        )

    # One tensor larger than the select/draw CHUNK, so chunk boundaries are exercised.
    base = torch.randn(2100, 2048)
    ms = [base + 0.01 * torch.randn_like(base) for _ in range(2)]
    mp = {"weight": [0.6, 0.9], "density": [0.4, 0.25]}
    for name in ("ties", "dare_ties", "breadcrumbs_ties"):
        rec(f"{name} (4.3M)", case(name, base, ms, {}, mp))
    rec("della (4.3M)", case("della", base, ms, {}, {**mp, "epsilon": [0.1, 0.1]}))
    rec("sce (4.3M)", case("sce", base, ms, {"select_topk": 0.3}))

    print(f"{'method':24s} {'max |diff|':>10s}  elements off by >1e-4 (worst case)")
    for k, (v, n) in results.items():
        print(f"{k:24s} {v:10.3g}  {n}")


if __name__ == "__main__":
    main()
