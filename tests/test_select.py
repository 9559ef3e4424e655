"""The radix top-k kernel against sort-based references (sorting is fine for small test tensors)."""

from __future__ import annotations

import pytest
import torch

import modelmix.kernels.select as sel
from modelmix.kernels.select import rank_band_mask, select_kth, topk_mask


def ref_order(x: torch.Tensor) -> list[int]:
    """Flat indices by descending |x|, ties by ascending index (the kernel's documented tie rule)."""
    a = x.reshape(-1).float().abs().tolist()
    return sorted(range(len(a)), key=lambda i: (-a[i], i))


def ref_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    m = torch.zeros(x.numel(), dtype=torch.bool)
    m[ref_order(x)[: max(k, 0)]] = True
    return m.view(x.shape)


@pytest.fixture(params=[None, 64], ids=["chunk=default", "chunk=64"])
def chunk(request, monkeypatch):
    """Run each test also with a tiny chunk so multi-chunk paths (and tie carry-over) are exercised."""
    if request.param:
        monkeypatch.setattr(sel, "CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_threshold_matches_sorted_value(n, chunk):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * 10.0 ** torch.randint(-30, 30, (n,), generator=g).float()
    vals = sorted(x.abs().tolist(), reverse=True)
    for k in {1, max(1, n // 3), n}:
        assert select_kth(x, k).threshold == pytest.approx(vals[k - 1], rel=0, abs=0)


def test_threshold_many_ties_and_zeros(chunk):
    x = torch.tensor([0.0, -0.0, 3, -3, 3, 1, 0, 2, -2, 0.5] * 20)
    vals = sorted(x.abs().tolist(), reverse=True)
    for k in range(1, x.numel() + 1, 7):
        s = select_kth(x, k)
        assert s.threshold == vals[k - 1]
        assert s.n_greater == sum(v > s.threshold for v in vals)
        assert s.n_equal == sum(v == s.threshold for v in vals)


def test_threshold_special_values(chunk):
    x = torch.tensor([float("inf"), -1e-45, 1e-38, -3.4e38, 0.0, 1.0])
    vals = sorted(x.abs().tolist(), reverse=True)
    for k in range(1, 7):
        assert select_kth(x, k).threshold == vals[k - 1]


@pytest.mark.parametrize("k", [-1, 0, 1, 5, 37, 63, 64, 100])
def test_mask_exact_count_and_index_tie_break(k, chunk):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-4, 5, (8, 8), generator=g).float()  # heavy ties
    m = topk_mask(x, k)
    assert m.shape == x.shape and m.dtype == torch.bool
    assert int(m.sum()) == min(max(k, 0), x.numel())
    assert torch.equal(m, ref_mask(x, k))


def test_mask_ties_all_keeps_every_tie():
    x = torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0])
    assert topk_mask(x, 2, ties="all").tolist() == [False, True, True, True, True]
    assert topk_mask(x, 2).tolist() == [False, True, False, False, True]


def test_mask_matches_torch_topk_without_ties(chunk):
    x = torch.randn(3000, generator=torch.Generator().manual_seed(3))
    for k in (1, 10, 1500, 2999):
        idx = torch.topk(x.abs(), k).indices
        ref = torch.zeros(3000, dtype=torch.bool)
        ref[idx] = True
        assert torch.equal(topk_mask(x, k), ref)


def test_other_dtypes_and_non_contiguous():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 30, generator=g)
    xt = x.t()  # non-contiguous view
    assert not xt.is_contiguous()
    assert torch.equal(topk_mask(xt, 123), ref_mask(xt.contiguous(), 123))
    xb = x.to(torch.bfloat16)
    assert torch.equal(topk_mask(xb, 200), ref_mask(xb.float(), 200))
    xd = x.double()
    assert select_kth(xd, 5).threshold == sorted(x.abs().reshape(-1).tolist(), reverse=True)[4]


@pytest.mark.parametrize(("start", "stop"), [(0, 10), (3, 10), (0, 0), (5, 5), (90, 200), (0, 100)])
def test_rank_band(start, stop, chunk):
    x = torch.randint(-6, 7, (100,), generator=torch.Generator().manual_seed(5)).float()
    order = ref_order(x)
    ref = torch.zeros(100, dtype=torch.bool)
    ref[order[max(start, 0) : stop]] = True
    assert torch.equal(rank_band_mask(x, start, stop), ref)


def test_select_kth_rejects_bad_k():
    with pytest.raises(ValueError):
        select_kth(torch.ones(3), 0)
    with pytest.raises(ValueError):
        select_kth(torch.ones(3), 4)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(6))
    assert torch.equal(topk_mask(x.cuda(), 777).cpu(), topk_mask(x, 777))
