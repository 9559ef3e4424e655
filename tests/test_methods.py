"""Merge methods against independent references (explicit loops, float64, sorting on small tensors),
edge cases, and determinism of the random methods."""

from __future__ import annotations

import math

import pytest
import torch

from modelmix.errors import ConfigError
from modelmix.kernels.masks import model_seed, uniforms
from modelmix.methods import REQUIRED, all_methods, get_method

EXPECTED = {
    "linear", "slerp", "nuslerp", "multislerp", "karcher", "task_arithmetic", "ties", "dare_linear",
    "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "model_stock", "sce",
    "nearswap", "passthrough", "soup",
}  # fmt: skip
GTA = [
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
]


def run(name: str, tensors, base=None, seed: int | None = None, **params):
    m = get_method(name)
    if m.random:
        params["seed"] = 0 if seed is None else seed
    out = m.fn(list(tensors), base=base, **params)
    assert out.dtype == torch.float32
    return out


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def models(n=3, shape=(6, 5), seed=0):
    base = rand(*shape, seed=seed)
    return base, [base + rand(*shape, seed=seed + 1 + i, scale=0.1) for i in range(n)]


def close(a, b, tol=1e-5):
    assert a.shape == b.shape
    torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)


# ---- registry -------------------------------------------------------------------------------------------


def test_registry_declarations():
    ms = all_methods()
    assert EXPECTED <= set(ms)
    for m in ms.values():
        for p in m.params:
            assert p.help and p.scope in ("global", "model")
            if p.default is not REQUIRED and p.default is not None and p.choices:
                assert p.default in p.choices
    assert {n for n, m in ms.items() if n in EXPECTED and m.random} == {
        "dare_linear",
        "dare_ties",
        "della",
        "della_linear",
    }
    assert {n for n, m in ms.items() if n in EXPECTED and m.elementwise} == {
        "linear",
        "task_arithmetic",
        "soup",
        "passthrough",
        "nearswap",
    }
    assert ms["linear"].param("weight").required and ms["linear"].param("normalize").default is True
    assert ms["task_arithmetic"].param("normalize").default is False
    assert ms["ties"].param("normalize").default is True
    assert ms["dare_ties"].param("rescale").default == "l1" and ms["ties"].param("rescale").default == "none"
    assert ms["slerp"].param("t").required and ms["slerp"].needs_base and ms["slerp"].max_models == 1
    assert ms["breadcrumbs"].param("gamma").default == 0.01 and ms["della"].param("epsilon").default == 0.15
    assert (
        ms["sce"].param("select_topk").default == 1.0
        and ms["model_stock"].param("filter_wise").default is False
    )
    assert ms["ties"].param("density").low == 0 and ms["ties"].param("density").high == 1


@pytest.mark.parametrize("name", ["linear", "task_arithmetic", "soup", "passthrough", "nearswap"])
def test_elementwise_methods_stream_by_rows(name):
    base, ms = models(3 if name != "passthrough" and name != "nearswap" else 1, shape=(10, 4))
    kw = {
        "linear": {"weight": [0.2, 0.5, 0.9]},
        "task_arithmetic": {"weight": [0.2, 0.5, 0.9], "lambda": 0.8, "normalize": True},
        "passthrough": {"scale": [2.0]},
        "nearswap": {"t": 0.05},
    }.get(name, {})
    whole = run(name, ms, base, **kw)
    parts = [run(name, [m[r : r + 3] for m in ms], base[r : r + 3], **kw) for r in range(0, 10, 3)]
    assert torch.equal(torch.cat(parts), whole)


# ---- linear family ----------------------------------------------------------------------------------------


def test_linear_matches_loop_and_handles_layouts():
    _, ms = models(3, shape=(4, 7))
    w = [0.5, -0.25, 2.0]
    ref = torch.zeros(4, 7, dtype=torch.float64)
    for m, wi in zip(ms, w, strict=True):
        ref += wi * m.double()
    close(run("linear", ms, weight=w, normalize=False), ref)
    close(run("linear", ms, weight=w), ref / sum(w))
    close(run("linear", [m.t() for m in ms], weight=w), (ref / sum(w)).t())  # non-contiguous
    close(run("linear", [ms[0][0]], weight=[3.0]), ms[0][0])  # 1-D, single model


def test_linear_zero_weight_sum_is_a_config_error():
    _, ms = models(2)
    with pytest.raises(ConfigError, match="sum to zero"):
        run("linear", ms, weight=[1.0, -1.0])
    close(run("linear", ms, weight=[1.0, -1.0], normalize=False), ms[0] - ms[1])


def test_soup_and_passthrough():
    _, ms = models(4)
    close(run("soup", ms), sum(m.double() for m in ms) / 4)
    out = run("passthrough", ms[:1], scale=[None])
    assert torch.equal(out, ms[0]) and out.data_ptr() != ms[0].data_ptr()
    close(run("passthrough", ms[:1], scale=[0.5]), ms[0] * 0.5)
    close(run("passthrough", ms[:1]), ms[0])


def test_nearswap_reference():
    base, (m,) = models(1)
    t = 0.07
    ref = torch.empty_like(base, dtype=torch.float64)
    for i, (a, b) in enumerate(zip(base.reshape(-1).tolist(), m.reshape(-1).tolist(), strict=True)):
        w = min(1.0, max(0.0, t / max(abs(a - b), 1e-6)))
        ref.view(-1)[i] = w * b + (1 - w) * a
    close(run("nearswap", [m], base, t=t), ref)
    assert torch.equal(run("nearswap", [base.clone()], base, t=0.1), base)  # identical -> unchanged


# ---- spherical ----------------------------------------------------------------------------------------


def ref_slerp(t, a, b):
    a64, b64 = a.double().reshape(-1), b.double().reshape(-1)
    cos = float(a64 @ b64 / (a64.norm() * b64.norm()))
    if abs(cos) > 0.9995:
        return (1 - t) * a.double() + t * b.double()
    th = math.acos(cos)
    return (math.sin((1 - t) * th) * a.double() + math.sin(t * th) * b.double()) / math.sin(th)


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 1.0])
def test_slerp_reference(t):
    base, (m,) = models(1, shape=(5, 3))
    m = m + rand(5, 3, seed=9)  # make the angle non-trivial
    close(run("slerp", [m], base, t=t), ref_slerp(t, base, m))


def test_slerp_edges():
    base = rand(8, seed=1)
    close(run("slerp", [2 * base], base, t=0.3), 1.3 * base)  # colinear -> lerp
    close(run("slerp", [-base], base, t=0.5), torch.zeros(8))  # antipodal -> lerp
    zero = torch.zeros(8)
    # zero base: norm treated as 1 (mergekit), cos = 0, theta = pi/2
    close(run("slerp", [base], zero, t=0.5), math.sin(math.pi / 4) * base)
    close(run("slerp", [base.view(2, 4).t()], base.view(2, 4).t(), t=0.7), base.view(2, 4).t())


def ref_nuslerp_rows(t, v0, v1):
    out = []
    for a, b in zip(v0.double(), v1.double(), strict=True):
        ua, ub = a / max(a.norm(), 1e-7), b / max(b.norm(), 1e-7)
        c = float((ua * ub).sum().clamp(-1, 1))
        if 1 - c * c <= 1e-16:
            out.append((1 - t) * a + t * b)
        else:
            th = math.acos(c)
            out.append((math.sin((1 - t) * th) * a + math.sin(t * th) * b) / math.sin(th))
    return torch.stack(out)


def test_nuslerp_reference():
    base, (m0, m1) = models(2, shape=(4, 6))
    w = [1.0, 3.0]
    t = 0.75
    close(
        run("nuslerp", [m0, m1], weight=w),
        ref_nuslerp_rows(t, m0.reshape(1, -1), m1.reshape(1, -1)).view(4, 6),
    )
    d0, d1 = m0 - base, m1 - base
    close(
        run("nuslerp", [m0, m1], base, weight=w),
        base.double() + ref_nuslerp_rows(t, d0.reshape(1, -1), d1.reshape(1, -1)).view(4, 6),
    )
    close(run("nuslerp", [m0, m1], weight=w, nuslerp_flatten=False), ref_nuslerp_rows(t, m0, m1))
    close(
        run("nuslerp", [m0, m1], weight=w, nuslerp_flatten=False, nuslerp_row_wise=True),
        ref_nuslerp_rows(t, m0.t(), m1.t()).t(),
    )
    # cancelling weights -> t = 0.5
    close(run("nuslerp", [m0, m1], weight=[1.0, -1.0]), run("nuslerp", [m0, m1], weight=[1.0, 1.0]))


def test_multislerp():
    base, ms = models(3, shape=(3, 4))
    assert torch.equal(run("multislerp", ms[:1], weight=[2.0]), ms[0])
    # equal norms and equal weights on two vectors: multislerp == slerp at t = 1/2
    a, b = rand(16, seed=3), rand(16, seed=4)
    b = b / b.norm() * a.norm()
    close(run("multislerp", [a, b], weight=[1.0, 1.0]), ref_slerp(0.5, a, b), tol=1e-4)
    o = rand(16, seed=5)
    close(run("multislerp", [o + a, o + b], o, weight=[1.0, 1.0]), o + ref_slerp(0.5, a, b), tol=1e-4)
    with pytest.raises(ConfigError, match="sum to zero"):
        run("multislerp", ms, weight=[1.0, -1.0, 0.0])
    # antipodal pair: linear fallback; three cancelling directions: error
    close(run("multislerp", [a, -a], weight=[1.0, 1.0]), torch.zeros(16))
    with pytest.raises(ConfigError, match="mean direction"):
        run("multislerp", [a, -a, torch.zeros(16)], weight=[1.0, 1.0, 1.0])


def test_karcher():
    e1, e2 = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 1.0])
    # the Karcher mean of two points is the geodesic midpoint, scaled by the mean norm (2)
    close(run("karcher", [e1, e2]), torch.tensor([math.sqrt(2), math.sqrt(2)]), tol=1e-4)
    x = rand(5, 4, seed=2)
    close(run("karcher", [x, x.clone(), x.clone()]), x)
    assert torch.equal(run("karcher", [x]), x)
    assert torch.equal(run("karcher", [torch.zeros(3), torch.zeros(3)]), torch.zeros(3))


# ---- task vectors ----------------------------------------------------------------------------------------


def ref_gta(base, ms, w, masks, consensus=None, normalize=False, lam=1.0):
    """Task arithmetic with given keep masks (elementwise loops in float64)."""
    b = base.double().reshape(-1)
    deltas = [
        (m.double().reshape(-1) - b) * mk.reshape(-1).double() * wi
        for m, mk, wi in zip(ms, masks, w, strict=True)
    ]
    out = b.clone()
    for j in range(b.numel()):
        ds = [d[j].item() for d in deltas]
        if consensus is None:
            keep = [True] * len(ds)
        else:
            votes = sum(ds) if consensus == "sum" else sum((d > 0) - (d < 0) for d in ds)
            sign = 1 if votes >= 0 else -1
            keep = [d * sign > 0 for d in ds]
        mixed = sum(d for d, k in zip(ds, keep, strict=True) if k)
        if normalize:
            div = sum(wi for wi, k in zip(w, keep, strict=True) if k) if consensus else sum(w)
            if consensus and div == 0:
                div = 1
            if not consensus and abs(div) < 1e-8:
                div = 1
            mixed /= div
        out[j] += lam * mixed
    return out.view(base.shape)


def topk_by_sort(delta, density):
    n = delta.numel()
    if density >= 1:
        return torch.ones(delta.shape, dtype=torch.bool)
    k = 0 if density <= 0 else max(1, int(density * n))
    idx = sorted(range(n), key=lambda i: -abs(delta.reshape(-1)[i].item()))[:k]
    m = torch.zeros(n, dtype=torch.bool)
    m[idx] = True
    return m.view(delta.shape)


def test_task_arithmetic_reference():
    base, ms = models(3)
    w = [0.3, -0.6, 1.2]
    ones = [torch.ones_like(base, dtype=torch.bool)] * 3
    close(run("task_arithmetic", ms, base, weight=w), ref_gta(base, ms, w, ones))
    close(
        run("task_arithmetic", ms, base, weight=w, normalize=True, **{"lambda": 0.5}),
        ref_gta(base, ms, w, ones, normalize=True, lam=0.5),
    )
    # zero weight sum with normalize: mergekit leaves the sum undivided
    close(run("task_arithmetic", ms[:2], base, weight=[1.0, -1.0], normalize=True), base + ms[0] - ms[1])
    assert torch.equal(run("task_arithmetic", [], base, weight=[]), base)


@pytest.mark.parametrize("density", [0.0, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("consensus", ["sum", "count"])
def test_ties_reference(density, consensus):
    base, ms = models(3)
    w = [0.7, 0.4, 1.0]
    dens = [density, min(1.0, density + 0.3), density]
    masks = [topk_by_sort(m - base, d) for m, d in zip(ms, dens, strict=True)]
    got = run("ties", ms, base, weight=w, density=dens, consensus_method=consensus)
    close(got, ref_gta(base, ms, w, masks, consensus=consensus, normalize=True))
    got = run("ties", ms, base, weight=w, density=dens, normalize=False, **{"lambda": 2.0})
    close(got, ref_gta(base, ms, w, masks, consensus="sum", lam=2.0))


def test_ties_edge_cases():
    base, ms = models(2, shape=(9,))
    assert torch.equal(
        run("ties", [base.clone(), base.clone()], base, weight=[1.0, 1.0], density=[0.5, 0.5]), base
    )
    assert torch.equal(run("ties", ms, base, weight=[1.0, 1.0], density=[0.0, 0.0]), base)
    close(run("ties", ms, base, weight=[0.0, 0.0], density=[1.0, 1.0]), base)  # all weights 0: no div by zero
    x = base.view(3, 3).t()  # non-contiguous
    out = run("ties", [m.view(3, 3).t() for m in ms], x, weight=[1.0, 0.5], density=[0.4, 0.4])
    close(
        out,
        run(
            "ties",
            [m.view(3, 3).t().contiguous() for m in ms],
            x.contiguous(),
            weight=[1.0, 0.5],
            density=[0.4, 0.4],
        ),
    )


def test_ties_rescale_l1_preserves_norm():
    base, (m,) = models(1, shape=(50,))
    out = run("ties", [m], base, weight=[1.0], density=[0.3], rescale=True, normalize=False)
    close((out - base).abs().sum(), (m - base).abs().sum(), tol=1e-4)
    assert int(((out - base) != 0).sum()) == 15


def breadcrumbs_ref_mask(delta, density, gamma):
    n = delta.numel()
    if density >= 1:
        return torch.ones(delta.shape, dtype=torch.bool)
    target, n_top = int(density * n), int(gamma * n)
    n_bot = max(0, n - target - n_top)
    asc = sorted(range(n), key=lambda i: abs(delta.reshape(-1)[i].item()))
    m = torch.zeros(n, dtype=torch.bool)
    m[asc[n_bot : n_bot + target]] = True
    return m.view(delta.shape)


@pytest.mark.parametrize(("density", "gamma"), [(0.5, 0.01), (0.5, 0.1), (0.9, 0.2), (0.0, 0.1), (1.0, 0.1)])
@pytest.mark.parametrize("name", ["breadcrumbs", "breadcrumbs_ties"])
def test_breadcrumbs_reference(name, density, gamma):
    base, ms = models(2, shape=(12, 10))
    w = [0.8, 0.5]
    masks = [breadcrumbs_ref_mask(m - base, density, gamma) for m in ms]
    got = run(name, ms, base, weight=w, density=[density] * 2, gamma=[gamma] * 2)
    close(got, ref_gta(base, ms, w, masks, consensus="sum" if name.endswith("ties") else None))


def test_breadcrumbs_tiny_tensor_is_not_zeroed():
    base, (m,) = models(1, shape=(50,))  # int(0.01 * 50) == 0 outliers
    out = run("breadcrumbs", [m], base, weight=[1.0], density=[0.5])
    kept = (out - base) != 0
    assert int(kept.sum()) == 25
    assert torch.equal(kept, topk_by_sort(m - base, 0.5))


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_random_methods_deterministic(name):
    base, ms = models(3, shape=(40, 30))
    kw = {"weight": [1.0, 0.5, 0.7], "density": [0.5, 0.3, 0.6]}
    a = run(name, ms, base, seed=7, **kw)
    assert torch.equal(a, run(name, ms, base, seed=7, **kw))
    assert not torch.equal(a, run(name, ms, base, seed=8, **kw))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(a, run(name, ms, base, seed=7, **kw))
    finally:
        torch.set_num_threads(threads)
    nc = run(name, [m.t().contiguous().t() for m in ms], base.t().contiguous().t(), seed=7, **kw)
    assert torch.equal(a, nc)  # layout does not change the draw order


def test_dare_reference_masks():
    base, ms = models(2, shape=(30, 20))
    dens = [0.4, 0.7]
    # each model has its own counter-based mask stream (model_seed(seed, i)), in flat order
    masks = [uniforms(model_seed(11, i), 0, 600).view(30, 20) < d for i, d in enumerate(dens)]
    w = [1.0, 0.5]
    # no rescale: plain masked task arithmetic / TIES
    close(
        run("dare_linear", ms, base, seed=11, weight=w, density=dens, rescale="none"),
        ref_gta(base, ms, w, masks),
    )
    close(
        run("dare_ties", ms, base, seed=11, weight=w, density=dens, rescale=False),
        ref_gta(base, ms, w, masks, consensus="sum"),
    )
    # inverse_density (paper): kept entries are divided by the density
    out = run("dare_linear", ms[:1], base, seed=11, weight=[1.0], density=[0.4], rescale="inverse_density")
    close(out - base, (ms[0] - base) * masks[0] / 0.4)
    # default l1 (mergekit 0.1.5): L1 norm of the task vector is preserved
    out = run("dare_linear", ms[:1], base, seed=11, weight=[1.0], density=[0.4])
    close((out - base).abs().sum(), (ms[0] - base).abs().sum(), tol=1e-4)
    assert torch.equal((out - base) != 0, masks[0])


def test_dare_density_edges():
    base, ms = models(2)
    w = [1.0, 1.0]
    assert torch.equal(run("dare_linear", ms, base, weight=w, density=[0.0, 0.0]), base)
    close(
        run("dare_linear", ms, base, weight=w, density=[1.0, 1.0]), run("task_arithmetic", ms, base, weight=w)
    )
    zero = [base.clone(), base.clone()]
    assert torch.equal(run("dare_ties", zero, base, weight=w, density=[0.5, 0.5]), base)
    with pytest.raises(ConfigError, match="rescale"):
        run("dare_linear", ms, base, weight=w, density=[0.5, 0.5], rescale="l2")


def ref_della_probs(delta, density, eps):
    rows = delta.unsqueeze(0) if delta.dim() == 1 else delta
    out = torch.empty_like(rows, dtype=torch.float64)
    for r in range(rows.shape[0]):
        vals = rows[r].abs().tolist()
        order = sorted(range(len(vals)), key=lambda i: (vals[i], i))
        for rank, i in enumerate(order):
            out[r, i] = density - eps + 2 * eps * rank / (len(vals) - 1)
    return out.view(delta.shape)


def test_della_reference():
    base, ms = models(2, shape=(6, 8))
    dens, eps, w = [0.5, 0.4], [0.1, 0.2], [1.0, 0.6]
    probs = [ref_della_probs(m - base, d, e) for m, d, e in zip(ms, dens, eps, strict=True)]
    masks = [uniforms(model_seed(5, i), 0, 48).double().view(6, 8) < p for i, p in enumerate(probs)]
    kw = {"weight": w, "density": dens, "epsilon": eps, "seed": 5}
    close(run("della_linear", ms, base, rescale="none", **kw), ref_gta(base, ms, w, masks))
    close(
        run("della", ms, base, rescale="none", **kw),
        ref_gta(base, ms, w, masks, consensus="sum", normalize=True),
    )
    out = run(
        "della_linear",
        ms[:1],
        base,
        rescale="inverse_density",
        **{k: v[:1] if k != "seed" else v for k, v in kw.items()},
    )
    close(out - base, (ms[0] - base) * masks[0] / probs[0])
    # 1-D tensors are one row; a row of one element gets probability `density`
    out1 = run("della_linear", [ms[0][0]], base[0], weight=[1.0], density=[0.5], epsilon=[0.1])
    assert out1.shape == (8,)
    run("della_linear", [ms[0][:, :1]], base[:, :1], weight=[1.0], density=[0.5], epsilon=[0.1])


def test_della_invalid_epsilon():
    base, ms = models(1)
    with pytest.raises(ConfigError, match="epsilon"):
        run("della", ms, base, weight=[1.0], density=[0.9], epsilon=[0.15])
    assert torch.equal(run("della", ms, base, weight=[1.0], density=[0.0], epsilon=[0.15]), base)


# ---- model_stock, sce ------------------------------------------------------------------------------------


def ref_model_stock(base, ms, filter_wise=False):
    rows = (base.unsqueeze(0) if base.dim() == 1 else base) if filter_wise else base.reshape(1, -1)
    mrows = [(m.unsqueeze(0) if m.dim() == 1 else m) if filter_wise else m.reshape(1, -1) for m in ms]
    out = torch.empty_like(rows, dtype=torch.float64)
    n = len(ms)
    for r in range(rows.shape[0]):
        offs = [m[r].double() - rows[r].double() for m in mrows]
        cs = [
            max(-1.0, min(1.0, float(offs[i] @ offs[j]) / max(float(offs[i].norm() * offs[j].norm()), 1e-6)))
            for i in range(n)
            for j in range(i + 1, n)
        ]
        c = sum(cs) / len(cs)
        den = 1 + (n - 1) * c
        t = 0.0 if abs(den) < 1e-6 else n * c / den
        avg = sum(m[r].double() for m in mrows) / n
        out[r] = t * avg + (1 - t) * rows[r].double()
    return out.view(base.shape)


@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("shape", [(5, 7), (9,)])
def test_model_stock_reference(filter_wise, shape):
    base, ms = models(3, shape=shape)
    close(run("model_stock", ms, base, filter_wise=filter_wise), ref_model_stock(base, ms, filter_wise))
    # zero task vectors: the base is kept
    close(run("model_stock", [base.clone(), base.clone()], base, filter_wise=filter_wise), base)


@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.1, 0.0])
def test_sce_reference(select_topk):
    base, ms = models(3, shape=(6, 5))
    ms = [base + (m - base) * 100 for m in ms]  # energies above mergekit's 1e-6 uniform cut-off
    tvs = [(m - base).double().reshape(-1) for m in ms]
    n = tvs[0].numel()
    if select_topk < 1:
        var = torch.stack(tvs).var(dim=0, unbiased=False)
        k = int(int((var != 0).sum()) * select_topk)
        keep = sorted(range(n), key=lambda i: -var[i].item())[:k]
        mask = torch.zeros(n, dtype=torch.float64)
        mask[keep] = 1
        tvs = [tv * mask for tv in tvs]
    energy = [float((tv**2).mean()) for tv in tvs]
    w = [e / sum(energy) for e in energy] if sum(energy) >= 1e-6 else [1 / 3] * 3
    out = base.double().reshape(-1).clone()
    for j in range(n):
        ds = [tv[j].item() for tv in tvs]
        sign = 1 if sum(ds) >= 0 else -1
        num = sum(d * wi for d, wi in zip(ds, w, strict=True) if d * sign > 0)
        den = sum(wi for d, wi in zip(ds, w, strict=True) if d * sign > 0)
        out[j] += num / max(den, 1e-6)
    close(run("sce", ms, base, select_topk=select_topk), out.view(6, 5))


def test_sce_edges():
    base, ms = models(1)
    assert torch.equal(run("sce", [base.clone()], base), base)
    assert torch.equal(run("sce", [], base), base)
    out = run("sce", [ms[0][0]], base[0], select_topk=0.5)  # one model: zero variance -> nothing selected
    assert torch.equal(out, base[0])


# ---- all task-vector methods: shared edge cases ---------------------------------------------------------


@pytest.mark.parametrize("name", GTA)
def test_gta_shared_edges(name):
    base, ms = models(2, shape=(7,))
    kw = {"weight": [1.0, 1.0], "density": [0.5, 0.5]}
    zeros = [base.clone(), base.clone()]
    assert torch.equal(run(name, zeros, base, **kw), base)  # all-zero task vectors
    out = run(name, ms[:1], base, weight=[1.0], density=[1.0])  # single model, density 1
    close(out, ms[0])
    tiny = run(name, [ms[0][:1]], base[:1], weight=[1.0], density=[0.5])
    assert tiny.shape == (1,)
