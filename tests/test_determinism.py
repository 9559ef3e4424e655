"""Seeded merges are bit-identical whatever the thread count and chunk size (issue item 4).

Every registered method merges a tiny model whose tensors lie both below and above the chunk sizes
(whole-tensor units, single-chunk and multi-chunk streamed tensors, chunks that are not multiples of the
row length or of SIMD widths), with 1, 2 and 3 worker threads, through each kernel backend: the float32
output bytes of every tensor must be identical across all of these runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import make_model, run_cli, write_recipe

# name -> shape: rows of 64/24/23/20/1 elements, one 40960-element matrix (above torch's intra-op grain,
# so torch threads would split its reductions), a 3-D tensor and 1-D tensors
SHAPES: dict[str, tuple[int, ...]] = {
    "model.embed_tokens.weight": (37, 23),
    "model.layers.0.self_attn.q_proj.weight": (64, 64),
    "model.layers.0.mlp.up_proj.weight": (24, 64),
    "model.layers.0.mlp.down_proj.weight": (64, 24),
    "model.layers.0.big.weight": (40, 1024),
    "model.layers.0.conv.weight": (6, 5, 4),
    "model.layers.0.input_layernorm.weight": (64,),
    "model.layers.1.bias": (301,),
    "model.layers.1.mlp.up_proj.weight": (24, 64),
    "lm_head.weight": (37, 23),
}
# (threads, chunk_elems) against threads=1 with every tensor in one chunk: 1<<20 whole tensors; 4096 only
# the big matrix chunked; 3000/517/37 most tensors in several chunks of sizes that are no multiple of the
# row length or of a SIMD width (37 also splits the 1-D tensors and leaves one row per chunk)
WHOLE = 1 << 20
RUNS = ((2, WHOLE), (3, WHOLE), (1, 4096), (3, 4096), (2, 3000), (1, 517), (3, 517), (2, 37))
RUNS_OTHER_BACKENDS = ((3, WHOLE), (2, 3000), (3, 517), (2, 37))  # numba / torch: a subset, to stay fast


def _write(d: Path, seed: int, base: dict[str, torch.Tensor] | None, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in SHAPES.items():
        t = torch.randn(shape, generator=g) * 0.1
        if base is not None:
            t = base[name] + 0.05 * torch.randn(shape, generator=g)
        sd[name] = t.to(dtype).float() if dtype != torch.float32 else t
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})
    return sd


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("determinism")
    out = {}
    for dtype, tag in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        base = _write(root / tag / "base", 0, None, dtype)
        for i in (1, 2, 3):
            _write(root / tag / f"m{i}", i, base, dtype)
        out[tag] = root / tag
    return out


def _ms(r: Path, params: list[dict] | None = None, n: int = 3) -> list[dict]:
    return [{"model": str(r / f"m{i + 1}"), **({"parameters": params[i]} if params else {})} for i in range(n)]


def _w(*ws, **extra) -> list[dict]:
    return [{"weight": w, **{k: v[i] for k, v in extra.items()}} for i, w in enumerate(ws)]


def _recipe(method: str, r: Path) -> dict:
    """A recipe for every registered method with sensible parameters (random ones get a seed)."""
    b = str(r / "base")
    dens = {"density": [0.5, 0.3, 0.8]}
    recipes: dict[str, dict] = {
        "linear": {"models": _ms(r, _w(0.3, 0.5, 0.2))},
        "soup": {"models": _ms(r)},
        "slerp": {"base_model": b, "models": [{"model": b}, {"model": str(r / "m1")}], "parameters": {"t": 0.3}},
        "nuslerp": {"base_model": b, "models": _ms(r, _w(0.4, 0.6), n=2)},
        "nuslerp_cols": {"merge_method": "nuslerp", "base_model": b, "models": _ms(r, _w(0.4, 0.6), n=2),
                         "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True}},
        "nuslerp_rows": {"merge_method": "nuslerp", "models": _ms(r, _w(0.4, 0.6), n=2),
                         "parameters": {"nuslerp_flatten": False}},
        "multislerp": {"base_model": b, "models": _ms(r, _w(0.3, 0.5, 0.2))},
        "karcher": {"models": _ms(r)},
        "task_arithmetic": {"base_model": b, "models": _ms(r, _w(0.3, 0.5, 0.2))},
        "ties": {"base_model": b, "models": _ms(r, _w(0.3, 0.5, 0.2, **dens))},
        "ties_l1": {"merge_method": "ties", "base_model": b, "models": _ms(r, _w(0.3, 0.5, 0.2, **dens)),
                    "parameters": {"rescale": "l1", "consensus_method": "count"}},
        "dare_linear": {"base_model": b, "models": _ms(r, _w(0.3, 0.5, 0.2, **dens))},
        "dare_ties": {"base_model": b, "models": _ms(r, _w(0.3, 0.5, 0.2, **dens))},
        "breadcrumbs": {"base_model": b, "models": _ms(r, _w(1.0, 0.5, 0.7, **dens, gamma=[0.05, 0.01, 0.1]))},
        "breadcrumbs_ties": {"base_model": b, "models": _ms(r, _w(1.0, 0.5, 0.7, **dens, gamma=[0.05, 0.01, 0.1])),
                             "parameters": {"rescale": "l1"}},
        "della": {"base_model": b, "models": _ms(r, _w(1.0, 0.5, 0.7, **dens, epsilon=[0.1, 0.2, 0.15]))},
        "della_linear": {"base_model": b, "models": _ms(r, _w(1.0, 0.5, 0.7, **dens, epsilon=[0.1, 0.2, 0.15]))},
        "model_stock": {"base_model": b, "models": _ms(r)},
        "model_stock_fw": {"merge_method": "model_stock", "base_model": b, "models": _ms(r),
                           "parameters": {"filter_wise": True}},
        "dare_linear_base_only": {"merge_method": "dare_linear", "base_model": b, "models": [{"model": b}]},
        "sce": {"base_model": b, "models": _ms(r), "parameters": {"select_topk": 0.5}},
        "nearswap": {"base_model": b, "models": [{"model": str(r / "m1")}], "parameters": {"t": 0.05}},
        "passthrough": {"models": [{"model": str(r / "m1"), "parameters": {"scale": 0.7}}]},
        "subspace": {"base_model": b, "models": _ms(r, _w(1.0, 0.5, 0.7)), "parameters": {"rank": 3}},
    }
    rec = {"merge_method": method, **recipes[method]}
    rec.update(dtype="float32", random_seed=7)
    return rec


VARIANTS = ["nuslerp_cols", "nuslerp_rows", "ties_l1", "model_stock_fw", "dare_linear_base_only"]


def _merge(recipe: dict, threads: int, chunk: int) -> dict[str, bytes]:
    """Every output tensor's bytes (as the writer receives them) of one executor run."""
    import modelmix
    from modelmix.execute import Executor

    mp = modelmix.plan(recipe)
    bufs: dict[str, bytearray] = {}
    try:
        for t in mp.tasks:
            assert t.out_dtype == torch.float32
            bufs[t.name] = bytearray(math.prod(t.shape) * 4)

        def sink(task, x, off):
            b = x.contiguous().view(torch.uint8).reshape(-1).numpy().tobytes()
            bufs[task.name][off : off + len(b)] = b

        Executor(mp, threads=threads, chunk_elems=chunk).run(sink)
    finally:
        mp.close()
    return {k: bytes(v) for k, v in bufs.items()}


def _use_backend(name: str, monkeypatch) -> None:
    from modelmix.kernels import backend

    if name != "torch" and backend._get(name) is None:
        pytest.skip(f"{name} kernels not available")
    monkeypatch.setattr(backend, "FORCE", name)


def _registered() -> list[str]:
    from modelmix.methods.registry import all_methods

    return sorted(all_methods())


# methods whose computation does not involve the kernel backend (no streamer, no fixed-partition sums)
BACKEND_FREE = {"soup", "task_arithmetic", "nearswap", "passthrough", "subspace", "linear"}


def _cases():
    for method in _registered() + VARIANTS:
        for kernels in ("c", "numba", "torch"):
            if kernels == "c" or method not in BACKEND_FREE:
                yield pytest.param(method, kernels, id=f"{method}-{kernels}")


_REFS: dict[str, dict[str, bytes]] = {}


def _reference(recipe: dict, method: str, monkeypatch) -> dict[str, bytes]:
    """threads=1, whole tensors, C kernels (or the first backend available): what every run must equal."""
    if method not in _REFS:
        from modelmix.kernels import backend

        for name in ("c", "numba", "torch"):
            if name == "torch" or backend._get(name) is not None:
                monkeypatch.setattr(backend, "FORCE", name)
                break
        _REFS[method] = _merge(recipe, 1, WHOLE)
    return _REFS[method]


@pytest.mark.parametrize("method,kernels", list(_cases()))
def test_bit_identical_for_any_threads_and_chunking(models, method, kernels, monkeypatch):
    """Every backend, thread count and chunk size gives the bytes of one reference run (C, 1 thread)."""
    recipe = _recipe(method, models["f32"])
    ref = _reference(recipe, method, monkeypatch)
    _use_backend(kernels, monkeypatch)
    for threads, chunk in RUNS if kernels == "c" else RUNS_OTHER_BACKENDS:
        got = _merge(recipe, threads, chunk)
        bad = [k for k in ref if got[k] != ref[k]]
        assert not bad, f"{method} ({kernels}): threads={threads} chunk={chunk} differ from the reference: {bad}"


def test_every_method_is_covered():
    from modelmix.kernels import backend  # noqa: F401 - the registry is complete once methods load

    assert set(_registered()) == {
        "linear", "soup", "slerp", "nuslerp", "multislerp", "karcher", "task_arithmetic", "ties", "dare_linear",
        "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "model_stock", "sce", "nearswap",
        "passthrough", "subspace",
    }


@pytest.mark.parametrize("method", ["linear", "slerp", "dare_ties", "ties_l1", "della"])
def test_bf16_inputs_bit_identical(models, method, monkeypatch):
    """bf16 checkpoints take the raw-bits C kernels (linear, SLERP; bf16 conversion) where they apply."""
    _use_backend("c", monkeypatch)
    recipe = _recipe(method, models["bf16"])
    ref = _merge(recipe, 1, WHOLE)
    for threads, chunk in ((2, WHOLE), (2, 4096), (3, 3000), (2, 517), (1, 37)):
        got = _merge(recipe, threads, chunk)
        assert all(got[k] == ref[k] for k in ref), f"{method}: threads={threads} chunk={chunk}"


def _fixed_partition_sum(vals: list[float], row: int) -> float:
    """The documented procedure, spelled out: per row, element j into lane j % 8 in order, lanes combined
    pairwise, row partials added in row order (modelmix.kernels.reduce)."""
    total = 0.0
    for r0 in range(0, len(vals), row):
        s = [0.0] * 8
        for j in range(min(row, len(vals) - r0)):
            s[j % 8] += vals[r0 + j]
        total += ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
    return total


@pytest.mark.parametrize("kernels", ["c", "numba", "torch"])
def test_statistics_follow_the_fixed_partition_in_every_backend(kernels, monkeypatch):
    """Dot statistics and L1 sums of every backend equal the spelled-out procedure bit for bit, in one call
    or chunk by chunk (running totals carried): so they are also identical across backends."""
    import numpy as np

    from modelmix.kernels import backend, modes
    from modelmix.kernels import reduce as red

    _use_backend(kernels, monkeypatch)
    K = backend.kernels()
    g = torch.Generator().manual_seed(3)
    for shape in ((37, 23), (5, 1024), (301,), (3, 17), (2, 8), (4, 3, 5)):
        a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        row = red.row_len(shape)
        x, y = a.reshape(-1).double().tolist(), b.reshape(-1).double().tolist()
        prods = ([u * u for u in x], [v * v for v in y], [u * v for u, v in zip(x, y, strict=True)])
        want = [_fixed_partition_sum(p, row) for p in prods]
        whole, chunked = np.zeros(3), np.zeros(3)
        red.dot_stats(a, b, row, whole)
        for r0 in range(0, a.shape[0], 2):
            red.dot_stats(a[r0 : r0 + 2], b[r0 : r0 + 2], row, chunked)
        assert whole.tolist() == want == chunked.tolist(), shape
        d = (a - b).abs().reshape(-1)
        assert red.abs_sum(a - b) == _fixed_partition_sum(d.double().tolist(), row)
        if K is not None:  # the L1 kernel (DENSE and RANDOM masks) by the same procedure
            from modelmix.kernels.masks import model_seed, uniforms

            seed = model_seed(5, 1)
            keep = uniforms(seed, 0, a.numel()) < 0.4
            sums = np.zeros(2)
            an, bn = a.reshape(-1).numpy(), b.reshape(-1).numpy()
            nh, nl = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
            for r0 in range(0, a.numel(), 2 * row):
                r1 = min(a.numel(), r0 + 2 * row)
                K.l1_sums(an[r0:r1], bn[r0:r1], row, modes.RANDOM, np.float32(-1), nh, np.float32(np.inf), nl,
                          np.uint64(seed), r0, np.float32(0.4), sums)
            kept = (d * keep).double().tolist()
            assert sums.tolist() == [_fixed_partition_sum(d.double().tolist(), row), _fixed_partition_sum(kept, row)]


def test_cli_dare_ties_threads_1_vs_2(tmp_path: Path):
    """The reported bug: dare_ties, random_seed 7, float32, 65536-element matrices, --threads 1 vs 2."""
    base = make_model(tmp_path / "base", hidden=256, seed=0)
    for i in (1, 2):
        make_model(tmp_path / f"ft{i}", hidden=256, seed=i, like=base)
    recipe = write_recipe(tmp_path / "r.yml", f"""
merge_method: dare_ties
base_model: {tmp_path}/base
models:
  - model: {tmp_path}/ft1
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {tmp_path}/ft2
    parameters: {{weight: 0.4, density: 0.5}}
dtype: float32
random_seed: 7
""")
    outs = []
    for threads in ("1", "2"):
        code, _, err = run_cli("merge", str(recipe), str(tmp_path / f"out{threads}"), "-q", "--threads", threads)
        assert code == 0, err
        outs.append(tmp_path / f"out{threads}")
    files = sorted(p.name for p in outs[0].glob("*.safetensors"))
    assert files
    for f in files:
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
