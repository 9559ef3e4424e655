"""The `subspace` (TSV-Merge) method: reductions, rank bound, orthogonal tasks, a numpy reference, YAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_model, run_cli, write_recipe
from modelmix.api import merge_tensors
from modelmix.methods import get_method
from modelmix.methods import subspace as sub


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_registered_with_bounded_params() -> None:
    m = get_method("subspace")
    assert m.needs_base and not m.elementwise
    assert m.param("rank").low == 0 and m.param("energy").high == 1.0
    assert "2412.00081" in m.reference


def test_one_model_full_rank_is_task_arithmetic() -> None:
    base, x = _rand(12, 7, seed=1), _rand(12, 7, seed=2)
    got = merge_tensors("subspace", [x], base=base, rank=0, energy=1.0, weight=0.7, **{"lambda": 1.5})
    ref = merge_tensors("task_arithmetic", [x], base=base, weight=0.7, **{"lambda": 1.5})
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    got = merge_tensors("subspace", [x], base=base, rank=7)
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)


def test_rank_bound_and_energy() -> None:
    base = _rand(20, 16, seed=0)
    xs = [base + _rand(20, 16, seed=s) for s in (1, 2, 3)]
    for r in (1, 2, 4):
        upd = merge_tensors("subspace", xs, base=base, rank=r) - base
        assert torch.linalg.matrix_rank(upd).item() <= 3 * r
    # a rank-2 task vector is recovered exactly when the energy threshold needs both directions
    d = _rand(20, 2, seed=4) @ _rand(2, 16, seed=5)
    got = merge_tensors("subspace", [base + d], base=base, energy=0.999999)
    torch.testing.assert_close(got - base, d, rtol=1e-4, atol=1e-4)
    u, s, v = sub.truncated_svd(d, 0, 0.5)
    assert s.numel() == 1  # the leading direction alone already holds >= 50% of the energy


def test_orthogonal_tasks_merge_without_interference() -> None:
    q1, _ = torch.linalg.qr(_rand(16, 16, seed=7))
    q2, _ = torch.linalg.qr(_rand(10, 10, seed=8))
    d1 = q1[:, :3] @ torch.diag(torch.tensor([3.0, 2.0, 1.0])) @ q2[:, :3].T
    d2 = q1[:, 3:5] @ torch.diag(torch.tensor([5.0, 0.5])) @ q2[:, 3:5].T
    base = _rand(16, 10, seed=9)
    got = merge_tensors("subspace", [base + d1, base + d2], base=base, rank=3)
    torch.testing.assert_close(got, base + d1 + d2, rtol=1e-5, atol=1e-5)


def _numpy_tsv(base: np.ndarray, xs: list[np.ndarray], k: int, w: list[float], lam: float) -> np.ndarray:
    """TSV-Merge written independently: polar factor via U(U^T U)^(-1/2)."""
    us, ss, vs = [], [], []
    for x, wi in zip(xs, w, strict=True):
        u, s, vt = np.linalg.svd(x.astype(np.float64) - base, full_matrices=False)
        us.append(u[:, :k])
        ss.append(wi * s[:k])
        vs.append(vt[:k].T)

    def orth(a: np.ndarray) -> np.ndarray:
        evals, evecs = np.linalg.eigh(a.T @ a)
        return a @ evecs @ np.diag(evals ** -0.5) @ evecs.T

    upd = orth(np.hstack(us)) @ np.diag(np.concatenate(ss)) @ orth(np.hstack(vs)).T
    return base + lam * upd


@pytest.mark.parametrize("k", [1, 3])
def test_matches_numpy_reference(k: int) -> None:
    base = _rand(18, 14, seed=10)
    xs = [base + 0.1 * _rand(18, 14, seed=s) for s in (11, 12, 13)]
    w, lam = [1.0, 0.5, 2.0], 0.8
    got = merge_tensors("subspace", xs, base=base, rank=k, weight=w, **{"lambda": lam})
    ref = _numpy_tsv(base.numpy(), [x.numpy() for x in xs], k, w, lam)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_1d_falls_back_to_task_arithmetic() -> None:
    base, a, b = _rand(9, seed=1), _rand(9, seed=2), _rand(9, seed=3)
    got = merge_tensors("subspace", [a, b], base=base, rank=1, weight=[0.5, 2.0])
    torch.testing.assert_close(got, base + 0.5 * (a - base) + 2.0 * (b - base))


def test_randomized_svd_for_large_matrices_is_deterministic(monkeypatch) -> None:
    monkeypatch.setattr(sub, "_RSVD_MIN_DIM", 32)
    base = torch.zeros(200, 120)
    lowrank = _rand(200, 5, seed=1) @ _rand(5, 120, seed=2)
    x = base + lowrank + 1e-3 * _rand(200, 120, seed=3)
    a = sub.subspace([x], base=base, weight=[1.0], rank=5, seed=4)
    b = sub.subspace([x], base=base, weight=[1.0], rank=5, seed=4)
    assert torch.equal(a, b)
    u, s, _v = torch.linalg.svd(x)
    ref = (u[:, :5] * s[:5]) @ _v[:5]
    torch.testing.assert_close(a, ref, rtol=1e-3, atol=1e-3)
    e = sub.subspace([x], base=base, weight=[1.0], rank=0, energy=0.99, seed=4)  # energy mode, sketched
    torch.testing.assert_close(e, ref, rtol=1e-2, atol=1e-2)




def test_yaml_recipe_end_to_end(tmp_path: Path) -> None:
    base = make_model(tmp_path / "base", seed=0)
    ft1 = make_model(tmp_path / "ft1", seed=1, like=base)
    ft2 = make_model(tmp_path / "ft2", seed=2, like=base)
    recipe = write_recipe(tmp_path / "r.yml", f"""
merge_method: subspace
base_model: {tmp_path}/base
models:
  - model: {tmp_path}/ft1
    parameters: {{weight: 1.0}}
  - model: {tmp_path}/ft2
    parameters: {{weight: 0.5}}
parameters:
  rank: 2
  lambda: 0.9
dtype: float32
""")
    code, _out, err = run_cli("merge", str(recipe), str(tmp_path / "out"))
    assert code == 0, err
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    for k, v in got.items():
        ref = merge_tensors("subspace", [ft1[k], ft2[k]], base=base[k], rank=2, weight=[1.0, 0.5], **{"lambda": 0.9})
        torch.testing.assert_close(v, ref, rtol=1e-5, atol=1e-5)
        if v.dim() == 2:
            assert torch.linalg.matrix_rank(v - base[k]).item() <= 4
    bad = write_recipe(tmp_path / "bad.yml", recipe.read_text().replace("rank: 2", "energy: 1.5"))
    code, _out, err = run_cli("merge", str(bad), str(tmp_path / "out2"))
    assert code != 0 and "energy" in err and not (tmp_path / "out2").exists()


def test_directions_are_capped_so_tasks_fit_side_by_side() -> None:
    base = _rand(12, 9, seed=20)
    xs = [base + _rand(12, 9, seed=s) for s in (21, 22, 23)]
    capped = merge_tensors("subspace", xs, base=base, rank=3)  # 9 // 3 = 3 directions each
    torch.testing.assert_close(merge_tensors("subspace", xs, base=base, rank=100), capped)
    torch.testing.assert_close(merge_tensors("subspace", xs, base=base, energy=1.0), capped)
