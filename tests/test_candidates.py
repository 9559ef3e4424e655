"""The candidate API: models opened once, merges in memory equal to merge_tensors, the cache, the skeleton."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import make_model
from modelmix import merge_tensors
from modelmix.candidates import Candidates
from modelmix.errors import InputError
from modelmix.io.checkpoint import Checkpoint


def _paths(trio):
    d, _ = trio
    return d / "base", [d / "ft1", d / "ft2"]


@pytest.mark.parametrize("method,params", [
    ("ties", {"weight": [0.7, 0.4], "density": 0.5}),
    ("dare_ties", {"weight": 1.0, "density": 0.3}),  # random: per-tensor seeds as the file merge
    ("linear", {"weight": [1.0, 3.0]}),
    ("task_arithmetic", {"weight": 0.5, "lambda": 1.5}),
])
def test_merge_equals_merge_tensors(trio, method, params):
    base, fts = _paths(trio)
    _, sds = trio
    ref = merge_tensors(method, [sds["ft1"], sds["ft2"]], base=sds["base"], seed=7, **params)
    with Candidates(fts, base=base) as c:
        got = c.merge(method, seed=7, **params)
        assert set(got) == set(ref)
        for k in ref:
            assert torch.equal(got[k], ref[k]), (method, k)
        # a subset and another base: slerp of ft2 onto ft1
        pair = c.merge("slerp", models=[1], base=0, t=0.3)
    pref = merge_tensors("slerp", [sds["ft2"]], base=sds["ft1"], t=0.3)
    assert all(torch.equal(pair[k], pref[k]) for k in pref)


def test_inputs_read_once_then_cached(trio, monkeypatch):
    base, fts = _paths(trio)
    reads: list[str] = []
    real = Checkpoint.read

    def counting(self, name, rows=None):
        reads.append(name)
        return real(self, name, rows)

    monkeypatch.setattr(Checkpoint, "read", counting)
    with Candidates(fts, base=base) as c:
        c.merge("ties", weight=1.0, density=0.5)
        first = len(reads)
        assert first == 3 * len(c.names)  # base + two models, each tensor once
        c.merge("ties", weight=1.0, density=0.2)
        c.merge("task_arithmetic", weight=0.5)
        assert len(reads) == first  # later candidates re-read nothing
        assert c.entry(c.names[0]).dtype == torch.float32 and tuple(c.entry(c.names[0], 1).shape) == tuple(
            c.tensor(1, c.names[0]).shape)
        d = c.task_vector(0, c.names[0])
        assert d is c.task_vector(0, c.names[0])  # cached too
        torch.testing.assert_close(d, c.tensor(0, c.names[0]) - c.tensor("base", c.names[0]), rtol=0, atol=0)
    reads.clear()
    with Candidates(fts, base=base, cache_bytes=0) as c:  # no cache: every merge reads again
        c.merge("linear", weight=1.0)
        c.merge("linear", weight=1.0)
        assert len(reads) == 2 * 2 * len(c.names)


def test_state_dict_is_a_fresh_copy(trio):
    base, fts = _paths(trio)
    _, sds = trio
    with Candidates(fts, base=base) as c:
        sd = c.state_dict(0)
        for k, v in sd.items():
            assert torch.equal(v, sds["ft1"][k])
            v.zero_()
        assert torch.equal(c.state_dict(0)[k], sds["ft1"][k])  # the cache was not modified


def test_errors_before_any_weight_is_read(trio, tmp_path, monkeypatch):
    base, fts = _paths(trio)
    make_model(tmp_path / "wide", hidden=32, seed=3)
    make_model(tmp_path / "deep", layers=3, seed=3)
    make_model(tmp_path / "vocab", vocab=40, seed=3)

    def no_reads(*_a, **_k):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(Checkpoint, "read", no_reads)
    with pytest.raises(InputError, match="different vocabulary"):
        Candidates([fts[0], tmp_path / "vocab"])
    with pytest.raises(InputError, match="different architecture.*shape"):
        Candidates([fts[0], tmp_path / "wide"])
    with pytest.raises(InputError, match="not the same architecture.*different tensors"):
        Candidates([*fts, tmp_path / "deep"], base=base)
    with pytest.raises(InputError, match="No models"):
        Candidates([])
    monkeypatch.undo()
    with Candidates(fts) as c:  # no base
        with pytest.raises(InputError, match="needs a base model"):
            c.merge("ties", weight=1.0)
        with pytest.raises(InputError, match="no base"):
            c.tensor("base", c.names[0])
        with pytest.raises(InputError, match="out of range"):
            c.tensor(2, c.names[0])
        with pytest.raises(InputError, match="not one of the candidate models"):
            c.tensor("elsewhere", c.names[0])
        with pytest.raises(Exception, match="Unknown parameter"):
            c.merge("linear", weight=1.0, wieght=2.0)


def test_base_listed_as_a_model_is_opened_once(trio):
    base, fts = _paths(trio)
    with Candidates([base, *fts], base=base) as c:
        assert c.checkpoint(0) is c.checkpoint("base")
        lin = c.merge("linear", models=[0, 1], weight=[1.0, 1.0])  # linear takes no base: base is a model
    _, sds = trio
    ref = merge_tensors("linear", [sds["base"], sds["ft1"]], weight=[1.0, 1.0])
    assert all(torch.equal(lin[k], ref[k]) for k in ref)


def test_merge_into_skeleton_equals_loading_the_merge(zoo_dir: Path):
    """The agent's inner loop: merge straight into one loaded model, score; same as load_state_dict of
    merge_tensors' state dict, and the skeleton is loaded once."""
    from modelmix.zoo import load_zoo

    z = load_zoo(zoo_dir)
    experts = list(z.experts())[:2]
    ex = [{"input": "1+2=", "output": "3"}, {"input": "2+2=", "output": "4"}]
    with Candidates([z.model_path(m) for m in experts], base=z.model_path("base")) as c:
        em = c.skeleton()
        assert c.skeleton() is em
        c.merge_into(em, "ties", weight=1.0, density=0.3)
        got = c.score(em, ex, ["loss"])
        sd = c.merge("ties", weight=1.0, density=0.3)
        c.load(em, sd)
        assert c.score(em, ex, ["loss"]) == got
        own = em.model.state_dict()
        assert all(torch.equal(own[k], sd[k]) for k in c.names if k in own)


def test_metric_direction_is_declared_for_every_metric():
    from modelmix.eval.api import HIGHER_IS_BETTER, is_better
    from modelmix.eval.data import METRIC_KIND

    assert set(HIGHER_IS_BETTER) == set(METRIC_KIND)
    assert is_better(0.1, 0.2, "loss") and is_better(0.9, 0.2, "exact_match")
    with pytest.raises(InputError, match="Unknown metric"):
        is_better(1, 2, "los")


def test_public_names_stay_where_they_were():
    """The layout moved modules; the documented names still import from their old addresses."""
    import modelmix
    import modelmix.cocktail
    import modelmix.eval
    from modelmix.weighting import cocktail

    assert modelmix.cocktail.compute_weights is cocktail.compute_weights
    assert modelmix.cocktail.mix is cocktail.mix
    assert callable(modelmix.merge) and callable(modelmix.plan) and callable(modelmix.merge_tensors)
    assert callable(modelmix.eval.evaluate)
