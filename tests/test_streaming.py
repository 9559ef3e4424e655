"""The row-chunked multi-pass streamers equal the whole-tensor reference methods."""

from __future__ import annotations

import math

import pytest
import torch

from modelmix.methods import get_method


def _run(name: str):
    """The streamer of method ``name`` (its ``run``)."""
    st = get_method(name).streamer
    assert st is not None, f"{name} declares no streamer"
    return st.run


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


def _use_backend(name: str, monkeypatch) -> None:
    """Route the streamers through one kernel backend: "c" (ctypes), "numba" or "torch" (no kernels)."""
    from modelmix.kernels import backend

    if name != "torch" and backend._get(name) is None:
        pytest.skip(f"{name} kernels not available")
    monkeypatch.setattr(backend, "FORCE", name)


@pytest.mark.parametrize("kernels", ["c", "numba", "torch"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape,step", [((37, 23), 5), ((64, 48), 64), ((101,), 17)])
@pytest.mark.parametrize("name,params", CASES)
def test_streamer_equals_reference(name, params, shape, step, ties, kernels, monkeypatch):
    _use_backend(kernels, monkeypatch)
    m = get_method(name)
    st = m.streamer
    assert st is not None and st.cache  # several costly passes: the executor may cache the inputs
    full = {p.name: p.default for p in m.params}
    full.update(params)
    if not st.applies(shape, full):
        pytest.skip("streamer does not apply to this shape")
    xs, base = _inputs(shape, ties=ties)
    ref = m.fn(xs, base=base, **full)
    src = _Src(xs, base, step)
    st.run(src, **full)
    torch.testing.assert_close(src.out, ref, rtol=1e-5, atol=1e-6)
    # float64 L1 sums follow the same fixed partition in the streamers (every backend) and the reference
    assert torch.equal(src.out, ref)


@pytest.mark.parametrize("kernels", ["c", "numba", "torch"])
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_slerp_streamer(t, kernels, monkeypatch):
    _use_backend(kernels, monkeypatch)
    xs, base = _inputs((40, 30), n=1)
    ref = get_method("slerp").fn(xs, base=base, t=t)
    src = _Src(xs, base, 7)
    _run("slerp")(src, t=t)
    torch.testing.assert_close(src.out, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(src.out, ref)  # the same fixed-partition float64 statistics as the reference
    colinear = [base * 2]
    src = _Src(colinear, base, 7)
    _run("slerp")(src, t=t)
    torch.testing.assert_close(src.out, get_method("slerp").fn(colinear, base=base, t=t))


def test_counter_uniforms_same_in_every_backend_and_uniform(monkeypatch):
    from modelmix.kernels.masks import model_seed, uniforms

    got = {}
    for name in ("c", "numba", "torch"):
        if name == "torch" or __import__("modelmix.kernels.backend", fromlist=["_get"])._get(name) is not None:
            monkeypatch.setattr("modelmix.kernels.backend.FORCE", name)
            got[name] = uniforms(model_seed(7, 1), 1000, 5000)
    a = got["torch"]  # numpy reference arithmetic
    assert all(torch.equal(a, b) for b in got.values())
    assert torch.equal(uniforms(model_seed(7, 1), 3000, 10), a[2000:2010])  # a pure function of the index
    assert not torch.equal(uniforms(model_seed(7, 2), 1000, 5000), a)  # models have independent streams
    big = uniforms(model_seed(3, 0), 0, 200_000)
    assert 0 <= float(big.min()) and float(big.max()) < 1
    assert abs(float(big.mean()) - 0.5) < 0.01 and abs(float((big < 0.3).float().mean()) - 0.3) < 0.01


@pytest.mark.parametrize("kernels", ["c", "numba"])
def test_kernel_backends_agree_bit_for_bit(kernels, monkeypatch):
    """Conversions and histograms of each compiled backend equal torch/numpy on awkward values."""
    import numpy as np

    from modelmix.kernels import backend

    K = backend._get(kernels)
    if K is None:
        pytest.skip(f"{kernels} kernels not available")
    g = torch.Generator().manual_seed(1)
    raw = torch.randint(-(1 << 15), 1 << 15, (4099,), dtype=torch.int32, generator=g).to(torch.int16)
    out = np.empty(4099, dtype=np.uint32)
    finite = K.bf16_to_f32(raw.numpy().view(np.uint16), out)
    ref = raw.view(torch.bfloat16).float()
    assert torch.equal(torch.from_numpy(out.view(np.float32)).nan_to_num(3.0), ref.nan_to_num(3.0))
    assert bool(finite) == bool(torch.isfinite(ref).all())
    ok = torch.ones(10, dtype=torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert K.bf16_to_f32(ok, np.empty(10, dtype=np.uint32))
    x, b = torch.randn(5000, generator=g).numpy(), torch.randn(5000, generator=g).numpy()
    hist = np.zeros(1 << 16, dtype=np.int64)
    K.hist_hi(x, b, np.empty(5000, dtype=np.float32), hist)
    bits = torch.from_numpy(np.abs(x - b)).view(torch.int32) >> 16
    assert torch.equal(torch.from_numpy(hist), torch.bincount(bits, minlength=1 << 16))
    if hasattr(K, "f32_to_bf16"):
        vals = torch.cat([torch.randn(3000, generator=g) * 1e3, torch.tensor([float("nan"), float("inf"), -0.0, 1e-40])])
        o16 = np.empty(vals.numel(), dtype=np.uint16)
        K.f32_to_bf16(vals.numpy(), o16)
        conv = vals.to(torch.bfloat16)
        mine = torch.from_numpy(o16.view(np.int16))
        num = ~vals.isnan()
        assert torch.equal(mine[num], conv.view(torch.int16)[num])  # round to nearest even, as torch
        assert mine[~num].view(torch.bfloat16).isnan().all()


@pytest.mark.parametrize("kernels", ["c", "numba"])
def test_many_models_task_vector_streamer(kernels, monkeypatch):
    """20 models (more than any fixed scratch size) through the compiled kernels, equal to the reference."""
    _use_backend(kernels, monkeypatch)
    xs, base = _inputs((33, 17), n=20, seed=4)
    params = {"weight": [0.1 * (i + 1) for i in range(20)], "density": [0.3 + 0.03 * i for i in range(20)]}
    m = get_method("ties")
    full = {p.name: p.default for p in m.params}
    full.update(params)
    ref = m.fn(xs, base=base, **full)
    src = _Src(xs, base, 7)
    _run("ties")(src, **full)
    assert torch.equal(src.out, ref)


class _SrcNoBase(_Src):
    def chunks(self):
        for (r0, r1), xs, _b in super().chunks():
            yield (r0, r1), xs, None


@pytest.mark.parametrize("kernels", ["c", "numba", "torch"])
@pytest.mark.parametrize("shape,step", [((37, 23), 5), ((101,), 17), ((6, 5, 4), 2)])
@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_streamer(shape, step, filter_wise, kernels, monkeypatch):
    _use_backend(kernels, monkeypatch)
    xs, base = _inputs(shape, n=3, seed=5)
    ref = get_method("model_stock").fn(xs, base=base, filter_wise=filter_wise)
    src = _Src(xs, base, step)
    _run("model_stock")(src, filter_wise=filter_wise)
    torch.testing.assert_close(src.out, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(src.out, ref)


@pytest.mark.parametrize("shape,step", [((37, 23), 5), ((101,), 17), ((6, 5, 4), 2)])
@pytest.mark.parametrize("flatten,row_wise", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("kernels", ["c", "numba", "torch"])
def test_nuslerp_streamer(shape, step, flatten, row_wise, with_base, kernels, monkeypatch):
    _use_backend(kernels, monkeypatch)
    xs, base = _inputs(shape, n=2, seed=6)
    params = {"weight": [0.3, 0.9], "nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise}
    ref = get_method("nuslerp").fn(xs, base=base if with_base else None, **params)
    src = (_Src if with_base else _SrcNoBase)(xs, base, step)
    _run("nuslerp")(src, **params)
    torch.testing.assert_close(src.out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(src.out, ref)
    colinear = [base * 2, base * 3]  # exactly colinear: lerp
    ref = get_method("nuslerp").fn(colinear, **params)
    src = _SrcNoBase(colinear, base, step)
    _run("nuslerp")(src, **params)
    torch.testing.assert_close(src.out, ref, rtol=1e-5, atol=1e-5)


def test_unknown_sparsifier_is_an_error_not_della():
    """A task-vector variant names its sparsifier as a ``Sparsifier``; a typo must fail, not silently run
    another method."""
    from modelmix.methods._gta import TaskVectorVariant

    with pytest.raises(ValueError, match="unknown sparsifier 'magnitdue'"):
        TaskVectorVariant("typo", "magnitdue", True, True, "none", "")  # type: ignore[arg-type]


def test_streamers_are_declared_by_their_methods():
    """Which methods stream, and which may cache their inputs, is what each Method declares."""
    from modelmix.methods import all_methods

    streamed = {n: m.streamer for n, m in all_methods().items() if m.streamer is not None}
    gta = {"ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"}
    assert gta | {"slerp", "nuslerp", "model_stock"} <= set(streamed)
    assert {n for n, st in streamed.items() if st.cache} == gta
    assert not any(m.elementwise for n, m in all_methods().items() if n in streamed)
    della = streamed["della"]
    assert della.applies((4, 3), {}) and not della.applies((12,), {})  # ranks within rows: 1-D is one row
    assert streamed["ties"].applies((12,), {})
    assert {n for n, m in all_methods().items() if m.fast_bf16 is not None} == {"linear"}


def test_streaming_and_methods_import_no_numba():
    """``modelmix.methods`` (and so the streamers) loads no compiled backend: numba starts only when a
    kernel is first asked for."""
    import subprocess
    import sys

    code = ("import sys, modelmix.methods, modelmix.streaming, modelmix.execute; "
            "assert 'numba' not in sys.modules, 'numba imported'; "
            "assert 'modelmix.kernels.fused' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
