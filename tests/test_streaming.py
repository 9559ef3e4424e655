"""The row-chunked multi-pass streamers equal the whole-tensor reference methods."""

from __future__ import annotations

import math

import pytest
import torch

from modelmix.methods import get_method
from modelmix.streaming import STREAMERS


class _Src:
    def __init__(self, xs, base, step):
        self.xs, self.base, self.step = xs, base, step
        self.shape = tuple(base.shape)
        self.numel = math.prod(self.shape)
        self.out = torch.full(base.shape, float("nan"))

    def chunks(self):
        for r0 in range(0, self.shape[0], self.step):
            r1 = min(self.shape[0], r0 + self.step)
            yield (r0, r1), [x[r0:r1].clone() for x in self.xs], self.base[r0:r1].clone()

    def emit(self, rows, out):
        self.out[rows[0] : rows[1]] = out


def _inputs(shape, n=3, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    xs = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n)]
    if ties:  # many exactly equal magnitudes: tie handling must follow index order like the reference
        xs = [base + torch.round(x - base, decimals=1) for x in xs]
    return xs, base


CASES = [
    ("ties", {"weight": [0.5, 1.0, 0.7], "density": [0.3, 0.5, 1.0]}),
    ("ties", {"weight": [1.0, 1.0, 1.0], "density": [0.0, 0.2, 0.9], "consensus_method": "count", "lambda": 0.8}),
    ("dare_ties", {"weight": [0.5, 1.0, 0.7], "density": [0.3, 0.5, 1.0], "seed": 11}),
    ("dare_linear", {"weight": [0.5, 1.0, 0.7], "density": [0.3, 0.5, 0.0], "seed": 3, "rescale": "inverse_density"}),
    ("breadcrumbs", {"weight": [1.0, 1.0, 1.0], "density": [0.5, 0.8, 0.3], "gamma": [0.05, 0.0, 0.3]}),
    ("breadcrumbs_ties", {"weight": [1.0, 0.5, 1.0], "density": [0.5, 0.9, 0.3], "gamma": [0.05, 0.1, 0.01]}),
    ("della", {"weight": [1.0, 0.5, 1.0], "density": [0.5, 0.4, 0.3], "epsilon": [0.1, 0.2, 0.05], "seed": 5}),
    ("della_linear", {"weight": [1.0, 0.5, 1.0], "density": [0.5, 0.4, 0.3], "epsilon": [0.1, 0.2, 0.05], "seed": 5}),
]


@pytest.mark.parametrize("use_fused", [True, False])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape,step", [((37, 23), 5), ((64, 48), 64), ((101,), 17)])
@pytest.mark.parametrize("name,params", CASES)
def test_streamer_equals_reference(name, params, shape, step, ties, use_fused, monkeypatch):
    from modelmix.kernels import fused

    if use_fused and not fused.AVAILABLE:
        pytest.skip("numba not installed")
    monkeypatch.setattr(fused, "AVAILABLE", use_fused)
    m = get_method(name)
    fn, applies = STREAMERS[name]
    if not applies(shape, params):
        pytest.skip("streamer does not apply to this shape")
    xs, base = _inputs(shape, ties=ties)
    full = {p.name: p.default for p in m.params}
    full.update(params)
    ref = m.fn(xs, base=base, **full)
    src = _Src(xs, base, step)
    fn(src, **full)
    torch.testing.assert_close(src.out, ref, rtol=1e-5, atol=1e-6)
    if rescale_free(full):  # no float64 sums involved: the fused kernels are bit-identical to the reference
        assert torch.equal(src.out, ref)


def rescale_free(p) -> bool:
    return p.get("rescale") in ("none", False, "inverse_density")


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_slerp_streamer(t):
    xs, base = _inputs((40, 30), n=1)
    ref = get_method("slerp").fn(xs, base=base, t=t)
    src = _Src(xs, base, 7)
    STREAMERS["slerp"][0](src, t=t)
    torch.testing.assert_close(src.out, ref, rtol=1e-5, atol=1e-6)
    colinear = [base * 2]
    src = _Src(colinear, base, 7)
    STREAMERS["slerp"][0](src, t=t)
    torch.testing.assert_close(src.out, get_method("slerp").fn(colinear, base=base, t=t))


def test_counter_uniforms_numba_equals_numpy_and_are_uniform(monkeypatch):
    from modelmix.kernels import fused
    from modelmix.kernels.masks import model_seed, uniforms

    a = uniforms(model_seed(7, 1), 1000, 5000)
    monkeypatch.setattr(fused, "AVAILABLE", False)
    b = uniforms(model_seed(7, 1), 1000, 5000)
    assert torch.equal(a, b)
    assert torch.equal(uniforms(model_seed(7, 1), 3000, 10), a[2000:2010])  # a pure function of the index
    assert not torch.equal(uniforms(model_seed(7, 2), 1000, 5000), a)  # models have independent streams
    big = uniforms(model_seed(3, 0), 0, 200_000)
    assert 0 <= float(big.min()) and float(big.max()) < 1
    assert abs(float(big.mean()) - 0.5) < 0.01 and abs(float((big < 0.3).float().mean()) - 0.3) < 0.01
