"""The optional lm-evaluation-harness bridge: clear error without it, correct call and result shape with it."""

from __future__ import annotations

import sys
import types

import pytest

from modelmix.errors import InputError
from modelmix.eval.lm_eval_adapter import run_lm_eval


def test_missing_harness_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(InputError, match="pip install lm-eval"):
        run_lm_eval(tmp_path, ["hellaswag"])


def test_calls_simple_evaluate_and_cleans_metric_names(monkeypatch, tmp_path):
    calls = {}

    def simple_evaluate(**kw):
        calls.update(kw)
        return {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.01, "acc_norm,none": 0.6}}}

    monkeypatch.setitem(sys.modules, "lm_eval", types.SimpleNamespace(simple_evaluate=simple_evaluate))
    scores = run_lm_eval(tmp_path, ["arc_easy"], limit=10)
    assert scores == {"arc_easy": {"acc": 0.5, "acc_norm": 0.6}}
    assert calls["model"] == "hf" and f"pretrained={tmp_path}" in calls["model_args"] and calls["limit"] == 10
    with pytest.raises(InputError, match="does not exist"):
        run_lm_eval(tmp_path / "missing", ["arc_easy"])
